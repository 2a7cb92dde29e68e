"""The bandit environment: prompts x K responses with exact (population) preference data.

A `Bandit` holds, per prompt x (X prompts, K responses, float64 torch tensors):
    ref[x, k]         pi_ref(y_k | x)
    pref[x, i, j]     P(y_i > y_j | x), with P + P^T = 1 and P_ii = 1/2 (BT-induced, or any matrix: intransitive ok)
    pair_dist[x,i,j]  probability that the unordered pair {y_i, y_j} is shown for x (symmetric, zero diagonal,
                      sum over i<j = 1); zero entries are pairs the data never covers (coverage control)
    prompt_dist[x]    rho(x)
    reward[x, k]      the true reward when the preferences are Bradley-Terry, else None

The population preference data then puts weight
    w[x, i, j] = rho(x) * mu[x, i, j] * P[x, i, j]     (y_i chosen, y_j rejected; both orientations, i != j)
on every ordered pair; the weights sum to 1. Population training (preflab.lab.population) minimizes
sum_{x,i,j} w[x,i,j] * loss(y_i > y_j | x) exactly.

Fixtures (numbers from methods/objectives.md §A1 and methods/models-and-loops.md §0): `dpo_fixture()`
(pi_ref [.5,.3,.2], r [0,.1,.3]), `b4()` (pi_ref [.4,.3,.2,.1], r [0,1,2,3]).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

DTYPE = torch.float64


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=DTYPE)


def _per_prompt(x, ndim: int) -> torch.Tensor:
    t = _t(x)
    return t.unsqueeze(0) if t.dim() == ndim - 1 else t


def bt_matrix(reward: torch.Tensor) -> torch.Tensor:
    """P[..., i, j] = sigmoid(r_i - r_j)."""
    return torch.sigmoid(reward[..., :, None] - reward[..., None, :])


def _normalize_pairs(mu: torch.Tensor) -> torch.Tensor:
    mu = 0.5 * (mu + mu.transpose(-1, -2))
    mu = mu * (1 - torch.eye(mu.shape[-1], dtype=DTYPE))
    total = torch.triu(mu, diagonal=1).sum((-1, -2), keepdim=True)
    if torch.any(total <= 0):
        raise ValueError("every prompt needs at least one covered pair of distinct responses.")
    return mu / total


@dataclass(frozen=True)
class Bandit:
    ref: torch.Tensor
    pref: torch.Tensor
    pair_dist: torch.Tensor
    prompt_dist: torch.Tensor
    reward: torch.Tensor | None = None

    def __post_init__(self):
        X, K = self.ref.shape
        if self.pref.shape != (X, K, K) or self.pair_dist.shape != (X, K, K):
            raise ValueError(f"pref and pair_dist must be [X, K, K] = [{X}, {K}, {K}].")
        if not torch.allclose(self.pref + self.pref.transpose(-1, -2), torch.ones_like(self.pref), atol=1e-12):
            raise ValueError("pref must satisfy P(y_i > y_j) + P(y_j > y_i) = 1.")
        if not torch.allclose(self.ref.sum(-1), torch.ones(X, dtype=DTYPE), atol=1e-9) or (self.ref < 0).any():
            raise ValueError("ref must be a distribution over the K responses of every prompt.")

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_rewards(cls, ref, reward, pair_dist=None, prompt_dist=None) -> "Bandit":
        """Bradley-Terry preferences P = sigmoid(r_i - r_j); ref and reward are [K] or [X, K]."""
        ref, reward = _per_prompt(ref, 2), _per_prompt(reward, 2)
        return cls._make(ref, bt_matrix(reward), pair_dist, prompt_dist, reward)

    @classmethod
    def from_preferences(cls, ref, pref, pair_dist=None, prompt_dist=None) -> "Bandit":
        """A general (possibly intransitive) preference matrix [K, K] or [X, K, K]."""
        return cls._make(_per_prompt(ref, 2), _per_prompt(pref, 3), pair_dist, prompt_dist, None)

    @classmethod
    def _make(cls, ref, pref, pair_dist, prompt_dist, reward) -> "Bandit":
        X, K = ref.shape
        mu = torch.ones(X, K, K, dtype=DTYPE) if pair_dist is None else _per_prompt(pair_dist, 3).expand(X, K, K)
        rho = torch.full((X,), 1.0 / X, dtype=DTYPE) if prompt_dist is None else _t(prompt_dist)
        return cls(ref, pref.expand(X, K, K).clone(), _normalize_pairs(mu.clone()), rho / rho.sum(), reward)

    # -- variants -------------------------------------------------------------------------------------------
    def with_pairs(self, pair_dist) -> "Bandit":
        """Same preferences, another (unnormalized) pair distribution [K, K] or [X, K, K]."""
        X, K = self.ref.shape
        return replace(self, pair_dist=_normalize_pairs(_per_prompt(pair_dist, 3).expand(X, K, K).clone()))

    def with_coverage(self, covered: list[tuple[int, int]]) -> "Bandit":
        """Only the listed unordered pairs appear in the data (uniformly), for every prompt."""
        K = self.ref.shape[1]
        mask = torch.zeros(K, K, dtype=DTYPE)
        for i, j in covered:
            mask[i, j] = mask[j, i] = 1.0
        return self.with_pairs(mask)

    def on_policy_pairs(self, pi) -> "Bandit":
        """Pairs drawn from a policy: mu[x, i, j] ∝ pi(i|x) pi(j|x), i != j (online / iterative DPO data)."""
        pi = _per_prompt(pi, 2)
        return self.with_pairs(pi[:, :, None] * pi[:, None, :])

    def with_label_noise(self, flip_rate: float) -> "Bandit":
        """Each label flipped with probability eps: P~ = (1 - eps) P + eps (1 - P) (rDPO's noise model)."""
        if not 0 <= flip_rate < 0.5:
            raise ValueError(f"flip_rate must be in [0, 0.5), got {flip_rate}.")
        return replace(self, pref=(1 - flip_rate) * self.pref + flip_rate * (1 - self.pref), reward=None)

    def with_hard_labels(self) -> "Bandit":
        """Deterministic labels: P = 1[P > 1/2] (ties stay 1/2); the finite-sample regime where DPO diverges."""
        hard = (self.pref > 0.5).to(DTYPE) + 0.5 * (self.pref == 0.5).to(DTYPE)
        return replace(self, pref=hard)

    # -- population data ------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.ref.shape)

    def ordered_pair_weights(self) -> torch.Tensor:
        """w[x, i, j] = rho(x) mu[x, i, j] P[x, i, j]: the weight of 'y_i chosen over y_j' (sums to 1)."""
        return self.prompt_dist[:, None, None] * self.pair_dist * self.pref

    def optimum(self, beta: float) -> torch.Tensor:
        """pi_ref exp(r / beta) / Z (needs BT rewards)."""
        if self.reward is None:
            raise ValueError("this bandit has no reward (general preferences); use preflab.lab.games for Nash.")
        return torch.softmax(torch.log(self.ref) + self.reward / beta, dim=-1)


def dpo_fixture() -> Bandit:
    """pi_ref = [0.5, 0.3, 0.2], r = [0, 0.1, 0.3], all pairs, soft BT labels; DPO optimum at beta = 0.1 is
    [0.0938, 0.1529, 0.7533] (methods/objectives.md §A1)."""
    return Bandit.from_rewards([0.5, 0.3, 0.2], [0.0, 0.1, 0.3])


def b4() -> Bandit:
    """The 4-arm bandit B4: pi_ref = (0.4, 0.3, 0.2, 0.1), r = (0, 1, 2, 3) (methods/models-and-loops.md §0)."""
    return Bandit.from_rewards([0.4, 0.3, 0.2, 0.1], [0.0, 1.0, 2.0, 3.0])
