"""The preference game's summary.json records the starting policy's duality gap and total variation to the
regularised equilibrium (duality_gap_before, tv_to_equilibrium_before) beside the final policy's (*_after), so
`preflab report`'s headline shows before -> after. Before, the game showed only the after (its eval rows) unless
eval_on_start was set, although its metrics are exact and cost one forward pass."""
import json
from pathlib import Path

import numpy as np
import pytest

from preflab.config import load_config
from preflab.lab.games import dual_gap
from preflab.loops.cli import before_after_line
from preflab.online.game import distribution, game_setup
from preflab.online.run import OnlineRun
from preflab.report.html import _fmt, write_report

GAME = Path(__file__).parents[2] / "examples" / "online" / "nash_game.yaml"


def test_game_records_the_starting_policys_metrics_and_the_headline_shows_before_and_after(tmp_path):
    out = tmp_path / "game"
    cfg = load_config(GAME, [f"output_dir={out}", "max_steps=8", "steps_per_generation=4", "disable_tqdm=true"])
    summary = OnlineRun(cfg).train()
    # the game's own exact functions on the initial policy, built again (game_setup: the same seed, pi_ref = pi_0)
    task, _, policy = game_setup(cfg)
    pi0 = distribution(policy)
    assert summary["reference_distribution"] == pi0.tolist()
    start = task.evaluate_distribution(pi0)
    assert summary["duality_gap_before"] == start["duality_gap"] == dual_gap(pi0, task.P, cfg.beta, pi0)
    assert summary["tv_to_equilibrium_before"] == start["tv_to_equilibrium"]
    # by hand on the shipped G3 game (beta 0.1): at pi = pi_ref both KL terms of DG_beta vanish and P^T pi = 1 - P pi
    # (P + P^T = 1), so DG_beta(pi_ref) = 2 beta log sum_a pi_ref(a) exp((P pi_ref)_a / beta) - 1
    P, ref, eq = np.array(cfg.game_preferences), np.array(summary["reference_distribution"]), \
        np.array(summary["equilibrium"])
    assert summary["duality_gap_before"] == pytest.approx(2 * 0.1 * np.log(np.sum(ref * np.exp(P @ ref / 0.1))) - 1,
                                                          rel=1e-9)
    assert summary["tv_to_equilibrium_before"] == pytest.approx(0.5 * np.abs(ref - eq).sum(), abs=1e-15)
    # the equilibrium is pi*_beta: pi* proportional to pi_ref exp(P pi* / beta)
    fixed = ref * np.exp(P @ eq / 0.1)
    assert eq == pytest.approx(fixed / fixed.sum(), abs=1e-9)
    # after: the final policy's (summary.json's own duality_gap / tv_to_equilibrium and the last eval row's)
    last_eval = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                 if "eval_duality_gap" in r][-1]
    for key in ("duality_gap", "tv_to_equilibrium"):
        assert summary[f"{key}_after"] == summary[key] == last_eval[f"eval_{key}"]
        assert summary[f"{key}_after"] < summary[f"{key}_before"]  # the run moved toward pi*_beta
    # `preflab train`'s one line on stderr
    assert before_after_line(summary) == (
        f"preflab: duality gap {summary['duality_gap_before']:.4g} -> {summary['duality_gap_after']:.4g}, total "
        f"variation to the regularised equilibrium {summary['tv_to_equilibrium_before']:.4g} -> "
        f"{summary['tv_to_equilibrium_after']:.4g}, starting policy -> final policy (summary.json duality_gap_before, "
        "duality_gap_after, tv_to_equilibrium_before, tv_to_equilibrium_after).")
    html = write_report([str(out)], str(tmp_path / "r.html")).read_text()
    head = html[html.index("<h2>Headline</h2>"):html.index("</table>", html.index("<h2>Headline</h2>"))]
    for key, meaning in (("duality_gap", "duality gap (game)"),
                         ("tv_to_equilibrium", "total variation to the regularised equilibrium (game)")):
        assert (f'<td>{key}</td><td class="num">{_fmt(summary[f"{key}_before"])} <small>(before training)</small>'
                f'</td><td class="num">{_fmt(summary[f"{key}_after"])} <small>(after training)</small></td>'
                f'<td>–</td><td class="doc">{meaning}; measured by the run (summary.json)</td>') in head
        assert f"<td>eval_{key}</td>" not in head  # the eval row of the same number is not repeated
