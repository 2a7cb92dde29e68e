"""ORPO (objectives.md §A6): fixture values and metrics, closed-form gradient, NLL-only at beta = 0."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seq(total, n, dtype=torch.float64, grad=False, pad=2):
    lp = torch.tensor([[total / n] * n + [-7.0] * pad], dtype=dtype, requires_grad=grad)
    return SequenceLogps(lp, torch.tensor([[True] * n + [False] * pad]))


def toy(dtype=torch.float64, grad=False):
    """A_w = -10/5 = -2, A_l = -12/8 = -1.5; no reference."""
    return PairBatch(seq(-10.0, 5, dtype, grad), seq(-12.0, 8, dtype, grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_values(dtype):
    out = get_objective("orpo", beta=0.1)(toy(dtype))
    assert out.loss.item() == pytest.approx(2.1042057807, abs=1e-6)
    assert out.metrics["log_odds_chosen"].item() == pytest.approx(-0.6070690011, abs=1e-6)  # TRL: mean log-odds
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(-1.0420578079, abs=1e-6)  # TRL: mean log sigmoid
    assert out.metrics["nll_loss"].item() == pytest.approx(2.0, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-0.2, abs=1e-6)  # beta * A_w, as TRL


def test_gradient_closed_form():
    batch = toy(grad=True)
    get_objective("orpo", beta=0.1)(batch).loss.backward()
    lo = (-2 + 1.5) - (math.log(1 - math.exp(-2)) - math.log(1 - math.exp(-1.5)))
    sig_neg = 1 / (1 + math.exp(lo))
    # per token of y_w: NLL gives -1/5; the odds term gives -beta sigma(-lo) / (1 - e^{A_w}) * (1/|y_w|)
    expected_w = -1 / 5 - 0.1 * sig_neg / (1 - math.exp(-2)) / 5
    expected_l = 0.1 * sig_neg / (1 - math.exp(-1.5)) / 8
    assert batch.policy_chosen.token_logps.grad[0, 0].item() == pytest.approx(expected_w, abs=1e-12)
    assert batch.policy_rejected.token_logps.grad[0, 0].item() == pytest.approx(expected_l, abs=1e-12)


def test_finite_when_a_response_has_probability_one():
    batch = PairBatch(seq(0.0, 3), seq(-1.0, 2))
    out = get_objective("orpo")(batch)
    assert math.isfinite(out.loss.item()) and out.metrics["log_odds_chosen"].item() > 10
