"""Tiny diffusion fixtures built in code (nothing downloaded): denoisers, a mock, schedules and synthetic pairs.

- `tiny_unet()`: the 0.79 M-parameter `UNet2DConditionModel` of methods §0.2 / §A3 (needs diffusers).
- `TinyDenoiser`: a pure-torch MLP eps_theta(x_t, t, cond) for small latents or 2-D points (no diffusers).
- `ConstantEpsDenoiser`: returns a fixed eps* whatever the input (exactness tests of DDIM steps and inversion).
- `sd_schedule()`: Stable Diffusion 1.5's scaled-linear schedule (T = 1000, 0.00085 -> 0.012).
- `smooth_vs_noisy_pairs()`: winners = smooth low-frequency latents, losers = the same plus high-frequency noise.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from preflab.diffusion.schedule import NoiseSchedule
from preflab.errors import PreflabError


def sd_schedule(prediction_type: str = "epsilon", set_alpha_to_one: bool = False) -> NoiseSchedule:
    """SD1.5's training schedule (diffusers DDPM/DDIM config: scaled_linear, 0.00085, 0.012, T = 1000)."""
    return NoiseSchedule.scaled_linear(1000, 0.00085, 0.012, prediction_type, set_alpha_to_one)


def tiny_unet(seed: int = 0, cross_attention_dim: int = 32, sample_size: int = 8, in_channels: int = 4):
    """A randomly initialised tiny UNet2DConditionModel (methods §0.2 CPU demo config), in eval mode."""
    try:
        from diffusers import UNet2DConditionModel
    except ImportError as err:  # pragma: no cover - depends on the extra
        raise PreflabError("tiny_unet needs diffusers: pip install 'preflab[diffusion]'.") from err
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=8)
    return unet.eval()


class TinyDenoiser(nn.Module):
    """MLP on [flattened x_t, sinusoidal(t), pooled cond] -> prediction shaped like x_t.

    cond: None, [B, d] or [B, L, d] (mean-pooled over L); d must equal `cond_dim` (0 = unconditional).
    """

    def __init__(self, sample_shape: tuple[int, ...], cond_dim: int = 0, hidden: int = 64, time_dim: int = 16,
                 num_train_timesteps: int = 1000, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.sample_shape, self.cond_dim, self.time_dim = tuple(sample_shape), cond_dim, time_dim
        self.num_train_timesteps = num_train_timesteps
        size = math.prod(self.sample_shape)
        self.net = nn.Sequential(nn.Linear(size + time_dim + cond_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, size))

    def time_features(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float64) / half)
        angles = (t.double().reshape(-1, 1) / self.num_train_timesteps * 1000.0) * freqs
        return torch.cat([angles.sin(), angles.cos()], -1).to(dtype)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(b)
        parts = [x_t.reshape(b, -1), self.time_features(t, x_t.dtype).to(x_t.device)]
        if self.cond_dim:
            if cond is None:
                cond = torch.zeros(b, self.cond_dim, dtype=x_t.dtype, device=x_t.device)
            parts.append(cond.mean(1) if cond.dim() == 3 else cond)
        return self.net(torch.cat(parts, -1)).reshape(x_t.shape)


class ConstantEpsDenoiser:
    """f(x_t, t, cond) = eps* (broadcast to x_t); counts its calls and records the timesteps it saw.
    Give eps* as one sample [1, ...] when callers evaluate subsets of a batch; a full [B, ...] eps* is only
    matched row by row when the whole batch is passed."""

    def __init__(self, eps: Tensor):
        self.eps, self.calls, self.timesteps = eps, 0, []

    def __call__(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        self.calls += 1
        self.timesteps.append(torch.as_tensor(t).clone())
        eps = self.eps if self.eps.shape == x_t.shape else self.eps[: x_t.shape[0]]
        return eps.to(x_t.dtype).expand_as(x_t).clone()


def smooth_vs_noisy_pairs(n: int, shape: tuple[int, int, int] = (4, 8, 8), noise_scale: float = 0.5,
                          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) [n, C, H, W]: chosen = random low-frequency cosines (amplitude ~1), rejected = chosen
    plus a checkerboard-modulated Gaussian (high frequency) of std `noise_scale`."""
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(0, math.pi, h), torch.linspace(0, math.pi, w), indexing="ij")
    coef = torch.randn(n, c, 4, generator=generator)
    basis = torch.stack([torch.ones_like(xx), torch.cos(xx), torch.cos(yy), torch.cos(xx) * torch.cos(yy)])
    chosen = torch.einsum("nck,khw->nchw", coef, basis) * 0.5
    checker = (torch.arange(h).reshape(-1, 1) + torch.arange(w)) % 2 * 2.0 - 1.0
    rejected = chosen + noise_scale * checker * torch.randn(n, c, h, w, generator=generator).abs()
    return chosen, rejected
