"""Flex-DPO (methods/objectives.md §C #40): spec value, beta- = beta+ equals DPO, gradient ratio, SFT augmentation."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective

F64 = dict(dtype=torch.float64)


def fixture(grad=False):
    pol = [torch.tensor(v, **F64, requires_grad=grad) for v in ([-10.0], [-12.0])]
    return PairBatch.from_sums(pol[0], pol[1], torch.tensor([-11.0], **F64), torch.tensor([-11.5], **F64)), pol


def test_spec_value():
    out = get_objective("flex_dpo", beta=0.1, beta_rejected=0.08)(fixture()[0])
    assert out.loss.item() == pytest.approx(0.6255951823, abs=1e-9)


def test_equal_betas_is_dpo():
    g = torch.Generator().manual_seed(3)
    s = lambda: -torch.rand(6, generator=g, **F64) * 30  # noqa: E731
    batch = PairBatch.from_sums(s(), s(), s(), s())
    torch.testing.assert_close(get_objective("flex_dpo", beta=0.25, beta_rejected=0.25)(batch).losses,
                               get_objective("dpo", beta=0.25)(batch).losses, rtol=0, atol=1e-12)


def test_rejected_gradient_scales_by_beta_ratio():
    batch, pol = fixture(grad=True)
    get_objective("flex_dpo", beta=0.1, beta_rejected=0.08)(batch).loss.backward()
    z = 0.1 * 1.0 + 0.08 * 0.5
    sig = 1 / (1 + math.exp(z))
    assert pol[0].grad.item() == pytest.approx(-0.1 * sig, abs=1e-12)
    assert pol[1].grad.item() == pytest.approx(0.08 * sig, abs=1e-12)
    assert -pol[1].grad.item() / pol[0].grad.item() == pytest.approx(0.08 / 0.1, abs=1e-12)


def test_sft_augmentation_adds_mean_nll():
    # y_w = 5 tokens summing to -10: seq_mean NLL = 2; sum NLL = 10
    mask = torch.arange(6) < 5
    tok = torch.where(mask, torch.tensor(-2.0, **F64), torch.tensor(5.0, **F64))[None]
    ref = lambda v: SequenceLogps.from_sums(torch.tensor([v], **F64))  # noqa: E731
    batch = PairBatch(SequenceLogps(tok, mask[None]), ref(-12.0), ref(-11.0), ref(-11.5))
    base = get_objective("flex_dpo", beta=0.1, beta_rejected=0.1)(batch).loss.item()
    assert base == pytest.approx(0.6209570478, abs=1e-9)
    for agg, nll in (("seq_mean", 2.0), ("sum", 10.0)):
        out = get_objective("flex_dpo", beta=0.1, beta_rejected=0.1, sft_weight=0.3, nll_agg=agg)(batch)
        assert out.loss.item() == pytest.approx(base + 0.3 * nll, abs=1e-12)


def test_sft_term_defaults_to_the_papers_sequence_log_prob():
    # 3D-properties App. B.2.2 Eq. 7: -log sigmoid(beta Delta) - gamma log pi_theta(a+|x), the summed log-prob.
    # y_w = 5 tokens of -2 (S = -10), rejected -12, reference -11 / -11.5: beta Delta = 0.1 * 1.5
    mask = torch.arange(6) < 5
    tok = torch.where(mask, torch.tensor(-2.0, **F64), torch.tensor(5.0, **F64))[None]
    ref = lambda v: SequenceLogps.from_sums(torch.tensor([v], **F64))  # noqa: E731
    batch = PairBatch(SequenceLogps(tok, mask[None]), ref(-12.0), ref(-11.0), ref(-11.5))
    gamma = 0.3
    hand = math.log1p(math.exp(-0.15)) - gamma * (-10.0)
    out = get_objective("flex_dpo", beta=0.1, beta_rejected=0.1, sft_weight=gamma)(batch)
    assert out.loss.item() == pytest.approx(hand, abs=1e-12)
