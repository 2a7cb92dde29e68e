"""BCO (pair) on the shared fixture (objectives.md §B) and its closed-form gradient."""
import math

import pytest
import torch

from pair_fixture import toy
from preflab.objectives import PairBatch, get_objective

sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    assert get_objective("bco_pair", beta=0.1)(toy(dtype)[0]).loss.item() == pytest.approx(1.3128563, abs=1e-6)


def test_gradient_closed_form():
    batch, pc, pr = toy(grad=True)
    get_objective("bco_pair", beta=0.1)(batch).loss.backward()
    assert pc.grad.item() == pytest.approx(-0.1 * sig(-0.1), abs=1e-12)  # r_w = 0.1
    assert pr.grad.item() == pytest.approx(0.1 * sig(-0.05), abs=1e-12)  # r_l = -0.05


def test_separable_in_chosen_and_rejected():
    # unlike DPO, each side is a separate logistic term: at theta = ref the loss is 2 log 2
    batch = PairBatch.from_sums(*torch.tensor([[-3.0], [-5.0], [-3.0], [-5.0]], dtype=torch.float64))
    assert get_objective("bco_pair")(batch).loss.item() == pytest.approx(2 * math.log(2), abs=1e-12)
