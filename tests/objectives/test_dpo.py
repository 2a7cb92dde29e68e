"""DPO against the shared fixture (methods/objectives.md §0, §A1, §B) and its closed-form gradient."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective

FIXTURE = dict(policy_chosen=[-10.0], policy_rejected=[-12.0], ref_chosen=[-11.0], ref_rejected=[-11.5])


def fixture(dtype=torch.float64, grad=False):
    t = {k: torch.tensor(v, dtype=dtype, requires_grad=grad and k.startswith("policy")) for k, v in FIXTURE.items()}
    return PairBatch.from_sums(**t), t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    out = get_objective("dpo", beta=0.1)(fixture(dtype)[0])
    assert out.loss.item() == pytest.approx(0.6209570478, abs=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.15, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 1.0
    assert out.metrics["logps/chosen"].item() == pytest.approx(-10.0)


def test_gradient_closed_form():
    batch, t = fixture(grad=True)
    get_objective("sigmoid", beta=0.1)(batch).loss.backward()
    expected = -0.1 * torch.sigmoid(torch.tensor(-0.15, dtype=torch.float64)).item()
    assert t["policy_chosen"].grad.item() == pytest.approx(expected, abs=1e-12)
    assert t["policy_chosen"].grad.item() == pytest.approx(-0.0462570155, abs=1e-9)
    assert t["policy_rejected"].grad.item() == pytest.approx(-expected, abs=1e-12)


def test_ln2_at_reference():
    batch = PairBatch.from_sums([-3.0, -7.0], [-5.0, -1.0], [-3.0, -7.0], [-5.0, -1.0])
    assert get_objective("dpo")(batch).loss.item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("kind,value", [("forward_kl", 0.6311544), ("js_divergence", 0.6606522),
                                        ("alpha_divergence", 0.6276909)])
def test_f_divergence_fixture_values(kind, value):
    out = get_objective("sigmoid", beta=0.1, f_divergence=kind)(fixture()[0])
    assert out.loss.item() == pytest.approx(value, abs=1e-6)


def test_weighted_sum_adds_components():
    batch = fixture()[0]
    single = get_objective("dpo", beta=0.1)(batch).loss
    combo = get_objective(["sigmoid", "dpo"], loss_weights=[0.25, 2.0], beta=0.1)(batch)
    assert combo.loss.item() == pytest.approx(2.25 * single.item())


def test_weighted_sum_per_example_losses_carry_the_weights():
    """The step trains on `losses` (it sums them over the examples), not on `loss`: in a weighted sum both carry
    loss_weights, losses_b = 0.25 * dpo_b + 2 * ipo_b on every row, and loss is their mean."""
    from preflab.objectives import example_batch

    batch = example_batch(get_objective("ipo"))
    dpo, ipo = get_objective("dpo", beta=0.1)(batch), get_objective("ipo", beta=0.1)(batch)
    combo = get_objective(["sigmoid", "ipo"], loss_weights=[0.25, 2.0], beta=0.1)(batch)
    assert batch.size > 1 and not torch.allclose(dpo.losses, ipo.losses)
    torch.testing.assert_close(combo.losses, 0.25 * dpo.losses + 2.0 * ipo.losses, rtol=0, atol=1e-12)
    assert combo.loss.item() == pytest.approx(combo.losses.mean().item(), abs=1e-12)


def _tokens(values, dtype=torch.float64, pad=0):
    """One response [1, T] with the given per-token log-probs, then `pad` padding positions holding junk."""
    lp = torch.tensor([list(values) + [-99.0] * pad], dtype=dtype)
    return SequenceLogps(lp, torch.tensor([[True] * len(values) + [False] * pad]))


def _ld_batch(dtype=torch.float64):
    # chosen 4 tokens, rejected 2 tokens -> shared length 2
    return PairBatch(_tokens([-1.0, -2.0, -3.0, -4.0], dtype, pad=1), _tokens([-1.0, -1.0], dtype, pad=3),
                     _tokens([-1.0, -1.0, -1.0, -1.0], dtype, pad=1), _tokens([-2.0, -2.0], dtype, pad=3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ld_alpha_by_hand(dtype):
    # S_ld: policy chosen -3 + 0.5*(-7) = -6.5, ref chosen -2 + 0.5*(-2) = -3 -> h_w = -3.5; h_l = -2 - (-4) = 2
    out = get_objective("sigmoid", beta=0.1, ld_alpha=0.5)(_ld_batch(dtype))
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(0.55)), abs=1e-6)
    assert out.metrics["logps/chosen"].item() == pytest.approx(-6.5, abs=1e-6)  # TRL logs the weighted log-probs
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-0.35, abs=1e-6)


def test_ld_alpha_one_is_dpo_and_zero_truncates():
    batch = _ld_batch()
    plain = get_objective("dpo", beta=0.1)(batch).loss
    assert get_objective("dpo", beta=0.1, ld_alpha=1.0)(batch).loss.item() == pytest.approx(plain.item(), abs=1e-12)
    truncated = PairBatch(_tokens([-1.0, -2.0]), _tokens([-1.0, -1.0]), _tokens([-1.0, -1.0]), _tokens([-2.0, -2.0]))
    assert get_objective("dpo", beta=0.1, ld_alpha=0.0)(batch).loss.item() == pytest.approx(
        get_objective("dpo", beta=0.1)(truncated).loss.item(), abs=1e-12)


def test_ld_alpha_out_of_range_rejected():
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="ld_alpha"):
        get_objective("dpo", ld_alpha=1.5)


def test_alpha_divergence_at_one_is_reverse_kl():
    batch = fixture()[0]
    assert get_objective("dpo", f_divergence="alpha_divergence", f_alpha=1.0)(batch).loss.item() == pytest.approx(
        0.6209570478, abs=1e-9)


@pytest.mark.parametrize("delta", [-40.0, -1.5, 0.0, 1.5, 25.0])
def test_swapping_chosen_and_rejected_adds_beta_delta(delta):
    """objectives.md §0 identity l(-z) = l(z) + z and §D's swap property: swapping y_w and y_l maps Delta to -Delta,
    so the swapped DPO loss is the loss plus beta * Delta."""
    pair = PairBatch.from_sums(*(torch.tensor([v], dtype=torch.float64) for v in (delta - 3.0, -3.0, -1.0, -1.0)))
    swapped = PairBatch.from_sums(*(torch.tensor([v], dtype=torch.float64) for v in (-3.0, delta - 3.0, -1.0, -1.0)))
    dpo = get_objective("dpo", beta=0.1)
    assert dpo(swapped).loss.item() == pytest.approx(dpo(pair).loss.item() + 0.1 * delta, abs=1e-12)
