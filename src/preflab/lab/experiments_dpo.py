"""Lab experiments on the DPO fixed point and the loops built on it (dpo-optimum, online-dpo, accelerated, rso,
ranking-accuracy, token-optimum). Theory for each is in the modules they call; numbers go to the JSON."""
from __future__ import annotations

import numpy as np
import torch

from preflab.lab.bandit import Bandit, b4, dpo_fixture
from preflab.lab.closed_forms import (apo_coefficients, idealized_ranking_accuracy, kl_optimum, ranking_accuracy,
                                      rso_accepted_law)
from preflab.lab.iterative import apo, iterations_to_reach, iterative_dpo, online_dpo, rso_draws
from preflab.lab.population import population_train
from preflab.lab.registration import experiment
from preflab.lab.results import ExperimentResult, Panel
from preflab.lab.token_env import TokenEnv
from preflab.objectives import get_objective


def _dist(policies, target):
    return [float(np.max(np.abs(np.asarray(p) - target))) for p in policies]


def _max_gap(policies, targets) -> float:
    """max_t max_k |policies[t] - targets[t]|."""
    return max(float(np.max(np.abs(np.asarray(p) - np.asarray(q)))) for p, q in zip(policies, targets))


@experiment("dpo-optimum", "population DPO (LBFGS and gradient descent) -> pi_ref exp(r/beta)/Z")
def dpo_optimum(quick: bool) -> ExperimentResult:
    env, beta = dpo_fixture(), 0.1
    star = env.optimum(beta).numpy()
    obj = get_objective("dpo", beta=beta)
    lbfgs = population_train(obj, env, steps=100)
    gd = population_train(obj, env, optimizer="gd", lr=20.0, steps=200 if quick else 1000,
                          record_every=5 if quick else 20)
    panel = Panel("pi_ref = [.5,.3,.2], r = [0,.1,.3], beta = 0.1, soft BT labels, all pairs",
                  "iteration", "max |pi - pi*|", logy=True,
                  curves={"LBFGS (exact gradients)": (lbfgs.steps, lbfgs.distances(star)),
                          "gradient descent, lr 20": (gd.steps, gd.distances(star))})
    return ExperimentResult("", "DPO on infinite data converges to the KL-regularized optimum",
                            "the minimizer of the population DPO loss is pi* = pi_ref exp(r/beta)/Z "
                            "(Rafailov et al. 2023) = [0.0938, 0.1529, 0.7533] here.", [panel],
                            {"closed_form": star, "lbfgs_final": lbfgs.final,
                             "lbfgs_distance": lbfgs.distances(star)[-1],
                             "gd_distance": gd.distances(star)[-1]})


@experiment("online-dpo", "iterative DPO (fixed / refreshed reference) and per-step online DPO on B4")
def online_dpo_experiment(quick: bool) -> ExperimentResult:
    env, beta = b4(), 0.5
    star = env.optimum(beta).numpy()
    fixed = iterative_dpo(env, beta, 3, refresh_reference=False)
    refreshed = iterative_dpo(env, beta, 3 if quick else 5, refresh_reference=True)
    steps, online = online_dpo(env, beta, 100 if quick else 400, lr=20.0, record_every=5)
    r = env.reward.numpy()[0]
    theory = [kl_optimum(env.ref.numpy()[0], t * r, beta) for t in range(len(refreshed))]
    p1 = Panel("fixed reference pi_0: distance to pi* = pi_0 exp(r/beta)/Z", "iteration / step", "max |pi - pi*|",
               logy=True, curves={"iterative DPO (on-policy pairs, exact solve)": (list(range(len(fixed))),
                                                                                   _dist(fixed, star)),
                                  "online DPO (one exact step per round, lr 20)": (steps, _dist(online, star))})
    p2 = Panel("refreshed reference pi_t: E[r] climbs as pi_0 exp(t r/beta)", "iteration", "E_pi[r]",
               curves={"trained": (list(range(len(refreshed))), [float(p[0] @ r) for p in refreshed]),
                       "closed form": (list(range(len(theory))), [float(p @ r) for p in theory])})
    return ExperimentResult("", "Iterative and online DPO with pairs drawn from the current policy",
                            "with a full-support pair law the DPO step solves to ref exp(r/beta)/Z, so a fixed "
                            "reference reaches pi* in one iteration and a refreshed one gives pi_0 exp(t r/beta).",
                            [p1, p2], {"optimum": star, "iterative_fixed": fixed[-1], "online_final": online[-1],
                                       "refreshed_vs_closed_form": _max_gap([p[0] for p in refreshed], theory)})


