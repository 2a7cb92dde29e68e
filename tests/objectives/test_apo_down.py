"""APO-down on the shared fixture (objectives.md §B) and its closed-form gradient."""
import math

import pytest
import torch

from pair_fixture import toy
from preflab.objectives import get_objective

sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
dsig = lambda z: sig(z) * sig(-z)  # noqa: E731


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    assert get_objective("apo_down", beta=0.1)(toy(dtype)[0]).loss.item() == pytest.approx(0.9875493, abs=1e-6)


def test_gradient_closed_form():
    batch, pc, pr = toy(grad=True)
    get_objective("apo_down", beta=0.1)(batch).loss.backward()
    # L = sig(r_w) + 1 - sig(r_w - r_l), r_w = 0.1, r_w - r_l = 0.15
    assert pc.grad.item() == pytest.approx(0.1 * (dsig(0.1) - dsig(0.15)), abs=1e-12)
    assert pr.grad.item() == pytest.approx(0.1 * dsig(0.15), abs=1e-12)
