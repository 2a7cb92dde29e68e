"""preflab's plain-torch schedule, inverse steps and DDIM sampler equal diffusers' schedulers (SD1.5 config)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from preflab.diffusion.guidance import ddim_sample, sampling_timesteps  # noqa: E402
from preflab.diffusion.inversion import ddim_variance, inverse_grid, inverse_step  # noqa: E402
from preflab.diffusion.schedule import NoiseSchedule  # noqa: E402
from preflab.diffusion.tiny import sd_schedule  # noqa: E402

SD = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
          clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def test_alphas_noise_and_velocity_match_diffusers():
    ddpm = diffusers.DDPMScheduler(**{k: v for k, v in SD.items() if k not in ("set_alpha_to_one",)},
                                   prediction_type="v_prediction")
    ours = NoiseSchedule.from_scheduler(ddpm)
    torch.testing.assert_close(ours.alphas_cumprod, sd_schedule().alphas_cumprod, atol=1e-6, rtol=0)  # diffusers: fp32
    assert ours.prediction_type == "v_prediction" and ours.initial_alpha_cumprod == 1.0
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, eps, t), ddpm.add_noise(x0, eps, t), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.target(x0, eps, t), ddpm.get_velocity(x0, eps, t), atol=1e-6, rtol=0)


def test_inverse_steps_match_ddim_inverse_scheduler():
    inv = diffusers.DDIMInverseScheduler(**SD)
    inv.set_timesteps(10)
    assert inverse_grid(10).tolist() == inv.timesteps.tolist() == list(range(1, 1000, 100))
    schedule = NoiseSchedule.from_scheduler(inv)
    assert schedule.initial_alpha_cumprod == pytest.approx(float(inv.alphas_cumprod[0]))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for tau in inv.timesteps.tolist():
        out = torch.randn(2, 4, 8, 8, generator=g)
        expected = inv.step(out, tau, x).prev_sample
        abar_from = schedule.abar(torch.full((2,), tau - 100))
        got = inverse_step(x, out, abar_from, schedule.abar(torch.full((2,), tau)), "epsilon")
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        x = expected


def test_variance_and_sampler_match_ddim_scheduler():
    ddim = diffusers.DDIMScheduler(**{**SD, "timestep_spacing": "trailing"})
    schedule = NoiseSchedule.from_scheduler(ddim)
    for a, b in [(101, 1), (901, 801), (999, 901), (1001, 901)]:
        expected = ddim._get_variance(min(a, 999), b)
        assert ddim_variance(schedule, torch.tensor([a]), torch.tensor([b])).item() == pytest.approx(float(expected),
                                                                                                 rel=1e-5)
    ddim.set_timesteps(10)
    assert sampling_timesteps(10).tolist() == ddim.timesteps.tolist()
    # one DDIM step with a fixed linear "model" equals diffusers' step
    torch.testing.assert_close(*_ten_steps_both_ways(ddim, schedule, seed=2), atol=1e-5, rtol=1e-5)


def test_leading_spacing_and_its_sampler_match_ddim_scheduler():
    """diffusers' "leading" spacing (SD1.5's own scheduler config): arange(K) * (T // K) + steps_offset, descending
    -- [901, 801, ..., 1] with steps_offset 1 -- and the 10-step DDIM run on it equals diffusers'."""
    ddim = diffusers.DDIMScheduler(**{**SD, "timestep_spacing": "leading"})
    ddim.set_timesteps(10)
    assert sampling_timesteps(10, spacing="leading").tolist() == ddim.timesteps.tolist() == list(range(901, 0, -100))
    schedule = NoiseSchedule.from_scheduler(ddim)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    model = lambda x, t: 0.3 * x + 0.01 * t.reshape(-1, 1, 1, 1).float() / 1000  # noqa: E731
    x = x_T
    for t in ddim.timesteps:
        x = ddim.step(model(x, t.reshape(1).expand(2)), t, x).prev_sample
    torch.testing.assert_close(ddim_sample(model, x_T, schedule, 10, spacing="leading"), x, atol=1e-5, rtol=1e-5)


def _ten_steps_both_ways(ddim, schedule, seed):
    """(preflab's ddim_sample, diffusers' DDIMScheduler.step loop) of 10 steps of a fixed linear "model" from one x_T."""
    ddim.set_timesteps(10)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    model = lambda x, t: 0.3 * x + 0.01 * t.reshape(-1, 1, 1, 1).float() / 1000  # noqa: E731
    x = x_T
    for t in ddim.timesteps:
        x = ddim.step(model(x, t.reshape(1).expand(2)), t, x).prev_sample
    return ddim_sample(model, x_T, schedule, 10), x


def test_v_prediction_sampler_matches_ddim_scheduler_landing_on_alpha_one():
    """With prediction_type v_prediction, (x0_hat, eps_hat) = (alpha x - sigma v, alpha v + sigma x) as diffusers'
    DDIMScheduler.step; with set_alpha_to_one the last step lands on abar = 1 (t = -1 reads initial_alpha_cumprod,
    not abar_0). The whole 10-step DDIM run equals diffusers'."""
    ddim = diffusers.DDIMScheduler(**{**SD, "timestep_spacing": "trailing", "set_alpha_to_one": True,
                                      "prediction_type": "v_prediction"})
    schedule = NoiseSchedule.from_scheduler(ddim)
    assert schedule.abar(torch.tensor([-1, 0])).tolist() == [1.0, float(ddim.alphas_cumprod[0])]
    torch.testing.assert_close(*_ten_steps_both_ways(ddim, schedule, seed=3), atol=1e-5, rtol=1e-5)
