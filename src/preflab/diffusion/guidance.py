"""Classifier-free guidance, with a separate negative model (Diffusion-NPO / Self-NPO sampling), and a DDIM sampler.

CFG (Ho and Salimans, 2022, "Classifier-Free Diffusion Guidance", arXiv:2207.12598):
    eps = f(x_t, t, c_neg) + w (f(x_t, t, c) - f(x_t, t, c_neg))
NPO guidance (Wang et al., 2025, Self-NPO / Diffusion-NPO; "double unet" sampling, methods §4): the negative branch
uses the negative model theta_neg, and only that branch:
    eps = f_neg(x_t, t, c_neg) + w (f_pos(x_t, t, c) - f_neg(x_t, t, c_neg))
    theta_neg = (eta theta_base + (1 - eta) theta_pos) + delta_npo           (merge_weight eta, default 0)
With theta_neg = theta_pos this is plain CFG; w = 1 gives the positive conditional prediction.
LCM-convention guidance (Luo et al., 2023, "Latent Consistency Models", arXiv:2310.04378), used by the Self-NPO
teacher: pred = cond + w (cond - uncond); w = -1 is exactly the unconditional prediction.
DDIM sampling (Song et al., 2021, arXiv:2010.02502, eta = 0) on diffusers' "trailing" or "leading" spacing.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from preflab.diffusion.denoiser import Denoiser
from preflab.diffusion.schedule import NoiseSchedule
from preflab.errors import ConfigError


def cfg(cond_pred: Tensor, uncond_pred: Tensor, w: float) -> Tensor:
    """uncond + w (cond - uncond)."""
    return uncond_pred + w * (cond_pred - uncond_pred)


def lcm_guidance(cond_pred: Tensor, uncond_pred: Tensor, w: float) -> Tensor:
    """cond + w (cond - uncond); w = -1 returns `uncond_pred` itself (exactly)."""
    if w == -1:
        return uncond_pred
    return cond_pred + w * (cond_pred - uncond_pred)


def cfg_with_negative_model(f_pos: Denoiser, f_neg: Denoiser, x_t: Tensor, t: Tensor, cond: Any, cond_neg: Any,
                            w: float) -> Tensor:
    """f_neg(x_t, t, c_neg) + w (f_pos(x_t, t, c) - f_neg(x_t, t, c_neg))."""
    return cfg(f_pos(x_t, t, cond), f_neg(x_t, t, cond_neg), w)


def negative_model_weights(base: dict[str, Tensor], positive: dict[str, Tensor], delta: dict[str, Tensor],
                           merge_weight: float = 0.0) -> dict[str, Tensor]:
    """theta_neg = eta theta_base + (1 - eta) theta_pos + delta (state dicts; delta = theta_npo - theta_base, keys
    missing from delta count as 0)."""
    if not 0 <= merge_weight <= 1:
        raise ConfigError(f"merge_weight must be in [0, 1], got {merge_weight}.")
    out = {}
    for key, pos in positive.items():
        mixed = pos if merge_weight == 0 else merge_weight * base[key] + (1 - merge_weight) * pos
        out[key] = mixed + delta[key] if key in delta else mixed.clone()
    return out


def sampling_timesteps(num_steps: int, num_train_timesteps: int = 1000, spacing: str = "trailing",
                       steps_offset: int = 1) -> Tensor:
    """Descending DDIM timesteps: trailing round(arange(T, 0, -T/K)) - 1; leading arange(K)*(T//K)+offset reversed."""
    if spacing == "trailing":
        return (torch.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps).round() - 1).long()
    if spacing == "leading":
        return (torch.arange(num_steps) * (num_train_timesteps // num_steps) + steps_offset).flip(0).long()
    raise ConfigError(f"spacing must be 'trailing' or 'leading', got {spacing!r}.")


@torch.no_grad()
def ddim_sample(predict: Callable[[Tensor, Tensor], Tensor], x_T: Tensor, schedule: NoiseSchedule,
                num_steps: int = 10, spacing: str = "trailing") -> Tensor:
    """Deterministic DDIM from x_T; predict(x_t, t [B]) returns a model output of schedule.prediction_type.
    The last step lands on abar = schedule.initial_alpha_cumprod (diffusers' final_alpha_cumprod)."""
    steps = sampling_timesteps(num_steps, schedule.num_train_timesteps, spacing)
    gap = schedule.num_train_timesteps // num_steps
    x = x_T
    for t in steps.tolist():
        t_vec = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0_hat, eps_hat = schedule.split_prediction(predict(x, t_vec), x, t_vec)
        alpha_prev, sigma_prev = schedule.alpha_sigma(t_vec - gap, x)
        x = alpha_prev * x0_hat + sigma_prev * eps_hat
    return x


def npo_guidance(f_pos: Denoiser, f_neg: Denoiser, x_T: Tensor, cond: Any, cond_neg: Any, schedule: NoiseSchedule,
                 w: float = 7.5, num_steps: int = 10, spacing: str = "trailing") -> Tensor:
    """Sample with CFG whose negative branch runs the negative model (see the module docstring)."""
    return ddim_sample(lambda x, t: cfg_with_negative_model(f_pos, f_neg, x, t, cond, cond_neg, w), x_T, schedule,
                       num_steps, spacing)
