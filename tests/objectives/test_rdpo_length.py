"""R-DPO (objectives.md §A8; formula unverified): fixture, reduction to DPO, gradient."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seq(total, n, dtype=torch.float64, grad=False, pad=2):
    lp = torch.tensor([[total / n] * n + [-7.0] * pad], dtype=dtype, requires_grad=grad)
    return SequenceLogps(lp, torch.tensor([[True] * n + [False] * pad]))


def toy(dtype=torch.float64, grad=False):
    return PairBatch(seq(-10.0, 5, dtype, grad), seq(-12.0, 8, dtype, grad), seq(-11.0, 5, dtype), seq(-11.5, 8, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_values(dtype):
    # beta * Delta = 0.15 and alpha * (5 - 8) = -0.15 cancel: log 2
    assert get_objective("rdpo_length", beta=0.1, alpha=0.05)(toy(dtype)).loss.item() == pytest.approx(
        math.log(2), abs=1e-6)
    assert get_objective("rdpo_length", beta=0.1, alpha=0.0)(toy(dtype)).loss.item() == pytest.approx(
        0.6209570478, abs=1e-6)


def test_gradient_closed_form():
    batch = toy(grad=True)
    get_objective("rdpo_length", beta=0.1, alpha=0.1)(batch).loss.backward()
    z = 0.15 + 0.1 * (5 - 8)
    assert batch.policy_chosen.token_logps.grad[0, 0].item() == pytest.approx(-0.1 / (1 + math.exp(z)), abs=1e-12)
