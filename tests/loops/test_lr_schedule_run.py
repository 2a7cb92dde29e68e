"""A run with one of transformers' schedules and its lr_scheduler_kwargs (TRL's lr_scheduler_kwargs) logs, at every
optimizer step, the rate transformers' get_scheduler gives that step: with gradient accumulation (the schedule
counts optimizer steps, not micro-batches), warmup_ratio (ceil(ratio x steps) warmup steps), and across a resume
(the resumed run's rates are the uninterrupted run's)."""
import json
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402

STEPS, LR = 6, 1e-3


def _logged_rates(out: Path) -> dict[int, float]:
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}


def _transformers_rates(kind: str, kwargs: dict, warmup: int) -> dict[int, float]:
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=STEPS,
                                  scheduler_specific_kwargs=dict(kwargs))
    rates = {}
    for step in range(1, STEPS + 1):
        rates[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("kind, kwargs", [
    ("warmup_stable_decay", {"num_decay_steps": 3, "min_lr_ratio": 0.1, "decay_type": "linear"}),
    ("cosine_with_min_lr", {"min_lr_rate": 0.2}),
    ("linear", {}), ("cosine", {}), ("constant_with_warmup", {}),
])
def test_run_rates_equal_transformers_with_accumulation_warmup_ratio_and_resume(tmp_path, kind, kwargs):
    options = dict(lr_scheduler_type=kind, lr_scheduler_kwargs=kwargs, gradient_accumulation_steps=2,
                   per_device_train_batch_size=2, warmup_ratio=0.3, learning_rate=LR, max_steps=STEPS, save_steps=3)
    full, _ = run(tmp_path / "full", **options)
    want = _transformers_rates(kind, kwargs, warmup=math.ceil(0.3 * STEPS))  # 2 warmup steps, as transformers
    assert _logged_rates(tmp_path / "full") == pytest.approx(want, rel=1e-12, abs=0)
    assert want[1] < want[2] < want[3] == LR  # warmup 2 steps (transformers': the first at 0)
    if kind == "constant_with_warmup":
        assert want[1] == 0.0 and {want[s] for s in (3, 4, 5, 6)} == {LR}
    else:
        assert want[6] < LR and len(set(want.values())) >= 4  # then the decay
    resumed, _ = run(tmp_path / "resumed", **options, resume_from_checkpoint=str(tmp_path / "full/checkpoint-3"))
    assert resumed["resumed_from_step"] == 3
    got = _logged_rates(tmp_path / "resumed")
    assert {s: got[s] for s in (4, 5, 6)} == pytest.approx({s: want[s] for s in (4, 5, 6)}, rel=1e-12, abs=0)
    assert resumed["final_metrics"]["loss"] == full["final_metrics"]["loss"]  # the same updates after the resume


def test_constant_with_a_warmup_is_refused_and_constant_with_warmup_warms_up(tmp_path):
    """transformers' get_scheduler("constant") reads no warmup (get_constant_schedule) and says nothing, so a config
    asking for both would never warm up: refused, naming constant_with_warmup; without the warmup constant runs at
    learning_rate from the first step."""
    from preflab.errors import ConfigError

    for warmup in ({"warmup_steps": 3}, {"warmup_ratio": 0.5}):
        with pytest.raises(ConfigError, match=r"with lr_scheduler_type: constant: that schedule has no warmup .*"
                                              r"set lr_scheduler_type: constant_with_warmup to warm up, or remove"):
            run(tmp_path / "refused", lr_scheduler_type="constant", learning_rate=LR, max_steps=4, **warmup)
    run(tmp_path / "plain", lr_scheduler_type="constant", learning_rate=LR, max_steps=4)
    assert _logged_rates(tmp_path / "plain") == {s: LR for s in range(1, 5)}
