"""The reference at scale: frozen, no gradients, no optimizer state, weights in ref_load_dtype."""
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.models import load
from preflab.models.tiny import tiny_tokenizer

sys.path.insert(0, str(Path(__file__).parent / "loops"))
from tiny_run import synthetic_pairs  # noqa: E402


def _cfg(tmp_path, **kw):
    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                             "output_dir": str(tmp_path), "use_cpu": True, **kw})


def test_reference_dtype_defaults_bf16_on_a_gpu_and_the_policy_dtype_on_cpu(tmp_path, monkeypatch):
    assert load.reference_dtype(_cfg(tmp_path)) == "float32"
    assert load.reference_dtype(_cfg(tmp_path, load_dtype="float16")) == "float16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert load.reference_dtype(_cfg(tmp_path, use_cpu=False)) == "bfloat16"
    assert load.reference_dtype(_cfg(tmp_path, use_cpu=False, ref_load_dtype="float32")) == "float32"
    with pytest.raises(ConfigError, match="ref_load_dtype has no effect with use_peft"):
        _cfg(tmp_path, use_peft=True, ref_load_dtype="bfloat16")


def test_bf16_reference_is_frozen_outside_the_optimizer_and_unchanged_by_training(tmp_path):
    from preflab.loops.offline import Trainer

    torch.set_num_threads(1)
    cfg = _cfg(tmp_path, ref_load_dtype="bfloat16", max_steps=2, per_device_train_batch_size=4,
               learning_rate=1e-3, disable_tqdm=True, logging_steps=1)
    tok = tiny_tokenizer()
    policy, ref = load.load_models(cfg, tok)
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in ref.parameters())
    for (name, p), r in zip(policy.named_parameters(), ref.parameters()):
        assert torch.equal(r, p.detach().to(torch.bfloat16)), name
    before = {n: p.clone() for n, p in ref.named_parameters()}
    trainer = Trainer(cfg, policy=policy, ref=ref, tokenizer=tok, train_data=synthetic_pairs())
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in ref.parameters()}
    summary = trainer.train()
    assert summary["global_step"] == 2 and all(r.grad is None for r in ref.parameters())
    for name, p in ref.named_parameters():
        assert torch.equal(p, before[name]), name
