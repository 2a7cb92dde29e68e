"""DDIM inversion with ReNoise and jitter (methods §5, §27, A2): mock exactness, the released grid mismatch, clamps,
per-sample t, no gradient."""
import pytest
import torch

from preflab.diffusion.inversion import ddim_invert, ddim_variance, inverse_grid
from preflab.diffusion.noising import PairNoiser
from preflab.diffusion.tiny import ConstantEpsDenoiser, TinyDenoiser, sd_schedule

SHAPE = (3, 4, 8, 8)


def fixture(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def max_err(a, b):
    return (a - b).abs().max().item()


def test_constant_mock_is_inverted_exactly_to_t():
    x0, eps = fixture()
    t = torch.tensor([550, 550, 550])
    x_t, eps_hat = ddim_invert(ConstantEpsDenoiser(eps), x0, None, t, sd_schedule(set_alpha_to_one=True), 10)
    assert max_err(eps_hat, eps) < 1e-5
    alpha, sigma = sd_schedule().alpha_sigma(t, x0)
    assert max_err(x_t, alpha * x0 + sigma * eps) < 1e-5
    # with the SD config's set_alpha_to_one=False the first step treats x0 as if at abar_0 != 1, so
    # eps_hat = eps + (alpha_t / sigma_t) (x0_hat - x0) with x0_hat = (x0 - sigma_0 eps) / alpha_0, exactly
    schedule = sd_schedule()
    _, eps_sd = ddim_invert(ConstantEpsDenoiser(eps), x0, None, t, schedule, 10)
    a0, s0 = (v.item() for v in schedule.alpha_sigma(torch.tensor([0]), torch.zeros(1)))
    expected = eps + alpha / sigma * ((x0 - s0 * eps) / a0 - x0)
    assert max_err(eps_sd, expected) < 1e-5
    assert 1e-2 < max_err(eps_sd, eps) < 0.1


def test_released_grid_snap_reproduces_the_mismatch():
    x0, eps = fixture(1)
    t = torch.full((3,), 550)
    schedule = sd_schedule(set_alpha_to_one=True)
    mock = ConstantEpsDenoiser(eps)
    _, floor = ddim_invert(mock, x0, None, t, schedule, 10, grid_snap="floor")
    assert mock.calls == 6 and [int(ts[0]) for ts in mock.timesteps] == [1, 101, 201, 301, 401, 501]
    assert 0.25 < max_err(floor, eps) < 0.4  # stops at 501 but uses abar_550
    _, exact = ddim_invert(ConstantEpsDenoiser(eps), x0, None, t, schedule, 10)
    assert max_err(exact, eps) < 1e-5


def test_renoise_with_constant_mock_equals_plain_and_costs_two_evals_per_step():
    x0, eps = fixture(2)
    eps = eps[:1]  # one eps* for all samples (samples with different t are stepped as subsets)
    t, schedule = torch.tensor([300, 700, 999]), sd_schedule()
    plain, renoised = ConstantEpsDenoiser(eps), ConstantEpsDenoiser(eps)
    a = ddim_invert(plain, x0, None, t, schedule, 5)
    b = ddim_invert(renoised, x0, None, t, schedule, 5, renoise_iters=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert renoised.calls == 2 * plain.calls


def test_renoise_refines_a_state_dependent_model():
    # with a model that depends on x, ReNoise moves the result (it is not plain inversion)
    model = TinyDenoiser(SHAPE[1:], seed=0)
    x0, _ = fixture(3)
    t = torch.full((3,), 600)
    a = ddim_invert(model, x0, None, t, sd_schedule(), 5)[0]
    b = ddim_invert(model, x0, None, t, sd_schedule(), 5, renoise_iters=1)[0]
    assert max_err(a, b) > 1e-4


def test_per_sample_t_equals_one_at_a_time():
    model = TinyDenoiser(SHAPE[1:], seed=0)
    x0, _ = fixture(4)
    t = torch.tensor([40, 550, 950])
    batch = ddim_invert(model, x0, None, t, sd_schedule(), 10, renoise_iters=1)
    for i in range(3):
        one = ddim_invert(model, x0[i:i + 1], None, t[i:i + 1], sd_schedule(), 10, renoise_iters=1)
        assert max_err(batch[0][i:i + 1], one[0]) < 1e-5 and max_err(batch[1][i:i + 1], one[1]) < 1e-4


def test_jitter_std_and_index_clamp():
    # floor mode, t = 2: one inverse step to tau = 1, then x += eta * xi * sqrt(Var(101 -> 1))
    schedule = sd_schedule()
    x0 = torch.zeros(2, 4, 128, 128)
    eps = torch.zeros_like(x0)
    base = ddim_invert(ConstantEpsDenoiser(eps), x0, None, torch.tensor([2, 2]), schedule, 10, grid_snap="floor")[0]
    jit = ddim_invert(ConstantEpsDenoiser(eps), x0, None, torch.tensor([2, 2]), schedule, 10, eta=0.1,
                      grid_snap="floor", generator=torch.Generator().manual_seed(0))[0]
    expected = 0.1 * ddim_variance(schedule, torch.tensor([101]), torch.tensor([1])).sqrt().item()
    a, b = schedule.abar(torch.tensor([101])).item(), schedule.abar(torch.tensor([1])).item()
    assert ddim_variance(schedule, torch.tensor([101]), torch.tensor([1])).item() == pytest.approx(
        (1 - b) / (1 - a) * (1 - a / b), rel=1e-12)
    assert (jit - base).std().item() == pytest.approx(expected, rel=0.01)
    # the released code reads abar[tau + 100] = abar[1001] at tau = 901; preflab clamps to 999
    assert ddim_variance(schedule, torch.tensor([1001]), torch.tensor([901])).item() == pytest.approx(
        ddim_variance(schedule, torch.tensor([999]), torch.tensor([901])).item(), rel=0)
    out = ddim_invert(ConstantEpsDenoiser(eps[:1, :, :8, :8]), x0[:1, :, :8, :8], None, torch.tensor([990]),
                      schedule, 10, eta=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out[0]).all()
    assert inverse_grid(5).tolist() == [1, 201, 401, 601, 801]


def test_no_gradient_flows_through_inversion():
    model = TinyDenoiser(SHAPE[1:], seed=0)
    x0, _ = fixture(5)
    with torch.enable_grad():
        noised = PairNoiser(sd_schedule(), mode="ddim_invert", num_inversion_steps=5, renoise_iters=1)(
            x0, x0.flip(0), torch.Generator().manual_seed(0), denoiser=model)
    for v in (noised.noisy_chosen, noised.noisy_rejected, noised.target_chosen, noised.noise_rejected):
        assert not v.requires_grad
    # eps_hat is consistent with x_t by construction: x_t = alpha_t x0 + sigma_t eps_hat
    alpha, sigma = sd_schedule().alpha_sigma(noised.timesteps, x0)
    assert max_err(noised.noisy_chosen, alpha * x0 + sigma * noised.noise_chosen) < 1e-5
