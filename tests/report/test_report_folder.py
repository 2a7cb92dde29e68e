"""`preflab report` on a folder holding runs (the demo's output): a report of those runs with the folder's result,
never an empty report over a good one (issue 11, item 6)."""
import json
import sys
from pathlib import Path

import pytest

from preflab.cli import main
from preflab.errors import PreflabError
from preflab.report.html import write_report

sys.path.insert(0, str(Path(__file__).parent))
from report_runs import make_run  # noqa: E402

EXAMPLES = {"before": [{"prompt": "echo: sun cat", "response": "sun cat", "true_reward": 0.0}],
            "after": [{"prompt": "echo: sun cat", "response": "SUN CAT", "true_reward": 1.0}]}


def demo_like(folder: Path) -> Path:
    make_run(folder / "sft", loss_type="sft", steps=6)
    make_run(folder / "dpo", steps=8)
    (folder / "summary.json").write_text(json.dumps({
        "title": "preflab demo", "task": "loud-echo", "true_reward_before": 0.125, "true_reward_after": 0.875,
        "improvement": 0.75, "examples_before": EXAMPLES["before"], "examples_after": EXAMPLES["after"],
        "sft_dir": str(folder / "sft"), "dpo_dir": str(folder / "dpo")}))
    return folder


def test_report_of_a_folder_of_runs_shows_both_stages_and_the_result(tmp_path, capsys):
    folder = demo_like(tmp_path / "demo")
    (folder / "report.html").write_text("the demo's report")
    assert main(["report", str(folder)]) == 0
    html = (folder / "report.html").read_text()
    assert "no metrics.jsonl" not in html
    assert "<b>sft</b>" in html and "<b>dpo</b>" in html            # both stages are runs of the report
    assert "true_reward_before" in html and "0.125" in html and "0.875" in html
    assert "SUN CAT" in html and "sun cat" in html                   # generations before and after
    assert "<title>preflab demo</title>" in html


def test_a_folder_without_runs_is_an_error_and_nothing_is_overwritten(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "report.html").write_text("keep me")
    assert main(["report", str(folder)]) == 2
    assert "holds no preflab run" in capsys.readouterr().err
    assert (folder / "report.html").read_text() == "keep me"
    with pytest.raises(PreflabError, match="holds no preflab run"):
        write_report([folder], tmp_path / "r.html")


def test_run_directories_still_report_themselves(tmp_path):
    run = make_run(tmp_path / "one")
    html = write_report([run], tmp_path / "r.html").read_text()
    assert "<b>one</b>" in html and "<h2>Result</h2>" not in html


def test_a_folder_summary_about_is_a_paragraph_at_the_top_of_the_result(tmp_path):
    """docs-walk-3: the demo's report said what it measured but not what the demo is for; summary.json's `about`
    (the demo writes preflab.demo.run.ABOUT) is the Result's first paragraph, escaped, and not a table row."""
    from preflab.demo.run import ABOUT

    folder = demo_like(tmp_path / "demo")
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "about": ABOUT}))
    html = write_report([folder], folder / "report.html").read_text()
    escaped = ABOUT.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    assert f'<h2>Result</h2><p class="about">{escaped}</p>' in html
    assert "<td>about</td>" not in html
    assert "loud echo" in ABOUT and "40%" in ABOUT and "true_reward_before" in ABOUT
