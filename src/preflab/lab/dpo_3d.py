"""The 3D properties of DPO in the token environment (Yan et al. 2024, "3D-Properties: Identifying Challenges in
DPO and Charting a Path Forward", arXiv:2406.07327), checked exactly.

With hard labels (no finite DPO minimizer) and parameters shared between responses (TokenEnv context="last",
or overlapping prefixes), gradient descent on the DPO loss shows
  1. Drastic drop of the rejected likelihood: log pi(y_l) falls much faster than anything else;
  2. Degradation into response suppression: the chosen likelihood falls too, once sigma(-beta Delta) has made the
     chosen gradient vanish (in probability space dL/dpi_l / dL/dpi_w = -pi_w/pi_l);
  3. Dispersion: the mass freed from the seen responses goes to responses outside the data.
Remedies compared: Flex-DPO l(beta_w h_w - beta_l h_l) with beta_l < beta_w, and an SFT term + lam NLL(y_w)
(which keeps the chosen likelihood from falling).
"""
from __future__ import annotations

import numpy as np
import torch

from preflab.lab.population import population_train
from preflab.lab.token_env import TokenEnv
from preflab.objectives import get_objective


def sample_pairs(env: TokenEnv, n_pairs: int, seed: int = 0) -> list[tuple[int, int]]:
    """n distinct-sequence (chosen, rejected) pairs drawn uniformly (off-policy data)."""
    rng = np.random.default_rng(seed)
    return [tuple(int(k) for k in rng.choice(env.n_sequences, 2, replace=False)) for _ in range(n_pairs)]


def pair_weights(env: TokenEnv, pairs) -> torch.Tensor:
    """[1, N, N] uniform weights on the given ordered (chosen, rejected) pairs: hard labels."""
    W = torch.zeros(1, env.n_sequences, env.n_sequences, dtype=torch.float64)
    for i, j in pairs:
        W[0, i, j] += 1.0
    return W / W.sum()


def chosen_nll(env: TokenEnv, pairs, lam: float):
    """lam * mean over pairs of -log pi(y_w): the SFT term on the chosen responses (as a regularizer)."""
    chosen = torch.tensor([i for i, _ in pairs])
    return lambda logp: -lam * logp[0, chosen].mean()


def likelihood_trajectory(env: TokenEnv, pairs, objective=None, beta: float = 0.1, steps: int = 300,
                          lr: float = 1.0, record_every: int = 10, regularizer=None) -> dict:
    """Gradient descent on the population loss of the pairs; mean change of log pi on chosen and rejected
    responses relative to the reference, and the mass on responses outside the data, per recorded step."""
    objective = objective if objective is not None else get_objective("dpo", beta=beta)
    traj = population_train(objective, model=env, weights=pair_weights(env, pairs), optimizer="gd", lr=lr,
                            steps=steps, record_every=record_every, regularizer=regularizer)
    chosen = np.array([i for i, _ in pairs])
    rejected = np.array([j for _, j in pairs])
    seen = np.union1d(chosen, rejected)
    p0 = traj.policies[0][0]
    return {
        "steps": np.array(traj.steps),
        "chosen": np.array([np.mean(np.log(p[0, chosen] / p0[chosen])) for p in traj.policies]),
        "rejected": np.array([np.mean(np.log(p[0, rejected] / p0[rejected])) for p in traj.policies]),
        "unseen_mass": np.array([1.0 - p[0, seen].sum() for p in traj.policies]),
        "unseen_mass_ref": 1.0 - p0[seen].sum(),
    }


def probability_gradient_ratio(pi_chosen: float, pi_rejected: float, beta: float = 0.1) -> float:
    """(dL/dpi_l) / (dL/dpi_w) of the DPO loss written in probabilities (equals -pi_w / pi_l)."""
    pw = torch.tensor(pi_chosen, dtype=torch.float64, requires_grad=True)
    pl = torch.tensor(pi_rejected, dtype=torch.float64, requires_grad=True)
    loss = -torch.nn.functional.logsigmoid(beta * (torch.log(pw) - torch.log(pl)))
    gw, gl = torch.autograd.grad(loss, (pw, pl))
    return float(gl / gw)
