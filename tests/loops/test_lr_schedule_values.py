"""The learning-rate schedule and AdamW's options (preflab.loops.optimizer), as exact values: warmup (step + 1) /
warmup over the first `warmup` steps, then linear or cosine decay over the steps after warmup; AdamW built with the
config's betas, epsilon and weight decay; follow_schedule (run after a resume) sets the rate of the schedule's
step."""
import math
from types import SimpleNamespace

import pytest
import torch

from preflab.loops.optimizer import follow_schedule, make_optimizer, make_scheduler


def _factors(kind: str, total: int, warmup: int) -> list[float]:
    scheduler = make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), kind, total, warmup)
    return [scheduler.lr_lambdas[0](s) for s in range(total)]


def test_linear_and_cosine_schedules_with_warmup_are_the_documented_factors():
    # 6 steps, 2 of warmup: (s + 1) / 2 for s = 0, 1; then progress p = (s - 2) / 4 over the 4 steps after warmup
    assert _factors("linear", 6, 2) == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25], abs=1e-12)
    cosine = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * p / 4)) for p in range(4)]
    assert _factors("cosine", 6, 2) == pytest.approx(cosine, abs=1e-12)
    assert _factors("cosine", 6, 2)[-1] == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 4)), abs=1e-12)
    assert _factors("constant", 6, 2) == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0], abs=1e-12)
    assert _factors("linear", 4, 0) == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=1e-12)


def test_make_optimizer_passes_betas_epsilon_and_weight_decay():
    cfg = SimpleNamespace(learning_rate=0.02, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, weight_decay=0.1,
                          warmup_steps=3, warmup_ratio=0.0, lr_scheduler_type="linear")
    optimizer, scheduler = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))], 10)
    group = optimizer.param_groups[0]
    assert (tuple(group["betas"]), group["eps"], group["weight_decay"]) == ((0.8, 0.95), 1e-6, 0.1)
    assert group["lr"] == pytest.approx(0.02 / 3)  # the first warmup step's rate


def test_follow_schedule_sets_the_rate_of_the_schedulers_step():
    """After a resume the optimizer state may hold another schedule's rate: follow_schedule sets base_lr x
    factor(last_epoch), the rate the scheduler's own step() sets, and says (old, new)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = make_scheduler(optimizer, "linear", 6, 2)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    stepped = optimizer.param_groups[0]["lr"]
    assert stepped == pytest.approx(2.0 * 0.75)
    assert follow_schedule(scheduler) is None  # already the schedule's rate
    optimizer.param_groups[0]["lr"] = 0.123
    assert follow_schedule(scheduler) == (0.123, stepped)
    assert optimizer.param_groups[0]["lr"] == stepped and scheduler.get_last_lr() == [stepped]
