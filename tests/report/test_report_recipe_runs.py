"""`preflab report` on the folders recipes really write (docs/guarantees.md's report column): a real ICPL run
through `preflab train` (it trains no model: a handful of sandboxed reward programs), and OTC's summary as its own
writer (preflab.tool_use.otc._summary) makes it from its stages' evaluations. The headline carries the recipe's
metric, before and after (and OTC's untrained / control numbers to compare with), not a training curve's."""
import json
import re

import pytest

from preflab.report.headline import headline_rows
from preflab.report.html import write_report
from preflab.report.runs import load_run


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.slow
def test_report_of_a_real_icpl_run_heads_with_its_metric_before_and_after(tmp_path):
    """About 6 sandboxed programs (2 iterations of 3 samples)."""
    from preflab.cli import main

    out = tmp_path / "icpl"
    assert main(["train", "examples/tools/icpl.yaml", f"output_dir={out}", "recipe_params.iterations=2",
                 "recipe_params.samples=3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    run = load_run(out)
    assert run.config["task"] == "icpl"
    [row] = [r for r in headline_rows(run) if r["metric"].startswith("metric")]
    assert row["metric"] == f"metric ({summary['metric_name']})" == "metric (true_reward_of_chosen_arm)"
    assert row["before"][1] == summary["metric_before"] and row["after"][1] == summary["metric_after"]
    assert summary["metric_after"] > summary["metric_before"]         # the chosen arm's true reward rose
    text = _text(write_report([out], tmp_path / "report.html").read_text())
    assert "task icpl" in text and "preflab eval" not in text


def test_report_of_otcs_summary_heads_with_tool_productivity_and_its_control(tmp_path):
    from preflab.tool_use.otc import _summary

    def stage(tp, accuracy, calls):
        return {"tool_productivity": tp, "accuracy": accuracy, "mean_tool_calls": calls, "tool_errors": int(calls),
                "needs_tool": {"accuracy": accuracy}, "no_tool": {"accuracy": accuracy}, "examples": [tp],
                "runtime_s": 1.0}

    out = tmp_path / "otc"
    out.mkdir()
    (out / "config.yaml").write_text("task: otc\n")
    state = {"params": {}, "finished": {"sft": stage(0.25, 0.5, 2.0), "grpo": stage(0.75, 0.625, 1.0),
                                        "control": stage(0.375, 0.875, 3.0)}}
    _summary(out, state, 0, 4.0, 0.0)
    [row] = [r for r in headline_rows(load_run(out)) if r["metric"].startswith("metric")]
    assert row["metric"] == "metric (tool_productivity)"
    assert (row["before"][1], row["after"][1]) == (0.25, 0.75)
    assert ("control", 0.375) in (row["baseline"] or [])
    text = _text(write_report([out], tmp_path / "report.html").read_text())
    assert "task otc" in text and "preflab eval" not in text
