"""cDPO on the shared fixture (objectives.md §A2): value, identity with DPO, reduction, finite optimum."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective


def pair(values, dtype=torch.float64, grad=False):
    t = [torch.tensor([v], dtype=dtype, requires_grad=grad and i == 0) for i, v in enumerate(values)]
    return PairBatch.from_sums(*t), t[0]


TOY = (-10.0, -12.0, -11.0, -11.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    out = get_objective("cdpo", beta=0.1, label_smoothing=0.1)(pair(TOY, dtype)[0])
    assert out.loss.item() == pytest.approx(0.6359570478, abs=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
@pytest.mark.parametrize("delta", [-20.0, 1.5, 40.0])
def test_identity_dpo_plus_eps_beta_delta(eps, delta):
    batch = pair((delta, 0.0, 0.0, 0.0))[0]
    dpo = get_objective("dpo", beta=0.1)(batch).loss.item()
    assert get_objective("cdpo", beta=0.1, label_smoothing=eps)(batch).loss.item() == pytest.approx(
        dpo + eps * 0.1 * delta, abs=1e-12)


def test_finite_stationary_point():
    delta_star = math.log(0.9 / 0.1) / 0.1
    assert delta_star == pytest.approx(21.9722, abs=1e-4)
    batch, pc = pair((delta_star, 0.0, 0.0, 0.0), grad=True)
    get_objective("cdpo", beta=0.1, label_smoothing=0.1)(batch).loss.backward()
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-12)
