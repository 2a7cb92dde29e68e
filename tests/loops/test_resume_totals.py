"""A resumed run continues the run's totals: num_tokens (TRL's cumulative count) and summary.json's non-finite
steps. Before, both restarted at the resumed step (num_tokens counted from 0 again, earlier bad steps vanished)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402


def _rows(out):
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in r or r.get("nonfinite")}


def test_a_resumed_run_continues_num_tokens_and_the_nonfinite_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_RUN_POISON", "0:1")  # step 1's loss is NaN: skipped and listed
    full, _ = run(tmp_path / "full", save_steps=2)
    monkeypatch.delenv("TINY_RUN_POISON")
    resumed, _ = run(tmp_path / "resumed", save_steps=2, resume_from_checkpoint=str(tmp_path / "full/checkpoint-4"))
    assert resumed["resumed_from_step"] == 4
    want, got = _rows(tmp_path / "full"), _rows(tmp_path / "resumed")
    assert [got[s]["num_tokens"] for s in (5, 6)] == [want[s]["num_tokens"] for s in (5, 6)]
    assert want[6]["num_tokens"] > want[5]["num_tokens"] > want[4]["num_tokens"] > 0
    assert resumed["final_metrics"]["num_tokens"] == full["final_metrics"]["num_tokens"]
    assert [s["step"] for s in full["nonfinite_steps"]] == [1]
    assert resumed["nonfinite_steps"] == full["nonfinite_steps"]
