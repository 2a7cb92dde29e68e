"""Self-NPO's truncated self-distillation batch: teacher rollout, re-noising, student x0-prediction, EMA.

"Self-NPO: Data-Free Diffusion Model Enhancement via Truncated Diffusion Fine-Tuning" (Wang et al., 2025; released
G-U-N/Diffusion-NPO Self-NPO/train.py; methods/reasoning-multimodal-diffusion.md §4). Grid of K = 25 DDIM steps,
gap = T/K = 40, tau_i = gap (i + 1) - 1; nu_t = sigma_t / alpha_t.
1. i ~ U{0..K-1}, t_s = tau_i, x = alpha_{t_s} x0 + sigma_{t_s} eps.
2. Teacher rollout, no grad, <= `rollout_steps` DDIM steps down the grid with the LCM-guided prediction
   (teacher_guidance w = -1: the unconditional prediction); samples stop at tau_0. The state is x_e at t_e =
   tau_{max(i - 5, 0)}; the target is the teacher's x0-prediction *at x_e* (always; see the objective's deviations).
   rollout_steps 0 (allowed: self_npo_rollout_steps >= 0): no step, x_e = x at t_e = t_s, one teacher call.
3. s ~ U{t_e + 1 .. T - 1}, x_s = alpha_s (x_e / alpha_{t_e} + sqrt(nu_s^2 - nu_{t_e}^2) eps'), an exact draw of
   q(x_s | x_e).
4. Student x0_theta = x0-prediction of f_theta(x_s, s, c) (text-conditioned).
5. After each optimizer step, EMA: teacher <- decay * teacher + (1 - decay) * student (decay 0.999).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from preflab.diffusion.denoiser import Denoiser
from preflab.diffusion.guidance import lcm_guidance
from preflab.diffusion.schedule import NoiseSchedule
from preflab.objectives.base import SequenceLogps, UnpairedBatch


def self_npo_grid(num_ddim_steps: int = 25, num_train_timesteps: int = 1000) -> Tensor:
    """[K] ascending tau_i = (T/K)(i + 1) - 1."""
    gap = num_train_timesteps // num_ddim_steps
    return torch.arange(1, num_ddim_steps + 1, dtype=torch.long) * gap - 1


def renoise(x_e: Tensor, t_e: Tensor, s: Tensor, schedule: NoiseSchedule, noise: Tensor) -> Tensor:
    """x_s = alpha_s (x_e / alpha_{t_e} + sqrt(nu_s^2 - nu_{t_e}^2) eps'), s > t_e (per sample)."""
    nu2 = lambda t: (1 - schedule.abar(t)) / schedule.abar(t)  # noqa: E731
    alpha_e, _ = schedule.alpha_sigma(t_e, x_e)
    alpha_s, _ = schedule.alpha_sigma(s, x_e)
    extra = (nu2(s) - nu2(t_e)).clamp_min(0).sqrt().to(x_e).reshape((-1,) + (1,) * (x_e.dim() - 1))
    return alpha_s * (x_e / alpha_e + extra * noise)


@dataclass
class TruncatedTarget:
    """start [B] = t_s, end [B] = t_e, x_end [B, ...] = x_e, target [B, ...] = the teacher's x0 at (x_e, t_e)."""

    start: Tensor
    end: Tensor
    x_end: Tensor
    target: Tensor


def _teacher(teacher: Denoiser, x: Tensor, t: Tensor, cond: Any, uncond: Any, w: float) -> Tensor:
    uncond_pred = teacher(x, t, uncond)
    return uncond_pred if w == -1 else lcm_guidance(teacher(x, t, cond), uncond_pred, w)


def _take(c: Any, index: Tensor) -> Any:
    if isinstance(c, dict):  # e.g. SDXL's {"encoder_hidden_states", "added_cond_kwargs": {...}}
        return {k: _take(v, index) for k, v in c.items()}
    return c[index] if isinstance(c, Tensor) else c


@torch.no_grad()
def truncated_teacher_target(teacher: Denoiser, x0: Tensor, cond: Any, uncond: Any, schedule: NoiseSchedule,
                             generator: torch.Generator | None = None, num_ddim_steps: int = 25,
                             rollout_steps: int = 5, teacher_guidance: float = -1.0,
                             start_index: Tensor | None = None, noise: Tensor | None = None) -> TruncatedTarget:
    """Steps 1-2 of the module docstring (start_index / noise override the draws)."""
    grid = self_npo_grid(num_ddim_steps, schedule.num_train_timesteps).to(x0.device)
    b = x0.shape[0]
    j = torch.randint(0, num_ddim_steps, (b,), generator=generator) if start_index is None else start_index
    j = torch.as_tensor(j, dtype=torch.long).to(x0.device).clone()
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device) if noise is None else noise
    start = grid[j]
    x = schedule.add_noise(x0, eps, start)
    for _ in range(rollout_steps):
        active = torch.nonzero(j > 0).reshape(-1)
        if active.numel() == 0:
            break
        t_now, t_next = grid[j[active]], grid[j[active] - 1]
        x_a = x[active]
        pred = _teacher(teacher, x_a, t_now, _take(cond, active), _take(uncond, active), teacher_guidance)
        x0_hat, eps_hat = schedule.split_prediction(pred, x_a, t_now)
        alpha_n, sigma_n = schedule.alpha_sigma(t_next, x_a)
        x[active] = alpha_n * x0_hat + sigma_n * eps_hat
        j[active] -= 1
    end = grid[j]
    target, _ = schedule.split_prediction(_teacher(teacher, x, end, cond, uncond, teacher_guidance), x, end)
    return TruncatedTarget(start, end, x, target)


def self_npo_batch(student: Denoiser, teacher: Denoiser, x0: Tensor, cond: Any, uncond: Any,
                   schedule: NoiseSchedule, generator: torch.Generator | None = None, u: Tensor | None = None,
                   noise2: Tensor | None = None, **rollout) -> UnpairedBatch:
    """The `self_npo` objective's batch: policy = student x0_theta [B, D] (with grad), ref = teacher target.
    u [B] (float64 in [0, 1): the re-noising step's draw) and noise2 override the draws, as start_index / noise do
    (preflab.loops.diffusion draws all four per sample)."""
    tgt = truncated_teacher_target(teacher, x0, cond, uncond, schedule, generator, **rollout)
    T = schedule.num_train_timesteps
    if u is None:
        u = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)
    u = torch.as_tensor(u, dtype=torch.float64).to(x0.device)
    s = (tgt.end + 1 + (u * (T - 1 - tgt.end).double()).floor().long()).clamp(max=T - 1)
    eps2 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device) if noise2 is None else noise2
    x_s = renoise(tgt.x_end, tgt.end, s, schedule, eps2)
    x0_theta, _ = schedule.split_prediction(student(x_s, s, cond), x_s, s)
    flat = lambda v: v.reshape(v.shape[0], -1)  # noqa: E731
    ones = torch.ones_like(flat(x0_theta), dtype=torch.bool)
    return UnpairedBatch(SequenceLogps(flat(x0_theta), ones), torch.ones(x0.shape[0], dtype=torch.bool),
                         SequenceLogps(flat(tgt.target).detach(), ones),
                         extras={"timesteps": s, "truncated_timesteps": tgt.end})


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float = 0.999) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, parameter by parameter (in place)."""
    for t_param, s_param in zip(teacher.parameters(), student.parameters()):
        t_param.mul_(decay).add_(s_param.detach().to(t_param.dtype), alpha=1 - decay)
