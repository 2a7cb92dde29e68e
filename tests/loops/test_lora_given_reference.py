"""use_peft with ref_model_name_or_path: the given model is the reference. It was loaded and then ignored: with
LoRA the trainer always scored the reference as the policy with its adapters disabled."""
import json
import math
import sys
from pathlib import Path

import pytest

from preflab.config import config_from_dict
from preflab.loops.offline import Trainer
from preflab.models.load import add_lora, frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import synthetic_pairs  # noqa: E402


def _first_loss(out, policy, ref, **overrides):
    params = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", output_dir=str(out),
                  learning_rate=1e-3, per_device_train_batch_size=4, max_steps=1, logging_steps=1,
                  disable_tqdm=True, use_cpu=True, save_strategy="no", **overrides)
    tok = tiny_tokenizer()
    Trainer(config_from_dict(params), policy=policy, ref=ref, tokenizer=tok, train_data=synthetic_pairs(16)).train()
    return [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line][0]


def test_a_given_reference_is_used_under_lora(tmp_path):
    tok = tiny_tokenizer()
    base, other = tiny_causal_lm(tok, seed=0), frozen_copy(tiny_causal_lm(tok, seed=1))
    lora = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])
    # LoRA starts with B = 0: the policy scores as its base, so the first loss is the full fine-tune's with the same
    # reference; with the adapters-off reference it would be log 2
    with_ref = _first_loss(tmp_path / "a", add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, ["q_proj", "v_proj"]),
                           other, **lora)
    full = _first_loss(tmp_path / "b", frozen_copy(base).requires_grad_(True), frozen_copy(tiny_causal_lm(tok, seed=1)))
    assert with_ref == pytest.approx(full, abs=1e-6)
    assert abs(with_ref - math.log(2)) > 1e-3
    base_ref = _first_loss(tmp_path / "c", add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, ["q_proj", "v_proj"]),
                           None, **lora)
    assert base_ref == pytest.approx(math.log(2), abs=1e-6)
