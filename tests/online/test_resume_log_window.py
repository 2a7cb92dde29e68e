"""A checkpoint saved inside a logging window carries the window's steps (preflab.step.window_to_json), so the first
metrics row after a resume averages the same steps as the uninterrupted run's row: equal to it, not only the final
weights. Before, the resumed run started a new window at the checkpoint (as transformers' Trainer does) and its
row at the next logging step averaged the steps after the resume alone."""
import json

from preflab.step import StepResult, window_from_json, window_to_json

from tests.online.test_online_run import tiny_cfg, tiny_run


def _rows(path):
    return {r["step"]: r for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def test_resumed_run_logs_the_uninterrupted_runs_rows(tmp_path, stop_at_step):
    over = dict(logging_steps=2, save_steps=3, max_steps=6)
    full = tiny_run(tiny_cfg(tmp_path / "full", **over))
    full.train()
    cut = tiny_run(tiny_cfg(tmp_path / "cut", **over))
    with stop_at_step(cut, 4):  # killed while its step 5 is asked for: checkpoint-3 and the row of step 4 exist
        cut.train()
    saved = json.loads((tmp_path / "cut" / "checkpoint-3" / "trainer_state.json").read_text())
    assert len(saved["log_window"]) == 1  # step 3, the first of the window 3-4
    resumed = tiny_run(tiny_cfg(tmp_path / "cut", resume_from_checkpoint=True, **over))
    assert resumed.train()["resumed_from_step"] == 3
    a, b = _rows(tmp_path / "full"), _rows(tmp_path / "cut")
    assert sorted(a) == sorted(b) == [2, 4, 6]
    for step in (4, 6):
        keys = {k for k in a[step] if not k.endswith("_per_second")}
        assert keys == {k for k in b[step] if not k.endswith("_per_second")}
        assert {k: b[step][k] for k in keys} == {k: a[step][k] for k in keys}, step
    # the window 3-4 holds two steps with different losses: a row of step 4 alone would not equal it
    assert saved["log_window"][0]["loss"] != a[4]["loss"]


def test_window_round_trips_through_json():
    step = StepResult(loss=0.5, metrics={"kl": float("nan"), "rewards/margins": 0.25}, grad_norm=1.5, skipped=False,
                      num_examples=3, overflow=True, metric_counts={"kl": 2.0},
                      metric_differences={"rewards/margins": ("rewards/chosen", "rewards/rejected")})
    back = window_from_json(json.loads(json.dumps(window_to_json([step]))))
    assert len(back) == 1
    got = back[0]
    assert (got.loss, got.grad_norm, got.skipped, got.num_examples, got.overflow) == (0.5, 1.5, False, 3, True)
    assert got.metric_counts == {"kl": 2.0} and got.metrics["rewards/margins"] == 0.25
    assert got.metrics["kl"] != got.metrics["kl"]  # NaN survives
    assert got.metric_differences == {"rewards/margins": ("rewards/chosen", "rewards/rejected")}
    assert window_from_json(None) == []
