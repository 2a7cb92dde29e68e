"""RPS (Robust Preference Selection): directional neighbourhood consensus at inference time.

Mao et al. 2025, "Robust Preference Alignment via Directional Neighborhood Consensus" (arXiv:2510.20498); spec
methods/models-and-loops.md #8 (details from a paper note and the README; the neighbour rule is unverified).
For a user preference direction v* in R^d (d = 2: v = (cos theta, sin theta)) and a preference-conditioned
generator, RPS generates one response for each of k directions v_i within theta_max of v*, then scores every
candidate with the *target* direction and returns the best:

    s_i = v*^T r(x, y_i),   y = y_{argmax_i s_i}

The equal-compute baseline conditions all k samples on v* itself and applies the same rule.

Deviation from the paper: neighbours are k evenly spaced angles in [theta* - theta_max, theta* + theta_max]
(`toward=None`), or on the one side toward a training-distribution centre angle (`toward=c`), a library choice.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from preflab.errors import ConfigError, PreflabError


def direction(theta_deg: float) -> Tensor:
    """[2] unit vector (cos theta, sin theta) for an angle in degrees."""
    t = math.radians(theta_deg)
    return torch.tensor([math.cos(t), math.sin(t)], dtype=torch.float64)


def direction_weights(theta_deg: float) -> tuple[int, int]:
    """The DPA system-prompt integer weights (round(100 cos theta), round(100 sin theta))."""
    v = direction(theta_deg)
    return int(round(100 * v[0].item())), int(round(100 * v[1].item()))


def neighbor_angles(target_deg: float, k: int = 5, theta_max: float = 30.0,
                    toward: float | None = None) -> list[float]:
    """k angles within theta_max of the target: symmetric and evenly spaced (includes the target when k is odd),
    or one-sided toward `toward` (the training centre) from target -/+ theta_max up to the target itself."""
    if k < 1 or theta_max < 0:
        raise ConfigError(f"need k >= 1 and theta_max >= 0, got k={k}, theta_max={theta_max}.")
    if k == 1:
        return [float(target_deg)]
    if toward is None:
        return [target_deg - theta_max + 2 * theta_max * i / (k - 1) for i in range(k)]
    side = -1.0 if toward < target_deg else 1.0
    start = target_deg + side * theta_max
    return sorted(start + (target_deg - start) * i / (k - 1) for i in range(k))


def select_by_target(target: Tensor, candidate_rewards: Tensor, scale: Tensor | None = None) -> tuple[int, Tensor]:
    """(index of the best candidate, [k] scores v*^T r_i); rewards [k, d], optionally divided per dimension by
    `scale` first (reward dimensions have different units; normalise before projecting)."""
    if candidate_rewards.dim() != 2 or candidate_rewards.shape[1] != target.shape[0]:
        raise PreflabError(f"candidate rewards must be [k, {target.shape[0]}], got {tuple(candidate_rewards.shape)}.")
    rewards = candidate_rewards if scale is None else candidate_rewards / scale
    scores = rewards.to(target.dtype) @ target
    return int(scores.argmax()), scores


@dataclass
class RPSResult:
    response: object
    index: int
    angle: float
    scores: Tensor
    candidates: list
    angles: list[float]


def rps_select(prompt, target_deg: float, generate: Callable[[object, float], object],
               score: Callable[[object, Sequence], Tensor], *, k: int = 5, theta_max: float = 30.0,
               toward: float | None = None, scale: Tensor | None = None) -> RPSResult:
    """Generate one response per neighbour angle with `generate(prompt, angle_deg)`, score all with
    `score(prompt, responses) -> [k, d]`, and return the best under the target direction."""
    angles = neighbor_angles(target_deg, k, theta_max, toward)
    candidates = [generate(prompt, a) for a in angles]
    index, scores = select_by_target(direction(target_deg), torch.as_tensor(score(prompt, candidates)), scale)
    return RPSResult(candidates[index], index, angles[index], scores, candidates, angles)


def baseline_select(prompt, target_deg: float, generate: Callable[[object, float], object],
                    score: Callable[[object, Sequence], Tensor], *, k: int = 5,
                    scale: Tensor | None = None) -> RPSResult:
    """The equal-compute baseline: k samples all conditioned on the target, the same selection rule."""
    candidates = [generate(prompt, target_deg) for _ in range(k)]
    index, scores = select_by_target(direction(target_deg), torch.as_tensor(score(prompt, candidates)), scale)
    return RPSResult(candidates[index], index, float(target_deg), scores, candidates, [float(target_deg)] * k)
