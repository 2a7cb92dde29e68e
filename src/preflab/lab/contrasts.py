"""DPO against three of its modifications, each solved exactly on a bandit (population data, LBFGS, float64).

HyPO (Song et al. 2024, "The Importance of Online Data: Understanding Preference Fine-tuning via Coverage",
arXiv:2406.01462): L = E_offline l(beta Delta) + lam KL(pi || pi_ref), the KL computed on-policy (exactly here).
  Under partial coverage the DPO loss depends on pi only through log-ratios of covered responses, so it is
  blind to how much mass goes off the data; HyPO's stationarity on an uncovered y gives
  log pi(y)/pi_ref(y) = KL(pi || pi_ref) for every uncovered y: off the data it stays at pi_ref up to one
  common factor.
VPO (Cen et al. 2024, "Value-Incentivized Preference Optimization", arXiv:2405.19320), in its DPO form
(methods/objectives.md #24, derived): L = l(beta Delta) + s lam E_{x, y ~ pi_cal} log pi(y|x),
  s = +1 online (optimism: pushes mass away from pi_cal), s = -1 offline (pessimism: pulls toward pi_cal).
  Comparing minimizers: the optimistic solution has a lower E_cal log pi than DPO's, the pessimistic a higher one.
rDPO (Chowdhury, Kini, Natarajan 2024, arXiv:2403.00409): with labels flipped at rate eps, DPO fits the
  noisy proportions (rewards shrunk toward 0), while the rDPO loss is unbiased, so its population minimizer is the
  clean optimum pi_ref exp(r/beta)/Z.
"""
from __future__ import annotations

import numpy as np
import torch

from preflab.lab.bandit import Bandit
from preflab.lab.lab_objectives import RobustDPOLoss
from preflab.lab.population import SoftmaxPolicy, population_loss, solve
from preflab.objectives import get_objective


def reverse_kl_penalty(ref: torch.Tensor, prompt_dist: torch.Tensor, lam: float):
    """lam * E_x KL(pi(.|x) || pi_ref(.|x)) as a function of log pi [X, K] (HyPO's online term, exact)."""
    log_ref = torch.log(ref)
    return lambda logp: lam * (prompt_dist * (logp.exp() * (logp - log_ref)).sum(-1)).sum()


def calibration_term(cal: torch.Tensor, prompt_dist: torch.Tensor, sign: float, lam: float):
    """sign * lam * E_x E_{y ~ pi_cal} log pi(y|x) (VPO's value term in DPO form)."""
    return lambda logp: sign * lam * (prompt_dist * (cal * logp).sum(-1)).sum()


def off_data_arms(env: Bandit) -> np.ndarray:
    """[X, K] bool: responses that appear in no covered pair of their prompt."""
    return (env.pair_dist.sum(-1) == 0).numpy()


def hypo_vs_dpo(env: Bandit, beta: float = 0.1, lam: float = 0.1, objective=None) -> dict:
    """Both minimizers from pi_ref, their log-ratios log pi/pi_ref and KL(pi || pi_ref) (first prompt)."""
    objective = objective if objective is not None else get_objective("dpo", beta=beta)
    dpo = solve(objective, env)
    hypo = solve(objective, env, regularizer=reverse_kl_penalty(env.ref, env.prompt_dist, lam))
    ref = env.ref.numpy()
    out = {"dpo": dpo, "hypo": hypo, "off": off_data_arms(env)}
    for name in ("dpo", "hypo"):
        out[f"{name}_logratio"] = np.log(out[name] / ref)
        out[f"{name}_kl"] = float(np.sum(out[name] * out[f"{name}_logratio"], -1)[0])
    return out


def dpo_loss(env: Bandit, pi, beta: float = 0.1, objective=None) -> float:
    """The population DPO loss of a given policy (to show its blindness to off-data mass)."""
    objective = objective if objective is not None else get_objective("dpo", beta=beta)
    params = torch.log(torch.as_tensor(np.asarray(pi), dtype=torch.float64))
    with torch.no_grad():
        return float(population_loss(objective, SoftmaxPolicy(env.ref), params, env.ordered_pair_weights()))


def move_off_data_mass(pi, off, new_off_mass: float) -> np.ndarray:
    """Rescale pi so the uncovered responses hold `new_off_mass` in total, keeping every ratio within each set."""
    pi = np.array(pi, dtype=np.float64)
    on = ~off
    pi[off] *= new_off_mass / pi[off].sum()
    pi[on] *= (1 - new_off_mass) / pi[on].sum()
    return pi


def vpo_solutions(env: Bandit, beta: float, lam: float, cal=None, objective=None) -> dict:
    """Minimizers for sign s in {+1 (online/optimistic), 0 (DPO), -1 (offline/pessimistic)}; pi_cal = pi_ref
    unless given. Also returns E_cal log pi of each."""
    objective = objective if objective is not None else get_objective("dpo", beta=beta)
    cal_t = env.ref if cal is None else torch.as_tensor(np.asarray(cal), dtype=torch.float64).reshape(env.ref.shape)
    out = {}
    for sign, name in ((1.0, "optimistic"), (0.0, "dpo"), (-1.0, "pessimistic")):
        reg = calibration_term(cal_t, env.prompt_dist, sign, lam) if sign else None
        pi = solve(objective, env, regularizer=reg)
        out[name] = pi
        out[f"{name}_cal_logp"] = float(np.sum(cal_t.numpy() * np.log(pi)))
    return out


def rdpo_vs_dpo(env: Bandit, beta: float, flip_rate: float, robust_objective=None) -> dict:
    """DPO and rDPO trained on labels flipped at `flip_rate`; the clean optimum for reference."""
    noisy = env.with_label_noise(flip_rate)
    robust = robust_objective if robust_objective is not None else RobustDPOLoss(beta=beta, flip_rate=flip_rate)
    return {
        "optimum": env.optimum(beta).numpy(),
        "dpo": solve(get_objective("dpo", beta=beta), noisy),
        "rdpo": solve(robust, noisy),
    }
