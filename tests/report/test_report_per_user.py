"""`preflab report` on a ppd run's eval.json: its per_user breakdown is a table, one row per user, the values as
eval.json holds them (escaped user ids)."""
import json
import re
import sys
from pathlib import Path

from preflab.report.html import write_report

sys.path.insert(0, str(Path(__file__).parent))
from report_runs import make_run  # noqa: E402


def test_report_shows_a_ppd_evals_per_user_table(tmp_path):
    run = make_run(tmp_path / "run")
    per_user = {"<b>": {"pairs": 3, "loss": 0.25, "implicit_accuracy": 1.0, "preference_accuracy/personalized": 0.75,
                        "preference_accuracy/base": 0.5, "preference_accuracy/gain": 0.25, "win_rate": 0.625,
                        "win_rate/n": 4, "seen_in_training": False},
                "alice": {"pairs": 1, "loss": 0.5, "implicit_accuracy": 0.0, "preference_accuracy/personalized": 0.0,
                          "preference_accuracy/base": 1.0, "preference_accuracy/gain": -1.0,
                          "seen_in_training": True}}
    (run / "eval.json").write_text(json.dumps({"task": "diffusion", "num_pairs": 4, "metrics": {"loss": 0.3125},
                                               "per_user": per_user}))
    html = write_report([run], tmp_path / "r.html").read_text()
    assert "<th>preference accuracy, personalized</th><th>preference accuracy, base</th><th>gain</th>" in html
    cells = lambda row: re.findall(r"<td[^>]*>([^<]*)</td>", row)  # noqa: E731
    rows = {cells(r)[0]: cells(r)[1:] for r in re.findall(r"<tr>(<td>(?:&lt;b&gt;|alice)</td>.*?)</tr>", html)}
    assert rows == {"&lt;b&gt;": ["3", "0.25", "1", "0.75", "0.5", "0.25", "0.625", "4", "False"],
                    "alice": ["1", "0.5", "0", "0", "1", "-1", "–", "–", "True"]}
    assert "<b>" not in html.replace("<b>run</b>", "")


def test_report_without_per_user_adds_no_table(tmp_path):
    run = make_run(tmp_path / "run", eval_json=True)
    assert "per user (personalized" not in write_report([run], tmp_path / "r.html").read_text()
