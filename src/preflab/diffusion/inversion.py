"""DDIM inversion of clean latents to a timestep t, with ReNoise refinement and InPO's jitter (no gradient).

DDIM (Song, Meng and Ermon, 2021, arXiv:2010.02502, Eq. 12 with sigma = 0) run backwards: one inverse step from
abar_from to abar_to with a model output eps evaluated at the step's target time tau:

    x0_hat = (x - sqrt(1 - abar_from) eps) / sqrt(abar_from),   x <- sqrt(abar_to) x0_hat + sqrt(1 - abar_to) eps

on diffusers' DDIMInverseScheduler grid tau_k = k*(T//K) + steps_offset (K = num_steps; [1, 101, ..., 901] for
K = 10 on the SD config), each step from tau_k - T//K (abar = `initial_alpha_cumprod` below 0) to tau_k, over the
grid points tau_k < t. ReNoise (Garibi et al., 2024, arXiv:2403.14602): refine eps at each step by re-evaluating the
model at the provisional next point and averaging, `renoise_iters` times (SmPO uses 1). InPO's jitter ("InPO: Inversion
Preference Optimization with Reparametrized DDIM", Lu et al., 2025; released JaydenLyh/InPO train.py) after each step:

    x <- x + eta * xi * sqrt(Var(tau + T//K -> tau)),   Var(a -> b) = (1 - abar_b)/(1 - abar_a) * (1 - abar_a/abar_b)

Then eps_hat = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t), so x = alpha_t x0 + sigma_t eps_hat.

Deviation from the released SmPO / InPO code (methods §5, §27, A2): t is per sample (not `timesteps[0]`); with
grid_snap="exact" (the default) a final partial step carries x from the last grid point below t to t itself (the
released code, grid_snap="floor", stops at the grid and still uses abar_t, a 0.3 max-abs error in eps_hat on a
perfect mock); Var's index tau + T//K is clamped to T - 1 (the released code reads abar[1001]). The final partial
step also gets the jitter (preflab's choice).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from preflab.diffusion.denoiser import Denoiser
from preflab.diffusion.schedule import NoiseSchedule, broadcast_coefs, split_prediction
from preflab.errors import ConfigError

GRID_SNAPS = ("exact", "floor")


def inverse_grid(num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> Tensor:
    """[K] ascending inverse timesteps tau_k = k*(T//K) + steps_offset ("leading" spacing)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ConfigError(f"num_inversion_steps must be in [1, {num_train_timesteps}], got {num_steps}.")
    return torch.arange(num_steps, dtype=torch.long) * (num_train_timesteps // num_steps) + steps_offset


def ddim_variance(schedule: NoiseSchedule, t_from: Tensor, t_to: Tensor) -> Tensor:
    """Var(a -> b) of DDIMScheduler._get_variance, float64 [B], with a clamped to T - 1."""
    a = schedule.abar(torch.as_tensor(t_from).clamp(max=schedule.num_train_timesteps - 1))
    b = schedule.abar(t_to)
    return (1 - b) / (1 - a) * (1 - a / b)


def inverse_step(x: Tensor, model_out: Tensor, abar_from: Tensor, abar_to: Tensor, prediction_type: str) -> Tensor:
    """One deterministic DDIM step from abar_from to abar_to (float64 [B]); the model output is read at abar_from
    (as diffusers' DDIMInverseScheduler does for v-prediction)."""
    alpha_f, sigma_f = broadcast_coefs(abar_from, x)
    alpha_t, sigma_t = broadcast_coefs(abar_to, x)
    x0_hat, eps_hat = split_prediction(model_out, x, alpha_f, sigma_f, prediction_type)
    return alpha_t * x0_hat + sigma_t * eps_hat


def _refined_step(denoiser: Denoiser, x: Tensor, t_eval: Tensor, cond: Any, abar_from: Tensor, abar_to: Tensor,
                  prediction_type: str, renoise_iters: int) -> Tensor:
    outputs = [denoiser(x, t_eval, cond)]
    for _ in range(renoise_iters):
        provisional = inverse_step(x, torch.stack(outputs).mean(0), abar_from, abar_to, prediction_type)
        outputs.append(denoiser(provisional, t_eval, cond))
    return inverse_step(x, torch.stack(outputs).mean(0), abar_from, abar_to, prediction_type)


def _take(cond: Any, index: Tensor) -> Any:
    if isinstance(cond, Tensor):
        return cond[index]
    if isinstance(cond, dict):
        return {k: _take(v, index) for k, v in cond.items()}
    return cond


@torch.no_grad()
def ddim_invert(denoiser: Denoiser, x0: Tensor, cond: Any, t: Tensor, schedule: NoiseSchedule, num_steps: int,
                eta: float = 0.0, renoise_iters: int = 0, grid_snap: str = "exact", steps_offset: int = 1,
                generator: torch.Generator | list[torch.Generator] | None = None) -> tuple[Tensor, Tensor]:
    """(x_t, eps_hat), both [B, ...] and detached: x0 [B, ...] inverted to per-sample timesteps t [B].
    generator: one for the whole batch, or one per sample (its jitter then depends on that sample alone, whatever
    the batch it is in: two processes equal one, preflab.loops.diffusion)."""
    if grid_snap not in GRID_SNAPS:
        raise ConfigError(f"grid_snap must be one of {GRID_SNAPS}, got {grid_snap!r}.")
    if eta < 0 or renoise_iters < 0:
        raise ConfigError(f"inversion_eta and renoise_iters must be >= 0, got {eta} and {renoise_iters}.")
    T = schedule.num_train_timesteps
    t = torch.as_tensor(t, dtype=torch.long, device=x0.device).reshape(-1)
    grid, gap = inverse_grid(num_steps, T, steps_offset), T // num_steps
    x = x0.detach().clone()
    abar_now = torch.full((x.shape[0],), schedule.initial_alpha_cumprod, dtype=torch.float64)

    def advance(index: Tensor, target: Tensor):
        t_eval = target.to(x.device)
        abar_to = schedule.abar(target)
        x[index] = _refined_step(denoiser, x[index], t_eval, _take(cond, index), abar_now[index.cpu()], abar_to,
                                 schedule.prediction_type, renoise_iters)
        abar_now[index.cpu()] = abar_to
        if eta > 0:
            var = ddim_variance(schedule, target.cpu() + gap, target.cpu())
            if isinstance(generator, (list, tuple)):
                noise = torch.stack([torch.randn(x.shape[1:], generator=generator[i], dtype=x.dtype)
                                     for i in index.tolist()]).to(x.device)
            else:
                noise = torch.randn(x[index].shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            x[index] = x[index] + eta * noise * broadcast_coefs(var, x[index])[0]

    for tau in grid.tolist():
        index = torch.nonzero(t > tau).reshape(-1)
        if index.numel() == 0:
            break
        advance(index, torch.full((index.numel(),), tau, dtype=torch.long))
    if grid_snap == "exact":
        advance(torch.arange(x.shape[0], device=x.device), t.cpu())
    alpha, sigma = schedule.alpha_sigma(t, x0)
    eps_hat = (x - alpha * x0) / sigma
    return x, eps_hat
