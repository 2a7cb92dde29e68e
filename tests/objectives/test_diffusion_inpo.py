"""DDIM-InPO (methods §27): the loss is Diffusion-DPO's; the declared noising inverts with the policy; with
forward noising it is exactly Diffusion-DPO."""
import pytest
import torch

from preflab.diffusion.inversion import ddim_invert
from preflab.diffusion.tiny import ConstantEpsDenoiser, TinyDenoiser, sd_schedule
from preflab.objectives import PairBatch, get_objective
from preflab.scoring.diffusion import DiffusionPairs, DiffusionPairScorer, noiser_for


def test_loss_equals_diffusion_dpo_with_beta_2000():
    g = torch.Generator().manual_seed(0)
    e = 0.1 + 1e-3 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    batch = PairBatch.from_sums(-e[0], -e[1], -e[2], -e[3])
    inpo = get_objective("diffusion_inpo")
    assert inpo.beta == 2000.0
    torch.testing.assert_close(inpo(batch).losses, get_objective("diffusion_dpo", beta=2000.0)(batch).losses,
                               atol=0, rtol=0)


def test_declared_noising_inverts_with_the_policy_and_forward_mode_is_diffusion_dpo():
    schedule = sd_schedule()
    shape = (2, 4, 4)
    policy, reference = TinyDenoiser(shape, cond_dim=3, seed=0), TinyDenoiser(shape, cond_dim=3, seed=1)
    g = torch.Generator().manual_seed(0)
    pairs = DiffusionPairs(torch.randn(4, *shape, generator=g), torch.randn(4, *shape, generator=g),
                           torch.randn(4, 5, 3, generator=g))
    inpo = get_objective("diffusion_inpo")
    noiser = noiser_for(inpo, schedule)
    noised = DiffusionPairScorer(noiser).noise(policy, pairs, torch.Generator().manual_seed(1))
    # eta = 0.1 jitter: the inversion with the same draws and eta = 0 differs; eta = 0 is pure DDIM inversion
    pure = noiser_for(inpo, schedule, inversion_eta=0.0)(pairs.chosen, pairs.rejected, torch.Generator().manual_seed(1),
                                                           policy, pairs.cond, pairs.cond)
    direct = ddim_invert(policy, pairs.chosen, pairs.cond, pure.timesteps, schedule, 10)
    assert torch.equal(pure.noisy_chosen, direct[0]) and torch.equal(pure.noise_chosen, direct[1])
    assert (noised.noisy_chosen - pure.noisy_chosen).abs().max() > 1e-3
    # forward mode: the same scores as diffusion_dpo's scorer, draw for draw
    fwd = DiffusionPairScorer(noiser_for(inpo, schedule, mode="forward"))
    dpo = DiffusionPairScorer(noiser_for(get_objective("diffusion_dpo"), schedule))
    a = inpo(fwd(policy, pairs, reference, torch.Generator().manual_seed(2)))
    b = get_objective("diffusion_dpo", beta=2000.0)(dpo(policy, pairs, reference, torch.Generator().manual_seed(2)))
    assert torch.equal(a.losses, b.losses)


def test_inverted_targets_of_a_perfect_model_give_equal_errors():
    # a constant-eps "model" inverts both images to eps* exactly (alpha = 1 start), so every error is 0 -> log 2
    schedule = sd_schedule(set_alpha_to_one=True)
    eps = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    mock = ConstantEpsDenoiser(eps)
    pairs = DiffusionPairs(torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4))
    scored = DiffusionPairScorer(noiser_for(get_objective("diffusion_inpo"), schedule, inversion_eta=0.0))(
        mock, pairs, mock, torch.Generator().manual_seed(0))
    assert scored.policy_chosen.sum.abs().max().item() < 1e-9
    assert get_objective("diffusion_inpo")(scored).loss.item() == pytest.approx(0.6931471805599453, abs=1e-6)
