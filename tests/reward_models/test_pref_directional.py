"""RPS directional neighbourhood selection (arXiv:2510.20498): the spec #8 dominance toy and exact checks."""
import math

import pytest
import torch

from preflab.errors import ConfigError
from preflab.reward_models.directional import (baseline_select, direction, direction_weights, neighbor_angles,
                                            rps_select, select_by_target)


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
            rps = rps_select("x", float(target), StubGenerator(), score, k=5, toward=toward)
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
