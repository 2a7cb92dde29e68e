"""f-SFT (methods/objectives.md §C #10, preflab's own family): zero at the reference, SFT gradient for reverse KL,
closed-form gradients of the saturating maps, hand values."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective
from preflab.objectives._fdiv import FDIV_TYPES

F64 = dict(dtype=torch.float64)


def batch_of(h, S=-10.0, n=5, grad=False):
    """Chosen: n tokens summing to S; reference: S - h; rejected sides arbitrary (ignored)."""
    mask = torch.arange(7) < n
    tok = torch.where(mask, torch.tensor(S / n, **F64), torch.tensor(4.0, **F64))[None].clone().requires_grad_(grad)
    one = lambda v: SequenceLogps.from_sums(torch.tensor([v], **F64))  # noqa: E731
    return PairBatch(SequenceLogps(tok, mask[None]), one(-3.0), one(S - h), one(-1.0)), tok


@pytest.mark.parametrize("kind", FDIV_TYPES)
def test_zero_at_reference(kind):
    out = get_objective("f_sft", f_divergence=kind, beta=0.7)(batch_of(0.0)[0])
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)


def test_reverse_kl_gradient_is_sft_gradient():
    batch, tok = batch_of(1.3, grad=True)
    get_objective("f_sft", f_divergence="reverse_kl", beta=0.5)(batch).loss.backward()
    expected = torch.where(batch.policy_chosen.mask, -1.0, 0.0).to(torch.float64)  # d(-S)/d lp_t
    torch.testing.assert_close(tok.grad, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind,grad_of_h", [("forward_kl", lambda bh: math.exp(-bh)),
                                            ("js_divergence", lambda bh: 1 / (1 + math.exp(bh)))])
def test_saturating_gradients(kind, grad_of_h):
    for h in (-2.0, 0.5, 3.0):
        batch, tok = batch_of(h, grad=True)
        get_objective("f_sft", f_divergence=kind, beta=0.8)(batch).loss.backward()
        assert tok.grad[0, 0].item() == pytest.approx(-grad_of_h(0.8 * h), abs=1e-12)


def test_hand_values_and_token_mean():
    # js, beta = 1, h = 1: -(ln 2 + log sigmoid(1))
    out = get_objective("f_sft", f_divergence="js_divergence")(batch_of(1.0)[0])
    assert out.loss.item() == pytest.approx(-(math.log(2) - math.log1p(math.exp(-1.0))), abs=1e-12)
    # forward_kl, token mean: h / |y| = 2 / 5 -> e^{-0.4} - 1
    out = get_objective("f_sft", f_divergence="forward_kl", token_agg="mean")(batch_of(2.0)[0])
    assert out.loss.item() == pytest.approx(math.exp(-0.4) - 1, abs=1e-12)


def test_composes_with_dpo():
    batch = batch_of(1.0)[0]
    combo = get_objective(["dpo", "f_sft"], loss_weights=[1.0, 0.5])(batch)
    parts = get_objective("dpo")(batch).loss + 0.5 * get_objective("f_sft")(batch).loss
    assert combo.loss.item() == pytest.approx(parts.item(), abs=1e-12)
