"""The learning-rate schedule and AdamW's options (preflab.loops.optimizer), as exact values: warmup step / warmup
over the first `warmup` steps (transformers': the first optimizer step at rate 0), then linear or cosine decay over
the steps after warmup; constant without warmup (transformers' get_scheduler ignores it); every kind equal to
transformers' scheduler at every step; AdamW built with the config's betas, epsilon and weight decay;
follow_schedule (run after a resume) sets the rate of the schedule's step."""
import math
from types import SimpleNamespace

import pytest
import torch

from preflab.loops.optimizer import follow_schedule, make_optimizer, make_scheduler


def _factors(kind: str, total: int, warmup: int) -> list[float]:
    scheduler = make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), kind, total, warmup)
    return [scheduler.lr_lambdas[0](s) for s in range(total)]


def test_linear_and_cosine_schedules_with_warmup_are_the_documented_factors():
    # 6 steps, 2 of warmup: s / 2 for s = 0, 1 (the first step at 0); then p = (s - 2) / 4 over the 4 steps after
    assert _factors("linear", 6, 2) == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25], abs=1e-12)
    cosine = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * p / 4)) for p in range(4)]
    assert _factors("cosine", 6, 2) == pytest.approx(cosine, abs=1e-12)
    assert _factors("cosine", 6, 2)[-1] == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 4)), abs=1e-12)
    assert _factors("constant_with_warmup", 6, 2) == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0, 1.0], abs=1e-12)
    assert _factors("constant", 6, 2) == [1.0] * 6  # transformers' constant: the warmup is not read
    assert _factors("linear", 4, 0) == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=1e-12)


def test_make_optimizer_passes_betas_epsilon_and_weight_decay():
    cfg = SimpleNamespace(learning_rate=0.02, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, weight_decay=0.1,
                          warmup_steps=3, warmup_ratio=0.0, lr_scheduler_type="linear")
    optimizer, scheduler = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))], 10)
    group = optimizer.param_groups[0]
    assert (tuple(group["betas"]), group["eps"], group["weight_decay"]) == ((0.8, 0.95), 1e-6, 0.1)
    assert group["lr"] == 0.0  # the first warmup step's rate (transformers': 0 / 3)
    optimizer.step()
    scheduler.step()
    assert group["lr"] == pytest.approx(0.02 / 3)  # the second's


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
    assert stepped == pytest.approx(2.0 * 0.75)  # step 3 of 6 after 2 of warmup: (6 - 3) / (6 - 2)
    assert follow_schedule(scheduler) is None  # already the schedule's rate
    optimizer.param_groups[0]["lr"] = 0.123
    assert follow_schedule(scheduler) == (0.123, stepped)
    assert optimizer.param_groups[0]["lr"] == stepped and scheduler.get_last_lr() == [stepped]


# transformers' get_scheduler schedules with lr_scheduler_kwargs (TRL's lr_scheduler_kwargs): the rate of every step
# equals transformers' (the same LambdaLR factors), warmup included and past the last step
TRANSFORMERS_CASES = [
    ("linear", {}), ("cosine", {}), ("cosine", {"num_cycles": 1.5}), ("constant_with_warmup", {}),
    ("cosine_with_restarts", {"num_cycles": 3}), ("cosine_with_restarts", {}),
    ("polynomial", {"lr_end": 1e-4, "power": 2.0}), ("polynomial", {}),
    ("inverse_sqrt", {}), ("inverse_sqrt", {"timescale": 7}),
    ("cosine_with_min_lr", {"min_lr": 1e-4}), ("cosine_with_min_lr", {"min_lr_rate": 0.1, "num_cycles": 0.75}),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine_warmup_with_min_lr", {"min_lr": 2e-4, "warmup_lr_rate": 0.2}),
    ("warmup_stable_decay", {"num_decay_steps": 5}),
    ("warmup_stable_decay", {"num_decay_steps": 4, "num_stable_steps": 6, "min_lr_ratio": 0.1, "decay_type": "1-sqrt",
                             "warmup_type": "cosine"}),
    ("warmup_stable_decay", {"num_decay_steps": 4, "decay_type": "linear", "warmup_type": "1-sqrt",
                             "min_lr_ratio": 0.05}),
]


