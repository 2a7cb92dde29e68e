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


def test_shorter_chosen_gets_the_larger_gradient_weight():
    """The paper's reading of the sign (Park et al.): the margin alpha(|y_w| - |y_l|) up-weights the gradient of pairs
    whose chosen answer is shorter. Same log-ratios, lengths swapped: the short-chosen pair's gradient is larger; with
    the opposite sign (-alpha) it would be smaller."""
    def grad_on_chosen(len_w, len_l):
        batch = PairBatch(seq(-10.0, len_w, grad=True), seq(-12.0, len_l), seq(-11.0, len_w), seq(-11.5, len_l))
        get_objective("rdpo_length", beta=0.1, alpha=0.05)(batch).loss.backward()
        return -batch.policy_chosen.token_logps.grad[0, 0].item()

    short_chosen, long_chosen = grad_on_chosen(3, 8), grad_on_chosen(8, 3)
    assert short_chosen > long_chosen
    assert short_chosen == pytest.approx(0.1 / (1 + math.exp(0.15 + 0.05 * (3 - 8))), abs=1e-12)
