"""Self-NPO's truncated rollout and NPO guidance (methods §4 checks)."""
import pytest
import torch

from preflab.diffusion.guidance import (cfg, cfg_with_negative_model, ddim_sample, lcm_guidance,
                                        negative_model_weights, npo_guidance)
from preflab.diffusion.self_npo import ema_update, renoise, self_npo_grid, truncated_teacher_target
from preflab.diffusion.tiny import ConstantEpsDenoiser, TinyDenoiser, sd_schedule


def test_renoise_marginal_matches_sigma_s():
    schedule = sd_schedule()
    n = 200_000
    x_e = torch.zeros(n, 1, dtype=torch.float64)  # x0 = 0, so x_e = sigma_300 eps
    x_e = x_e + schedule.alpha_sigma(torch.tensor([300]), x_e)[1] * torch.randn(n, 1, dtype=torch.float64,
                                                                                generator=torch.Generator().manual_seed(0))
    x_s = renoise(x_e, torch.full((n,), 300), torch.full((n,), 700), schedule,
                  torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    sigma_700 = (1 - schedule.abar(torch.tensor([700]))).sqrt().item()
    assert sigma_700 == pytest.approx(0.957851, abs=1e-6)
    assert x_s.std().item() == pytest.approx(sigma_700, abs=3e-3)


def test_guidance_conventions():
    cond, uncond = torch.tensor([2.0]), torch.tensor([0.5])
    assert lcm_guidance(cond, uncond, -1.0) is uncond and lcm_guidance(cond, uncond, -1.0).item() == 0.5
    assert lcm_guidance(cond, uncond, 2.0).item() == 5.0 and cfg(cond, uncond, 7.5).item() == 11.75


def test_grid_bookkeeping_and_exact_ddim_steps_with_a_constant_mock():
    grid = self_npo_grid()
    assert grid.tolist() == [40 * (i + 1) - 1 for i in range(25)]
    schedule = sd_schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(25, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64).expand(25, -1, -1, -1)
    mock = ConstantEpsDenoiser(eps[:1])  # one eps* for every sample (rollouts call it on subsets)
    out = truncated_teacher_target(mock, x0, None, None, schedule, start_index=torch.arange(25), noise=eps)
    assert out.start.tolist() == grid.tolist()
    assert out.end.tolist() == [max(int(s) - 200, 39) for s in out.start]
    # a constant-eps model maps alpha_t x0 + sigma_t eps* to alpha_{t'} x0 + sigma_{t'} eps* exactly
    torch.testing.assert_close(out.x_end, schedule.add_noise(x0, eps, out.end), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.target, x0, atol=1e-12, rtol=0)
    # the target is evaluated at x_e (the last call sees t_e for every sample)
    assert mock.timesteps[-1].tolist() == out.end.tolist()
    assert len(mock.timesteps) == 5 + 1
    # samples that run out of grid early still get their target at x_e (the release took the previous state)
    early = ConstantEpsDenoiser(eps[:1])
    out = truncated_teacher_target(early, x0[:3], None, None, schedule, start_index=torch.tensor([0, 1, 2]),
                                   noise=eps[:3])
    assert out.end.tolist() == [39] * 3 and early.calls == 3 and early.timesteps[-1].tolist() == [39] * 3
    torch.testing.assert_close(out.target, x0[:3], atol=1e-12, rtol=0)


def test_ema_update():
    teacher, student = TinyDenoiser((2,), seed=0), TinyDenoiser((2,), seed=1)
    old = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.999)
    for new, o, s in zip(teacher.parameters(), old, student.parameters()):
        torch.testing.assert_close(new, 0.999 * o + 0.001 * s, atol=1e-7, rtol=0)


def test_npo_sampler_reduces_to_cfg_and_differs_with_a_negative_model():
    schedule = sd_schedule()
    shape = (2, 4, 4)
    pos, neg = TinyDenoiser(shape, cond_dim=3, seed=0), TinyDenoiser(shape, cond_dim=3, seed=1)
    g = torch.Generator().manual_seed(0)
    x_T, cond = torch.randn(3, *shape, generator=g), torch.randn(3, 5, 3, generator=g)
    uncond = torch.zeros_like(cond)
    with torch.no_grad():
        plain = ddim_sample(lambda x, t: (lambda u, c: u + 4.0 * (c - u))(pos(x, t, uncond), pos(x, t, cond)),
                            x_T, schedule, 10)
        same = npo_guidance(pos, pos, x_T, cond, uncond, schedule, w=4.0)
        other = npo_guidance(pos, neg, x_T, cond, uncond, schedule, w=4.0)
        assert torch.equal(same, plain)  # theta_neg = theta_pos is plain CFG, bit for bit
        assert (other - plain).abs().max() > 1e-2
        t = torch.full((3,), 500)
        torch.testing.assert_close(cfg_with_negative_model(pos, neg, x_T, t, cond, uncond, 1.0), pos(x_T, t, cond))
    base = {"w": torch.tensor([1.0, 2.0])}
    positive = {"w": torch.tensor([3.0, 6.0])}
    delta = {"w": torch.tensor([0.5, -0.5])}
    assert negative_model_weights(base, positive, delta)["w"].tolist() == [3.5, 5.5]
    assert negative_model_weights(base, positive, delta, merge_weight=0.5)["w"].tolist() == [2.5, 3.5]
    # eta = 1/4 (not symmetric in base and positive): 1/4 [1, 2] + 3/4 [3, 6] + [0.5, -0.5] = [3.0, 4.5]; a key
    # without a delta is the merge alone
    merged = negative_model_weights({**base, "b": torch.tensor([4.0])}, {**positive, "b": torch.tensor([8.0])}, delta,
                                    merge_weight=0.25)
    assert merged["w"].tolist() == [3.0, 4.5] and merged["b"].tolist() == [7.0]