@experiment("accelerated", "APO (Nesterov momentum over DPO iterations) vs iterative DPO")
def accelerated(quick: bool) -> ExperimentResult:
    env, beta = Bandit.from_rewards([0.5, 0.3, 0.2], [0.0, 1.0, 2.0]), 1.0
    T = 5 if quick else 8
    pi0, r, best = env.ref.numpy()[0], env.reward.numpy()[0], np.eye(3)[2]
    curves, gaps, reach = {}, {}, {}
    for alpha in (0.0, 0.3, 0.5):
        pols = [p[0] for p in apo(env, beta, T, alpha)]
        label = "iterative DPO (alpha = 0)" if alpha == 0 else f"APO alpha = {alpha}"
        curves[label] = (list(range(T + 1)), [1.0 - float(p[2]) for p in pols])
        closed = [pi0] + [kl_optimum(pi0, c * r, beta) for c in apo_coefficients(alpha, T)]
        gaps[label] = (list(range(1, T + 1)), [float(np.max(np.abs(p - q))) for p, q in zip(pols[1:], closed[1:])])
        reach[label] = iterations_to_reach(pols, best, 0.05)
    p1 = Panel("pi_0 = [.5,.3,.2], r = [0,1,2], beta = 1, exact DPO steps on on-policy pairs",
               "iteration", "distance to the optimum: 1 - pi_t(best)", logy=True, curves=curves,
               reference={"tolerance 0.05": 0.05})
    p2 = Panel("trained iterates vs the closed form pi_0 exp(c_t r/beta)/Z", "iteration",
               "max |pi_t - closed form|", logy=True, curves=gaps)
    return ExperimentResult("", "Accelerated Preference Optimization: momentum reaches the optimum in fewer iterations",
                            "iterative DPO is a proximal-point method, pi_t ∝ pi_0 exp(c_t r/beta) with c_t = t; "
                            "APO's extrapolation gives c_t = 1.3, 2.69, 4.107, ... (alpha = 0.3), so it gets "
                            "closer to the optimum per iteration (He, Yuan, Gu 2024).", [p1, p2],
                            {"iterations_to_0.05": reach,
                             "max_distance_to_closed_form": {k: max(v[1]) for k, v in gaps.items()}})


@experiment("rso", "statistical rejection sampling: accepted samples follow pi*")
def rso(quick: bool) -> ExperimentResult:
    pi_sft, r, beta_rs = np.array([0.5, 0.3, 0.2]), np.array([0.0, 0.5, 1.0]), 0.5
    star = rso_accepted_law(pi_sft, r, beta_rs)
    draws = rso_draws(pi_sft, r, beta_rs, 20_000 if quick else 200_000, seed=0)
    ns = np.unique(np.geomspace(100, len(draws), 12).astype(int))
    err = [float(np.max(np.abs(np.bincount(draws[:n], minlength=3) / n - star))) for n in ns]
    freq = np.bincount(draws, minlength=3) / len(draws)
    p1 = Panel("pi_sft = [.5,.3,.2], r = [0,.5,1], beta_rs = 0.5", "response", "probability", kind="bars",
               categories=["y0", "y1", "y2"], curves={"pi_sft": pi_sft, "pi* (closed form)": star,
                                                     f"RSO accepted ({len(draws)} samples)": freq})
    p2 = Panel("sampling error of the accepted law", "accepted samples n", "max |freq - pi*|", logx=True, logy=True,
               curves={"RSO": (ns, err), "1/sqrt(n)": (ns, 1 / np.sqrt(ns))})
    return ExperimentResult("", "RSO: rejection sampling draws pairs from the optimal policy",
                            "accepting y ~ pi_sft with probability exp((r - max r)/beta) leaves exactly "
                            "pi_sft exp(r/beta)/Z = pi* (Liu et al. 2024).", [p1, p2],
                            {"target": star, "empirical": freq, "max_error": err[-1]})


