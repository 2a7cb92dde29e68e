"""lr_scheduler_type reduce_lr_on_plateau (TRL / transformers): the rate is stepped by the eval metric
(metric_for_best_model, default loss) after each evaluation during training, never per optimizer step; after
`patience` evaluations without improvement the next one multiplies it by `factor`. The config refuses what would make
it never step or step the wrong way."""
import json
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import TrainConfig
from preflab.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402

# a rate too small to move float32 weights: every evaluation gives the same eval_loss; eps 0, as torch skips a cut
# smaller than eps (default 1e-8)
LR, FACTOR = 1e-12, 0.5
BASE = dict(model_name_or_path="builtin:tiny-llama", dataset_name="x.jsonl", eval_fraction=0.1)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _torch_replay(eval_losses: list[float], steps: int, patience: int, lr: float = LR) -> dict[int, float]:
    """The rate of each optimizer step 1..steps when torch's ReduceLROnPlateau (transformers' scheduler) is stepped
    with eval_losses[k] after step k + 1 (an evaluation at every step)."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=FACTOR, patience=patience, eps=0)
    rates = {}
    optimizer.param_groups[0]["lr"] = lr
    for step in range(1, steps + 1):
        rates[step] = optimizer.param_groups[0]["lr"]
        plateau.step(eval_losses[step - 1])
    return rates


def test_the_rate_drops_by_factor_after_patience_evaluations_without_improvement(tmp_path):
    """patience 1, an evaluation at every step, an eval_loss that never improves on the first: the first evaluation
    sets the best, the 2nd is 1 bad evaluation (= patience), the 3rd exceeds it and cuts the rate (steps 4-5 train
    at LR * factor), the 5th cuts it again (step 6). Equal to torch's ReduceLROnPlateau fed the logged eval_loss; a
    resume from checkpoint-3 carries the plateau's counters and continues with the same rates."""
    options = dict(lr_scheduler_type="reduce_lr_on_plateau", lr_scheduler_kwargs={"patience": 1, "factor": FACTOR, "eps": 0},
                   learning_rate=LR, eval_steps=1, max_steps=6, save_steps=3, n_eval_pairs=8)
    summary, trainer = run(tmp_path / "full", **options)
    assert trainer.cfg.metric_for_best_model == "loss" and trainer.cfg.greater_is_better is False  # transformers'
    rows = _rows(tmp_path / "full")
    rates = {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}
    losses = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(losses) == 6 and len(set(losses)) == 1  # a plateau: no evaluation improves on the first
    want = {1: LR, 2: LR, 3: LR, 4: LR * FACTOR, 5: LR * FACTOR, 6: LR * FACTOR ** 2}
    assert rates == pytest.approx(want, rel=1e-12, abs=0)
    assert rates == pytest.approx(_torch_replay(losses, 6, patience=1), rel=1e-12, abs=0)
    resumed, _ = run(tmp_path / "resumed", **options, resume_from_checkpoint=str(tmp_path / "full/checkpoint-3"))
    assert resumed["resumed_from_step"] == 3
    again = {r["step"]: r["learning_rate"] for r in _rows(tmp_path / "resumed") if "learning_rate" in r}
    assert {s: again[s] for s in (4, 5, 6)} == pytest.approx({s: want[s] for s in (4, 5, 6)}, rel=1e-12, abs=0)


def test_a_training_run_follows_torch_plateau_on_its_own_eval_losses(tmp_path):
    """A rate that trains (eval_loss moves, up or down), patience 0: every evaluation that does not improve on the
    best cuts the rate at once, and only those; the run's rates equal torch's ReduceLROnPlateau fed its eval_loss."""
    _, trainer = run(tmp_path, lr_scheduler_type="reduce_lr_on_plateau", learning_rate=1e-3, eval_steps=1,
                     max_steps=6, n_eval_pairs=8, lr_scheduler_kwargs={"patience": 0, "factor": FACTOR, "eps": 0})
    rows = _rows(tmp_path)
    rates = {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}
    losses = [r["eval_loss"] for r in rows if "eval_loss" in r]
    best, want, lr = float("inf"), {}, 1e-3
    for step, loss in enumerate(losses, start=1):  # closed form of patience 0, threshold rel 1e-4, mode min
        want[step] = lr
        if loss < best * (1 - 1e-4):
            best = loss
        else:
            lr *= FACTOR
    assert rates == pytest.approx(want, rel=1e-12, abs=0)
    assert rates == pytest.approx(_torch_replay(losses, 6, patience=0, lr=1e-3), rel=1e-12, abs=0)
    assert len(set(rates.values())) >= 3  # this run both kept the rate and cut it (twice or more)


@pytest.mark.parametrize("options, said", [
    ({}, "evaluates only at its end; set eval_strategy: steps"),
    ({"eval_steps": 5, "warmup_steps": 10}, "warmup_steps=10: lr_scheduler_type: reduce_lr_on_plateau has no warmup"),
    ({"eval_steps": 5, "metric_for_best_model": "rewards/accuracies"}, "set lr_scheduler_kwargs: {mode: max}"),
    ({"eval_steps": 5, "lr_scheduler_kwargs": {"factor": 1.5}}, "factor=1.5 for lr_scheduler_type "
                                                                "'reduce_lr_on_plateau' must be a number in \\(0, 1\\)"),
    ({"eval_steps": 5, "lr_scheduler_kwargs": {"num_cycles": 1}}, "'num_cycles' is not an option of "
                                                                  "lr_scheduler_type 'reduce_lr_on_plateau'"),
])
def test_refused_where_it_would_never_step_or_step_the_wrong_way(options, said):
    with pytest.raises(ConfigError, match=said):
        TrainConfig(**BASE, lr_scheduler_type="reduce_lr_on_plateau", **options)


def test_greater_is_better_metric_with_mode_max_is_accepted():
    cfg = TrainConfig(**BASE, lr_scheduler_type="reduce_lr_on_plateau", eval_steps=5,
                      metric_for_best_model="rewards/accuracies", lr_scheduler_kwargs={"mode": "max"})
    assert cfg.greater_is_better is True


def test_no_eval_set_is_refused_when_the_run_reads_its_data():
    from preflab.data.eval_set import note_eval_steps_without_eval_set

    cfg = TrainConfig(model_name_or_path="builtin:tiny-llama", dataset_name="x.jsonl", eval_steps=2,
                      lr_scheduler_type="reduce_lr_on_plateau")
    with pytest.raises(ConfigError, match="the rate would never change"):
        note_eval_steps_without_eval_set(cfg)
