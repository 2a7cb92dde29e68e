"""The forward noising process q(x_t | x_0) of a discrete-time diffusion model, and its prediction targets.

Ho, Jain and Abbeel, 2020, "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239), Eq. 4:

    x_t = alpha_t x_0 + sigma_t eps,   alpha_t = sqrt(abar_t),  sigma_t = sqrt(1 - abar_t),  eps ~ N(0, I)

with abar_t = prod_{s <= t} (1 - beta_s), t in {0..T-1}. Prediction targets: "epsilon" -> eps; "v_prediction" ->
v = alpha_t eps - sigma_t x_0 (Salimans and Ho, 2022, arXiv:2202.00512, §4); "sample" -> x_0.

`NoiseSchedule` is plain torch so the objectives and the scorer never need diffusers; `from_scheduler` reads a
diffusers scheduler (DDPM/DDIM/DDIMInverse) when one is at hand. Coefficients are computed in float64 and cast to
the latents' dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preflab.errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class NoiseSchedule:
    """abar_t for t = 0..T-1 (float64 [T]); `initial_alpha_cumprod` is abar at "t = -1", the clean start of a DDIM
    inversion (1.0, or abar_0 for a diffusers scheduler with set_alpha_to_one=False)."""

    alphas_cumprod: Tensor
    prediction_type: str = "epsilon"
    initial_alpha_cumprod: float = 1.0

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}.")
        object.__setattr__(self, "alphas_cumprod", torch.as_tensor(self.alphas_cumprod, dtype=torch.float64))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @classmethod
    def scaled_linear(cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                      prediction_type: str = "epsilon", set_alpha_to_one: bool = False) -> "NoiseSchedule":
        """Stable Diffusion's schedule: beta_t = (linspace(sqrt(b0), sqrt(b1), T)_t)^2."""
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
        abar = torch.cumprod(1.0 - betas, 0)
        return cls(abar, prediction_type, 1.0 if set_alpha_to_one else float(abar[0]))

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               prediction_type: str = "epsilon") -> "NoiseSchedule":
        """DDPM's linear schedule (Ho et al., 2020, §4)."""
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - betas, 0), prediction_type)

    @classmethod
    def from_scheduler(cls, scheduler) -> "NoiseSchedule":
        """From a diffusers scheduler: its alphas_cumprod, prediction_type and set_alpha_to_one (if it has one)."""
        config = scheduler.config
        abar = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
        to_one = getattr(config, "set_alpha_to_one", True)
        return cls(abar, getattr(config, "prediction_type", "epsilon"), 1.0 if to_one else float(abar[0]))

    def abar(self, t: Tensor) -> Tensor:
        """abar_t, float64 [B]; t < 0 gives `initial_alpha_cumprod`."""
        t = torch.as_tensor(t).long().cpu()
        if (t >= self.num_train_timesteps).any():
            raise ConfigError(f"timestep {int(t.max())} is past the schedule's last index "
                              f"{self.num_train_timesteps - 1}; clamp it.")
        inner = self.alphas_cumprod[t.clamp(min=0)]
        return torch.where(t < 0, torch.full_like(inner, self.initial_alpha_cumprod), inner)

    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) shaped [B, 1, ...] to broadcast against `like` [B, ...], in its dtype and device."""
        return broadcast_coefs(self.abar(t), like)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha_t x_0 + sigma_t eps."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the denoiser is trained to output at x_t = alpha_t x_0 + sigma_t eps (by prediction_type)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * noise - sigma * x0

    def split_prediction(self, model_out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) from a model output at (x_t, t), whatever the prediction type."""
        alpha, sigma = self.alpha_sigma(t, x_t)
        return split_prediction(model_out, x_t, alpha, sigma, self.prediction_type)


def broadcast_coefs(abar: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(sqrt(abar), sqrt(1 - abar)) from float64 [B], shaped [B, 1, ...] in `like`'s dtype and device."""
    shape = (-1,) + (1,) * (like.dim() - 1)
    cast = lambda v: v.to(device=like.device, dtype=like.dtype).reshape(shape)  # noqa: E731
    return cast(abar.sqrt()), cast((1.0 - abar).sqrt())


def split_prediction(model_out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor,
                     prediction_type: str) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) given broadcastable alpha, sigma of the time the model output refers to."""
    if prediction_type == "epsilon":
        return (x_t - sigma * model_out) / alpha, model_out
    if prediction_type == "v_prediction":
        return alpha * x_t - sigma * model_out, alpha * model_out + sigma * x_t
    return model_out, (x_t - alpha * model_out) / sigma
