"""The report's eval table lists a DPA attribute model's per-direction rows (reward_model/direction/<label>/accuracy)
by angle and by weights as numbers: as strings, 10deg came before 2deg and -150deg after -30deg."""
import json
import re

from preflab.report.html import _eval_section, metric_sort_key
from preflab.report.runs import load_run

LABELS = ["10deg", "2deg", "[0.5,0.5]", "-30deg", "150deg", "[0.25,0.75]", "-150deg", "45deg", "0deg"]
NUMERIC = ["-150deg", "-30deg", "0deg", "2deg", "10deg", "45deg", "150deg", "[0.25,0.75]", "[0.5,0.5]"]


def _name(label: str) -> str:
    return f"reward_model/direction/{label}/accuracy"


def _run(root, name, labels):
    run = root / name
    run.mkdir()
    (run / "config.yaml").write_text("task: reward\nreward_head: multi_objective\n")
    metrics = {"reward_model/mse": 0.5, **{_name(label): i / 10 for i, label in enumerate(labels)}}
    (run / "eval.json").write_text(json.dumps({"task": "reward", "num_pairs": 9, "metrics": metrics}))
    return load_run(run)


def test_direction_rows_go_by_angle_then_weights_across_runs(tmp_path):
    assert sorted(LABELS) != NUMERIC  # string order differs: -150deg after -30deg, 10deg and 150deg before 2deg
    # two runs with different directions: the table's rows are their union, each direction once, in numeric order
    section = _eval_section([_run(tmp_path, "a", LABELS[:5]), _run(tmp_path, "b", LABELS[4:])])
    rows = re.findall(r"<td>reward_model/direction/([^<]*)/accuracy</td>", section)
    assert rows == NUMERIC
    # each row holds its own run's value: 150deg is run a's 5th (0.4) and run b's 1st (0.0)
    cells = section.split(f"<td>{_name('150deg')}</td>")[1].split("</tr>")[0]
    assert cells.startswith('<td class="num">0.4</td><td class="num">0</td>')


def test_the_sort_key_compares_numbers_as_numbers_and_text_as_text():
    keys = ["loss", "a/10", "a/2", "a/-1.5", "a/1e-3", "a/", "a/x", "a/2b", "a/2a"]
    assert sorted(keys, key=metric_sort_key) == ["a/", "a/-1.5", "a/1e-3", "a/2", "a/2a", "a/2b", "a/10", "a/x",
                                                 "loss"]
