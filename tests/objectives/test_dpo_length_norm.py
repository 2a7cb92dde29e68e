"""DPO with length-normalised log-ratios (TRL `sigmoid_norm`) on the shared fixture (objectives.md §B)."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seq(total, n, dtype=torch.float64, pad=2):
    return SequenceLogps(torch.tensor([[total / n] * n + [-7.0] * pad], dtype=dtype),
                         torch.tensor([[True] * n + [False] * pad]))


def toy(dtype=torch.float64, lw=5, ll=8):
    return PairBatch(seq(-10.0, lw, dtype), seq(-12.0, ll, dtype), seq(-11.0, lw, dtype), seq(-11.5, ll, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    out = get_objective("sigmoid_norm", beta=0.1)(toy(dtype))
    assert out.loss.item() == pytest.approx(0.6801083, abs=1e-6)  # l(0.1 * (1/5 + 0.5/8))
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.15, abs=1e-6)  # TRL logs beta * h, unnormalised


def test_equal_lengths_is_dpo_with_beta_over_n():
    batch = toy(lw=4, ll=4)
    assert get_objective("dpo_length_norm", beta=0.8)(batch).loss.item() == pytest.approx(
        get_objective("dpo", beta=0.2)(batch).loss.item(), abs=1e-12)


def test_js_divergence_value():
    s = lambda h: math.log(2) + math.log(1 / (1 + math.exp(-h)))  # noqa: E731
    out = get_objective("sigmoid_norm", beta=0.1, f_divergence="js_divergence")(toy())
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.1 * (s(1.0) / 5 - s(-0.5) / 8))), abs=1e-12)
