"""SparsePO with learned masks (methods/objectives.md §C #2): spec toy values, L1 halving, reductions to DPO / TDPO,
padding, and gradients reaching the mask parameters (not the hidden states)."""
import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives import PairBatch, SequenceLogps, get_objective

F64 = dict(dtype=torch.float64)
GARBAGE = 9.0  # written into padded positions; must never matter


def toy(kl=True, hidden=None, grad=False):
    """Spec toy: chosen 3 valid tokens (4th padded), rejected 4; policy = h, reference = 0 per token."""
    h_w, h_l = [0.2, -0.1, 0.5, GARBAGE], [-0.3, 0.1, -0.2, -0.4]
    mw, ml = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    pol_w = torch.tensor([h_w], **F64, requires_grad=grad)
    pol_l = torch.tensor([h_l], **F64, requires_grad=grad)
    zero = lambda m: SequenceLogps(torch.zeros(1, 4, **F64), m)  # noqa: E731
    klw = torch.tensor([[0.01, 0.02, 0.05, GARBAGE]], **F64) * kl
    kll = torch.tensor([[0.03, 0.0, 0.01, 0.02]], **F64) * kl
    hid = hidden if hidden is not None else torch.randn(2, 1, 4, 6, **F64)
    extras = {"chosen_token_kl": klw, "rejected_token_kl": kll, "chosen_hidden": hid[0], "rejected_hidden": hid[1]}
    return PairBatch(SequenceLogps(pol_w, mw), SequenceLogps(pol_l, ml), zero(mw), zero(ml), extras)


COMMON = {"chosen": torch.tensor([[1.0, 0.0, 0.5, 0.7]], **F64), "rejected": torch.tensor([[0.2, 1.0, 0.0, 0.3]], **F64)}


def with_given_masks(obj):
    """Replace the mask network by the spec's common mask (channel 0 of the hidden states carries it)."""
    obj.token_masks = lambda hidden, kind: hidden[..., 0]
    return obj


def given_hidden():
    return torch.stack([COMMON["chosen"], COMMON["rejected"]])[..., None].expand(2, 1, 4, 3)


def test_spec_toy_common_mask():
    out = with_given_masks(get_objective("sparsepo", beta=0.1))(toy(hidden=given_hidden()))
    assert out.metrics["sparse/logit"].item() == pytest.approx(0.1 * (0.53 + 0.023), abs=1e-12)  # u=.53, d=-.023
    assert out.loss.item() == pytest.approx(0.6658793931, abs=1e-9)


def test_spec_toy_l1_halved_for_common_mask():
    obj = with_given_masks(get_objective("sparsepo", beta=0.1, l1_u=1e-3, l1_d=1e-3))
    assert obj(toy(hidden=given_hidden())).loss.item() == pytest.approx(0.6688793931, abs=1e-9)
    # independent masks: no halving, L1 of (1.5 + 1.5) counted twice at full weight
    obj = with_given_masks(get_objective("sparsepo", beta=0.1, l1_u=1e-3, l1_d=1e-3, independent=True))
    assert obj(toy(hidden=given_hidden())).loss.item() == pytest.approx(0.6658793931 + 6e-3, abs=1e-9)


def test_masks_off_reduce_to_tdpo_and_dpo():
    tdpo = get_objective("sparsepo", beta=0.1, mask_on_reward=False, mask_on_kl=False)
    assert tdpo(toy()).loss.item() == pytest.approx(0.6246655658, abs=1e-9)
    no_kl = toy(kl=False)
    assert tdpo(no_kl).loss.item() == pytest.approx(0.6255951823, abs=1e-9)
    torch.testing.assert_close(tdpo(no_kl).losses, get_objective("dpo", beta=0.1)(no_kl).losses, rtol=0, atol=1e-12)


def test_learned_mask_starts_at_ones():
    # w = 0, b = 1 at init: every mask is 1, so the loss is the all-ones value plus L1 = lengths (3 + 4), halved x2
    assert get_objective("sparsepo", beta=0.1)(toy()).loss.item() == pytest.approx(0.6246655658, abs=1e-9)
    out = get_objective("sparsepo", beta=0.1, l1_u=1e-3, l1_d=1e-3, hidden_size=6)(toy())
    assert out.loss.item() == pytest.approx(0.6246655658 + 1e-3 * 7, abs=1e-9)


def test_padding_contributes_nothing_even_with_nonzero_mask():
    obj = with_given_masks(get_objective("sparsepo", beta=0.1))
    hid = given_hidden().clone()
    hid[0, 0, 3] = 100.0  # mask value at chosen's padded position
    assert obj(toy(hidden=hid)).loss.item() == pytest.approx(0.6658793931, abs=1e-9)


def test_gradients_reach_mask_parameters_not_hidden_states():
    obj = get_objective("sparsepo", beta=0.1, l1_u=1e-3, l1_d=1e-3, independent=True, hidden_size=6)
    assert sorted(obj.nets) == ["d", "u"]
    hid = torch.randn(2, 1, 4, 6, **F64, requires_grad=True)
    batch = toy(hidden=hid, grad=True)
    obj(batch).loss.backward()
    for name, p in obj.named_parameters():
        if name.endswith("1.weight"):  # the projection of each mask network
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert hid.grad is None
    assert batch.policy_chosen.token_logps.grad[0, 3] == 0  # padded position


def test_training_the_masks_lowers_the_loss():
    torch.manual_seed(0)
    obj = get_objective("sparsepo", beta=0.1, hidden_size=6)
    batch = toy(hidden=torch.randn(2, 1, 4, 6, **F64))
    opt = torch.optim.SGD(obj.parameters(), lr=0.5)
    first = obj(batch).loss.item()
    for _ in range(20):
        opt.zero_grad()
        obj(batch).loss.backward()
        opt.step()
    assert obj(batch).loss.item() < first - 1e-3


def test_hidden_size_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="hidden_size"):
        get_objective("sparsepo", hidden_size=5)(toy())


def test_logged_rewards_are_beta_times_masked_reward_plus_masked_kl_term():
    """objectives.md §C #2 gotcha: SparsePO logs rewards beta (U + Dseq) per side, not DPO's beta h. Spec toy, common
    mask: U_w = .2 + .5 * .5 = .45, Dseq_w = -(.01 + .5 * .05) = -.035; U_l = -.06 + .1 - .12 = -.08,
    Dseq_l = -(.2 * .03 + .3 * .02) = -.012."""
    out = with_given_masks(get_objective("sparsepo", beta=0.1))(toy(hidden=given_hidden()))
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1 * (0.45 - 0.035), abs=1e-12)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(0.1 * (-0.08 - 0.012), abs=1e-12)
    assert out.metrics["kl/chosen"].item() == pytest.approx(0.035, abs=1e-12)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.1 * (0.53 - 0.023), abs=1e-12)
