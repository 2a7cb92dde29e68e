"""A win rate counts a tie one half (AlpacaEval's rule; preflab.eval.winrate and the online run's win_rate), and
every place that shows the rate now shows the tie count beside it: `preflab eval`'s terminal lines (a "win_rate
verdicts" line; it printed the rate and its interval only), `preflab report`'s headline row of eval.json's win rate
(it said "eval.json, N prompts") and its eval section (it said "T ties", not that they count 1/2), and an online
run's eval_win_rate_vs_reference: summary.json win_rate_vs_reference_ties / _prompts, `preflab train`'s last line
and the report's headline meaning (none had a tie count)."""
import json
import math
import sys
from pathlib import Path

import pytest

from preflab.eval.cli import format_summary
from preflab.eval.winrate import outcome_counts, win_rate_from_outcomes
from preflab.loops.cli import before_after_line
from preflab.online.run import tied_prompts, win_rate
from preflab.report.headline import headline_rows
from preflab.report.runs import load_run

sys.path.insert(0, str(Path(__file__).parents[1] / "report"))
from report_runs import make_run  # noqa: E402  (the report tests' synthetic run folders)

OUTCOMES = [1.0, 0.5, 0.5, 0.0, 0.8]  # a judge's verdicts: one win, two ties, one loss, one probability


def test_the_counts_add_up_to_the_rate_with_ties_as_halves():
    win = win_rate_from_outcomes(OUTCOMES).to_dict()
    assert outcome_counts(win) == ("1 wins, 2 ties (each counted 1/2), 1 losses, 1 fractional verdicts (a judge's "
                                   "probabilities) of 5 prompts")
    assert win["win_rate"] == pytest.approx((win["wins"] + win["ties"] / 2 + 0.8) / win["n"])  # 2.8 / 5
    assert outcome_counts({"win_rate": 0.5, "n": 8}) == "8 prompts"  # an eval.json older than the counts


def test_preflab_evals_terminal_lines_give_the_verdicts_under_the_rate():
    win = win_rate_from_outcomes(OUTCOMES).to_dict()
    text = format_summary({"num_pairs": 5, "metrics": {"win_rate": win["win_rate"]}, "win_rate": win})
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[0] == "win_rate")
    assert lines[at].split() == ["win_rate", "0.5600"]
    assert lines[at + 1] == ("  win_rate verdicts" + " " * 21 + " 1 wins, 2 ties (each counted 1/2), 1 losses, 1 "
                             "fractional verdicts (a judge's probabilities) of 5 prompts")
    assert "verdicts" not in format_summary({"num_pairs": 5, "metrics": {}})  # no win rate asked for: no line


def test_the_reports_headline_row_of_eval_json_gives_the_tie_count(tmp_path):
    run = make_run(tmp_path / "run", eval_json=True)  # eval.json: 2 wins, 1 tie, 1 loss of 4, rate 0.625
    row = next(r for r in headline_rows(load_run(run)) if r["metric"] == "win_rate")
    assert row["after"] == ("eval.json, 2 wins, 1 ties (each counted 1/2), 1 losses of 4 prompts, interval 0.3 to "
                            "0.86", 0.625)
    assert (2 + 1 / 2) / 4 == 0.625
    assert "a tie counts 1/2" in row["meaning"]


def test_an_online_runs_ties_are_counted_beside_its_win_rate(tmp_path):
    after, before = [1.0, 2.0, math.nan, 3.0, 0.0], [1.0, 1.0, 0.0, 3.0, 1.0]  # tie, win, unscored, tie, loss
    assert tied_prompts(after, before) == (2, 4)
    assert win_rate(after, before) == pytest.approx((1 + 2 / 2) / 4)
    summary = {"eval_reward_before": 0.25, "eval_reward_after": 0.5, "win_rate_vs_reference": 0.5,
               "win_rate_vs_reference_ties": 2, "win_rate_vs_reference_prompts": 4}
    assert before_after_line(summary) == (
        "preflab: eval reward 0.250 -> 0.500 on the held-out prompts (summary.json eval_reward_before, "
        "eval_reward_after); win rate vs the starting policy 0.500 (2 of 4 prompts tied, each counted 1/2).")
    run = make_run(tmp_path / "online", config_extra={"task": "online", "trainer": "online_dpo"})
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows.append({"step": 12, "eval_win_rate_vs_reference": 0.5})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    saved = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**saved, "win_rate_vs_reference_ties": 2,
                                                  "win_rate_vs_reference_prompts": 4}))
    row = next(r for r in headline_rows(load_run(run)) if r["metric"] == "eval_win_rate_vs_reference")
    assert row["meaning"] == ("win rate vs reference (a tie counts 1/2), held-out; the final policy: 2 of 4 prompts "
                              "tied (summary.json win_rate_vs_reference_ties)")
    assert row["after"] == ("step 12", 0.5)
