"""IPO on the shared fixture (objectives.md §0, §A3, §B): TRL mean form, paper sum form, optimum, gradient."""
import math

import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seq(total, n, dtype=torch.float64, grad=False, pad=2):
    lp = torch.tensor([[total / n] * n + [-7.0] * pad], dtype=dtype, requires_grad=grad)
    return SequenceLogps(lp, torch.tensor([[True] * n + [False] * pad]))


def toy(dtype=torch.float64, grad=False):
    """S_theta(w) = -10, S_theta(l) = -12, S_ref(w) = -11, S_ref(l) = -11.5, |y_w| = 5, |y_l| = 8."""
    return PairBatch(seq(-10.0, 5, dtype, grad), seq(-12.0, 8, dtype, grad), seq(-11.0, 5, dtype), seq(-11.5, 8, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_values(dtype):
    mean = get_objective("ipo", beta=0.1)(toy(dtype))
    assert mean.loss.item() == pytest.approx(22.4439062, rel=1e-6)  # (1/5 + 0.5/8 - 5)^2
    summed = get_objective("ipo", beta=0.1, token_agg="sum")(toy(dtype))
    assert summed.loss.item() == pytest.approx(12.25, rel=1e-6)  # (1.5 - 5)^2
    assert mean.metrics["rewards/margins"].item() == pytest.approx(0.15, abs=1e-6)


def test_gradient_closed_form():
    batch = toy(grad=True)
    get_objective("ipo", beta=0.1)(batch).loss.backward()
    d = 1 / 5 + 0.5 / 8 - 5
    assert batch.policy_chosen.token_logps.grad[0, 0].item() == pytest.approx(2 * d / 5, abs=1e-12)
    assert batch.policy_rejected.token_logps.grad[0, 0].item() == pytest.approx(-2 * d / 8, abs=1e-12)
    assert batch.policy_chosen.token_logps.grad[0, -1].item() == 0.0  # padding


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_optimum_margin_is_one_over_two_beta(beta):
    # sum form, one pair: the loss is 0 with zero gradient exactly at Delta = 1/(2 beta)
    target = 1 / (2 * beta)
    pc = torch.tensor([-3.0 + target], dtype=torch.float64, requires_grad=True)
    out = get_objective("ipo", beta=beta, token_agg="sum")(PairBatch.from_sums(pc, [-4.0], [-3.0], [-4.0]))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.0, abs=1e-20)
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_forward_kl_keeps_the_score_constant_under_length_normalisation():
    # s(h) = 1 - exp(-h); its constant does not cancel once divided by different lengths
    s_w, s_l = 1 - math.exp(-1.0), 1 - math.exp(0.5)
    expected = (s_w / 5 - s_l / 8 - 5) ** 2
    out = get_objective("ipo", beta=0.1, f_divergence="forward_kl")(toy())
    assert out.loss.item() == pytest.approx(expected, abs=1e-9)


def test_bad_token_agg_rejected():
    with pytest.raises(ConfigError, match="token_agg"):
        get_objective("ipo", token_agg="max")
