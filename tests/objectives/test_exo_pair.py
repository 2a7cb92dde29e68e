"""EXO (pair) on the shared fixture (objectives.md §B): value, closed-form optimum, f-divergence."""
import math

import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives import PairBatch, get_objective


def toy(dtype=torch.float64):
    return PairBatch.from_sums(*(torch.tensor([v], dtype=dtype) for v in (-10.0, -12.0, -11.0, -11.5)))


def exo(z, eps):
    q = 1 / (1 + math.exp(-z))
    return q * (math.log(q) - math.log(1 - eps)) + (1 - q) * (math.log(1 - q) - math.log(eps))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    out = get_objective("exo_pair", beta=0.1, label_smoothing=1e-3)(toy(dtype))
    assert out.loss.item() == pytest.approx(2.5055166, abs=1e-6)
    assert out.loss.item() == pytest.approx(exo(0.15, 1e-3), abs=1e-6)


@pytest.mark.parametrize("eps", [1e-3, 0.1, 0.3])
def test_minimum_zero_at_log_odds_of_the_labels(eps):
    z_star = math.log((1 - eps) / eps)  # KL(q || p) = 0 when q = p
    pc = torch.tensor([z_star / 0.5 - 5.0], dtype=torch.float64, requires_grad=True)
    out = get_objective("exo_pair", beta=0.5, label_smoothing=eps)(PairBatch.from_sums(pc, [-5.0], [0.0], [0.0]))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-10)


def test_alpha_divergence_value():
    s = lambda h: (math.exp(-0.5 * h) - 1) / -0.5  # noqa: E731  (alpha = 0.5)
    out = get_objective("exo_pair", label_smoothing=0.01, f_divergence="alpha_divergence")(toy())
    assert out.loss.item() == pytest.approx(exo(0.1 * (s(1.0) - s(-0.5)), 0.01), abs=1e-12)


def test_zero_smoothing_rejected():
    with pytest.raises(ConfigError, match="label_smoothing"):
        get_objective("exo_pair", label_smoothing=0.0)
