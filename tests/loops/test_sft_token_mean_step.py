"""The sft term with objective_params.token_mean "step" in the offline Trainer: the chosen tokens' mean over the
whole optimizer step (transformers' num_items_in_batch), so accumulation 2 x 2 pairs equals one batch of 4, where
TRL's default (each micro-batch's own token mean) does not."""
import json

import pytest
import torch
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.offline import Trainer


def _pairs(path):
    words = ["a", "bb", "ccc dd", "eeee ff gg", "h", "iii jjjj kkkkk", "ll", "mmm nn"]
    rows = [{"prompt": f"say {w}:", "chosen": " " + w.upper(), "rejected": " " + w[::-1]} for w in words]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _train(tmp_path, name, batch, accum, token_mean):
    torch.set_num_threads(1)
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": _pairs(tmp_path / "p.jsonl"),
                            "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0], "beta": 0.5,
                            "objective_params": {"token_mean": token_mean}, "learning_rate": 1e-4,
                            "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum,
                            "max_steps": 2, "logging_steps": 1, "lr_scheduler_type": "constant", "max_length": 64,
                            "disable_tqdm": True, "use_cpu": True, "save_steps": 0,
                            "output_dir": str(tmp_path / name)})
    summary = Trainer(cfg).train()
    return summary["final_metrics"], load_file(tmp_path / name / "model.safetensors")


def _max_difference(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_step_token_mean_makes_accumulation_equal_one_big_batch(tmp_path):
    big_metrics, big = _train(tmp_path, "big", 4, 1, "step")
    acc_metrics, acc = _train(tmp_path, "accum", 2, 2, "step")
    assert _max_difference(acc, big) < 1e-6
    assert acc_metrics["loss"] == pytest.approx(big_metrics["loss"], abs=1e-6)
    assert acc_metrics["loss/sft"] == pytest.approx(big_metrics["loss/sft"], abs=1e-6)
    # one micro-batch a step: "step" is the batch's own token mean, TRL's default
    default_metrics, default = _train(tmp_path, "default", 4, 1, "micro_batch")
    assert _max_difference(default, big) < 1e-6
    assert default_metrics["loss/sft"] == pytest.approx(big_metrics["loss/sft"], abs=1e-6)
    # the default under accumulation averages the micro-batches' means: another objective (chosen lengths differ)
    _, acc_default = _train(tmp_path, "accum_default", 2, 2, "micro_batch")
    assert _max_difference(acc_default, big) > 1e-4  # measured 3.9e-4 (step: 2.4e-7)


def test_an_unknown_token_mean_is_refused_when_the_config_is_built(tmp_path):
    with pytest.raises(ConfigError, match=r"sft: token_mean must be one of \['micro_batch', 'step'\], got 'sequence'"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "loss_type": ["sigmoid", "sft"],
                          "dataset_name": "x.jsonl", "objective_params": {"token_mean": "sequence"},
                          "output_dir": str(tmp_path)}).objective()
