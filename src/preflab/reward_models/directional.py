"""RPS (Robust Preference Selection): directional neighbourhood consensus at inference time.

Mao et al. 2025, "Robust Preference Alignment via Directional Neighborhood Consensus" (arXiv:2510.20498); spec
methods/models-and-loops.md #8. Neighbour rule and selection checked against the authors' released pipeline
rcmao/Robust_Preference_Selection@c718278 (`utils/directions.py::get_angle_perturbations`, `rps/rps_generation.py`,
`scoring/best_selection.py`).
For a user preference direction v* in R^d (d = 2: v = (cos theta, sin theta)) and a preference-conditioned
generator, RPS generates one response for each of k directions v_i within theta_max of v*, then scores every
candidate with the *target* direction and returns the best:

    s_i = v*^T r(x, y_i),   y = y_{argmax_i s_i}

The equal-compute baseline conditions all k samples on v* itself and applies the same rule.

Neighbours (`rule="grid"`, the default, as released): the candidate angles step, 2 step, ... on the grid
angle_range = [-40, 40] degrees (step 5), those within theta_max (30) of theta*, the k (5) closest to theta* (ties in
grid order). theta* itself is a neighbour only when it lies on the grid; a target beyond the grid (45 degrees) gets
one-sided neighbours (40, 35, 30, 25, 20). Fewer than k qualifying grid angles is refused (the released code would
generate fewer responses than the baseline). Library rules kept as options: `rule="even"`, k evenly spaced angles in
[theta* - theta_max, theta* + theta_max], or, with `toward=c`, on the side toward a training centre c.
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


GRID_STEP = 5.0                    # released `--step`
GRID_RANGE = (-40.0, 40.0)         # released `--angle_range -40,40`
NEIGHBOR_RULES = ("grid", "even")


def grid_neighbor_angles(target_deg: float, k: int = 5, theta_max: float = 30.0, step: float = GRID_STEP,
                         angle_range: tuple[float, float] = GRID_RANGE) -> list[float]:
    """The released neighbour rule (get_angle_perturbations): grid angles lo, lo + step, ..., hi within theta_max
    of the target, the k closest, closest first (ties in grid order). Raises when fewer than k qualify."""
    lo, hi = float(angle_range[0]), float(angle_range[1])
    if k < 1 or theta_max < 0 or step <= 0 or hi < lo:
        raise ConfigError(f"need k >= 1, theta_max >= 0, step > 0 and angle_range lo <= hi, got k={k}, "
                          f"theta_max={theta_max}, step={step}, angle_range={angle_range}.")
    grid = [lo + i * step for i in range(int(math.floor((hi - lo) / step + 1e-9)) + 1)]
    diffs = [(abs((a - target_deg + 180.0) % 360.0 - 180.0), a) for a in grid]
    near = [(d, a) for d, a in diffs if d <= theta_max + 1e-9]
    if len(near) < k:
        raise ConfigError(f"RPS grid rule: only {len(near)} grid angles in {angle_range} (step {step}) lie within "
                          f"theta_max={theta_max} of the target {target_deg}, need k={k}: lower k, widen "
                          f"angle_range or theta_max, or use rule='even' (CLI: --neighbors even).")
    return [a for _, a in sorted(near, key=lambda t: t[0])[:k]]


def neighbor_angles(target_deg: float, k: int = 5, theta_max: float = 30.0,
                    toward: float | None = None, *, rule: str = "even", step: float = GRID_STEP,
                    angle_range: tuple[float, float] = GRID_RANGE) -> list[float]:
    """k angles within theta_max of the target. rule="grid": the released rule (grid_neighbor_angles; `toward`
    must be None). rule="even" (this function's default, kept for callers): symmetric and evenly spaced (includes
    the target when k is odd), or one-sided toward `toward` from target -/+ theta_max up to the target itself."""
    if rule not in NEIGHBOR_RULES:
        raise ConfigError(f"RPS neighbour rule must be one of {NEIGHBOR_RULES}, got {rule!r}.")
    if rule == "grid":
        if toward is not None:
            raise ConfigError("RPS: `toward` is an option of rule='even' (CLI: --neighbors even); the released grid "
                              "rule has none.")
        return grid_neighbor_angles(target_deg, k, theta_max, step, angle_range)
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
               toward: float | None = None, scale: Tensor | None = None, rule: str | None = None,
               step: float = GRID_STEP, angle_range: tuple[float, float] = GRID_RANGE) -> RPSResult:
    """Generate one response per neighbour angle with `generate(prompt, angle_deg)`, score all with
    `score(prompt, responses) -> [k, d]`, and return the best under the target direction. rule=None: the released
    grid rule, or "even" when `toward` is given (one-sided neighbours are an option of that rule)."""
    rule = rule or ("even" if toward is not None else "grid")
    angles = neighbor_angles(target_deg, k, theta_max, toward, rule=rule, step=step, angle_range=angle_range)
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
