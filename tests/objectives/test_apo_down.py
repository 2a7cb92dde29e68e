"""APO-down on the shared fixture (objectives.md §B) and its closed-form gradient."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective

sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
dsig = lambda z: sig(z) * sig(-z)  # noqa: E731


def toy(dtype=torch.float64, grad=False):
    t = lambda v, g=False: torch.tensor([v], dtype=dtype, requires_grad=g)  # noqa: E731
    pc, pr = t(-10.0, grad), t(-12.0, grad)
    return PairBatch.from_sums(pc, pr, t(-11.0), t(-11.5)), pc, pr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    assert get_objective("apo_down", beta=0.1)(toy(dtype)[0]).loss.item() == pytest.approx(0.9875493, abs=1e-6)


def test_gradient_closed_form():
    batch, pc, pr = toy(grad=True)
    get_objective("apo_down", beta=0.1)(batch).loss.backward()
    # L = sig(r_w) + 1 - sig(r_w - r_l), r_w = 0.1, r_w - r_l = 0.15
    assert pc.grad.item() == pytest.approx(0.1 * (dsig(0.1) - dsig(0.15)), abs=1e-12)
    assert pr.grad.item() == pytest.approx(0.1 * dsig(0.15), abs=1e-12)
