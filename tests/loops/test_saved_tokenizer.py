"""A run of a built-in model saves the tokenizer training used: reloaded with plain transformers, a prompt
tokenizes exactly as preflab tokenized it (BOS included), so greedy generation after reload equals preflab's
(issue 11, item 7: the saved tokenizer lacked the BOS that training added, `'KIT CAT'` vs `'KIT CAT HAT'`)."""
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from preflab.cli import main
from preflab.data.rows import PairExample
from preflab.data.tokenize import tokenize_pairs
from preflab.generate import generate_text
from preflab.models.load import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_saved_builtin_tokenizer_tokenizes_and_generates_like_training(tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(ROOT / "examples/quickstart.yaml"), f"output_dir={out}", "max_steps=2",
                 "eval_fraction=0", "eval_steps=0", "save_steps=0", "disable_tqdm=true"]) == 0
    row = json.loads((ROOT / "examples/data/loud_echo_pairs.jsonl").read_text().splitlines()[0])
    ours = load_tokenizer("builtin:tiny-llama")
    (pair,), _ = tokenize_pairs([PairExample(0, row["prompt"], row["chosen"], row["rejected"], {})], ours)
    assert pair.prompt_ids[0] == ours.bos_token_id

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    plain = tok(row["prompt"], return_tensors="pt")
    assert plain.input_ids[0].tolist() == pair.prompt_ids
    # chat prompts: the template's BOS once, as in preflab's conversational rows
    messages = [{"role": "user", "content": "echo: kit cat hat"}]
    (chat,), _ = tokenize_pairs([PairExample(0, messages, [{"role": "assistant", "content": "KIT"}],
                                             [{"role": "assistant", "content": "kit"}], {})], ours)
    templated = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tok(templated, add_special_tokens=False).input_ids == chat.prompt_ids
    assert chat.prompt_ids.count(ours.bos_token_id) == 1

    with torch.no_grad():
        generated = model.generate(**plain, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    theirs = tok.decode(generated[0, plain.input_ids.shape[1]:], skip_special_tokens=True)
    assert theirs == generate_text(model, ours, [pair.prompt_ids], max_new_tokens=12)[0]
