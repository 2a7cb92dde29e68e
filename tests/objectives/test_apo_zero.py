"""APO-zero on the shared fixture (objectives.md §B) and its closed-form gradient."""
import math

import pytest
import torch

from pair_fixture import toy
from preflab.objectives import get_objective

sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    assert get_objective("apo_zero", beta=0.1)(toy(dtype)[0]).loss.item() == pytest.approx(0.9625234, abs=1e-6)


def test_gradient_raises_chosen_and_lowers_rejected():
    batch, pc, pr = toy(grad=True)
    get_objective("apo_zero", beta=0.1)(batch).loss.backward()
    assert pc.grad.item() == pytest.approx(-0.1 * sig(0.1) * sig(-0.1), abs=1e-12)
    assert pr.grad.item() == pytest.approx(0.1 * sig(-0.05) * sig(0.05), abs=1e-12)
