"""`preflab train` from a user's local model folder (a real family's config, safetensors weights, tokenizer with its
chat template), then `preflab eval` on the result: the saved folder reloads with plain transformers with no missing
or unexpected weights, tied embeddings stay tied, every weight is the trained one (none left at its initial value),
the tokenizer and chat template are the model's own, and eval's log-probs equal plain transformers' on the template."""
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from preflab.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from families import save_family  # noqa: E402

user = lambda t: {"role": "user", "content": t}  # noqa: E731
bot = lambda t: {"role": "assistant", "content": t}  # noqa: E731
WORDS = ["sky", "cat", "dog", "park", "mat", "hello", "world", "five"]


def _pairs(path: Path) -> list[dict]:
    rows = [{"prompt": [user(f"say {w} {x}")], "chosen": [bot(f"{w} {x}")], "rejected": [bot(x)]}
            for w, x in zip(WORDS, WORDS[3:] + WORDS[:3])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _mean_logps(model, tok, rows, side: str) -> float:
    """Plain transformers: the template's prompt (generation prompt on) and prompt + response, summed log-probs."""
    total = 0.0
    for row in rows:
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
        full = tok.apply_chat_template(row["prompt"] + row[side], tokenize=True, return_dict=True)["input_ids"]
        assert full[:len(prompt)] == prompt
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
        total += float(logprobs[len(prompt) - 1:-1].gather(-1, torch.tensor(full[len(prompt):])[:, None]).sum())
    return total / len(rows)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "mistral"])  # tied embeddings + ChatML; sliding window + Llama-3 template
def test_train_from_a_local_folder_saves_the_trained_model_and_eval_reads_it(tmp_path, family):
    source = save_family(tmp_path / "models", family)
    rows = _pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    assert main(["train", f"model_name_or_path={source}", f"dataset_name={tmp_path / 'pairs.jsonl'}",
                 f"output_dir={out}", "max_steps=2", "per_device_train_batch_size=4", "learning_rate=1e-2",
                 "eval_fraction=0", "save_steps=0", "disable_tqdm=true"]) == 0
    assert not [p.name for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    model, info = tf.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    initial = tf.AutoModelForCausalLM.from_pretrained(source)
    assert model.config.tie_word_embeddings == initial.config.tie_word_embeddings
    if model.config.tie_word_embeddings:  # one tensor in the file, shared again on reload
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert "lm_head.weight" not in load_file(out / "model.safetensors")
    before = initial.state_dict()
    assert all(not torch.equal(v, before[k]) for k, v in model.state_dict().items()), "a weight kept its initial value"
    tok, tok0 = tf.AutoTokenizer.from_pretrained(out), tf.AutoTokenizer.from_pretrained(source)
    assert tok.chat_template == tok0.chat_template and tok.get_vocab() == tok0.get_vocab()

    assert main(["eval", str(out), "--data", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "eval"),
                 "--no-per-pair"]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    model.eval()
    for side in ("chosen", "rejected"):
        assert metrics[f"logps/{side}"] == pytest.approx(_mean_logps(model, tok, rows, side), abs=1e-4)