RANKING_TOY = np.array([(-40.0, -42.0, 0.75), (-50.0, -45.0, 0.75), (-30.0, -30.5, 0.6), (-60.0, -58.0, 0.999)])


def ranking_bandit(toy=RANKING_TOY) -> Bandit:
    """One prompt per toy pair with responses (y_w, y_l, rest): pi_ref(y_w) = exp(S_ref(y_w)) etc.; only the
    pair (y_w, y_l) is in the data, labelled with the rater proportion alpha."""
    ref = np.stack([[np.exp(s_w), np.exp(s_l), 1 - np.exp(s_w) - np.exp(s_l)] for s_w, s_l, _ in toy])
    pref = np.full((len(toy), 3, 3), 0.5)
    pref[:, 0, 1], pref[:, 1, 0] = toy[:, 2], 1 - toy[:, 2]
    return Bandit.from_preferences(ref, pref).with_coverage([(0, 1)])


@experiment("ranking-accuracy", "idealized ranking accuracy vs beta, and the ranking accuracy DPO's optimum reaches")
def ranking(quick: bool) -> ExperimentResult:
    toy = RANKING_TOY
    betas = np.geomspace(0.01, 10, 31)
    ideal = [idealized_ranking_accuracy(toy[:, 0], toy[:, 1], toy[:, 2], b) for b in betas]
    env = ranking_bandit(toy)
    trained_b = [0.1, 1.0, 10.0]
    trained = []
    for b in trained_b:
        pi = population_train(get_objective("dpo", beta=b), env, steps=200, record_every=10**9).final
        trained.append(ranking_accuracy(np.log(pi[:, 0]), np.log(pi[:, 1])))
    panel = Panel("toy set of Chen et al.: (S_ref(w), S_ref(l), alpha)", "beta", "ranking accuracy", logx=True,
                  curves={"idealized R* (closed form)": (betas, ideal), "DPO population optimum": (trained_b, trained)},
                  reference={"reference model R = 0.5": ranking_accuracy(toy[:, 0], toy[:, 1])})
    return ExperimentResult("", "Idealized ranking accuracy (Chen et al. 2024)",
                            "the exact DPO/RLHF optimum ranks a pair correctly iff S_ref(w) - S_ref(l) + "
                            "logit(alpha)/beta > 0; the trained optimum must match R* at every beta.", [panel],
                            {"betas": trained_b, "trained": trained,
                             "idealized": [idealized_ranking_accuracy(toy[:, 0], toy[:, 1], toy[:, 2], b)
                                           for b in trained_b]})


@experiment("token-optimum", "token-level DPO on an autoregressive tabular policy -> soft-Bellman optimum")
def token_optimum(quick: bool) -> ExperimentResult:
    env, beta = TokenEnv(3, 3, seed=0), 0.5
    step_reward = np.random.default_rng(1).normal(0.0, 0.5, (env.n_states, env.V))
    theta_star, value = env.soft_optimum(step_reward, beta)
    star = env.probs(torch.as_tensor(theta_star))
    data = Bandit.from_rewards(env.probs(env.init())[0], env.sequence_reward(step_reward))
    traj = population_train(get_objective("dpo", beta=beta), data, model=env, steps=60 if quick else 200)
    panel = Panel("V = 3 tokens, L = 3, all 27 sequences, soft BT labels on R(y) = sum_t r(s_t, y_t), beta = 0.5",
                  "LBFGS iteration", "max_y |pi(y) - pi*(y)|", logy=True,
                  curves={"DPO on sequence pairs, token-level policy": (traj.steps, traj.distances(star))})
    return ExperimentResult("", "Token-level optimum: DPO recovers the soft-Bellman policy",
                            "pi*(a|s) = pi_ref(a|s) exp((Q - V)/beta) from soft value iteration equals "
                            "pi_ref(y) exp(R(y)/beta)/Z (Rafailov et al. 2024, r to Q*).", [panel],
                            {"final_distance": traj.distances(star)[-1]})
