"""A feature-level few-shot preference scorer: the FSPO idea (condition on the user's labelled examples) in a
form small enough to test planted recovery on held-out users.

FSPO (Singh et al. 2025, arXiv:2502.19312; spec methods/models-and-loops.md #15) trains a policy on episode prompts
(`fewshot_episodes.py`) so that it reads the user's preferences from the context. Over response features phi:

    d = phi(a) - phi(b),  d_i = phi(y_w,i) - phi(y_l,i) for the N shots of the user,
    u(C) = (1/N) sum_i rho(d_i)                       (a DeepSets context encoder; rho = identity or an MLP)
    margin(a, b | C) = d^T (W u(C) + v)               (conditioned; v alone is the unconditioned baseline)

trained with the Bradley-Terry loss -log sigmoid(margin(y_w, y_l | C)) over episodes of many users.

Deviation from the paper: the paper conditions an LLM policy on episode text and trains it with IPO; this is a
meta-learned reward over features. It shows that few-shot conditioning recovers held-out users' planted preference
directions; it does not show an LLM learning to do so from text.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preflab.errors import PreflabError
from preflab.reward_models.protocols import fit_full_batch
from preflab.reward_models.fewshot_episodes import Episode


class FewShotPairScorer(nn.Module):
    """margin(a, b | shots); `conditioned=False` drops the context term (the baseline)."""

    def __init__(self, dim: int, hidden: int = 0, conditioned: bool = True):
        super().__init__()
        self.conditioned = conditioned
        self.rho = nn.Identity() if hidden == 0 else nn.Sequential(nn.Linear(dim, hidden), nn.Tanh())
        context_dim = dim if hidden == 0 else hidden
        self.W = nn.Parameter(torch.zeros(dim, context_dim)) if conditioned else None
        self.v = nn.Parameter(torch.zeros(dim))

    def context(self, shot_diffs: Tensor, shot_mask: Tensor) -> Tensor:
        """[B, C] mean of rho(d_i) over the real shots ([B, N, D] diffs, [B, N] bool mask)."""
        encoded = self.rho(shot_diffs) * shot_mask.unsqueeze(-1)
        return encoded.sum(1) / shot_mask.sum(1, keepdim=True).clamp_min(1)

    def forward(self, query_diff: Tensor, shot_diffs: Tensor | None = None, shot_mask: Tensor | None = None) -> Tensor:
        direction = self.v.expand_as(query_diff)
        if self.conditioned:
            if shot_diffs is None or shot_mask is None:
                raise PreflabError("a conditioned FewShotPairScorer needs shot_diffs and shot_mask.")
            direction = direction + self.context(shot_diffs, shot_mask) @ self.W.T
        return (query_diff * direction).sum(-1)


def episode_tensors(chosen: Tensor, rejected: Tensor, episodes: Sequence[Episode],
                    shots: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(query diffs [E, D], shot diffs [E, N, D], shot mask [E, N]) from per-pair features [M, D] and episodes
    (indices into those M pairs, e.g. from `plan_episodes`). Episodes with fewer shots are zero-padded."""
    if not episodes:
        raise PreflabError("no episodes: every user was skipped; lower shots/min_shots or add rows per user.")
    width = shots or max(len(e.shots) for e in episodes)
    diff = chosen - rejected
    query = diff[torch.tensor([e.query for e in episodes])]
    shot_diffs = diff.new_zeros(len(episodes), width, diff.shape[1])
    mask = torch.zeros(len(episodes), width, dtype=torch.bool)
    for i, e in enumerate(episodes):
        idx = list(e.shots[:width])
        shot_diffs[i, : len(idx)] = diff[idx]
        mask[i, : len(idx)] = True
    return query, shot_diffs, mask


def fit_fewshot_scorer(model: FewShotPairScorer, query_diff: Tensor, shot_diffs: Tensor, shot_mask: Tensor, *,
                       steps: int = 300, lr: float = 0.05, weight_decay: float = 0.0) -> float:
    """Full-batch BT training on episodes whose query diffs are oriented chosen - rejected; returns the last loss."""
    loss_fn = lambda: -F.logsigmoid(model(query_diff, shot_diffs, shot_mask)).mean()  # noqa: E731
    return fit_full_batch(loss_fn, model.parameters(), steps=steps, lr=lr, weight_decay=weight_decay)
