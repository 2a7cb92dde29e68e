"""Tabular self-play / Nash loops on a preference game, as exact closed-form updates (numpy, float64).

Each loop returns an `IterateTrace`: the last iterate pi_T, the average iterate (1/T) sum_{t=1..T} pi_t, and the
duality gap of both at recorded iterations (preflab.lab.games.dual_gap).

- Multiplicative weights / SPO (Swamy et al. 2024, "A Minimaximalist Approach to RLHF", arXiv:2401.04056):
  self-play with the win rate against the current policy as reward,
      pi_{t+1}(y) ∝ pi_t(y) exp(eta P(y > pi_t));
  no-regret, so the AVERAGE iterate converges to the Minimax Winner (the last iterate cycles).
  Checked (2026-12) against two later papers' restatements, the SPO paper's own text not being reachable: SPPO
  (arXiv:2405.00675 §2, Eq. 4.1: SPO's soft policy iteration in the bandit setting is this rule, outcomes in {0, 1})
  and DNO (arXiv:2404.03715 Eq. 4: r_t(y) = E_{y'~pi_t} P(y > y'), pi_1 uniform).
  `spo_selfplay` is the sampled version: each response's reward is its win proportion against B self-play samples
  with Bernoulli outcomes (an unbiased estimate of P(y > pi_t); library choice: every response duels the B samples).
- INPO (Zhang et al. 2024, "Iterative Nash Policy Optimization", arXiv:2407.00617), online mirror descent on the
  tau-regularized game:  pi_{t+1} ∝ pi_t^{1 - eta tau} pi_ref^{eta tau} exp(eta P(y > pi_t)).
  Its fixed point is pi*_tau; the pairwise INPO loss whose minimizer is this update is `INPOLoss` (lab_objectives).
- Nash-MD (Munos et al. 2023, arXiv:2312.00886): mixture pi^mu ∝ pi_t^{1 - eta beta} pi_ref^{eta beta}, then
  pi_{t+1} ∝ pi^mu exp(eta P(y > pi^mu)); last iterate within O(eta) of pi*_beta.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from preflab.lab.games import check_preference_matrix, dual_gap
from preflab.lab.simplex import as_probs, geometric_mixture, safe_log, softmax


@dataclass
class IterateTrace:
    """Last and average iterates, and the duality gap DG_beta of each at the recorded iterations."""

    last: np.ndarray
    average: np.ndarray
    steps: list = field(default_factory=list)
    gap_last: list = field(default_factory=list)
    gap_average: list = field(default_factory=list)


def record_points(T: int, n: int = 60) -> set:
    """About n log-spaced iteration numbers in [1, T] (plus T)."""
    return set(np.unique(np.geomspace(1, T, n).astype(int)).tolist()) | {T}


def run_iterates(update, pi0, T: int, P, beta: float = 0.0, ref=None, record: set | None = None) -> IterateTrace:
    """Iterate pi_{t+1} = update(pi_t, t) T times from pi0, tracking the running average and the gaps."""
    record = record_points(T) if record is None else record
    pi = as_probs(pi0, "pi0").copy()
    total = np.zeros_like(pi)
    trace = IterateTrace(pi, pi)
    for t in range(1, T + 1):
        pi = update(pi, t)
        total += pi
        if t in record:
            avg = total / t
            trace.steps.append(t)
            trace.gap_last.append(dual_gap(pi, P, beta, ref))
            trace.gap_average.append(dual_gap(avg, P, beta, ref))
    trace.last, trace.average = pi, total / T
    return trace


def mwu_update(pi, P, eta: float) -> np.ndarray:
    """pi' ∝ pi exp(eta P pi): multiplicative weights on the win rates P(y > pi)."""
    return softmax(safe_log(pi) + eta * (P @ pi))


def mwu(P, eta: float, T: int, pi0=None, record: set | None = None) -> IterateTrace:
    """Full-information self-play MWU (tabular SPO); gaps are DG_0 of the plain game."""
    P = check_preference_matrix(P)
    pi0 = np.full(P.shape[0], 1.0 / P.shape[0]) if pi0 is None else pi0
    return run_iterates(lambda pi, t: mwu_update(pi, P, eta), pi0, T, P, 0.0, None, record)


def win_proportion(wins) -> np.ndarray:
    """SPO's reward: r_i = (1/(B-1)) sum_{j != i} wins[i, j] for a [B, B] outcome matrix of a self-play group."""
    wins = np.asarray(wins, dtype=np.float64)
    B = wins.shape[0]
    return (wins.sum(1) - np.diag(wins)) / (B - 1)


def spo_selfplay(P, eta: float, T: int, group: int = 16, pi0=None, seed: int = 0,
                 record: set | None = None) -> IterateTrace:
    """Sampled SPO: each iteration draws `group` responses from pi_t; every response's reward is its win
    proportion in Bernoulli duels against them; then the MWU step on those rewards."""
    P = check_preference_matrix(P)
    K = P.shape[0]
    rng = np.random.default_rng(seed)
    pi0 = np.full(K, 1.0 / K) if pi0 is None else pi0

    def update(pi, t):
        opponents = np.minimum(np.searchsorted(np.cumsum(pi), rng.random(group)), K - 1)
        wins = rng.random((K, group)) < P[:, opponents]
        return softmax(safe_log(pi) + eta * wins.mean(1))

    return run_iterates(update, pi0, T, P, 0.0, None, record)


def inpo_update(pi_t, P, ref, eta: float, tau: float) -> np.ndarray:
    """pi_{t+1} ∝ pi_t^{1 - eta tau} pi_ref^{eta tau} exp(eta P pi_t) (INPO's target, online mirror descent)."""
    return softmax((1 - eta * tau) * safe_log(pi_t) + eta * tau * safe_log(ref) + eta * (np.asarray(P) @ pi_t))


def inpo(P, ref, eta: float, tau: float, T: int, pi0=None, record: set | None = None) -> IterateTrace:
    """Iterated exact INPO updates; gaps are DG_tau of the tau-regularized game."""
    P = check_preference_matrix(P)
    pi0 = ref if pi0 is None else pi0
    return run_iterates(lambda pi, t: inpo_update(pi, P, ref, eta, tau), pi0, T, P, tau, ref, record)


def nash_md_update(pi_t, P, ref, eta: float, beta: float) -> np.ndarray:
    """pi^mu ∝ pi_t^{1 - eta beta} pi_ref^{eta beta};  pi_{t+1} ∝ pi^mu exp(eta P pi^mu)."""
    mix = geometric_mixture(pi_t, ref, eta * beta)
    return softmax(safe_log(mix) + eta * (np.asarray(P) @ mix))


def nash_md(P, ref, eta: float, beta: float, T: int, pi0=None, record: set | None = None) -> IterateTrace:
    """Iterated tabular Nash-MD; gaps are DG_beta."""
    P = check_preference_matrix(P)
    pi0 = ref if pi0 is None else pi0
    return run_iterates(lambda pi, t: nash_md_update(pi, P, ref, eta, beta), pi0, T, P, beta, ref, record)
