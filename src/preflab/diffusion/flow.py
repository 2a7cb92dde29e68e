"""The forward process and regression target of a rectified-flow (flow-matching) denoiser such as SD3's transformer.

Esser et al., 2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis" (SD3, arXiv:2403.03206),
§2-3: the straight path between data and noise

    x_t = (1 - sigma) x_0 + sigma eps,   eps ~ N(0, I),   target velocity v = dx_t/dsigma = eps - x_0

and the model predicts v. sigma lives on the scheduler's training grid (diffusers FlowMatchEulerDiscreteScheduler
before set_timesteps): s_i = (N - i) / N, i = 0..N-1, shifted by s -> shift s / (1 + (shift - 1) s) (SD3: shift 3.0,
§5.3.2 "resolution-dependent shifting"); the model's timestep input is t = N sigma. Training draws
(§3.1 "logit-normal sampling", as diffusers' training_utils.compute_density_for_timestep_sampling("logit_normal") and
the SD3 DreamBooth / flow_grpo DPO scripts): u = sigmoid(n), n ~ N(logit_mean, logit_std^2), index = floor(u N),
t = timesteps[index]; the loss weighting is 1 (diffusers' compute_loss_weighting_for_sd3 for "logit_normal"/"none").

`FlowMatchSchedule` has the two methods PairNoiser's forward mode calls on a NoiseSchedule (add_noise, target) plus
`sample_timesteps`, so Diffusion-DPO's pair noising (one (t, eps) per pair, shared by winner and loser) and the -MSE
scorer are the same code for DDPM UNets and flow transformers. Timesteps here are float model timesteps (t = N sigma),
not indices. There is no DDIM inversion on a flow schedule (ddim_invert mode is refused).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from preflab.errors import ConfigError

FLOW_PREDICTION = "flow_matching"  # the prediction type a run reports for a flow model: v = eps - x_0


def shifted_sigmas(num_train_timesteps: int = 1000, shift: float = 3.0) -> Tensor:
    """float32 [N] descending from 1: the training grid of diffusers' FlowMatchEulerDiscreteScheduler(shift=shift),
    computed with the same operations in the same precision (so equal to its `.sigmas` bit for bit)."""
    steps = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
    sigmas = torch.from_numpy(steps).to(torch.float32) / num_train_timesteps
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass(frozen=True)
class FlowMatchSchedule:
    """A flow-matching training schedule: `sigmas` float32 [N] (the shifted grid), the logit-normal draw of t."""

    sigmas: Tensor
    logit_mean: float = 0.0
    logit_std: float = 1.0
    density: str = "logit_normal"  # or "uniform" (diffusers' weighting_scheme "none": Flux's training scripts)
    prediction_type: str = FLOW_PREDICTION
    timestep_dtype: torch.dtype = torch.float32

    def __post_init__(self):
        if self.density not in ("logit_normal", "uniform"):
            raise ConfigError(f"the flow timestep density must be logit_normal or uniform, got {self.density!r}.")
        if not self.logit_std > 0:
            raise ConfigError(f"the logit-normal timestep draw needs logit_std > 0, got {self.logit_std}.")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    @property
    def timesteps(self) -> Tensor:
        """float32 [N]: the model's timestep inputs N sigma_i (diffusers' scheduler.timesteps before set_timesteps)."""
        return self.sigmas * self.num_train_timesteps

    @classmethod
    def shifted(cls, num_train_timesteps: int = 1000, shift: float = 3.0, **kwargs) -> "FlowMatchSchedule":
        return cls(shifted_sigmas(num_train_timesteps, shift), **kwargs)

    @classmethod
    def from_scheduler(cls, scheduler, **kwargs) -> "FlowMatchSchedule":
        """From a diffusers FlowMatchEulerDiscreteScheduler's config (num_train_timesteps, shift). Resolution-dependent
        dynamic shifting (Flux: `for_flux`) and Karras / exponential / beta sigmas are refused (not SD3's training
        grid)."""
        config = scheduler.config
        special = [k for k in ("use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas",
                               "use_beta_sigmas", "invert_sigmas") if getattr(config, k, False)]
        if special or getattr(config, "shift_terminal", None):
            raise ConfigError(f"{type(scheduler).__name__} sets {special or ['shift_terminal']}: preflab trains flow "
                              "models on SD3's fixed shifted sigma grid only (FlowMatchEulerDiscreteScheduler with "
                              "shift, no dynamic shifting).")
        return cls.shifted(int(config.num_train_timesteps), float(getattr(config, "shift", 1.0)), **kwargs)

    @classmethod
    def for_flux(cls, scheduler) -> "FlowMatchSchedule":
        """Flux's training draw (diffusers' train_dreambooth_lora_flux.py): the scheduler's training grid, which with
        use_dynamic_shifting is the unshifted sigma_i = (N - i) / N (a fixed shift applies if the scheduler has no
        dynamic shifting), and t = timesteps[floor(u N)] with u ~ U[0, 1) (weighting_scheme "none", loss weight 1)."""
        config = scheduler.config
        special = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas")
                   if getattr(config, k, False)]
        if special or getattr(config, "shift_terminal", None):
            raise ConfigError(f"{type(scheduler).__name__} sets {special or ['shift_terminal']}: preflab trains Flux "
                              "on FlowMatchEulerDiscreteScheduler's plain training grid only.")
        shift = 1.0 if getattr(config, "use_dynamic_shifting", False) else float(getattr(config, "shift", 1.0))
        return cls.shifted(int(config.num_train_timesteps), shift, density="uniform")

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """float32 [B] model timesteps: timesteps[floor(u N)], u = sigmoid(n), n ~ N(logit_mean, logit_std^2) (one
        normal draw per item from `generator`, as diffusers' compute_density_for_timestep_sampling("logit_normal")),
        or (density "uniform") u ~ U[0, 1) (torch.rand, its weighting_scheme "none")."""
        if self.density == "uniform":
            u = torch.rand(size=(batch_size,), generator=generator)
        else:
            u = torch.sigmoid(torch.normal(mean=self.logit_mean, std=self.logit_std, size=(batch_size,),
                                           generator=generator))
        index = (u * self.num_train_timesteps).long()
        return self.timesteps[index]

    def sigma(self, t: Tensor, like: Tensor) -> Tensor:
        """sigma = t / N shaped [B, 1, ...] in `like`'s dtype and device (t: [B] model timesteps)."""
        t = torch.as_tensor(t)
        if ((t < 0) | (t > self.num_train_timesteps)).any():
            raise ConfigError(f"flow timesteps must lie in [0, {self.num_train_timesteps}]; got "
                              f"{float(t.min())}..{float(t.max())}.")
        s = t.double() / self.num_train_timesteps
        return s.to(device=like.device, dtype=like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = (1 - sigma) x_0 + sigma eps (diffusers' FlowMatchEulerDiscreteScheduler.scale_noise)."""
        sigma = self.sigma(t, x0)
        return (1.0 - sigma) * x0 + sigma * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The velocity the model is trained to output: v = eps - x_0 (whatever t)."""
        return noise - x0

    def split_prediction(self, model_out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) from a velocity prediction: x_0 = x_t - sigma v, eps = x_t + (1 - sigma) v."""
        sigma = self.sigma(t, x_t)
        return x_t - sigma * model_out, x_t + (1.0 - sigma) * model_out


def is_flow_schedule(schedule) -> bool:
    return isinstance(schedule, FlowMatchSchedule)


@torch.no_grad()
def euler_sample(predict, x_T: Tensor, scheduler, num_steps: int, grid=None) -> Tensor:
    """Integrate dx/dsigma = v from sigma = 1 to 0 with Euler steps on the inference grid of `scheduler` (a diffusers
    FlowMatchEulerDiscreteScheduler; a copy gets set_timesteps(num_steps), so the run's scheduler is left as it is;
    or `grid`, a scheduler already set, e.g. preflab.diffusion.flux.flux_sampling_grid):
    x <- x + (sigma_{i+1} - sigma_i) predict(x, t_i), as StableDiffusion3Pipeline's / FluxPipeline's denoising loop."""
    import copy

    if grid is None:
        grid = copy.deepcopy(scheduler)
        grid.set_timesteps(num_steps, device=x_T.device)
    x = x_T
    sigmas = grid.sigmas.to(x_T.device)
    for i, t in enumerate(grid.timesteps):
        v = predict(x, t.expand(x.shape[0]))
        x = (x.float() + (sigmas[i + 1] - sigmas[i]) * v.float()).to(x_T.dtype)
    return x