def test_renoising_step_is_drawn_strictly_above_the_truncated_step():
    """Self-NPO's step 3 (Wang et al. 2025, Self-NPO/train.py): the student sees x_s re-noised from x_e at
    s = t_e + 1 + floor(u (T - 1 - t_e)), u in [0, 1): always s > t_e, u = 0 gives t_e + 1, u -> 1 gives T - 1;
    x_s = alpha_s (x_e / alpha_{t_e} + sqrt(nu_s^2 - nu_{t_e}^2) eps'), written out here with nu^2 = (1 - abar)/abar."""
    from preflab.diffusion.self_npo import self_npo_batch

    schedule = sd_schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64)
    eps, eps2 = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(4, 2, 4, 4, generator=g,
                                                                                       dtype=torch.float64)
    student = ConstantEpsDenoiser(eps)
    u = torch.tensor([0.0, 0.25, 0.5, 1 - 1e-12], dtype=torch.float64)
    batch = self_npo_batch(student, ConstantEpsDenoiser(eps), x0, None, None, schedule, u=u, noise2=eps2,
                           start_index=torch.tensor([0, 5, 10, 24]), noise=eps.expand(4, -1, -1, -1))
    t_e = batch.extras["truncated_timesteps"]
    assert t_e.tolist() == [39, 39, 239, 799]       # five DDIM steps down the grid, 39 its floor
    want = [t + 1 + int(x * (999 - t)) for t, x in zip(t_e.tolist(), u.tolist())]
    assert batch.extras["timesteps"].tolist() == want == [40, 280, 620, 999]
    abar = schedule.abar
    x_e = schedule.add_noise(x0, eps.expand(4, -1, -1, -1), t_e)  # the constant-eps teacher's rollout is exact
    s = torch.tensor(want)
    nu2 = lambda t: (1 - abar(t)) / abar(t)  # noqa: E731
    coef = lambda v: v.reshape(-1, 1, 1, 1).to(x0)  # noqa: E731
    x_s = coef(abar(s).sqrt()) * (x_e / coef(abar(t_e).sqrt()) + coef((nu2(s) - nu2(t_e)).sqrt()) * eps2)
    torch.testing.assert_close(student.timesteps[-1], s)
    x0_theta = (x_s - coef((1 - abar(s)).sqrt()) * eps) / coef(abar(s).sqrt())   # eps-prediction -> x0
    torch.testing.assert_close(batch.policy.token_logps, x0_theta.reshape(4, -1), atol=1e-9, rtol=1e-9)


def test_zero_rollout_steps_is_no_rollout_and_the_config_and_help_take_it(capsys):
    """self_npo_rollout_steps: 0 does one defined thing (no DDIM step: x_e is the noised start x at t_e = t_s and the
    target is the teacher's x0-prediction there, one teacher call), so the option table takes >= 0 as the run's own
    check always did; --help said > 0 and the config refused 0 with a range the run did not hold. -1 is refused."""
    from preflab.cli import main
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    schedule = sd_schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64)
    teacher = TinyDenoiser((2, 4, 4), seed=3).double()
    calls = []
    counted = lambda x, t, c: calls.append(t) or teacher(x, t, c)  # noqa: E731
    start_index = torch.tensor([0, 3, 10, 24])
    out = truncated_teacher_target(counted, x0, None, None, schedule, rollout_steps=0, start_index=start_index,
                                   noise=eps)
    assert out.end.tolist() == out.start.tolist() == self_npo_grid()[start_index].tolist()
    x_start = schedule.add_noise(x0, eps, out.start)
    torch.testing.assert_close(out.x_end, x_start, atol=0, rtol=0)
    with torch.no_grad():
        by_hand, _ = schedule.split_prediction(teacher(x_start, out.start), x_start, out.start)
    torch.testing.assert_close(out.target, by_hand, atol=1e-12, rtol=0)
    assert len(calls) == 1
    base = {"task": "diffusion", "loss_type": "self_npo", "model_name_or_path": "builtin:tiny-sd",
            "dataset_name": "x.jsonl"}
    assert config_from_dict({**base, "self_npo_rollout_steps": 0}).self_npo_rollout_steps == 0
    with pytest.raises(ConfigError, match=r"self_npo_rollout_steps=-1 is not allowed: self_npo_rollout_steps must be "
                                          r">= 0 \(self_npo: teacher DDIM steps per example \(the truncation; 0: none"):
        config_from_dict({**base, "self_npo_rollout_steps": -1})
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("self_npo_rollout_steps"))
    assert "(int; >= 0) self_npo: teacher DDIM steps per example (the truncation; 0: none" in line
