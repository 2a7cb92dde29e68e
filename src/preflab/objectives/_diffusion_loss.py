"""Diffusion-DPO's loss on per-sample denoising errors, and the pseudo-Huber distance of Self-NPO.

Wallace et al., 2024, "Diffusion Model Alignment Using Direct Preference Optimization" (arXiv:2311.12908), its loss
with the weighting T*omega(lambda_t) folded into beta. With per-sample mean-squared errors e (mean over C, H, W) of
the policy (theta) and the frozen reference on the winner (w) and loser (l) at a shared (t, eps):

    Delta_theta = e^theta_w - e^theta_l,   Delta_ref = e^ref_w - e^ref_l
    L = -log sigmoid( -(beta/2) * kappa * (Delta_theta - Delta_ref) )        convention="salesforce" (beta = 5000)
    L = -log sigmoid(  beta'    * kappa * (Delta_ref - Delta_theta) )        convention="diffusers"  (beta' = 2500)

They are one loss when beta' = beta/2. kappa is an optional per-pair weight (SmPO's 10(2p - 1); 1 otherwise).
With scores s = -e, this is exactly `dpo` with beta_dpo = beta/2 (salesforce) or beta' (diffusers): h_w - h_l =
-(Delta_theta - Delta_ref) (STYLE.md 9.3; RELIABILITY.md K2).

Pseudo-Huber (Song and Dhariwal, 2023, "Improved Techniques for Training Consistency Models", arXiv:2310.14189,
§3.3): d(a, b) = sqrt((a - b)^2 + c^2) - c, elementwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from preflab.errors import ConfigError

CONVENTIONS = ("salesforce", "diffusers")


def dpo_scale(beta: float, convention: str) -> float:
    """The DPO inverse temperature on -MSE scores: beta/2 (salesforce) or beta (diffusers)."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"convention must be one of {CONVENTIONS} (salesforce: beta=5000 style, the loss uses "
                          f"beta/2; diffusers: beta'=2500 style), got {convention!r}.")
    return beta / 2 if convention == "salesforce" else beta


def diffusion_dpo_loss(err_w: Tensor, err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor, beta: float,
                       convention: str = "salesforce", weight: Tensor | None = None) -> Tensor:
    """Per-pair Diffusion-DPO loss [B] from per-sample errors [B] (see the module docstring)."""
    inside = -dpo_scale(beta, convention) * ((err_w - err_l) - (ref_err_w - ref_err_l))
    if weight is not None:
        inside = inside * weight
    return F.softplus(-inside)


def implicit_accuracy(err_w: Tensor, err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor) -> Tensor:
    """mean[(Delta_ref - Delta_theta) > 0] + 0.5 mean[(Delta_ref - Delta_theta) = 0] (the diffusers script's metric)."""
    z = (ref_err_w - ref_err_l) - (err_w - err_l)
    return (z > 0).to(z.dtype).mean() + 0.5 * (z == 0).to(z.dtype).mean()


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """sqrt((a - b)^2 + c^2) - c, elementwise (0 at a = b; ~|a - b| far away; ~(a - b)^2 / 2c near)."""
    if c <= 0:
        raise ConfigError(f"pseudo-Huber c must be > 0, got {c}.")
    return torch.sqrt((a - b) ** 2 + c * c) - c


def per_sample_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """[B] mean over all non-batch dims of (prediction - target)^2, in float32 at least (fp16 differences of
    ~1e-4 would underflow)."""
    dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    diff = prediction.to(dtype) - target.to(dtype)
    return diff.pow(2).reshape(diff.shape[0], -1).mean(-1)
