"""PairNoiser: the noisy inputs and regression targets of a preference pair, with one shared timestep per pair.

mode="forward" (Diffusion-DPO, Wallace et al., 2024, arXiv:2311.12908; released code `chunk(2)[0].repeat(2)`):
one t ~ U{min_timestep..max_timestep-1} and one eps ~ N(0, I) per pair, shared by winner and loser:

    x^w_t = alpha_t x_w + sigma_t eps,   x^l_t = alpha_t x_l + sigma_t eps,   target = eps | v | x_0

mode="ddim_invert" (SmPO-Diffusion and DDIM-InPO, Lu et al., 2025; methods §5, §27): each image is inverted
to the shared t with the current policy (no gradient, `preflab.diffusion.inversion.ddim_invert`), giving its own
eps_hat, and the target is built from (x_0, eps_hat). Nothing here carries a gradient.

With a flow-matching schedule (preflab.diffusion.flow.FlowMatchSchedule, SD3) the same forward mode gives
x^w_t = (1 - sigma) x_w + sigma eps, x^l_t = (1 - sigma) x_l + sigma eps and targets eps - x_w, eps - x_l, with one
logit-normal t (float, t = 1000 sigma) and one eps per pair; ddim_invert and the timestep bounds are refused there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from preflab.diffusion.denoiser import Denoiser
from preflab.diffusion.inversion import GRID_SNAPS, ddim_invert
from preflab.diffusion.schedule import NoiseSchedule
from preflab.errors import ConfigError

MODES = ("forward", "ddim_invert")


@dataclass
class NoisedPair:
    """Shapes: timesteps [B] long; the rest [B, C, H, W] (or [B, ...]). In forward mode noise_chosen is
    noise_rejected (the same tensor)."""

    timesteps: Tensor
    noisy_chosen: Tensor
    noisy_rejected: Tensor
    target_chosen: Tensor
    target_rejected: Tensor
    noise_chosen: Tensor
    noise_rejected: Tensor


@dataclass(frozen=True)
class PairNoiser:
    schedule: NoiseSchedule             # or a flow-matching FlowMatchSchedule (forward mode only)
    mode: str = "forward"
    num_inversion_steps: int = 10       # K of the inverse DDIM grid (SmPO: 5 on SD1.5, 10 on SDXL; InPO: 10)
    inversion_eta: float = 0.0          # InPO's jitter scale (0.1 in InPO)
    renoise_iters: int = 0              # ReNoise refinements per inverse step (1 in SmPO)
    grid_snap: str = "exact"            # "exact": invert to t; "floor": the released code's stop below t
    steps_offset: int = 1               # the inverse grid's offset (SD schedulers: 1)
    min_timestep: int = 0               # t ~ U{min_timestep .. max_timestep - 1}
    max_timestep: int | None = None     # None = the schedule's T

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"PairNoiser mode must be one of {MODES}, got {self.mode!r}.")
        if hasattr(self.schedule, "sample_timesteps"):  # flow matching: its own logit-normal draw of t
            if self.mode != "forward":
                raise ConfigError("diffusion_noising mode 'ddim_invert' inverts a DDPM-family schedule with DDIM; a "
                                  "flow-matching model (SD3, Flux) has no such inversion in preflab: use mode 'forward'.")
            if self.min_timestep != 0 or self.max_timestep is not None:
                raise ConfigError("diffusion_noising min_timestep / max_timestep bound DDPM timestep indices; a "
                                  "flow-matching model draws t from its training density (SD3: logit-normal, Flux: "
                                  "uniform): leave them unset.")
            return
        if self.grid_snap not in GRID_SNAPS:
            raise ConfigError(f"grid_snap must be one of {GRID_SNAPS}, got {self.grid_snap!r}.")
        if not 0 <= self.min_timestep < self.upper <= self.schedule.num_train_timesteps:
            raise ConfigError(f"need 0 <= min_timestep < max_timestep <= {self.schedule.num_train_timesteps}; got "
                              f"{self.min_timestep}, {self.max_timestep}.")

    @property
    def upper(self) -> int:
        return self.schedule.num_train_timesteps if self.max_timestep is None else self.max_timestep

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """[B] long, one per pair (flow matching: [B] float model timesteps from the schedule's draw)."""
        if hasattr(self.schedule, "sample_timesteps"):
            return self.schedule.sample_timesteps(batch_size, generator)
        return torch.randint(self.min_timestep, self.upper, (batch_size,), generator=generator)

    @torch.no_grad()
    def __call__(self, chosen: Tensor, rejected: Tensor, generator: torch.Generator | None = None,
                 denoiser: Denoiser | None = None, cond_chosen: Any = None, cond_rejected: Any = None,
                 timesteps: Tensor | None = None, noise: Tensor | None = None) -> NoisedPair:
        """Noise a pair batch. `timesteps`/`noise` override the draws (tests, replays); ddim_invert needs the
        policy `denoiser` and the conditioning of each side."""
        if chosen.shape != rejected.shape:
            raise ConfigError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} latents differ in "
                              "shape; encode both images at the same resolution.")
        t = self.sample_timesteps(chosen.shape[0], generator) if timesteps is None else torch.as_tensor(timesteps)
        t = t.to(device=chosen.device, dtype=getattr(self.schedule, "timestep_dtype", torch.long))
        if self.mode == "forward":
            if noise is None:
                noise = torch.randn(chosen.shape, generator=generator, dtype=chosen.dtype).to(chosen.device)
            s = self.schedule
            return NoisedPair(t, s.add_noise(chosen, noise, t), s.add_noise(rejected, noise, t),
                              s.target(chosen, noise, t), s.target(rejected, noise, t), noise, noise)
        if denoiser is None:
            raise ConfigError("PairNoiser(mode='ddim_invert') inverts with the current policy: pass denoiser=.")
        invert = lambda x0, cond: ddim_invert(  # noqa: E731
            denoiser, x0, cond, t, self.schedule, self.num_inversion_steps, self.inversion_eta, self.renoise_iters,
            self.grid_snap, self.steps_offset, generator)
        xt_w, eps_w = invert(chosen, cond_chosen)
        xt_l, eps_l = invert(rejected, cond_rejected if cond_rejected is not None else cond_chosen)
        s = self.schedule
        return NoisedPair(t, xt_w, xt_l, s.target(chosen, eps_w, t), s.target(rejected, eps_l, t), eps_w, eps_l)
