"""Eval scoring equals full-logits scoring; run dirs, checkpoints, LoRA dirs and builtins load to the right weights."""
import pytest
import torch
import yaml

from preflab.checkpoint import save_checkpoint
from preflab.data.layout import padded
from preflab.errors import PreflabError
from preflab.eval.loading import load_for_eval
from preflab.eval.score import score_pairs, score_responses
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.scoring.lm import naive_token_logps
from lora_weights import randomize_lora_b  # tests/, on sys.path beside conftest


class Pair:
    def __init__(self, prompt_ids, chosen_ids, rejected_ids):
        self.prompt_ids, self.chosen_ids, self.rejected_ids = prompt_ids, chosen_ids, rejected_ids


def naive_sum(model, prompt_ids, response_ids, pad_id=0):
    return naive_token_logps(model, padded([(prompt_ids, response_ids)], pad_id)).double().sum().item()


def test_score_pairs_equals_full_logits_path():
    tok = tiny_tokenizer("bytelevel")
    policy, ref = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    pairs = [Pair([1, 10, 11], [20, 21, 2], [30, 2]), Pair([1, 12], [40, 41, 42, 43, 2], [44, 2]),
             Pair([1, 13, 14, 15, 16], [50, 2], [51, 52, 53, 2])]
    scores = score_pairs(policy, pairs, pad_id=0, ref=ref, batch_size=2)   # batches of unequal padding
    for i, p in enumerate(pairs):
        assert scores.policy_chosen[i].item() == pytest.approx(naive_sum(policy, p.prompt_ids, p.chosen_ids), abs=1e-4)
        assert scores.ref_rejected[i].item() == pytest.approx(naive_sum(ref, p.prompt_ids, p.rejected_ids), abs=1e-4)
        assert scores.chosen_length[i].item() == len(p.chosen_ids)
    sums, lengths = score_responses(policy, [(p.prompt_ids, p.rejected_ids) for p in pairs], pad_id=0, batch_size=2)
    torch.testing.assert_close(sums, scores.policy_rejected, atol=1e-5, rtol=0)
    assert lengths.tolist() == [2.0, 2.0, 4.0]


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_checkpoint_dir_loads_its_trained_weights(tmp_path):
    tok = tiny_tokenizer("bytelevel")               # the tokenizer of builtin:tiny-llama
    model = tiny_causal_lm(tok, seed=7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    opt = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path / "run", 3, model, opt, None,
                           {"config": {"model_name_or_path": "builtin:tiny-llama", "seed": 7}})
    loaded, loaded_tok = load_for_eval(str(path))
    want, got = _params(model), _params(loaded)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert len(loaded_tok) == len(tok)


def test_lora_run_dir_is_merged_onto_its_base(tmp_path):
    from preflab.models.load import add_lora

    tok = tiny_tokenizer("bytelevel")
    peft_model = add_lora(tiny_causal_lm(tok, seed=7), r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    randomize_lora_b(peft_model, 0.1)
    peft_model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", "seed": 7}))
    merged, _ = load_for_eval(str(tmp_path))
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model.eval()(ids).logits, atol=1e-5, rtol=0)
        base_logits = tiny_causal_lm(tok, seed=7)(ids).logits
    assert (merged(ids).logits - base_logits).abs().max() > 1e-3        # the adapters did change the model


def test_builtin_reference_uses_the_run_seed_and_bad_dirs_say_what_to_do(tmp_path):
    tok = tiny_tokenizer("bytelevel")
    model, _ = load_for_eval("builtin:tiny-llama", tokenizer=tok, seed=3)
    want = _params(tiny_causal_lm(tok, seed=3))
    assert all(torch.equal(v, want[k]) for k, v in _params(model).items())
    with pytest.raises(PreflabError, match="holds no model"):
        load_for_eval(str(tmp_path))
    with pytest.raises(PreflabError, match="not a directory"):
        load_for_eval(str(tmp_path / "absent"))


def test_load_for_eval_builds_builtin_demo_sft_with_the_builder_its_caller_passes(tmp_path):
    """builtin:demo-sft is trained by preflab.demo.sft_model, a room above the loader, which reached it through
    import_module("preflab.online.tasks"). Now the caller passes the builder (`preflab eval` does, through
    preflab.eval_cli.checkpoint.load_policy), for the name and for a checkpoint of a run that started from it; a
    load without it says what to pass (never built some other way)."""
    import re

    from safetensors.torch import save_file

    tok, calls = tiny_tokenizer("char"), []

    def demo_sft(seed):
        calls.append(seed)
        return tiny_causal_lm(tok, hidden_size=32, seed=seed), tok

    model, got = load_for_eval("builtin:demo-sft", seed=4, demo_sft=demo_sft)
    want = tiny_causal_lm(tok, hidden_size=32, seed=4).state_dict()
    assert got is tok and calls == [4] and all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    with pytest.raises(PreflabError, match=r"loading builtin:demo-sft needs the online demo's SFT model .*pass "
                                           r"demo_sft=preflab\.demo\.sft_model\.demo_sft to load_for_eval"):
        load_for_eval("builtin:demo-sft", seed=4)
    ckpt = tmp_path / "run" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("task: online\nmodel_name_or_path: builtin:demo-sft\nseed: 7\n")
    (ckpt / "trainer_state.json").write_text("{}")
    base = tiny_causal_lm(tok, hidden_size=32, seed=7).state_dict()
    # every trained parameter (a checkpoint lacking one is refused), the norms moved off the base
    moved = {k: v + 1.0 if k.endswith("norm.weight") else v for k, v in base.items()}
    save_file(moved, str(ckpt / "model.safetensors"))
    with pytest.raises(PreflabError, match=re.escape(f"loading {ckpt} (a checkpoint of a run that started from "
                                                     "builtin:demo-sft) needs the online demo's SFT model")):
        load_for_eval(str(ckpt))
    loaded = load_for_eval(str(ckpt), demo_sft=demo_sft)[0].state_dict()
    assert calls == [4, 7] and all(torch.equal(loaded[k], moved[k]) for k in base)
    assert not torch.equal(moved["model.norm.weight"], base["model.norm.weight"])
