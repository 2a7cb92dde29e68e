"""Denoising-error scores for diffusion models: a pair batch of latents in, a PairBatch of -MSE out.

Diffusion-DPO (Wallace et al., 2024, arXiv:2311.12908) compares per-sample denoising errors of the policy and a frozen
reference on the winner and loser at one shared (t, eps) per pair. With the score s = -e (e = mean over C, H, W of
(f(x_t, t, c) - target)^2, in float32), each side is a length-1 `SequenceLogps.from_sums`, so every pairwise objective
reads it; `dpo` with beta_dpo = beta/2 is Salesforce's Diffusion-DPO (STYLE.md 9.3, RELIABILITY.md K2).

    pairs (chosen [B,C,H,W], rejected, cond)  --PairNoiser-->  (t [B], x^w_t, x^l_t, targets)
      --policy, one forward on [2B]-->  e^theta_w, e^theta_l  --reference, no grad-->  e^ref_w, e^ref_l
      --> PairBatch.from_sums(-e^theta_w, -e^theta_l, -e^ref_w, -e^ref_l, extras)

extras: the batch's own extras (e.g. SmPO's preference_prob) plus "timesteps" [B]. DCPO's per-image captions come as
`cond_rejected`. The objective's class attribute `diffusion_noising` (a dict of PairNoiser fields) says how its pairs
are noised; `noiser_for` builds that PairNoiser, so the loop never names an objective.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from preflab.diffusion.denoiser import Denoiser, as_denoiser, cat_cond
from preflab.diffusion.loss import per_sample_mse
from preflab.diffusion.noising import NoisedPair, PairNoiser
from preflab.diffusion.schedule import NoiseSchedule
from preflab.errors import ConfigError
from preflab.objectives.base import PairBatch


@dataclass
class DiffusionPairs:
    """A micro-batch of preference pairs of clean latents (already x the VAE scaling factor).

    chosen, rejected: [B, C, H, W]; cond: the conditioning of both images (DCPO: of the chosen one);
    cond_rejected: the rejected image's own conditioning (DCPO) or None; row_ids: the examples' ids (the step's
    normaliser counts them); extras: per-pair values the objective reads, e.g. preference_prob [B].
    """

    chosen: Tensor
    rejected: Tensor
    cond: Any = None
    cond_rejected: Any = None
    row_ids: list[int] = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.row_ids:
            self.row_ids = list(range(self.chosen.shape[0]))


def noiser_for(objective: Any, schedule: NoiseSchedule, **overrides) -> PairNoiser:
    """The PairNoiser an objective declares (its `diffusion_noising` dict; forward noising if none), with overrides."""
    batch_type = getattr(objective, "batch_type", PairBatch)
    if batch_type is not PairBatch:
        raise ConfigError(
            f"{type(objective).__name__} takes a {batch_type.__name__}, not scored diffusion pairs; build its batch "
            "with the helper its docstring names (self_npo: preflab.diffusion.self_npo.self_npo_batch).")
    declared = dict(getattr(objective, "diffusion_noising", {}) or {})
    mode = {**declared, **overrides}.get("mode", "forward")
    unread = [k for k in overrides if k in INVERSION_OPTIONS]
    if mode == "forward" and unread:  # forward noising never reads them: they were accepted and dropped
        raise ConfigError(f"diffusion_noising {unread} configure DDIM inversion (mode: ddim_invert); "
                          f"{type(objective).__name__} here noises its pairs forward (mode: forward), which does not "
                          "read them. Remove them, or set diffusion_noising mode: ddim_invert.")
    return PairNoiser(schedule, **{**declared, **overrides})


INVERSION_OPTIONS = ("num_inversion_steps", "inversion_eta", "renoise_iters", "grid_snap", "steps_offset")


def denoising_errors(denoiser: Denoiser, noised: NoisedPair, cond_chosen: Any,
                     cond_rejected: Any) -> tuple[Tensor, Tensor]:
    """(e_w, e_l) [B] float32: one denoiser call on the 2B noisy latents, mean squared error per sample."""
    b = noised.timesteps.shape[0]
    x = torch.cat([noised.noisy_chosen, noised.noisy_rejected], 0)
    t = torch.cat([noised.timesteps, noised.timesteps], 0)
    cond = cat_cond(cond_chosen, cond_rejected)
    pred = denoiser(x, t, cond)
    errors = per_sample_mse(pred, torch.cat([noised.target_chosen, noised.target_rejected], 0))
    return errors[:b], errors[b:]


@dataclass(frozen=True)
class DiffusionPairScorer:
    """scorer(policy, pairs, reference=None, generator=None) -> PairBatch of -MSE (see the module docstring)."""

    noiser: PairNoiser

    def noise(self, policy: Any, pairs: DiffusionPairs, generator: torch.Generator | None = None) -> NoisedPair:
        """The pair's noisy inputs and targets (inverting with the policy in ddim_invert mode; no gradient)."""
        cond_l = pairs.cond if pairs.cond_rejected is None else pairs.cond_rejected
        return self.noiser(pairs.chosen, pairs.rejected, generator, as_denoiser(policy), pairs.cond, cond_l)

    def __call__(self, policy: Any, pairs: DiffusionPairs, reference: Any = None,
                 generator: torch.Generator | None = None, noised: NoisedPair | None = None) -> PairBatch:
        if noised is None:
            noised = self.noise(policy, pairs, generator)
        cond_l = pairs.cond if pairs.cond_rejected is None else pairs.cond_rejected
        err_w, err_l = denoising_errors(as_denoiser(policy), noised, pairs.cond, cond_l)
        ref_w = ref_l = None
        if reference is not None:
            with torch.no_grad():
                ref_w, ref_l = denoising_errors(as_denoiser(reference), noised, pairs.cond, cond_l)
            ref_w, ref_l = -ref_w, -ref_l
        extras = {**pairs.extras, "timesteps": noised.timesteps}
        return PairBatch.from_sums(-err_w, -err_l, ref_w, ref_l, extras)
