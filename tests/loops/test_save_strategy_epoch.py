"""TRL's save_strategy: epoch (transformers: a checkpoint at the end of each epoch, save_steps not read), with
eval_strategy: epoch and load_best_model_at_end as a TRL config writes them. Before this change save_strategy epoch
was refused, so TRL's common `eval_strategy: epoch` + `save_strategy: epoch` + `load_best_model_at_end` config could
not run at all (and save_steps with eval_strategy epoch was refused as a strategy mismatch)."""
import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from preflab.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from test_best_model import _best, _eval_rows, _evals, _rows  # noqa: E402

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows"}


def test_save_strategy_epoch_from_a_saved_dpoconfig_checkpoints_each_epoch_and_loads_the_best(tmp_path, capsys):
    trl = pytest.importorskip("trl")
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    args = trl.DPOConfig(output_dir=str(tmp_path / "run"), bf16=False, eval_strategy="epoch", save_strategy="epoch",
                         load_best_model_at_end=True, metric_for_best_model="eval_loss", num_train_epochs=3,
                         per_device_train_batch_size=4, max_length=64, learning_rate=0.05, logging_steps=1,
                         report_to=[])
    for name, rows in (("train", _rows(16)), ("eval", _eval_rows())):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({**args.to_dict(), **BASE, "dataset_name": str(tmp_path / "train.jsonl"),
                            "eval_dataset_name": str(tmp_path / "eval.jsonl"), "disable_tqdm": True})
    assert (cfg.save_strategy, cfg.save_steps) == ("epoch", 0)  # TrainingArguments' save_steps 500 is not read
    Trainer(cfg).train()  # 16 pairs / 4 = 4 steps an epoch
    run = tmp_path / "run"
    evals = _evals(run)
    assert [step for step, _ in evals] == [4, 8, 12]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    assert "save_strategy: epoch -> save_steps: 4 (one epoch)." in capsys.readouterr().out
    best_step, _ = _best(evals)
    final, best = load_file(str(run / "model.safetensors")), load_file(str(run / f"checkpoint-{best_step}" /
                                                                          "model.safetensors"))
    assert all((final[k] == best[k]).all() for k in final)
    assert json.loads((run / "summary.json").read_text())["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")


@pytest.mark.parametrize("over,match", [
    ({"task": "online", "trainer": "grpo", "reward_funcs": ["x.py:f"], "max_steps": 2},
     "save_strategy: epoch is not supported for task: online: its steps follow generation rounds"),
    ({"streaming": True, "max_steps": 2}, "save_strategy: epoch needs the epoch length, which a stream does not know"),
])
def test_save_strategy_epoch_is_refused_where_no_epoch_resolves(over, match):
    from preflab.config import config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict({**BASE, "dataset_name": "x.jsonl", "save_strategy": "epoch", **over})


def test_save_strategy_epoch_says_save_steps_is_not_read(capsys):
    from preflab.config import config_from_dict

    cfg = config_from_dict({**BASE, "dataset_name": "x.jsonl", "save_strategy": "epoch", "save_steps": 50})
    assert (cfg.save_strategy, cfg.save_steps) == ("epoch", 0)
    assert "save_strategy: epoch -> save_steps 50 is not used (a checkpoint at the end of each epoch)." in \
        capsys.readouterr().err
