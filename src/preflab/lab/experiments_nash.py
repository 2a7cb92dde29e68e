"""Lab experiments on preference games and user groups (nash-rps, maxmin)."""
from __future__ import annotations

import numpy as np

from preflab.lab.egpo import egpo, online_ipo
from preflab.lab.games import g3, nash, reg_nash
from preflab.lab.maxmin import (bt_fit, em_mixture, maxmin_policy, purity, sample_user_counts)
from preflab.lab.closed_forms import kl_optimum
from preflab.lab.nash_loops import inpo, mwu, nash_md, spo_selfplay
from preflab.lab.registration import experiment
from preflab.lab.results import ExperimentResult, Panel

PI0 = np.array([0.6, 0.3, 0.1])


@experiment("nash-rps", "Nash methods on a rock-paper-scissors-like cycle: exploitability vs iteration")
def nash_rps(quick: bool) -> ExperimentResult:
    P, ref, beta = g3(), np.full(3, 1 / 3), 0.01
    T_torch, T = (200, 2000) if quick else (1000, 20000)
    star_beta, ne = reg_nash(P, beta, ref), nash(P)
    eg = egpo(P, ref, beta, 0.02, T_torch, pi0=PI0)
    oi = online_ipo(P, ref, beta, 0.02, T_torch, pi0=PI0)
    ip = inpo(P, ref, 0.5, beta, T, pi0=PI0)
    nm = nash_md(P, ref, 0.3, beta, T, pi0=PI0)
    mw = mwu(P, 0.1, T, pi0=PI0)
    sp = spo_selfplay(P, 0.1, T, group=16, pi0=PI0, seed=0)
    regularized = Panel(f"KL-regularized game, beta = {beta}: DG_beta (0 at pi*_beta)", "iteration",
                        "exploitability (duality gap)", logx=True, logy=True, curves={
                            "EGPO, last iterate": (eg.steps, eg.gap_last),
                            "online IPO (mirror descent), last iterate": (oi.steps, oi.gap_last),
                            "INPO (eta 0.5), last iterate": (ip.steps, ip.gap_last),
                            "INPO (eta 0.5), average iterate": (ip.steps, ip.gap_average),
                            "Nash-MD (eta 0.3), last iterate": (nm.steps, nm.gap_last)})
    plain = Panel("plain game: DG_0 (0 at the Minimax Winner (1/2, 1/3, 1/6))", "iteration",
                  "exploitability (duality gap)", logx=True, logy=True, curves={
                      "SPO / MWU (eta 0.1), last iterate": (mw.steps, mw.gap_last),
                      "SPO / MWU (eta 0.1), average iterate": (mw.steps, mw.gap_average),
                      "sampled SPO (16 self-play samples), average": (sp.steps, sp.gap_average)})
    return ExperimentResult(
        "", "Self-play and Nash methods on an intransitive preference cycle (G3: 0 > 1 > 2 > 0)",
        "no-regret self-play (SPO/MWU) converges on average but its last iterate cycles; on the KL-regularized "
        "game, extragradient (EGPO) and INPO converge in the last iterate while plain online IPO cycles; "
        "Nash-MD's last iterate stays within O(eta beta) of pi*_beta.",
        [regularized, plain],
        {"reg_nash": star_beta, "nash": ne, "egpo_last": eg.last, "egpo_gap": eg.gap_last[-1],
         "online_ipo_last": oi.last, "online_ipo_gap": oi.gap_last[-1], "inpo_last": ip.last,
         "nash_md_last": nm.last, "mwu_average": mw.average, "mwu_last": mw.last, "spo_sampled_average": sp.average})


@experiment("maxmin", "MaxMin-RLHF: EM separates planted user groups; the max-min policy lifts the minority")
def maxmin(quick: bool) -> ExperimentResult:
    R = np.array([np.arange(6.0), np.arange(6.0)[::-1]])  # majority (16 users), minority (4 users, reversed)
    seeds = range(2 if quick else 5)
    purities, fits = {}, {}
    for seed in seeds:
        counts, truth = sample_user_counts(R, [16, 4], 30, seed=seed)
        fit = em_mixture(counts, 2, iterations=5)
        purities[f"seed {seed}"] = (list(range(1, 6)), [purity(h, truth) for h in fit.history])
        fits[seed] = (counts, fit)
    counts, fit = fits[0]
    ref, beta = np.full(6, 1 / 6), 1.0
    pooled = kl_optimum(ref, bt_fit(counts.sum(0)), beta)
    mm, _, weights = maxmin_policy(fit.rewards, ref, beta)
    p1 = Panel("hard EM, round-robin init, 16 + 4 users x 30 BT pairs, 6 items", "EM iteration",
               "agreement with planted groups", curves=purities)
    p2 = Panel(f"true expected reward of each group (beta = {beta}, uniform pi_ref)", "group", "E_pi[r_k]",
               kind="bars", categories=["majority", "minority"],
               curves={"pooled BT reward policy": R @ pooled, "max-min over EM groups": R @ mm})
    return ExperimentResult("", "MaxMin-RLHF: mixture reward models and the egalitarian policy",
                            "EM over users recovers the planted groups; a single pooled reward serves the majority, "
                            "the max-min policy argmax min_k E r_k - beta KL raises the minority's reward "
                            "(Chakraborty et al. 2024).", [p1, p2],
                            {"recovered_rewards": fit.rewards, "pooled_policy": pooled, "maxmin_policy": mm,
                             "maxmin_weights": weights, "pooled_group_rewards": R @ pooled,
                             "maxmin_group_rewards": R @ mm})
