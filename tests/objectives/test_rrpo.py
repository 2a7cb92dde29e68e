"""RRPO (methods/objectives.md §C #17): spec toy, one phrase over the whole response equals DPO, KL on chosen only,
closed-form gradient (shared tokens get none)."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective

F64 = dict(dtype=torch.float64)


def toy(grad=False, alpha_kl=True):
    """Spec toy: chosen 5 tokens, rejected 6; policy = h per token, reference = 0."""
    pw = torch.tensor([[0.1, 0.3, -0.2, 0.0, 0.4]], **F64, requires_grad=grad)
    pl = torch.tensor([[0.1, -0.5, -0.1, 0.0, -0.3, 0.2]], **F64, requires_grad=grad)
    mw, ml = torch.ones(1, 5, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool)
    extras = {"chosen_phrase_ids": torch.tensor([[0, 1, 1, 0, 2]]),
              "rejected_phrase_ids": torch.tensor([[0, 1, 0, 0, 2, 2]]),
              "chosen_token_kl": torch.tensor([[0.01, 0.02, 0.03, 0.0, 0.05]], **F64),
              "rejected_token_kl": torch.full((1, 6), 0.5, **F64)}
    return PairBatch(SequenceLogps(pw, mw), SequenceLogps(pl, ml), SequenceLogps(torch.zeros(1, 5, **F64), mw),
                     SequenceLogps(torch.zeros(1, 6, **F64), ml), extras)


def test_spec_toy_value():
    out = get_objective("rrpo", beta=0.1, alpha=0.01)(toy())
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.1 * 1.1, abs=1e-12)  # u = 0.6 + 0.5
    assert out.metrics["kl/chosen"].item() == pytest.approx(0.11, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.6407589186, abs=1e-9)


def test_rejected_kl_is_ignored():
    batch = toy()
    batch.extras["rejected_token_kl"] = torch.full((1, 6), 100.0, **F64)
    assert get_objective("rrpo")(batch).loss.item() == pytest.approx(0.6407589186, abs=1e-9)


def test_one_phrase_over_all_tokens_and_no_kl_is_dpo():
    g = torch.Generator().manual_seed(0)
    B, T = 3, 6
    lens = torch.tensor([2, 6, 4])
    mask = torch.arange(T) < lens[:, None]
    s = lambda: SequenceLogps(-torch.rand(B, T, generator=g, **F64) * 3, mask)  # noqa: E731
    batch = PairBatch(s(), s(), s(), s(), {"chosen_phrase_ids": mask.long() * 7, "rejected_phrase_ids": mask.long() * 7,
                                           "chosen_token_kl": torch.rand(B, T, generator=g, **F64)})
    torch.testing.assert_close(get_objective("rrpo", beta=0.3, alpha=0.0)(batch).losses,
                               get_objective("dpo", beta=0.3)(batch).losses, rtol=0, atol=1e-12)


def test_gradient_closed_form():
    batch = toy(grad=True)
    get_objective("rrpo", beta=0.1, alpha=0.01)(batch).loss.backward()
    g = -0.1 / (1 + math.exp(0.11))  # d l(beta u) / du * beta
    torch.testing.assert_close(batch.policy_chosen.token_logps.grad,
                               torch.tensor([[0.0, g, g, 0.0, g]], **F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(batch.policy_rejected.token_logps.grad,
                               torch.tensor([[0.0, -g, 0.0, 0.0, -g, -g]], **F64), rtol=0, atol=1e-12)


def test_chosen_kl_at_padded_positions_adds_nothing():
    """The spec toy with the chosen response padded by two positions holding junk log-probs, KL values and phrase
    ids: loss and kl/chosen are the unpadded toy's (D sums the KL over the response's own tokens only)."""
    base = toy()
    pad = lambda t, v: torch.cat([t, torch.full((1, 2), v, dtype=t.dtype)], -1)  # noqa: E731
    mw = pad(base.policy_chosen.mask, False)
    extras = dict(base.extras, chosen_token_kl=pad(base.extras["chosen_token_kl"], 9.0),
                  chosen_phrase_ids=pad(base.extras["chosen_phrase_ids"], 0))
    batch = PairBatch(SequenceLogps(pad(base.policy_chosen.token_logps, -99.0), mw), base.policy_rejected,
                      SequenceLogps(pad(base.ref_chosen.token_logps, -7.0), mw), base.ref_rejected, extras)
    out = get_objective("rrpo", beta=0.1, alpha=0.01)(batch)
    assert out.metrics["kl/chosen"].item() == pytest.approx(0.11, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.6407589186, abs=1e-9)