def _rates(build, steps: int = 20, lr: float = 1e-3) -> list[float]:
    """The rate each optimizer step uses, stepping the scheduler after it (as transformers' Trainer)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler, rates = build(optimizer), []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("kind, kwargs", TRANSFORMERS_CASES)
def test_transformers_schedules_give_transformers_rate_at_every_step(kind, kwargs, warmup):
    import warnings

    from transformers import get_scheduler

    ours = _rates(lambda opt: make_scheduler(opt, kind, 16, warmup, dict(kwargs)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_stable_steps beside num_training_steps: transformers warns
        theirs = _rates(lambda opt: get_scheduler(kind, opt, num_warmup_steps=warmup, num_training_steps=16,
                                                  scheduler_specific_kwargs=dict(kwargs)))
    assert ours == theirs  # bitwise: the same formula in the same order
    if kind == "constant_with_warmup":  # constant after its warmup: the warmup is the part that moves
        assert ours == pytest.approx([1e-3 * s / max(1, warmup) for s in range(warmup)] + [1e-3] * (20 - warmup))
    else:
        assert len(set(ours)) > 3  # the schedule moves (a constant would not test the formula)


@pytest.mark.parametrize("warmup", [0, 3])
def test_constant_ignores_the_warmup_as_transformers(warmup):
    """get_scheduler("constant", num_warmup_steps=3) is get_constant_schedule: the warmup is not read; preflab's
    constant is the same (a config with both is refused: lr_schedule_options.constant_warmup_conflicts)."""
    from transformers import get_scheduler

    ours = _rates(lambda opt: make_scheduler(opt, "constant", 16, warmup))
    assert ours == _rates(lambda opt: get_scheduler("constant", opt, num_warmup_steps=warmup, num_training_steps=16))
    assert ours == [1e-3] * 20


@pytest.mark.parametrize("num_cycles", [0.5, 1.5])
def test_cosine_num_cycles_after_warmup_is_transformers_cosine(num_cycles):
    """cosine's num_cycles: without warmup every step is transformers'; num_cycles 0.5 is the former cosine."""
    from transformers import get_scheduler

    ours = _rates(lambda opt: make_scheduler(opt, "cosine", 16, 0, {"num_cycles": num_cycles}), steps=16)
    theirs = _rates(lambda opt: get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=16,
                                              scheduler_specific_kwargs={"num_cycles": num_cycles}), steps=16)
    assert ours == theirs
    if num_cycles == 0.5:
        assert ours == _rates(lambda opt: make_scheduler(opt, "cosine", 16, 0), steps=16)


def test_polynomial_closed_form():
    # lr0 1, lr_end 0.1, power 2, warmup 2 of 6: step s >= 2 -> (0.9 (1 - (s - 2) / 4)^2 + 0.1)
    rates = _rates(lambda opt: make_scheduler(opt, "polynomial", 6, 2, {"lr_end": 0.1, "power": 2.0}), 7, lr=1.0)
    assert rates == pytest.approx([0.0, 0.5, 1.0, 0.9 * 0.75 ** 2 + 0.1, 0.9 * 0.25 + 0.1, 0.9 * 0.0625 + 0.1, 0.1])


def test_lr_scheduler_kwargs_bounds_are_where_the_schedules_break():
    """schedule_kwargs_errors' ranges at their edges: inverse_sqrt's timescale divides (0 refused, 1 taken);
    polynomial decays from learning_rate to lr_end, so lr_end equal to it is refused (transformers raises: lr_end
    must be smaller than initial lr) and one just below is taken; warmup_stable_decay's min_lr_ratio 1 (a constant rate
    after warmup, transformers' factors) is taken and 1.5 refused; cosine_with_min_lr with both floors is refused."""
    from transformers import get_scheduler

    from preflab.lr_schedule_options import schedule_kwargs_errors

    assert schedule_kwargs_errors("inverse_sqrt", {"timescale": 1}, 1e-3) == []
    assert schedule_kwargs_errors("inverse_sqrt", {"timescale": 0}, 1e-3) == [
        "lr_scheduler_kwargs timescale=0 for lr_scheduler_type 'inverse_sqrt' must be a whole number >= 1."]
    assert schedule_kwargs_errors("polynomial", {"lr_end": 0.999e-3}, 1e-3) == []
    assert schedule_kwargs_errors("polynomial", {"lr_end": 1e-3}, 1e-3) == [
        "lr_scheduler_kwargs lr_end=0.001 must be below learning_rate=0.001 (polynomial decays from learning_rate to "
        "lr_end)."]
    with pytest.raises(ValueError, match=r"lr_end \(0.001\) must be smaller than initial lr"):
        get_scheduler("polynomial", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3),
                      num_warmup_steps=0, num_training_steps=4, scheduler_specific_kwargs={"lr_end": 1e-3})
    flat = {"num_decay_steps": 4, "min_lr_ratio": 1.0}
    assert schedule_kwargs_errors("warmup_stable_decay", flat, 1e-3) == []
    assert _rates(lambda opt: make_scheduler(opt, "warmup_stable_decay", 10, 2, dict(flat)), 12) == pytest.approx(
        [1e-3] * 12)
    assert schedule_kwargs_errors("warmup_stable_decay", {**flat, "min_lr_ratio": 1.5}, 1e-3) == [
        "lr_scheduler_kwargs min_lr_ratio=1.5 for lr_scheduler_type 'warmup_stable_decay' must be at most 1."]
    assert schedule_kwargs_errors("cosine_with_min_lr", {"min_lr": 1e-5, "min_lr_rate": 0.1}, 1e-3) == [
        "lr_scheduler_type 'cosine_with_min_lr' needs exactly one of min_lr (the final rate) or min_lr_rate (the "
        "final rate / learning_rate) in lr_scheduler_kwargs, not both."]
