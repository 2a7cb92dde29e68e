"""Iterative / online DPO, APO and RSO in tabular form (torch float64 for training, numpy for sampling).

Each DPO step here is the population objective solved exactly (`preflab.lab.population`), with any registered
pairwise objective (default `get_objective("dpo", beta=beta)`).

- Iterative DPO (Xiong et al. 2024, arXiv:2312.11456; Rafailov et al. 2023, arXiv:2305.18290): iteration t draws
  pairs from the current policy, mu_t(i, j) ∝ pi_t(i) pi_t(j), labels them with the BT oracle and solves DPO
  starting from pi_t. Its exact step is pi_{t+1} ∝ ref_t exp(r / beta) whatever the (full-support) pair law, so
      reference refreshed (ref_t = pi_t):  pi_t ∝ pi_0 exp(t r / beta)   (a proximal-point method on E_pi r);
      reference fixed   (ref_t = pi_0):  pi_t = pi* = pi_0 exp(r/beta)/Z for every t >= 1.
- Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", arXiv:2402.04792):
  one gradient step per round on pairs drawn from the current policy (weights recomputed, pi detached); its
  fixed point is pi* (every pair's gradient vanishes there).
- APO (He, Yuan, Gu 2024, "Accelerated Preference Optimization for LLM Alignment", arXiv:2410.06293):
  Nesterov extrapolation between DPO iterates, in logit space
      z_hat_{t+1} = log DPO-step(ref = pi_t),    z_{t+1} = (1 + alpha) z_hat_{t+1} - alpha z_hat_t,
  so pi_t ∝ pi_0 exp(c_t r / beta) with c_t from `closed_forms.apo_coefficients` (alpha = 0: iterative DPO).
- RSO (Liu et al. 2024, "Statistical Rejection Sampling Improves Preference Optimization", arXiv:2309.06657):
  draw y ~ pi_sft, accept with probability exp((r(y) - max r)/beta_rs); accepted samples (and so the pairs built
  from them) follow pi* = pi_sft exp(r/beta_rs)/Z.
"""
from __future__ import annotations

import numpy as np
import torch

from preflab.lab.bandit import DTYPE, Bandit
from preflab.lab.closed_forms import rso_acceptance
from preflab.lab.population import SoftmaxPolicy, population_loss, population_train
from preflab.lab.simplex import as_probs
from preflab.objectives import get_objective


def _dpo(objective, beta):
    return objective if objective is not None else get_objective("dpo", beta=beta)


def dpo_step(env: Bandit, pi_t: np.ndarray, reference: np.ndarray, objective, steps: int = 200) -> np.ndarray:
    """Solve the population objective on pairs drawn from pi_t, with `reference` as pi_ref, starting at pi_t."""
    data = env.on_policy_pairs(pi_t)
    init = torch.log(torch.as_tensor(pi_t, dtype=DTYPE))
    traj = population_train(objective, data, model=SoftmaxPolicy(reference), init=init, steps=steps,
                            record_every=10**9)
    return traj.final


def iterative_dpo(env: Bandit, beta: float, iterations: int, *, refresh_reference: bool = True,
                  objective=None) -> list[np.ndarray]:
    """[pi_0, ..., pi_T] of iterative DPO with on-policy pairs (see the module docstring for the theory)."""
    objective = _dpo(objective, beta)
    pi0 = env.ref.numpy()
    policies = [pi0]
    for _ in range(iterations):
        reference = policies[-1] if refresh_reference else pi0
        policies.append(dpo_step(env, policies[-1], reference, objective))
    return policies


def apo(env: Bandit, beta: float, iterations: int, alpha: float, *, objective=None) -> list[np.ndarray]:
    """[pi_0, ..., pi_T] of accelerated (Nesterov) iterative DPO; each DPO step uses the extrapolated pi_t both
    as the sampling policy and as the reference, as in the paper's Algorithm 1.

    Read 2026-12 against the paper's text (He et al., arXiv:2410.06293, ICLR 2025 submission PDF stored in
    ChangshuoShen/ICLR_2025_4_DPO@8814195 `papers/13320_Accelerated_Preference_O.pdf`): Algorithm 1 sets
    pi_0 = pi_hat_0 = pi_ref, takes pi_hat_{t+1} = the DPO step with reference and sampler pi_t, and extrapolates
    pi_{t+1} ∝ pi_hat_{t+1} (pi_hat_{t+1} / pi_hat_t)^alpha (Eq. 3.6; momentum on the un-extrapolated iterates,
    §5.3 finds pi_hat_2 - pi_1 worse); alpha = 0.3 in its experiments. Its Algorithm 1 outputs pi_hat_{T+1} (one
    more DPO step from the last pi_T returned here); its Table 3 reports the extrapolated pi_t."""
    objective = _dpo(objective, beta)
    pi = env.ref.numpy()
    z_hat_prev = np.log(pi)
    policies = [pi]
    for _ in range(iterations):
        z_hat = np.log(dpo_step(env, pi, pi, objective))
        z = (1.0 + alpha) * z_hat - alpha * z_hat_prev
        pi = np.exp(z - z.max(-1, keepdims=True))
        pi = pi / pi.sum(-1, keepdims=True)
        z_hat_prev = z_hat
        policies.append(pi)
    return policies


def iterations_to_reach(policies, target, tol: float) -> int | None:
    """First iteration t with max |pi_t - target| <= tol (None if never)."""
    for t, pi in enumerate(policies):
        if np.max(np.abs(np.asarray(pi) - target)) <= tol:
            return t
    return None


def online_dpo(env: Bandit, beta: float, steps: int, lr: float, *, objective=None,
               record_every: int = 1) -> tuple[list[int], list[np.ndarray]]:
    """Per-step online DPO: pairs from the current (detached) policy, fixed reference, one exact gradient step."""
    objective = _dpo(objective, beta)
    model = SoftmaxPolicy(env.ref)
    params = model.init().requires_grad_(True)
    opt = torch.optim.SGD([params], lr=lr)
    steps_out, policies = [0], [model.probs(params)]
    for step in range(1, steps + 1):
        weights = env.on_policy_pairs(torch.softmax(params.detach(), -1)).ordered_pair_weights()
        opt.zero_grad()
        population_loss(objective, model, params, weights).backward()
        opt.step()
        if step % record_every == 0 or step == steps:
            steps_out.append(step)
            policies.append(model.probs(params))
    return steps_out, policies


def rso_draws(pi_sft, reward, beta_rs: float, n: int, seed: int = 0, batch: int = 4096) -> np.ndarray:
    """n accepted samples of statistical rejection sampling (one prompt): candidates y ~ pi_sft, each accepted
    with probability exp((r(y) - max r)/beta_rs)."""
    pi_sft = as_probs(pi_sft, "pi_sft")
    accept = rso_acceptance(reward, beta_rs)
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(pi_sft)
    out: list[np.ndarray] = []
    have = 0
    while have < n:
        cand = np.minimum(np.searchsorted(cdf, rng.random(batch)), len(pi_sft) - 1)
        kept = cand[rng.random(batch) < accept[cand]]
        out.append(kept)
        have += kept.size
    return np.concatenate(out)[:n]


def rso_pairs(pi_sft, reward, beta_rs: float, n_pairs: int, seed: int = 0) -> np.ndarray:
    """[n_pairs, 2] response indices: consecutive accepted samples, i.e. pairs drawn from pi* x pi*."""
    return rso_draws(pi_sft, reward, beta_rs, 2 * n_pairs, seed).reshape(n_pairs, 2)
