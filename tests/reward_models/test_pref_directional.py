"""RPS directional neighbourhood selection (arXiv:2510.20498): the spec #8 dominance toy and exact checks."""
import math

import pytest
import torch

from preflab.errors import ConfigError
from preflab.reward_models.directional import (baseline_select, direction, direction_weights, grid_neighbor_angles,
                                            neighbor_angles, rps_select, select_by_target)


def quality(theta):
    """Generator reliable within +-20 degrees of the training centre 0."""
    return math.exp(-max(0.0, abs(theta) - 20.0) / 15.0)


class StubGenerator:
    """Deterministic: the 'response' for angle theta has reward vector q(theta) v(theta). Counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, prompt, theta):
        self.calls += 1
        return quality(theta) * direction(theta)


def score(prompt, responses):
    return torch.stack(list(responses))


def test_dominance_toy_from_the_spec():
    gen = StubGenerator()
    rps = rps_select("x", 45.0, gen, score, k=5, theta_max=30.0, toward=0.0)
    assert rps.angles == [15.0, 22.5, 30.0, 37.5, 45.0]
    assert torch.allclose(rps.scores, torch.tensor([0.866, 0.782, 0.496, 0.309, 0.189], dtype=torch.float64),
                          atol=1e-3)
    assert rps.angle == 15.0 and gen.calls == 5
    base = baseline_select("x", 45.0, gen, score, k=5)
    assert gen.calls == 10  # equal compute: k generations each
    assert base.scores.max().item() == pytest.approx(0.189, abs=1e-3) and rps.scores.max() > base.scores.max()


def test_rps_never_loses_to_the_baseline_when_the_target_is_a_neighbour():
    for target in range(-80, 85, 5):
        for toward in (None, 0.0):
            rps = rps_select("x", float(target), StubGenerator(), score, k=5, toward=toward, rule="even")
            base = baseline_select("x", float(target), StubGenerator(), score, k=5)
            assert float(target) in rps.angles
            assert rps.scores.max() >= base.scores.max() - 1e-12


def test_selection_uses_the_target_not_the_neighbour():
    rewards = torch.tensor([[1.0, 0.0], [0.6, 0.6]], dtype=torch.float64)  # candidates for neighbours 0 and 90
    index, scores = select_by_target(direction(45.0), rewards)
    assert index == 1 and torch.allclose(scores, torch.tensor([math.sqrt(0.5), 1.2 * math.sqrt(0.5)],
                                                              dtype=torch.float64))
    assert select_by_target(direction(0.0), rewards)[0] == 0  # scoring with neighbour 0's direction differs
    # per-dimension normalisation changes the choice when units differ
    assert select_by_target(direction(45.0), rewards, scale=torch.tensor([1.0, 10.0]))[0] == 0


def test_angles_and_dpa_weights():
    assert neighbor_angles(0.0, 5, 30.0) == [-30.0, -15.0, 0.0, 15.0, 30.0]
    assert neighbor_angles(10.0, 1) == [10.0]
    assert neighbor_angles(-45.0, 3, 30.0, toward=0.0) == [-45.0, -30.0, -15.0]
    table = {-15: (97, -26), 10: (98, 17), 20: (94, 34), 30: (87, 50), 45: (71, 71)}
    assert {a: direction_weights(a) for a in table} == table
    with pytest.raises(ConfigError):
        neighbor_angles(0.0, 0)


# rcmao/Robust_Preference_Selection@045d358 utils/directions.py: PREFERENCE_DIRECTIONS v1..v8 (rounded vectors)
RELEASED_DIRECTIONS = {10: (0.9848, 0.1736), 15: (0.9659, 0.2588), 20: (0.9397, 0.3420), 25: (0.9063, 0.4226),
                       30: (0.8660, 0.5000), 35: (0.8192, 0.5736), 40: (0.7660, 0.6428), 45: (0.7071, 0.7071)}


def released_get_angle_perturbations(v_main, angle_range=(-40, 40), step=5, theta_max=30, top_k=5):
    """Transcription of the released get_angle_perturbations (numpy; angles only)."""
    import numpy as np
    v_main = np.array(v_main)
    offsets = np.arange(angle_range[0], angle_range[1] + 1, step)
    angles, diffs = [], []
    for offset in offsets:
        v = np.array([np.cos(np.radians(offset)), np.sin(np.radians(offset))])
        cos = np.dot(v, v_main) / (np.linalg.norm(v) * np.linalg.norm(v_main))
        diff = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        if diff <= theta_max:
            angles.append(offset)
            diffs.append(diff)
    return [float(angles[i]) for i in np.argsort(diffs)[:top_k]]


def test_grid_rule_equals_the_released_get_angle_perturbations():
    for target, vector in RELEASED_DIRECTIONS.items():
        ours = grid_neighbor_angles(float(target))
        released = released_get_angle_perturbations(vector)
        assert sorted(ours) == sorted(released), target
    assert grid_neighbor_angles(10.0) == [10.0, 5.0, 15.0, 0.0, 20.0]
    assert grid_neighbor_angles(45.0) == [40.0, 35.0, 30.0, 25.0, 20.0]  # beyond the grid: one-sided, no target
    # rps_select defaults to the released rule; `toward` selects the library's one-sided rule
    rps = rps_select("x", 45.0, StubGenerator(), score)
    assert rps.angles == [40.0, 35.0, 30.0, 25.0, 20.0] and rps.angle == 20.0
    assert rps.scores.max().item() == pytest.approx(math.cos(math.radians(25.0)), abs=1e-12)  # q(20) = 1
    with pytest.raises(ConfigError, match="grid angles"):
        grid_neighbor_angles(80.0)   # the grid ends at 40: no angle within 30 of 80
    with pytest.raises(ConfigError, match="toward"):
        neighbor_angles(45.0, toward=0.0, rule="grid")


def test_grid_rule_counts_an_angle_exactly_theta_max_away():
    """The released rule keeps grid angles with diff <= theta_max: for the target 50 the fifth neighbour, 20, is
    exactly 30 degrees away, so k = 5 is met (a strict < would leave 4 and refuse); k = 6 is refused."""
    assert grid_neighbor_angles(50.0) == [40.0, 35.0, 30.0, 25.0, 20.0]
    assert sorted(released_get_angle_perturbations((math.cos(math.radians(50)), math.sin(math.radians(50))))) == \
        [20.0, 25.0, 30.0, 35.0, 40.0]
    with pytest.raises(ConfigError, match="only 5 grid angles"):
        grid_neighbor_angles(50.0, k=6)
