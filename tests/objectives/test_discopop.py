"""DiscoPOP on the shared fixture (objectives.md §B): value, its two limits, stability, f-divergence."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective


def pair(delta, dtype=torch.float64):
    return PairBatch.from_sums(*(torch.tensor([v], dtype=dtype) for v in (delta, 0.0, 0.0, 0.0)))


def disco(z, tau=0.05):
    m = 1 / (1 + math.exp(-z / tau))
    return (1 - m) * math.log1p(math.exp(-z)) + m * math.exp(-z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    batch = PairBatch.from_sums(*(torch.tensor([v], dtype=dtype) for v in (-10.0, -12.0, -11.0, -11.5)))
    out = get_objective("discopop", beta=0.1, discopop_tau=0.05)(batch)
    assert out.loss.item() == pytest.approx(0.8493376, abs=1e-6)
    assert out.loss.item() == pytest.approx(disco(0.15), abs=1e-6)


def test_logistic_for_negative_and_exponential_for_positive_margins():
    obj = get_objective("discopop", beta=1.0)
    assert obj(pair(-3.0)).loss.item() == pytest.approx(math.log1p(math.exp(3.0)), rel=1e-12)  # m ~ e^-60
    assert obj(pair(3.0)).loss.item() == pytest.approx(math.exp(-3.0), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_for_very_negative_margin(dtype):
    # exp(-z) overflows here; the loss is the logistic branch, ~ -z
    out = get_objective("discopop", beta=1.0)(pair(-1000.0, dtype))
    assert out.loss.item() == pytest.approx(1000.0, rel=1e-6)


def test_forward_kl_value():
    s = lambda h: 1 - math.exp(-h)  # noqa: E731
    batch = PairBatch.from_sums(*torch.tensor([[-10.0], [-12.0], [-11.0], [-11.5]], dtype=torch.float64))
    out = get_objective("discopop", beta=0.1, f_divergence="forward_kl")(batch)
    assert out.loss.item() == pytest.approx(disco(0.1 * (s(1.0) - s(-0.5))), abs=1e-12)
