"""TRL's save_strategy: epoch (transformers: a checkpoint at the end of each epoch, save_steps not read) and
eval_strategy: epoch, with load_best_model_at_end as a TRL config writes them. Before this change save_strategy epoch
was refused, so TRL's common `eval_strategy: epoch` + `save_strategy: epoch` + `load_best_model_at_end` config could
not run at all (and save_steps with eval_strategy epoch was refused as a strategy mismatch); task: online (and
diffusion) accepted eval_strategy: epoch and evaluated at the end of the run only."""
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


def test_save_strategy_epoch_is_refused_with_streaming():
    from preflab.config import config_from_dict

    with pytest.raises(ConfigError, match="save_strategy: epoch needs the epoch length, which a stream does not know"):
        config_from_dict({**BASE, "dataset_name": "x.jsonl", "save_strategy": "epoch", "streaming": True,
                          "max_steps": 2})


def test_online_epoch_strategies_evaluate_and_save_at_each_pass_over_the_prompts(tmp_path, capsys):
    """12 prompts, rounds of 4 prompts, one step a round: an epoch is 3 steps (the logged epoch reaches 1.0 there).
    Before: eval_strategy epoch evaluated at the end only (step 6) and save_strategy epoch was refused."""
    from preflab.config import config_from_dict
    from preflab.online.run import OnlineRun

    rows = _rows(16)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "reward.py").write_text("def length(completions, **kw):\n    return [float(len(c)) for c in "
                                        "completions]\n")
    cfg = config_from_dict({**BASE, "dataset_name": str(tmp_path / "prompts.jsonl"), "task": "online",
                            "trainer": "grpo", "reward_funcs": [f"{tmp_path / 'reward.py'}:length"], "max_steps": 6,
                            "num_generations": 2, "prompts_per_generation": 4, "max_completion_length": 4,
                            "per_device_train_batch_size": 4, "eval_strategy": "epoch", "save_strategy": "epoch",
                            "eval_fraction": 0.25, "logging_steps": 1, "use_cpu": True, "disable_tqdm": True,
                            "output_dir": str(tmp_path / "run")})
    OnlineRun(cfg).train()
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in rows if "eval_reward" in r] == [(3, 1.0), (6, 2.0)]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert "eval_strategy: epoch -> eval_steps: 3 (one epoch)." in capsys.readouterr().out


def test_online_epoch_that_is_no_whole_number_of_steps_is_refused(tmp_path):
    from preflab.config import config_from_dict
    from preflab.online.run import OnlineRun

    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(10)))
    cfg = config_from_dict({**BASE, "dataset_name": str(tmp_path / "prompts.jsonl"), "task": "online",
                            "trainer": "grpo", "reward_funcs": [f"{tmp_path / 'reward.py'}:length"], "max_steps": 2,
                            "num_generations": 2, "prompts_per_generation": 4, "save_strategy": "epoch",
                            "max_completion_length": 4, "use_cpu": True, "output_dir": str(tmp_path / "run")})
    (tmp_path / "reward.py").write_text("def length(completions, **kw):\n    return [1.0 for c in completions]\n")
    with pytest.raises(ConfigError, match=r"save_strategy: epoch: an epoch of 10 prompts is 10/4 rounds of 4 prompts "
                                          r"\(1 steps each\), not a whole number of steps"):
        OnlineRun(cfg)


def test_save_strategy_epoch_says_save_steps_is_not_read(capsys):
    from preflab.config import config_from_dict

    cfg = config_from_dict({**BASE, "dataset_name": "x.jsonl", "save_strategy": "epoch", "save_steps": 50})
    assert (cfg.save_strategy, cfg.save_steps) == ("epoch", 0)
    assert "save_strategy: epoch -> save_steps 50 is not used (a checkpoint at the end of each epoch)." in \
        capsys.readouterr().err
