"""eval_on_start (transformers' TrainingArguments.eval_on_start): one evaluation of the starting model before the
first optimizer step, written once in loops/driver.py (TrainingRun._evaluate_on_start) for every task's run."""
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reward_models"))  # reward_synthetic

ROOT = Path(__file__).resolve().parents[1]
PAIRS = str(ROOT / "examples" / "data" / "loud_echo_pairs.jsonl")


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _dpo_run(out: Path, callbacks=None, **kw) -> dict:
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    return Trainer(config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": PAIRS,
                                   "eval_fraction": 0.2, "loss_type": "sigmoid", "beta": 0.1, "max_steps": 2,
                                   "per_device_train_batch_size": 4, "max_length": 128, "logging_steps": 1,
                                   "learning_rate": 1e-3, "use_cpu": True, "disable_tqdm": True, "seed": 0,
                                   "output_dir": str(out), **kw}), callbacks=callbacks).train()


def test_eval_on_start_dpo_logs_the_untrained_policys_eval_loss_log_2_at_step_0(tmp_path):
    """Before the first step the policy is its reference, so every DPO margin is 0 and the sigmoid loss is
    -log sigma(0) = log 2 exactly (a closed form); the row comes first, at step 0, before any training row, and
    callbacks get it as on_evaluate."""
    from transformers import TrainerCallback

    class Evaluations(TrainerCallback):
        seen = []

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.seen.append((state.global_step, metrics["eval_loss"]))

    _dpo_run(tmp_path / "run", callbacks=[Evaluations()], eval_on_start=True)
    rows = _rows(tmp_path / "run")
    first = rows[0]
    assert first["step"] == 0 and first["epoch"] == 0.0
    assert first["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 2]  # then the end's evaluation, as before
    assert Evaluations.seen == [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]  # on_evaluate too


def test_eval_on_start_adds_only_the_step_0_row_and_the_default_writes_none(tmp_path):
    """Without the option no step-0 evaluation is written (the default); with it the metrics are the default run's
    plus the one step-0 row: the starting evaluation changes no training row (no random draw, the model back in
    train mode). tokens_per_second and train_tokens_per_second, timings, are left out of the comparison."""
    _dpo_run(tmp_path / "a")
    _dpo_run(tmp_path / "b", eval_on_start=True)
    a, b = ([{k: v for k, v in r.items() if not k.endswith("_per_second")} for r in _rows(tmp_path / d)]
            for d in "ab")
    assert all(r["step"] >= 1 for r in a)
    assert b[0]["step"] == 0 and "eval_loss" in b[0]
    assert b[1:] == a


def test_eval_on_start_on_a_resumed_run_evaluates_at_the_checkpoints_step_as_transformers(tmp_path):
    """transformers evaluates at state.global_step, the checkpoint's step on a resume: the resumed run's first row is
    an evaluation at step 2 equal to the first run's own evaluation of the same weights at step 2 (eval_on_start may
    be turned on for the resume: it changes no training)."""
    out = tmp_path / "run"
    _dpo_run(out, eval_steps=2, save_steps=2)
    before = [r for r in _rows(out) if "eval_loss" in r]
    assert [r["step"] for r in before] == [2]
    _dpo_run(out, eval_steps=2, save_steps=2, max_steps=3, resume_from_checkpoint=True, eval_on_start=True)
    evals = [r for r in _rows(out) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 2, 3]
    assert evals[1]["eval_loss"] == pytest.approx(before[0]["eval_loss"], abs=1e-6)
    assert evals[1]["eval_rewards/accuracies"] == before[0]["eval_rewards/accuracies"]


def test_eval_on_start_is_not_a_best_model_candidate_as_in_transformers(tmp_path):
    """transformers' start evaluation (Trainer._evaluate) never reaches _determine_best_metric. Ranked by the
    smallest eval margin, the untrained policy (margin exactly 0) would win over trained steps whose margins are
    positive; the best stays a trained step's, with its checkpoint."""
    out = tmp_path / "run"
    summary = _dpo_run(out, eval_on_start=True, eval_steps=1, save_steps=1, load_best_model_at_end=True,
                       metric_for_best_model="rewards/margins", greater_is_better=False)
    evals = {r["step"]: r["eval_rewards/margins"] for r in _rows(out) if "eval_rewards/margins" in r}
    assert evals[0] == pytest.approx(0.0, abs=1e-6) and min(evals[1], evals[2]) > evals[0]  # it would have won
    best_step = min((1, 2), key=lambda s: evals[s])
    assert summary["best_metric"] == pytest.approx(evals[best_step])
    assert Path(summary["best_model_checkpoint"]).name == f"checkpoint-{best_step}"


def test_eval_on_start_reward_step_0_equals_preflab_eval_of_the_starting_model(tmp_path):
    """The reward run's step-0 eval_accuracy / eval_loss are those of `evaluate_reward_model` (preflab eval --task
    reward) on the same rows with the untrained model the run starts from (built with the same seed)."""
    from reward_synthetic import marker_rows

    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.heads import build_reward_model, set_reward_config
    from preflab.reward_models.train import train_reward

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(12, seed=0)))
    tok = tiny_tokenizer()
    start = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    set_reward_config(start, {"head": "bt", "tau": 1.0})
    expected = evaluate_reward_model(start, str(data), tokenizer=tok)
    out = tmp_path / "run"
    train_reward(config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama",
                                   "dataset_name": str(data), "eval_dataset_name": str(data),
                                   "per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2,
                                   "logging_steps": 1, "use_cpu": True, "seed": 0, "disable_tqdm": True,
                                   "eval_on_start": True, "output_dir": str(out)}))
    first = _rows(out)[0]
    assert first["step"] == 0
    assert first["eval_accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    assert first["eval_loss"] == pytest.approx(expected["loss"], rel=1e-5)


@pytest.mark.parametrize("over,why", [
    ({}, "there is no eval set \\(no eval_dataset_name, eval_fraction 0\\)"),
    ({"eval_fraction": 0.1, "eval_strategy": "no"}, "eval_strategy: no turns evaluation off"),
])
def test_eval_on_start_without_anything_to_evaluate_is_refused_with_the_reason(over, why):
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eval_on_start: true evaluates the starting model before the first step, "
                                          rf"but {why}, so there is nothing to evaluate\. Set eval_dataset_name or "
                                          r"eval_fraction \(and no eval_strategy: no\), or remove eval_on_start\."):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                          "eval_on_start": True, **over})
