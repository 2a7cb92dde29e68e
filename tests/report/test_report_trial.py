"""Report findings of the data and evaluation user trial (changes/trial-data.md): non-finite per-pair values."""
import json
import math
import sys
from pathlib import Path

from preflab.report.html import write_report
from preflab.report.plots import _per_pair, difficulty_scatter
from preflab.report.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from report_runs import make_run  # noqa: E402

PER_PAIR = {"policy_chosen": [-1.0, -2.0, float("-inf"), -4.0, -5.0, -6.0],
            "policy_rejected": [-2.0, float("nan"), -3.0, -3.0, -6.0, -5.0],
            "ref_chosen": [-1.5, -2.0, -3.0, -4.0, float("inf"), -6.0],
            "ref_rejected": [-1.5, -2.5, -3.0, -3.5, -5.5, -5.5]}


def test_report_plots_the_finite_pairs_and_says_how_many_non_finite_ones_it_left_out(tmp_path):
    """One non-finite per-pair log-prob in eval.json dropped the whole difficulty plot, and null margins in
    pair_margins.jsonl shrank the histograms, both without a word; now the finite pairs are drawn and the report
    says how many were left out."""
    path = make_run(tmp_path / "run")
    (path / "eval.json").write_text(json.dumps({"beta": 0.1, "metrics": {"ranking_accuracy": 0.5},
                                                "per_pair": PER_PAIR}))
    (path / "pair_margins.jsonl").write_text(json.dumps({"step": 4, "margins": [0.1, None, 0.3]}) + "\n"
                                             + json.dumps({"step": 12, "margins": [0.5, 0.2, None]}) + "\n")
    run = load_run(path)
    assert _per_pair(run) == [[-1.0, -4.0, -6.0], [-2.0, -3.0, -5.0], [-1.5, -4.0, -6.0], [-1.5, -3.5, -5.5]]
    assert difficulty_scatter(run) is not None
    assert run.margins == {4: [0.1, 0.3], 12: [0.5, 0.2]}
    notes = " | ".join(run.missing)
    assert "eval.json: 3 pair(s) with non-finite per-pair log-probs" in notes
    assert "non-finite per-pair margins left out of the margin histograms (1 at step 4, 1 at step 12)" in notes
    html = write_report([str(path)], str(tmp_path / "report.html")).read_text()
    assert "3 pair(s) with non-finite per-pair log-probs" in html and "margins and difficulty" in html
    assert all(math.isfinite(v) for col in _per_pair(run) for v in col)
