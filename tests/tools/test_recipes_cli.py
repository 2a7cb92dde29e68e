"""`preflab train` runs the whole-program recipes (task: icpl | raft_ladder | themis) and checks their options."""
import json

import pytest

from preflab.cli import main
from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.recipes import RECIPES, check_recipe_params


@pytest.mark.slow
def test_icpl_recipe_runs_from_the_shipped_config_and_resumes(tmp_path, capsys):
    out = tmp_path / "icpl"
    args = ["train", "examples/tools/icpl.yaml", f"output_dir={out}", "recipe_params={iterations: 2, samples: 3}"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric_name"] == "true_reward_of_chosen_arm" and summary["trainer_calls"] == 6
    assert summary["metric_after"] == max(c["metric"] for h in summary["history"] for c in h["candidates"]
                                          if c["status"] == "ok")
    assert main(args) == 2 and "resume_from_checkpoint" in capsys.readouterr().err  # state exists: refuse
    more = ["train", "examples/tools/icpl.yaml", f"output_dir={out}", "resume_from_checkpoint=true",
            "recipe_params={iterations: 3, samples: 3}"]
    assert main(more) == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["trainer_calls"] == 9 and resumed["history"][:2] == summary["history"]


@pytest.mark.parametrize("task", sorted(RECIPES))
def test_recipe_tasks_need_no_model_and_refuse_unknown_params(task):
    cfg = config_from_dict({"task": task, "recipe_params": {}})
    assert cfg.model_name_or_path == "" and cfg.dataset_name == ""
    with pytest.raises(ConfigError, match="not options of task"):
        check_recipe_params(task, {"no_such_option": 1})


def test_resume_of_a_recipe_without_resume_is_refused_not_silently_ignored(monkeypatch, tmp_path):
    import preflab.recipes as recipes

    calls = []

    def no_resume_recipe(output_dir, seed=0, quiet=False):
        calls.append(output_dir)
        return {}

    monkeypatch.setattr(recipes, "recipe_function", lambda task: no_resume_recipe)
    cfg = config_from_dict({"task": "themis", "recipe_params": {}, "output_dir": str(tmp_path),
                            "resume_from_checkpoint": True})
    with pytest.raises(ConfigError, match="cannot resume"):
        recipes.run_recipe(cfg)
    assert calls == []  # refused before anything ran
    cfg = config_from_dict({"task": "themis", "recipe_params": {}, "output_dir": str(tmp_path)})
    assert recipes.run_recipe(cfg) == {} and calls == [str(tmp_path)]  # without resume it runs


def test_an_icpl_code_model_that_does_not_exist_is_named_before_anything_runs(tmp_path, capsys):
    out, missing = tmp_path / "icpl", tmp_path / "no_such_model"
    args = ["train", "examples/tools/icpl.yaml", f"output_dir={out}", f"recipe_params.code_model={missing}"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"recipe_params.code_model={str(missing)!r}: no such local directory (tried {missing}); it is written as a "
        "path, so it was not looked up on the hub.")
    assert not out.exists()                        # no state: the corrected rerun needs no resume


def test_a_recipe_prints_its_control_beside_before_and_after(monkeypatch, tmp_path, capsys):
    import preflab.recipes as recipes

    summary = {"recipe": "dstc", "metric_name": "heldout_pass_rate", "metric_before": 0.5, "metric_after": 0.75,
               "metric_untrained": 0.0, "control_heldout_pass_rate": 0.765625, "control_sft_steps": 16,
               "control_baseline": "more SFT", "sandbox_runs": 1052, "control": True, "history": [1, 2]}

    def fake_dstc(output_dir, seed=0, quiet=False, resume=False, stage_options=None):
        return summary

    monkeypatch.setattr(recipes, "recipe_function", lambda task: fake_dstc)
    assert main(["train", "examples/tools/dstc.yaml", f"output_dir={tmp_path}", "recipe_params={}"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.rindex("\n{") + 1:] if "\n{" in out else out) == {
        "output_dir": str(tmp_path), "metric_name": "heldout_pass_rate", "metric_before": 0.5, "metric_after": 0.75,
        "metric_untrained": 0.0, "control_heldout_pass_rate": 0.765625, "control_sft_steps": 16}


def test_a_recipe_prints_its_own_numbers_beside_each_control_after():
    """OTC printed control_accuracy_after and control_mean_tool_calls_after but not its own accuracy and tool calls
    (summary.json's accuracy_* and mean_tool_calls_*): each control_<x>_after now comes with <x>_before / <x>_after,
    in the order metric, own numbers, controls; one the recipe lacks is left out."""
    from preflab.loops.cli import recipe_headline

    summary = {"recipe": "otc", "metric_name": "tool_productivity", "metric_before": 0.35, "metric_after": 1.36,
               "accuracy_before": 0.969, "accuracy_after": 1.0, "mean_tool_calls_before": 2.73,
               "mean_tool_calls_after": 0.73, "tool_errors_after": 0, "control_tool_productivity_after": 0.39,
               "control_accuracy_after": 1.0, "control_mean_tool_calls_after": 2.55, "control_runs_after": 3}
    head = recipe_headline("out", summary)
    assert list(head.items()) == [
        ("output_dir", "out"), ("metric_name", "tool_productivity"), ("metric_before", 0.35), ("metric_after", 1.36),
        ("accuracy_before", 0.969), ("accuracy_after", 1.0), ("mean_tool_calls_before", 2.73),
        ("mean_tool_calls_after", 0.73), ("control_tool_productivity_after", 0.39), ("control_accuracy_after", 1.0),
        ("control_mean_tool_calls_after", 2.55), ("control_runs_after", 3)]
