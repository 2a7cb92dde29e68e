"""RSO: statistical rejection sampling from the optimal policy, then preference pairs for `dpo` / `hinge_norm`.

Paper: Liu, Zhao, Joshi, Khalman, Saleh, Liu, Liu, 2023, "Statistical Rejection Sampling Improves Preference
Optimization" (arXiv:2309.06657), Algorithm 1. The target is the KL-regularised optimum

    pi*(y | x) = pi_sft(y | x) exp(r(x, y) / beta) / Z(x)

Given N candidates y_1..y_N drawn from pi_sft with rewards r_i, repeat rounds until m are accepted:
    M = max of r over the candidates not yet accepted
    scan the remaining candidates in order; accept y_i when u_i < exp((r_i - M) / beta), u_i ~ U(0, 1),
    and stop as soon as m are accepted
Accepted candidates leave the pool (sampling without replacement). With N >> m each accepted sample is a draw
from pi* restricted to the candidates' support (M is the candidates' max, the paper's estimate of the bound);
beta -> infinity accepts everything (pi_sft), beta -> 0 keeps only the argmax.

Pairs ("first-round-rank", §5.2: "starting with n responses, we can construct n/2 pairs and get them labeled"; the
paper does not say which n/2): by default a uniformly random matching of the accepted samples, drawn two at a time
without replacement, as TRL's RSO research project does (huggingface/trl@962e0fb
`examples/research_projects/rso/rso.py::first_round_ranking`, the only implementation of the pairing found; Google
released no RSO code). `pairing="consecutive"` pairs in acceptance order, (a_1, a_2), (a_3, a_4), ...: the samples of
one round are then paired together, so the pairs' rewards sit closer (measured: mean |r_a - r_b| 0.77 against 0.82 for
the random matching; 64 N(0, 1) rewards, beta 0.5, 8 samples, 3000 draws). `pairing="all"`: every pair. Each pair is
labelled by the reward (the paper's ranker); equal rewards are no preference and are dropped (counted; TRL's script
makes the second pick the chosen one). An odd sample out is left unpaired. Train with `dpo` (the paper's sigmoid-norm)
or `hinge_norm`.

Deviation from the paper: candidates are identified by index, so duplicate texts stay separate draws (the paper's
code keys candidates by text, which collapses duplicates and biases the law); `max_rounds` caps the rounds
(None: until m are accepted or the pool is empty).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from preflab.errors import ConfigError


def acceptance_probs(rewards: Sequence[float] | Tensor, beta: float) -> Tensor:
    """[N] first-round acceptance probabilities exp((r_i - max_j r_j) / beta), float64; for [X, N] rewards, one
    row per prompt (max over the last axis). The one implementation: preflab.lab.closed_forms.rso_acceptance uses it."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if not beta > 0:
        raise ConfigError(f"rso beta must be > 0, got {beta}.")
    return torch.exp((r - r.max(-1, keepdim=True).values) / beta)


@dataclass
class RSOSample:
    accepted: list[int]  # candidate indices in acceptance order
    rounds: int
    scanned: int = 0  # uniform draws u_i the scans consumed (each round up to its last acceptance, or the whole pool)

    @property
    def acceptance_rate(self) -> float:
        """len(accepted) / scanned: the empirical acceptance rate of Algorithm 1's scans (nan when nothing was
        scanned)."""
        return len(self.accepted) / self.scanned if self.scanned else float("nan")


def rso_sample(rewards: Sequence[float] | Tensor, beta: float, num_samples: int,
               generator: torch.Generator | None = None, max_rounds: int | None = None) -> RSOSample:
    """Algorithm 1 of Liu et al. (2023) on candidates with the given rewards; returns accepted indices."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.dim() != 1:
        raise ConfigError(f"rewards must be one value per candidate, got shape {tuple(r.shape)}.")
    if not torch.isfinite(r).all():
        raise ConfigError("rso_sample got a non-finite reward; score every candidate with a finite value.")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}.")
    remaining = torch.arange(len(r))
    accepted: list[int] = []
    rounds = scanned = 0
    while len(accepted) < num_samples and len(remaining) and (max_rounds is None or rounds < max_rounds):
        rounds += 1
        probs = acceptance_probs(r[remaining], beta)
        u = torch.rand(len(remaining), generator=generator, dtype=torch.float64)
        hit = u < probs
        need = num_samples - len(accepted)
        hits = remaining[hit][:need]  # the scan stops at the m-th acceptance
        # candidates the scan looked at: up to and including the m-th acceptance, else the whole pool
        scanned += int(hit.nonzero()[need - 1]) + 1 if int(hit.sum()) >= need else len(remaining)
        accepted.extend(hits.tolist())
        remaining = remaining[~torch.isin(remaining, hits)]
    return RSOSample(accepted, rounds, scanned)


@dataclass
class LabelledPairs:
    pairs: list[tuple[int, int]]  # (chosen index, rejected index)
    ties_dropped: int


PAIRINGS = ("random", "consecutive", "all")


def rank_pairs(indices: Sequence[int], rewards: Sequence[float] | Tensor, pairing: str = "random",
               generator: torch.Generator | None = None) -> LabelledPairs:
    """Pairs among `indices` labelled by reward (higher = chosen); equal rewards are dropped and counted.
    "random": a uniformly random matching (TRL's `first_round_ranking`); "consecutive": in the given order."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if pairing == "random":
        order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        candidates = [(order[i], order[i + 1]) for i in range(0, len(order) - 1, 2)]
    elif pairing == "consecutive":
        candidates = [(indices[i], indices[i + 1]) for i in range(0, len(indices) - 1, 2)]
    elif pairing == "all":
        candidates = [(a, b) for i, a in enumerate(indices) for b in indices[i + 1:]]
    else:
        raise ConfigError(f"pairing must be one of {PAIRINGS}, got {pairing!r}.")
    pairs, ties = [], 0
    for a, b in candidates:
        if r[a] == r[b]:
            ties += 1
        else:
            pairs.append((a, b) if r[a] > r[b] else (b, a))
    return LabelledPairs(pairs, ties)


def rso_pairs(rewards: Sequence[float] | Tensor, beta: float, num_samples: int,
              generator: torch.Generator | None = None, pairing: str = "random") -> LabelledPairs:
    """Rejection-sample `num_samples` candidates (Algorithm 1), then pair and label them by reward."""
    sample = rso_sample(rewards, beta, num_samples, generator)
    return rank_pairs(sample.accepted, rewards, pairing, generator)
