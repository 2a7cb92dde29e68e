"""A few Diffusion-DPO steps through preflab.step.optimizer_step move the denoising errors the predicted way:
on held-out pairs, the policy's chosen-minus-rejected error falls below the reference's (methods §0.2 CPU demo)."""
import copy
import math

import pytest
import torch

from preflab.diffusion.tiny import TinyDenoiser, sd_schedule, smooth_vs_noisy_pairs, tiny_unet
from preflab.objectives import get_objective
from preflab.scoring.diffusion import DiffusionPairs, DiffusionPairScorer, noiser_for
from preflab.step import optimizer_step


def heldout_gap(scorer, policy, reference, pairs):
    """Mean of (Delta_theta - Delta_ref) and the share of pairs where it is < 0, at fixed (t, eps)."""
    with torch.no_grad():
        noised = scorer.noise(policy, pairs, torch.Generator().manual_seed(7))
        b = scorer(policy, pairs, reference, noised=noised)
    z = (b.policy_rejected.sum - b.ref_rejected.sum) - (b.policy_chosen.sum - b.ref_chosen.sum)  # Dth - Dref
    return z.mean().item(), (z < 0).float().mean().item()


def train(policy, objective, shape, steps, n, lr, cond_dim=8, p=0.7, **noising):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    reference = copy.deepcopy(policy).requires_grad_(False)
    cond = torch.randn(1, 4, cond_dim, generator=g)
    scorer = DiffusionPairScorer(noiser_for(objective, sd_schedule(), **noising))
    heldout = DiffusionPairs(*smooth_vs_noisy_pairs(32, shape, generator=torch.Generator().manual_seed(99)),
                             cond.expand(32, -1, -1))
    extras = lambda k: {"preference_prob": torch.full((k,), p)}  # noqa: E731  (read by smpo_diffusion only)
    heldout.extras = extras(32)
    before = heldout_gap(scorer, policy, reference, heldout)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        mb = DiffusionPairs(*smooth_vs_noisy_pairs(n, shape, generator=g), cond.expand(n, -1, -1), extras=extras(n))
        result = optimizer_step([mb], lambda m: objective(scorer(policy, m, reference, g)),
                                list(policy.parameters()), optimizer, max_grad_norm=1.0)
        assert not result.skipped and result.num_examples == n
        losses.append(result.loss)
    return before, heldout_gap(scorer, policy, reference, heldout), losses


SHAPE = (2, 4, 4)


def mlp():
    return TinyDenoiser(SHAPE, cond_dim=8, hidden=128)


def test_mlp_denoiser_learns_the_preference():
    before, after, losses = train(mlp(), get_objective("diffusion_dpo", beta=200.0), SHAPE, steps=40, n=16, lr=1e-3)
    assert before == (0.0, 0.0)  # policy == reference at the start
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert after[0] < -1e-2 and after[1] >= 0.9
    assert sum(losses[-5:]) / 5 < 0.6 * math.log(2)


def test_inpo_with_forward_noising_trains_exactly_like_diffusion_dpo():
    a, b = mlp(), mlp()
    ra = train(a, get_objective("diffusion_inpo", beta=200.0), SHAPE, steps=5, n=8, lr=1e-3, mode="forward")
    rb = train(b, get_objective("diffusion_dpo", beta=200.0), SHAPE, steps=5, n=8, lr=1e-3)
    assert ra[2] == rb[2] and ra[1] == rb[1]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_inversion_objectives_run_through_the_step_and_equal_preferences_do_not_move_smpo():
    for name in ("smpo_diffusion", "diffusion_inpo"):
        model = mlp()
        start = [p.detach().clone() for p in model.parameters()]
        _, _, losses = train(model, get_objective(name, beta=2000.0), SHAPE, steps=3, n=8, lr=1e-3)
        assert losses[0] == pytest.approx(math.log(2), abs=1e-6) and all(math.isfinite(v) for v in losses)
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), start))
    model = mlp()
    start = [p.detach().clone() for p in model.parameters()]
    _, _, losses = train(model, get_objective("smpo_diffusion", beta=2000.0), SHAPE, steps=3, n=8, lr=1e-3, p=0.5)
    # p = 0.5: log 2 (in float32) and zero gradient throughout
    assert losses == [pytest.approx(math.log(2), abs=1e-6)] * 3
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), start))


def test_tiny_unet_learns_the_preference():
    pytest.importorskip("diffusers")
    shape = (4, 8, 8)
    before, after, losses = train(tiny_unet(cross_attention_dim=8), get_objective("diffusion_dpo", beta=200.0),
                                  shape, steps=8, n=8, lr=3e-4)
    assert before == (0.0, 0.0) and losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert after[0] < -1e-2 and after[1] >= 0.9
    assert losses[-1] < 0.1
