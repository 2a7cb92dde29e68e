"""AlphaPO (TRL CPO `alphapo`): hand value, alpha = 0 is SimPO, the alpha -> 0 limit, extreme log-probs."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seq(total, n, dtype=torch.float64, pad=2):
    return SequenceLogps(torch.tensor([[total / n] * n + [-7.0] * pad], dtype=dtype),
                         torch.tensor([[True] * n + [False] * pad]))


def toy(dtype=torch.float64):
    return PairBatch(seq(-10.0, 5, dtype), seq(-12.0, 8, dtype))  # A_w = -2, A_l = -1.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_by_hand(dtype):
    r = lambda a, alpha=0.25: (1 - math.exp(-alpha * a)) / alpha  # noqa: E731
    z = 2.5 * (r(-2.0) - r(-1.5)) - 0.1
    out = get_objective("alphapo")(toy(dtype))  # defaults alpha 0.25, beta 2.5, gamma 0.1
    tol = 1e-9 if dtype == torch.float64 else 3e-6  # exp of float32 inputs
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-z)), abs=tol)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(2.5 * r(-2.0), abs=1e-5)


def test_alpha_zero_is_simpo_and_small_alpha_is_close():
    simpo = get_objective("simpo", beta=2.5, simpo_gamma=0.1)(toy()).loss.item()
    assert get_objective("alphapo", alpha=0.0)(toy()).loss.item() == pytest.approx(simpo, abs=1e-15)
    assert get_objective("alphapo", alpha=1e-7)(toy()).loss.item() == pytest.approx(simpo, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_for_very_unlikely_responses(dtype):
    out = get_objective("alphapo")(PairBatch(seq(-4000.0, 2, dtype), seq(-3.0, 3, dtype)))
    assert math.isfinite(out.loss.item()) and out.loss.item() > 1e30
