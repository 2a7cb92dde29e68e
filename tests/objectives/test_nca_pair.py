"""NCA (pair) on the shared fixture (objectives.md §B) and its closed-form gradient."""
import math

import pytest
import torch

from pair_fixture import toy
from preflab.objectives import PairBatch, get_objective

sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    assert get_objective("nca_pair", beta=0.1)(toy(dtype)[0]).loss.item() == pytest.approx(1.3508248, abs=1e-6)


def test_gradient_closed_form():
    batch, pc, pr = toy(grad=True)
    get_objective("nca_pair", beta=0.1)(batch).loss.backward()
    r_w, r_l = 0.1, -0.05
    assert pc.grad.item() == pytest.approx(0.1 * (-sig(-r_w) + 0.5 * sig(r_w)), abs=1e-12)
    assert pr.grad.item() == pytest.approx(0.1 * 0.5 * sig(r_l), abs=1e-12)


def test_chosen_stationary_at_log_two():
    # d/dr_w [l(r_w) + l(-r_w)/2] = 0  <=>  sigmoid(r_w) = 2/3  <=>  r_w = log 2
    pc = torch.tensor([math.log(2) / 0.1 - 5.0], dtype=torch.float64, requires_grad=True)
    get_objective("nca_pair", beta=0.1)(PairBatch.from_sums(pc, [-3.0], [-5.0], [-3.0])).loss.backward()
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-12)
