"""EGPO vs online IPO on a preference game: last-iterate convergence by extragradient (torch, float64).

Zhou et al. 2025, "Extragradient Preference Optimization" (EGPO), arXiv:2503.08942; online IPO (OIPO-1) from
Calandriello et al. 2024, arXiv:2403.08635. Policy pi_theta = softmax(theta), h = log pi_theta - log pi_ref.
The exact population online-IPO loss with opponent mu (detached):

    L(theta; mu) = (1/N^2) sum_{y, y'} [ (h(y) - h(y')) - ((P mu)_y - (P mu)_{y'}) / beta ]^2,

computed through the objective contract (`SquaredMarginLoss` on every ordered pair, uniform weights).
- Online IPO / mirror descent:  theta_{t+1} = theta_t - lr grad L(theta_t; pi_{theta_t});  the last iterate cycles
  on an intransitive game at small beta.
- EGPO (extragradient):  theta_half = theta_t - lr grad L(theta_t; pi_{theta_t});
  theta_{t+1} = theta_t - lr grad L(theta_t; pi_{theta_half});  the last iterate converges to pi*_beta.
The "undo" of the half step restores a saved copy of the parameters and the optimizer state (bitwise exact).
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch

from preflab.lab.bandit import DTYPE
from preflab.lab.games import check_preference_matrix, dual_gap
from preflab.lab.lab_objectives import SquaredMarginLoss
from preflab.lab.nash_loops import IterateTrace, record_points
from preflab.lab.population import SoftmaxPolicy, population_loss


def online_ipo_loss(objective, model: SoftmaxPolicy, params, P: torch.Tensor, opponent: torch.Tensor,
                    beta: float) -> torch.Tensor:
    """L(theta; mu) above; `opponent` is mu [K] (no gradient flows through it)."""
    K = P.shape[0]
    win = P @ opponent.detach()
    weights = torch.full((1, K, K), 1.0 / K**2, dtype=DTYPE)
    # "target" for the lab's SquaredMarginLoss; pref_y / pref_yp for the registered `online_ipo` objective
    extras_fn = lambda logp, x, i, j: {"target": (win[i] - win[j]) / beta, "pref_y": win[i], "pref_yp": win[j]}  # noqa
    return population_loss(objective, model, params, weights, extras_fn=extras_fn)


def egpo_step(params: torch.Tensor, optimizer: torch.optim.Optimizer, loss_at: Callable) -> torch.Tensor:
    """One extragradient step. loss_at(opponent_params) is the loss at `params` with targets from the opponent.

    1. save params and optimizer state; step on loss_at(params) -> theta_half;
    2. restore the saved copies (bitwise); step on loss_at(theta_half) -> theta_{t+1}. Returns theta_half.
    """
    saved_params = params.detach().clone()
    saved_state = copy.deepcopy(optimizer.state_dict())
    optimizer.zero_grad()
    loss_at(params.detach()).backward()
    optimizer.step()
    half = params.detach().clone()
    with torch.no_grad():
        params.copy_(saved_params)
    optimizer.load_state_dict(saved_state)
    optimizer.zero_grad()
    loss_at(half).backward()
    optimizer.step()
    return half


def run_game_optimizer(P, ref, beta: float, lr: float, T: int, *, extragradient: bool, pi0=None,
                       objective=None, record: set | None = None) -> IterateTrace:
    """SGD on the population online-IPO loss, with (EGPO) or without (online IPO) the extragradient step.
    Gaps are DG_beta; `objective` defaults to the lab's SquaredMarginLoss; any loss reading extras 'target' or
    'pref_y'/'pref_yp' (e.g. get_objective("online_ipo", beta=beta)) works."""
    P_np = check_preference_matrix(P)
    K = P_np.shape[0]
    ref = np.full(K, 1.0 / K) if ref is None else np.asarray(ref, dtype=np.float64)
    pi0 = ref if pi0 is None else np.asarray(pi0, dtype=np.float64)
    P_t = torch.as_tensor(P_np, dtype=DTYPE)
    model = SoftmaxPolicy(ref)
    objective = objective if objective is not None else SquaredMarginLoss()
    params = torch.log(torch.as_tensor(pi0, dtype=DTYPE)).unsqueeze(0).requires_grad_(True)
    opt = torch.optim.SGD([params], lr=lr)
    loss_at = lambda opp: online_ipo_loss(objective, model, params, P_t, torch.softmax(opp[0], -1), beta)  # noqa: E731
    record = record_points(T) if record is None else record
    trace = IterateTrace(pi0, pi0)
    total = np.zeros(K)
    for t in range(1, T + 1):
        if extragradient:
            egpo_step(params, opt, loss_at)
        else:
            opt.zero_grad()
            loss_at(params.detach()).backward()
            opt.step()
        pi = model.probs(params)[0]
        total += pi
        if t in record:
            trace.steps.append(t)
            trace.gap_last.append(dual_gap(pi, P_np, beta, ref))
            trace.gap_average.append(dual_gap(total / t, P_np, beta, ref))
    trace.last, trace.average = pi, total / T
    return trace


def egpo(P, ref, beta: float, lr: float, T: int, **kwargs) -> IterateTrace:
    """EGPO's tabular loop (last iterate -> pi*_beta)."""
    return run_game_optimizer(P, ref, beta, lr, T, extragradient=True, **kwargs)


def online_ipo(P, ref, beta: float, lr: float, T: int, **kwargs) -> IterateTrace:
    """Plain online IPO / mirror descent on the same loss (its last iterate cycles at small beta)."""
    return run_game_optimizer(P, ref, beta, lr, T, extragradient=False, **kwargs)
