"""eval_delay (TRL / transformers TrainingArguments): no evaluation before that many steps (eval_strategy steps) or
epochs (eval_strategy epoch). The steps a preflab run evaluates are the steps transformers' own DefaultFlowCallback
asks to evaluate under the same arguments (its on_step_end / on_epoch_end driven over the run's steps)."""
import json

import pytest

from preflab.errors import ConfigError

WORDS = ["cat", "dog", "owl", "bee", "ant", "oak", "jam", "log"]


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"echo: {WORDS[i % 8]} {WORDS[(i * 3) % 8]}\n", "chosen": WORDS[i % 8].upper(),
             "rejected": WORDS[(i * 5) % 8]} for i in range(n)]


def _evaluated_steps(tmp_path, name: str, **over) -> list[int]:
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    for file, n in (("train.jsonl", 8), ("eval.jsonl", 4)):  # 8 rows / 4 a step: 2 steps an epoch
        (tmp_path / file).write_text("".join(json.dumps(r) + "\n" for r in _rows(n)))
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(tmp_path / "train.jsonl"),
                            "eval_dataset_name": str(tmp_path / "eval.jsonl"), "output_dir": str(tmp_path / name),
                            "max_steps": 6, "per_device_train_batch_size": 4, "max_length": 64, "logging_steps": 1,
                            "disable_tqdm": True, **over})
    Trainer(cfg).train()
    rows = map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
    return [r["step"] for r in rows if "eval_loss" in r]


def _transformers_steps(strategy: str, delay: float, eval_steps: int = 2, steps_per_epoch: int = 2) -> list[int]:
    """The steps transformers' DefaultFlowCallback sets should_evaluate at, over a 6-step run."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import DefaultFlowCallback

    args = TrainingArguments(output_dir="unused", eval_strategy=strategy, eval_steps=eval_steps, eval_delay=delay,
                             save_strategy="no", report_to="none")
    state, flow, steps = TrainerState(max_steps=6, eval_steps=eval_steps, logging_steps=1), DefaultFlowCallback(), []
    for step in range(1, 7):
        state.global_step, state.epoch = step, step / steps_per_epoch
        control = flow.on_step_end(args, state, TrainerControl())
        if step % steps_per_epoch == 0:
            control = flow.on_epoch_end(args, state, control)
        if control.should_evaluate:
            steps.append(step)
    return steps


@pytest.mark.parametrize("strategy, delay", [("steps", 3), ("epoch", 2), ("steps", 0)])
def test_eval_delay_evaluates_where_transformers_does(tmp_path, strategy, delay):
    over = {"eval_strategy": strategy, "eval_delay": delay, **({"eval_steps": 2} if strategy == "steps" else {})}
    want = _transformers_steps(strategy, delay)
    assert want == ([2, 4, 6] if not delay else [4, 6])  # the delay removes step 2's evaluation (epoch 1 < 2)
    assert _evaluated_steps(tmp_path, f"{strategy}-{delay}", **over) == want


def test_eval_delay_past_the_run_evaluates_nothing_and_beside_eval_strategy_no_is_refused(tmp_path):
    assert _transformers_steps("steps", 7) == []
    assert _evaluated_steps(tmp_path, "late", eval_strategy="steps", eval_steps=2,
                            eval_delay=7) == []  # not even at the end (transformers' last-step evaluation waits too)
    from preflab.config import config_from_dict

    with pytest.raises(ConfigError, match="eval_delay=3 delays the first evaluation, but eval_strategy: no"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows", "eval_strategy": "no",
                          "eval_delay": 3})
