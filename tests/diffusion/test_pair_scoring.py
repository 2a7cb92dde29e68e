"""The diffusion scorer: K1 (a pair shares t and eps), -MSE as sequence sums, identical images, per-image captions,
the scheduler's native target (methods §0.2, §45; RELIABILITY.md K1)."""
import math

import pytest
import torch

from preflab.diffusion.loss import per_sample_mse
from preflab.diffusion.noising import PairNoiser
from preflab.diffusion.tiny import TinyDenoiser, sd_schedule, smooth_vs_noisy_pairs
from preflab.errors import ConfigError
from preflab.objectives import get_objective
from preflab.scoring.diffusion import DiffusionPairs, DiffusionPairScorer, noiser_for

SHAPE = (2, 4, 4)


class Spy:
    """Wraps a denoiser and records every (x_t, t, cond) it is called with."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, x, t, cond):
        self.calls.append((x.detach().clone(), t.clone(), None if cond is None else cond.clone()))
        return self.inner(x, t, cond)


def pairs(n=6, seed=0, cond_dim=3):
    g = torch.Generator().manual_seed(seed)
    chosen, rejected = smooth_vs_noisy_pairs(n, SHAPE, generator=g)
    return DiffusionPairs(chosen, rejected, torch.randn(n, 5, cond_dim, generator=g))


def test_k1_pair_shares_noise_and_timestep():
    schedule = sd_schedule()
    spy = Spy(TinyDenoiser(SHAPE, cond_dim=3))
    batch = pairs()
    scored = DiffusionPairScorer(PairNoiser(schedule))(spy, batch, generator=torch.Generator().manual_seed(3))
    (x, t, _), = spy.calls
    b = batch.chosen.shape[0]
    assert torch.equal(t[:b], t[b:]) and len(set(t[:b].tolist())) > 1  # shared per pair, varied across pairs
    alpha, sigma = schedule.alpha_sigma(t[:b], batch.chosen)
    eps_w, eps_l = (x[:b] - alpha * batch.chosen) / sigma, (x[b:] - alpha * batch.rejected) / sigma
    torch.testing.assert_close(eps_w, eps_l, atol=1e-4, rtol=0)
    assert torch.equal(scored.extras["timesteps"], t[:b])
    noised = PairNoiser(schedule)(batch.chosen, batch.rejected, torch.Generator().manual_seed(3))
    assert noised.noise_chosen is noised.noise_rejected


def test_scores_are_minus_per_sample_mse_of_one_forward():
    schedule = sd_schedule()
    policy, reference = TinyDenoiser(SHAPE, cond_dim=3, seed=1), TinyDenoiser(SHAPE, cond_dim=3, seed=2)
    batch = pairs()
    scorer = DiffusionPairScorer(PairNoiser(schedule))
    noised = scorer.noise(policy, batch, torch.Generator().manual_seed(0))
    scored = scorer(policy, batch, reference, noised=noised)
    for model, side_w, side_l in ((policy, scored.policy_chosen, scored.policy_rejected),
                                  (reference, scored.ref_chosen, scored.ref_rejected)):
        err = lambda x, target: ((model(x, noised.timesteps, batch.cond) - target) ** 2).mean((1, 2, 3))  # noqa: E731
        e_w, e_l = err(noised.noisy_chosen, noised.noise_chosen), err(noised.noisy_rejected, noised.noise_rejected)
        torch.testing.assert_close(side_w.sum, -e_w, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(side_l.sum, -e_l, atol=1e-6, rtol=1e-6)
    assert scored.policy_chosen.token_logps.requires_grad and not scored.ref_chosen.token_logps.requires_grad
    assert scored.policy_chosen.token_logps.dtype == torch.float32


def test_identical_images_give_log2_and_zero_model_gradient():
    schedule = sd_schedule()
    policy = TinyDenoiser(SHAPE, cond_dim=3, seed=1).double()
    reference = TinyDenoiser(SHAPE, cond_dim=3, seed=2).double()
    batch = pairs()
    same = DiffusionPairs(batch.chosen.double(), batch.chosen.double(), batch.cond.double())
    scored = DiffusionPairScorer(PairNoiser(schedule))(policy, same, reference, torch.Generator().manual_seed(0))
    out = get_objective("diffusion_dpo")(scored)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-12)
    out.loss.backward()
    assert max(p.grad.abs().max().item() for p in policy.parameters()) < 1e-9


def test_dcpo_same_caption_is_diffusion_dpo_and_captions_reach_only_their_image():
    schedule = sd_schedule()
    policy, reference = TinyDenoiser(SHAPE, cond_dim=3, seed=1), TinyDenoiser(SHAPE, cond_dim=3, seed=2)
    batch = pairs()
    scorer = DiffusionPairScorer(PairNoiser(schedule))
    noised = scorer.noise(policy, batch, torch.Generator().manual_seed(0))
    plain = scorer(policy, batch, reference, noised=noised)
    dual_same = scorer(policy, DiffusionPairs(batch.chosen, batch.rejected, batch.cond, batch.cond.clone()),
                       reference, noised=noised)
    for a, b in ((plain.policy_chosen, dual_same.policy_chosen), (plain.policy_rejected, dual_same.policy_rejected)):
        assert torch.equal(a.sum, b.sum)
    dual = scorer(policy, DiffusionPairs(batch.chosen, batch.rejected, batch.cond, batch.cond + 1.0), reference,
                  noised=noised)
    assert torch.equal(dual.policy_chosen.sum, plain.policy_chosen.sum)
    assert (dual.policy_rejected.sum - plain.policy_rejected.sum).abs().min() > 1e-6
    dcpo = get_objective("dcpo")(dual_same).losses
    torch.testing.assert_close(dcpo, get_objective("diffusion_dpo", beta=500.0)(plain).losses, atol=0, rtol=0)


def test_native_target_for_v_prediction():
    # DCPO's release forced the eps target on v-prediction SD 2.1; preflab follows the schedule's prediction_type
    schedule = sd_schedule(prediction_type="v_prediction")
    batch = pairs()
    noised = PairNoiser(schedule)(batch.chosen, batch.rejected, torch.Generator().manual_seed(0))
    alpha, sigma = schedule.alpha_sigma(noised.timesteps, batch.chosen)
    torch.testing.assert_close(noised.target_chosen, alpha * noised.noise_chosen - sigma * batch.chosen)
    assert not torch.allclose(noised.target_chosen, noised.noise_chosen, atol=1e-3)


def test_noiser_bounds_and_declarations():
    schedule = sd_schedule()
    noiser = PairNoiser(schedule, min_timestep=100, max_timestep=200)
    t = noiser.sample_timesteps(4000, torch.Generator().manual_seed(0))
    assert t.min().item() == 100 and t.max().item() == 199
    with pytest.raises(ConfigError, match="max_timestep"):
        PairNoiser(schedule, min_timestep=5, max_timestep=5)
    with pytest.raises(ConfigError, match="denoiser"):
        PairNoiser(schedule, mode="ddim_invert")(torch.zeros(1, 1), torch.zeros(1, 1))
    assert noiser_for(get_objective("diffusion_dpo"), schedule).mode == "forward"
    inpo = noiser_for(get_objective("diffusion_inpo"), schedule)
    assert (inpo.mode, inpo.num_inversion_steps, inpo.inversion_eta) == ("ddim_invert", 10, 0.1)
    smpo = noiser_for(get_objective("smpo_diffusion"), schedule, num_inversion_steps=10)
    assert (smpo.mode, smpo.num_inversion_steps, smpo.renoise_iters) == ("ddim_invert", 10, 1)
    with pytest.raises(ConfigError, match="self_npo_batch"):
        noiser_for(get_objective("self_npo"), schedule)


def test_mse_is_float32_for_half_inputs():
    a = torch.full((2, 3), 1.0, dtype=torch.float16)
    b = a + torch.tensor(1e-3, dtype=torch.float16)
    e = per_sample_mse(a, b)
    assert e.dtype == torch.float32 and e[0].item() == pytest.approx(float(b[0, 0] - a[0, 0]) ** 2, rel=1e-6)


def test_inverted_pair_inverts_each_image_under_its_own_caption():
    """mode ddim_invert (SmPO, InPO; DCPO's two captions): the loser is inverted under cond_rejected (the winner's
    caption only when it has none), and each side's target comes from its own inverted noise: both equal
    ddim_invert of that image alone. The mock denoiser predicts its conditioning, so a caption mix-up shows."""
    from preflab.diffusion.inversion import ddim_invert

    def predicts_cond(x_t, t, cond):
        return cond.to(x_t.dtype).expand_as(x_t)

    g = torch.Generator().manual_seed(0)
    chosen, rejected, c_w, c_l = (torch.randn(2, 1, 4, 4, generator=g) for _ in range(4))
    schedule, t = sd_schedule(), torch.tensor([300, 700])
    noiser = PairNoiser(schedule, mode="ddim_invert", num_inversion_steps=5)
    out = noiser(chosen, rejected, denoiser=predicts_cond, cond_chosen=c_w, cond_rejected=c_l, timesteps=t)
    for side, x0, cond in (("chosen", chosen, c_w), ("rejected", rejected, c_l)):
        x_t, eps = ddim_invert(predicts_cond, x0, cond, t, schedule, 5)
        torch.testing.assert_close(getattr(out, f"noisy_{side}"), x_t, rtol=0, atol=0)
        torch.testing.assert_close(getattr(out, f"noise_{side}"), eps, rtol=0, atol=0)
        torch.testing.assert_close(getattr(out, f"target_{side}"), eps, rtol=0, atol=0)  # epsilon target
    assert not torch.equal(out.noise_chosen, out.noise_rejected)
    shared = noiser(chosen, rejected, denoiser=predicts_cond, cond_chosen=c_w, timesteps=t)
    torch.testing.assert_close(shared.noise_rejected, ddim_invert(predicts_cond, rejected, c_w, t, schedule, 5)[1],
                               rtol=0, atol=0)
