"""GRPO loss by hand: advantages, clipping, the four normalisations, the KL term (objectives/grpo.py)."""
import math

import pytest
import torch

from preflab.errors import ConfigError, PreflabError
from preflab.objectives import ListBatch, SequenceLogps, get_objective
from preflab.objectives.grpo import group_advantages


def seqs(token_values, T=4, requires_grad=False):
    """[B][G] lists of per-token values -> SequenceLogps [B, G, T] (float64, padded with zeros)."""
    B, G = len(token_values), len(token_values[0])
    lp = torch.zeros(B, G, T, dtype=torch.float64)
    mask = torch.zeros(B, G, T, dtype=torch.bool)
    for b in range(B):
        for g in range(G):
            n = len(token_values[b][g])
            lp[b, g, :n] = torch.tensor(token_values[b][g], dtype=torch.float64)
            mask[b, g, :n] = True
    return SequenceLogps(lp.requires_grad_(requires_grad), mask)


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    adv, std = group_advantages(r, torch.ones_like(r, dtype=torch.bool))
    # mean 0.5; squared deviations sum to 0.5; Bessel: var = 0.5 / 3, std = 0.4082483
    assert math.isclose(std.item(), math.sqrt(0.5 / 3), rel_tol=1e-12)
    torch.testing.assert_close(adv, (r - 0.5) / (math.sqrt(0.5 / 3) + 1e-4))
    none, _ = group_advantages(r, torch.ones_like(r, dtype=torch.bool), "none")
    torch.testing.assert_close(none, r - 0.5)
    # an invalid entry is left out of mean and std and gets advantage 0
    r2 = torch.tensor([[1.0, 0.0, 0.5, 99.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True, False]])
    adv2, std2 = group_advantages(r2, valid)
    assert math.isclose(std2.item(), 0.5, rel_tol=1e-12)       # values 1, 0, 0.5: var = 0.5 / 2
    torch.testing.assert_close(adv2, torch.tensor([[0.5, -0.5, 0.0, 0.0]], dtype=torch.float64) / (0.5 + 1e-4))
    # batch scaling: group means, one std over every reward of the batch
    r3 = torch.tensor([[1.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    adv3, _ = group_advantages(r3, torch.ones_like(r3, dtype=torch.bool), "batch")
    torch.testing.assert_close(adv3, torch.tensor([[0.5, -0.5], [0.0, 0.0]], dtype=torch.float64) /
                               (r3.flatten().std() + 1e-4))
    # reasoning-multimodal-diffusion.md §18: R = [2.3, 1.5, 3.0, 0.0] -> A = [0.4657, -0.1552, 1.0089, -1.3194]
    r4 = torch.tensor([[2.3, 1.5, 3.0, 0.0]], dtype=torch.float64)
    adv4, _ = group_advantages(r4, torch.ones_like(r4, dtype=torch.bool))
    torch.testing.assert_close(adv4, torch.tensor([[0.4657, -0.1552, 1.0089, -1.3194]], dtype=torch.float64),
                               rtol=0, atol=5e-5)


def test_on_policy_gradient_is_minus_advantage_over_length():
    """No old log-probs: rho = 1, the loss value is -mean A (0 for a group) and d loss / d lp_t = -A_i / (|y_i| N)
    for grpo (N completions)."""
    policy = seqs([[[-1.0, -2.0], [-0.5, -0.5, -0.5]]], requires_grad=True)
    batch = ListBatch(policy, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    out = get_objective("grpo", loss_type="grpo")(batch)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert abs(out.loss.item()) < 1e-12
    out.loss.backward()
    grad = policy.token_logps.grad[0]
    torch.testing.assert_close(grad[0, :2], torch.full((2,), -a / (2 * 2), dtype=torch.float64))
    torch.testing.assert_close(grad[1, :3], torch.full((3,), a / (3 * 2), dtype=torch.float64))
    assert grad[0, 2:].abs().sum() == 0 and grad[1, 3:].abs().sum() == 0


@pytest.mark.parametrize("rho,adv,loss,grad,clipped", [
    (1.5, 1.0, -1.2, 0.0, "high"),    # above 1 + eps with A > 0: clipped, no gradient
    (1.5, -1.0, 1.5, 1.5, None),      # above 1 + eps with A < 0: the unclipped (pessimistic) term, gradient -A rho
    (0.5, 1.0, -0.5, -0.5, None),     # below 1 - eps with A > 0: unclipped
    (0.5, -1.0, 0.8, 0.0, "low"),     # below 1 - eps with A < 0: clipped, no gradient
    (1.1, 1.0, -1.1, -1.1, None),     # inside the region
])
def test_clipping_region(rho, adv, loss, grad, clipped):
    policy = seqs([[[-1.0]]], requires_grad=True)
    old = torch.tensor([[[-1.0 - math.log(rho), 0, 0, 0]]], dtype=torch.float64)
    batch = ListBatch(policy, torch.zeros(1, 1, dtype=torch.float64),
                      extras={"old_logps": old, "advantages": torch.tensor([[adv]], dtype=torch.float64)})
    out = get_objective("grpo", epsilon=0.2, loss_type="grpo")(batch)
    assert math.isclose(out.loss.item(), loss, rel_tol=1e-9)
    out.loss.backward()
    assert math.isclose(policy.token_logps.grad[0, 0, 0].item(), grad, abs_tol=1e-12)
    assert out.metrics["clip_ratio/low_mean"].item() == (clipped == "low")
    assert out.metrics["clip_ratio/high_mean"].item() == (clipped == "high")
    assert out.metrics["clip_ratio/region_mean"].item() == (clipped is not None)


def test_clip_higher_epsilon_high():
    policy = seqs([[[-1.0]]])
    old = torch.tensor([[[-1.0 - math.log(1.5), 0, 0, 0]]], dtype=torch.float64)
    extras = {"old_logps": old, "advantages": torch.tensor([[1.0]], dtype=torch.float64)}
    out = get_objective("grpo", epsilon_high=0.28)(ListBatch(policy, torch.zeros(1, 1), extras=extras))
    assert math.isclose(out.loss.item(), -1.28, rel_tol=1e-9)


def test_normalisations_grpo_bnpo_dapo_dr_grpo():
    """One group: completion 1 has 1 token with loss -1 (A = +1), completion 2 has 3 tokens with loss +1 (A = -1)."""
    policy = seqs([[[-1.0], [-1.0, -1.0, -1.0]]])
    extras = {"advantages": torch.tensor([[1.0, -1.0]], dtype=torch.float64)}

    def value(**params):
        return get_objective("grpo", **params)(ListBatch(policy, torch.zeros(1, 2), extras=extras)).loss.item()

    assert math.isclose(value(loss_type="grpo"), 0.0, abs_tol=1e-12)          # mean(-1/1, 3/3)
    assert math.isclose(value(loss_type="bnpo"), 0.5, rel_tol=1e-12)          # (-1 + 3) / 4 tokens
    assert math.isclose(value(loss_type="dapo"), 0.5, rel_tol=1e-12)
    assert math.isclose(value(loss_type="dr_grpo", max_completion_length=4), 0.25, rel_tol=1e-12)  # 2 / (2 * 4)
    assert math.isclose(value(loss_type="dr_grpo"), 0.25, rel_tol=1e-12)     # default: padded width T = 4
    assert math.isclose(value(loss_type="dr_grpo", max_completion_length=8), 0.125, rel_tol=1e-12)


def test_dapo_micro_batches_add_up_to_the_global_token_mean():
    """Two prompts with 3 and 7 completion tokens: split into two micro-batches with tokens_per_prompt = 10 / 2, the
    shared step's sum(losses) / examples equals the loss on the whole batch; bnpo's per-batch means do not."""
    full = seqs([[[-1.0], [-2.0, -1.0]], [[-0.5, -0.5, -0.5, -0.5], [-1.0, -3.0, -1.0]]], requires_grad=True)
    scores = torch.tensor([[1.0, 0.0], [0.2, 0.7]], dtype=torch.float64)
    obj = get_objective("grpo", loss_type="dapo")
    whole = obj(ListBatch(full, scores)).loss
    whole.backward()
    grad_whole = full.token_logps.grad.clone()
    full.token_logps.grad = None
    parts, bnpo = 0.0, 0.0
    for b in range(2):
        side = SequenceLogps(full.token_logps[b:b + 1], full.mask[b:b + 1])
        adv = group_advantages(scores, torch.ones_like(scores, dtype=torch.bool))[0][b:b + 1]
        out = obj(ListBatch(side, scores[b:b + 1], extras={"advantages": adv, "tokens_per_prompt": 10 / 2}))
        parts = parts + out.losses.sum() / 2
        bnpo += get_objective("grpo", loss_type="bnpo")(ListBatch(side, scores[b:b + 1],
                                                                  extras={"advantages": adv})).loss.item() / 2
    parts.backward()
    torch.testing.assert_close(parts.detach(), whole.detach())
    torch.testing.assert_close(full.token_logps.grad, grad_whole)
    assert abs(bnpo - whole.item()) > 1e-3


def test_kl_term_and_reference_declaration():
    """lp = -1, lp_ref = -2, equal rewards (A = 0): loss = beta * KL3 = beta * (e^-1 - (-1) - 1) = beta / e;
    d loss / d lp = beta * (1 - e^(lp_ref - lp)) without TRL 1.16's use_bias_correction_kl, and with it (the default:
    KL3 times rho = exp(lp - sg(lp)), value 1) beta * (1 - e^(lp_ref - lp) + KL3) = beta here."""
    assert get_objective("grpo").needs_reference is False
    obj = get_objective("grpo", beta=0.04, loss_type="grpo")
    assert obj.needs_reference is True
    policy = seqs([[[-1.0], [-1.0]]], requires_grad=True)
    ref = seqs([[[-2.0], [-2.0]]])
    out = obj(ListBatch(policy, torch.ones(1, 2, dtype=torch.float64), ref=ref))
    assert math.isclose(out.loss.item(), 0.04 * math.exp(-1), rel_tol=1e-12)
    assert math.isclose(out.metrics["kl"].item(), math.exp(-1), rel_tol=1e-12)
    out.loss.backward()
    expected = 0.04 * (1 - math.exp(-1) + math.exp(-1)) / 2      # grpo: mean over the 2 completions
    torch.testing.assert_close(policy.token_logps.grad[0, :, 0], torch.full((2,), expected, dtype=torch.float64))
    plain = seqs([[[-1.0], [-1.0]]], requires_grad=True)
    uncorrected = get_objective("grpo", beta=0.04, loss_type="grpo", use_bias_correction_kl=False)
    uncorrected(ListBatch(plain, torch.ones(1, 2, dtype=torch.float64), ref=ref)).loss.backward()
    expected = 0.04 * (1 - math.exp(-1)) / 2
    torch.testing.assert_close(plain.token_logps.grad[0, :, 0], torch.full((2,), expected, dtype=torch.float64))
    with pytest.raises(PreflabError, match="reference"):
        obj(ListBatch(policy, torch.ones(1, 2)))


def test_reward_metrics_and_validation():
    policy = seqs([[[-1.0], [-1.0]], [[-1.0], [-1.0]]])
    out = get_objective("grpo")(ListBatch(policy, torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)))
    assert math.isclose(out.metrics["reward"].item(), 0.75)
    assert math.isclose(out.metrics["reward_std"].item(), math.sqrt(0.5) / 2, rel_tol=1e-12)
    assert out.metrics["frac_reward_zero_std"].item() == 0.5
    with pytest.raises(ConfigError, match="loss_type"):
        get_objective("grpo", loss_type="ppo")
    with pytest.raises(ConfigError, match=">= 0"):
        get_objective("grpo", beta=-0.1)
