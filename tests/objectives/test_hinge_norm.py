"""RSO hinge-norm (TRL `hinge`) on the shared fixture (objectives.md §A4, §B)."""
import math

import pytest
import torch

from pair_fixture import toy
from preflab.objectives import get_objective


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    out = get_objective("hinge", beta=0.1)(toy(dtype)[0])
    assert out.loss.item() == pytest.approx(0.85, abs=1e-6)  # 1 - 0.1 * 1.5
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1, abs=1e-6)


def test_gradient_inside_and_beyond_the_margin():
    batch, pc, pr = toy(grad=True)
    get_objective("hinge_norm", beta=0.1)(batch).loss.backward()
    assert (pc.grad.item(), pr.grad.item()) == (pytest.approx(-0.1), pytest.approx(0.1))
    # beta * Delta = 1.5 >= 1: no loss and no gradient
    batch, pc, pr = toy(grad=True)
    out = get_objective("hinge", beta=1.0)(batch)
    out.loss.backward()
    assert out.loss.item() == 0.0 and pc.grad.item() == 0.0 and pr.grad.item() == 0.0


def test_js_divergence_value():
    s = lambda h: math.log(2) + math.log(1 / (1 + math.exp(-h)))  # noqa: E731
    out = get_objective("hinge", beta=0.1, f_divergence="js_divergence")(toy()[0])
    assert out.loss.item() == pytest.approx(1 - 0.1 * (s(1.0) - s(-0.5)), abs=1e-12)
