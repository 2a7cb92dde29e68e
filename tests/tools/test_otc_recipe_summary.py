"""The OTC recipe's decisions a result depends on (preflab.tool_use.otc): c = max_tool_calls when otc_c is unset (the
paper's §4.1), and summary.json's before / after / control numbers taken from the stage they name."""
import json

import pytest

from test_otc_recipe import TINY


def test_c_defaults_to_the_max_number_of_tool_calls(tmp_path, monkeypatch):
    from preflab.tool_use.otc import run_otc
    from preflab.verifiers import otc as verifiers_otc

    params = {**TINY, "sft_steps": 2, "max_tool_calls": 3}
    run_otc(str(tmp_path), quiet=True, stop_after_stage="sft", **params)
    built = []

    class Stop(Exception):
        pass

    def record(**kwargs):
        built.append(kwargs)
        raise Stop

    monkeypatch.setattr(verifiers_otc, "OTCReward", record)
    with pytest.raises(Stop):
        run_otc(str(tmp_path), quiet=True, resume=True, **params)
    assert built[0]["c"] == 3.0 and built[0]["mode"] == "grpo"


def test_the_summary_takes_each_number_from_its_stage(tmp_path):
    from preflab.tool_use.otc import _summary

    def stage(tp, accuracy, calls):
        return {"tool_productivity": tp, "accuracy": accuracy, "mean_tool_calls": calls, "tool_errors": int(calls),
                "needs_tool": {"accuracy": accuracy}, "no_tool": {"accuracy": accuracy}, "examples": [tp],
                "runtime_s": 1.0}

    state = {"params": {}, "finished": {"sft": stage(0.25, 0.5, 2.0), "grpo": stage(0.75, 0.625, 1.0),
                                        "control": stage(0.375, 0.875, 3.0)}}
    summary = _summary(tmp_path, state, 0, 4.0, 0.0)
    assert (summary["metric_before"], summary["metric_after"]) == (0.25, 0.75)
    assert (summary["accuracy_before"], summary["accuracy_after"]) == (0.5, 0.625)
    assert (summary["mean_tool_calls_before"], summary["mean_tool_calls_after"]) == (2.0, 1.0)
    assert (summary["control_tool_productivity_after"], summary["control_accuracy_after"],
            summary["control_mean_tool_calls_after"]) == (0.375, 0.875, 3.0)
    assert summary["by_kind_control_after"]["needs_tool"] == {"accuracy": 0.875} and summary["otc_c"] == 4.0
    assert json.loads((tmp_path / "summary.json").read_text())["metric_after"] == 0.75
