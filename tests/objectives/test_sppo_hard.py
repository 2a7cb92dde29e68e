"""SPPO with hard labels on the shared fixture (objectives.md §B): value, optimum, gradient."""
import pytest
import torch

from pair_fixture import toy
from preflab.objectives import PairBatch, get_objective


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    assert get_objective("sppo_hard", beta=0.1)(toy(dtype)[0]).loss.item() == pytest.approx(36.25, abs=1e-6)


def test_gradient_closed_form():
    batch, pc, pr = toy(grad=True)
    get_objective("sppo_hard", beta=0.1)(batch).loss.backward()
    assert pc.grad.item() == pytest.approx(2 * (1.0 - 5.0), abs=1e-12)
    assert pr.grad.item() == pytest.approx(2 * (-0.5 + 5.0), abs=1e-12)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_optimum_at_plus_minus_half_over_beta(beta):
    pc = torch.tensor([0.5 / beta - 2.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-0.5 / beta - 3.0], dtype=torch.float64, requires_grad=True)
    out = get_objective("sppo_hard", beta=beta)(PairBatch.from_sums(pc, pr, [-2.0], [-3.0]))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.0, abs=1e-20)
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-12) and pr.grad.item() == pytest.approx(0.0, abs=1e-12)
