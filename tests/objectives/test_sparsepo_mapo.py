"""SparsePO activation masks (methods/objectives.md §C #2): the min-max mask, the spec toy, reductions to TDPO/DPO."""
import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective
from preflab.objectives.sparsepo_mapo import activation_mask

F64 = dict(dtype=torch.float64)


def toy(hidden_w, hidden_l, kl=True):
    h_w, h_l = [0.2, -0.1, 0.5, 9.0], [-0.3, 0.1, -0.2, -0.4]
    mw, ml = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    zero = lambda m: SequenceLogps(torch.zeros(1, 4, **F64), m)  # noqa: E731
    extras = {"chosen_token_kl": torch.tensor([[0.01, 0.02, 0.05, 9.0]], **F64) * kl,
              "rejected_token_kl": torch.tensor([[0.03, 0.0, 0.01, 0.02]], **F64) * kl,
              "chosen_hidden": torch.as_tensor(hidden_w, **F64)[None, :, None].expand(1, 4, 5),
              "rejected_hidden": torch.as_tensor(hidden_l, **F64)[None, :, None].expand(1, 4, 5)}
    return PairBatch(SequenceLogps(torch.tensor([h_w], **F64), mw), SequenceLogps(torch.tensor([h_l], **F64), ml),
                     zero(mw), zero(ml), extras)


def test_activation_mask_is_minmax_over_response_tokens():
    mask = torch.tensor([[True, True, True, False]])
    a = torch.tensor([[3.0, 1.0, 2.0, 50.0]], **F64)[..., None].expand(1, 4, 2)
    torch.testing.assert_close(activation_mask(a, mask), torch.tensor([[1.0, 0.0, 0.5, 0.0]], **F64))
    # z-normalising first changes nothing (affine invariance), as the code's z-norm + rescale
    torch.testing.assert_close(activation_mask(2.5 * a - 7, mask), activation_mask(a, mask))
    # a constant (or one-token) response gets mask 1 on its tokens
    one = torch.tensor([[True, False, False, False]])
    torch.testing.assert_close(activation_mask(a, one), torch.tensor([[1.0, 0.0, 0.0, 0.0]], **F64))


def test_spec_toy():
    # activations whose min-max rescaling is the spec's common mask [1, 0, .5] and [.2, 1, 0, .3]; padding ignored
    out = get_objective("sparsepo_mapo", beta=0.1)(toy([1.0, 0.0, 0.5, 123.0], [0.2, 1.0, 0.0, 0.3]))
    assert out.loss.item() == pytest.approx(0.6658793931, abs=1e-9)


def test_constant_activations_reduce_to_tdpo_and_dpo():
    obj = get_objective("sparsepo_mapo", beta=0.1)
    assert obj(toy([2.0] * 4, [-1.0] * 4)).loss.item() == pytest.approx(0.6246655658, abs=1e-9)
    batch = toy([2.0] * 4, [-1.0] * 4, kl=False)
    torch.testing.assert_close(obj(batch).losses, get_objective("dpo", beta=0.1)(batch).losses, rtol=0, atol=1e-12)
