"""`preflab report` on the folders recipes really write (docs/guarantees.md's report column): a real ICPL run
through `preflab train` (it trains no model: a handful of sandboxed reward programs), and OTC's summary as its own
writer (preflab.tool_use.otc._summary) makes it from its stages' evaluations. The headline carries the recipe's
metric, before and after (and OTC's untrained / control numbers to compare with), not a training curve's."""
import json
import re
from pathlib import Path

import pytest
import yaml

from preflab.launch_paths import PATH_OPTIONS
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


# tiny recipe_params (as tests/reward_models/test_fspo_recipe.py, tests/online/test_pro_orchestrator_recipe.py,
# tests/tools/test_itool_recipe.py, test_recipe_resume.py, test_dstc_recipe.py and test_otc_recipe.py run them)
RECIPE_RUNS = {
    "otc": ("examples/tools/otc.yaml", "{n_train: 120, n_heldout: 6, hidden_size: 32, sft_steps: 12, sft_batch_size: 8, "
                                       "grpo_steps: 3, prompts_per_generation: 2, num_generations: 3, "
                                       "max_completion_length: 40}"),
    "raft_ladder": ("examples/tools/raft_ladder.yaml", "{n_train: 24, n_test: 3, sft_steps: 3, dpo_steps: 2}"),
    "themis": ("examples/tools/themis.yaml", "{steps: 3, n_train: 16, n_test: 2}"),
    "dstc": ("examples/tools/dstc.yaml",
             "{n_sft_tasks: 12, n_dstc_tasks: 3, n_test: 4, sft_per_task: 1, sft_steps: 20, n_codes: 3, n_tests: 2, "
             "iterations: 2, dpo_steps: 2, batch_size: 4, hidden_size: 32, timeout_s: 1.0, control: true}"),
    "fspo": ("examples/fspo.yaml", "{users_per_group: 3, rows_per_user: 4, heldout_fraction: 0.34, hidden_size: 32, "
                                   "num_layers: 1, steps: 3, batch_size: 4, instruction: Answer.}"),
    "pro_orchestrator": ("examples/pro_orchestrator.yaml",
                         "{n_train: 24, n_heldout: 4, hidden_size: 32, sft_steps: 4, adapter_steps: 50, grpo_steps: 2, "
                         "prompts_per_generation: 2, num_generations: 3, max_completion_length: 8}"),
    "itool": ("examples/tools/itool.yaml",
              "{n_train: 40, n_test: 6, pool_size: 14, sft_steps: 3, iterations: 2, mcts_iters: 2, num_actions: 2, "
              "hidden_size: 32, max_new_tokens: 24, accept_value: -10.0}"),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(RECIPE_RUNS))
def test_report_of_a_real_recipe_run_heads_with_its_metric_and_lists_its_stages(tmp_path, task):
    """A real run of the recipe through `preflab train` (tiny recipe_params): the report's headline row is the
    summary's metric, before and after as the recipe wrote them, with the control it ran where it has one; the report
    reads the recipe's folder as a recipe's (its result in the headline, its stages' logs named) and asks for no
    `preflab eval`."""
    from preflab.cli import main

    config, params = RECIPE_RUNS[task]
    out = tmp_path / task
    assert main(["train", config, f"output_dir={out}", f"recipe_params={params}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    run = load_run(out)
    assert run.config["task"] == task
    # the recipe's config.yaml holds no option the recipe does not read (recipe-move); each training stage records
    # the recipe's run folder, and its path options inside that folder relative to it (a moved run resumes)
    assert not {"learning_rate", "dataset_name", "model_name_or_path"} & set(run.config), sorted(run.config)
    stages, recorded = [f.parent for f in out.rglob("launch.json") if f.parent != out], []
    assert stages or task == "icpl"
    for stage in stages:
        launch = json.loads((stage / "launch.json").read_text())
        saved = yaml.safe_load((stage / "config.yaml").read_text())
        inside = {k: str(Path(saved[k]).relative_to(out)) for k in PATH_OPTIONS
                  if isinstance(saved.get(k), str) and saved[k].startswith(f"{out}/")}
        assert launch["run_dir"] == str(out) and {k: e["path"] for k, e in launch["run_paths"].items()} == inside
        recorded += inside.values()
    assert recorded or task in ("icpl", "themis")  # themis trains on rows in memory; the others on their data files
    if summary["metric_before"] is None or summary["metric_after"] is None:   # OTC: no held-out tool call
        assert not [r for r in headline_rows(run) if r["metric"].startswith("metric")]
        assert any(f"({summary['metric_name']}), not numbers, so the headline has no row" in m for m in run.missing)
        return
    [row] = [r for r in headline_rows(run) if r["metric"].startswith("metric")]
    assert row["metric"] == f"metric ({summary['metric_name']})"
    assert row["before"][1] == summary["metric_before"] and row["after"][1] == summary["metric_after"]
    control = summary.get("control_after", summary.get(f"control_{summary['metric_name']}_after"))
    if isinstance(control, (int, float)):
        assert ("control", control) in row["baseline"]
    assert any(m.startswith(f"a recipe run (task: {task}): its result is summary.json's metric_before")
               for m in run.missing), run.missing
    text = _text(write_report([out], tmp_path / "report.html").read_text())
    assert f"task {task}" in text and "run `preflab eval" not in text
