"""Population training: any registered pairwise objective minimized exactly on a tabular environment.

With infinite data the empirical loss becomes its expectation over the pair distribution and the labels:

    L(theta) = sum_{x, i != j} w[x, i, j] * loss(S_theta(y_i|x), S_theta(y_j|x), S_ref(y_i|x), S_ref(y_j|x))
             + regularizer(log pi_theta)                                      (optional, e.g. HyPO's KL)

where w[x, i, j] = rho(x) mu(x, {i,j}) P(y_i > y_j | x) weighs 'y_i chosen, y_j rejected' (`Bandit`), and
`loss` is the per-pair `ObjectiveOutput.losses` of `preflab.objectives.get_objective(name, ...)` applied to a
`PairBatch` of every ordered pair (so every pairwise objective works unchanged). Gradients are exact
(full batch, float64); `optimizer` is "lbfgs" (preflab.lab.lbfgs with autograd gradients; reaches the
fixed point to ~1e-9 or better on these problems), "gd" (plain gradient descent, for dynamics and divergent
losses) or "adam".

A policy model supplies log-probs and batches from its parameters: `SoftmaxPolicy` for the bandit (one
logit per response), `preflab.lab.token_env.TokenEnv` for autoregressive token policies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from preflab.lab.bandit import DTYPE, Bandit
from preflab.lab.lbfgs import lbfgs_minimize
from preflab.objectives import PairBatch


class SoftmaxPolicy:
    """pi_theta(y_k | x) = softmax(z[x])_k with parameters z [X, K]; the reference is fixed at construction."""

    def __init__(self, ref):
        ref = torch.as_tensor(np.asarray(ref, dtype=np.float64), dtype=DTYPE)
        self.ref_logp = torch.log(ref if ref.dim() == 2 else ref.unsqueeze(0))

    def init(self) -> torch.Tensor:
        """Parameters of pi_ref itself (the usual start of fine-tuning)."""
        return self.ref_logp.clone()

    def logp(self, params: torch.Tensor) -> torch.Tensor:
        """[X, K] log pi_theta(y | x)."""
        return torch.log_softmax(params, dim=-1)

    def probs(self, params: torch.Tensor) -> np.ndarray:
        return torch.softmax(params.detach(), dim=-1).numpy()

    def batch(self, params, x, i, j, extras=None) -> PairBatch:
        lp = self.logp(params)
        return PairBatch.from_sums(lp[x, i], lp[x, j], self.ref_logp[x, i], self.ref_logp[x, j], extras)


def nonzero_pairs(weights: torch.Tensor):
    """(x, i, j, w) for the ordered pairs with positive weight; weights is [X, K, K]."""
    x, i, j = torch.nonzero(weights > 0, as_tuple=True)
    return x, i, j, weights[x, i, j]


def population_loss(objective, model, params, weights: torch.Tensor, *,
                    extras_fn: Callable | None = None, regularizer: Callable | None = None) -> torch.Tensor:
    """sum_b w_b * objective(batch).losses_b / sum_b w_b (+ regularizer(log pi)) over all weighted ordered pairs.

    extras_fn(logp [X, K], x, i, j) -> dict supplies `batch.extras` (e.g. INPO's previous-iterate log-probs);
    regularizer(logp [X, K]) -> scalar is added once.
    """
    x, i, j, w = nonzero_pairs(weights)
    extras = extras_fn(model.logp(params), x, i, j) if extras_fn is not None else None
    out = objective(model.batch(params, x, i, j, extras))
    loss = (w * out.losses).sum() / w.sum()
    if regularizer is not None:
        loss = loss + regularizer(model.logp(params))
    return loss


@dataclass
class Trajectory:
    """Policies (numpy [X, K]) recorded at `steps`, and the loss at each recorded step."""

    steps: list = field(default_factory=list)
    policies: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    params: torch.Tensor | None = None  # final parameters

    def record(self, step: int, policy: np.ndarray, loss: float) -> None:
        self.steps.append(step)
        self.policies.append(policy)
        self.losses.append(loss)

    @property
    def final(self) -> np.ndarray:
        return self.policies[-1]

    def distances(self, target) -> np.ndarray:
        """max_k |pi_t - target| at every recorded step."""
        target = np.asarray(target, dtype=np.float64)
        return np.array([np.max(np.abs(p - target)) for p in self.policies])


def population_train(objective, env: Bandit | None = None, *, model=None, weights: torch.Tensor | None = None,
                     init: torch.Tensor | None = None, steps: int = 100, optimizer: str = "lbfgs", lr: float = 1.0,
                     extras_fn: Callable | None = None, regularizer: Callable | None = None,
                     record_every: int = 1, grad_tol: float = 1e-13) -> Trajectory:
    """Minimize the population loss of `objective` from `init` (default: the reference) and return the trajectory.

    env: a Bandit (gives the weights and the reference). model / weights override them: e.g. iterative DPO passes
    SoftmaxPolicy(pi_t) as the model and on-policy weights. LBFGS stops once max |grad| < grad_tol or the loss
    stops decreasing (float64 resolution); its trajectory has one entry per iteration.
    """
    if env is None and (model is None or weights is None):
        raise ValueError("population_train needs a Bandit `env`, or both `model` and `weights`.")
    model = model if model is not None else SoftmaxPolicy(env.ref)
    weights = weights if weights is not None else env.ordered_pair_weights()
    params = (model.init() if init is None else init.clone().to(DTYPE)).requires_grad_(True)

    def loss_fn():
        return population_loss(objective, model, params, weights, extras_fn=extras_fn, regularizer=regularizer)

    traj = Trajectory()
    with torch.no_grad():
        traj.record(0, model.probs(params), float(loss_fn()))
    if optimizer == "lbfgs":
        _lbfgs(loss_fn, params, model, traj, steps, record_every, grad_tol)
    else:
        if optimizer not in ("gd", "adam"):
            raise ValueError(f"optimizer must be lbfgs, gd or adam; got {optimizer!r}.")
        opt = torch.optim.SGD([params], lr=lr) if optimizer == "gd" else torch.optim.Adam([params], lr=lr)
        for step in range(1, steps + 1):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
            if step % record_every == 0 or step == steps:
                traj.record(step, model.probs(params), float(loss.detach()))
    traj.params = params.detach()
    return traj


def _lbfgs(loss_fn, params, model, traj: Trajectory, steps: int, record_every: int, grad_tol: float):
    """preflab.lab.lbfgs on the parameters, gradients by autograd; records every `record_every` iterations."""

    def fun_grad(x):
        with torch.no_grad():
            params.copy_(x)
        loss = loss_fn()
        (grad,) = torch.autograd.grad(loss, params)
        return float(loss.detach()), grad.detach()

    def callback(it, x, f):
        if it % record_every == 0:
            traj.record(it, model.probs(x), f)

    x, f, iterations = lbfgs_minimize(fun_grad, params.detach(), max_iter=steps, grad_tol=grad_tol,
                                      callback=callback)
    with torch.no_grad():
        params.copy_(x)
    if traj.steps[-1] != iterations:
        traj.record(iterations, model.probs(params), f)


def solve(objective, env: Bandit | None = None, **kwargs) -> np.ndarray:
    """The converged policy of population_train with LBFGS (200 iterations unless given)."""
    kwargs.setdefault("steps", 200)
    kwargs.setdefault("record_every", 10**9)
    return population_train(objective, env, **kwargs).final
