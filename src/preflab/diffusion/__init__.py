"""Diffusion models on preflab's core: noising, DDIM inversion, guidance, Self-NPO and PPD helpers, tiny fixtures.

Scores for the pairwise objectives come from `preflab.scoring.diffusion` (-MSE per sample, as sequence sums), so
`diffusion_dpo`, `smpo_diffusion`, `diffusion_inpo`, `dcpo` and `ppd` are pure functions of scores like every other
objective. Flow-matching (rectified-flow) models such as SD3 use `FlowMatchSchedule` (preflab.diffusion.flow) in place
of `NoiseSchedule`: the same pair noising and scores, with the velocity target. Nothing in this package imports
diffusers at import time; `tiny_unet` and the PPD branch need it (pip install 'preflab[diffusion]').
"""
from preflab.diffusion.denoiser import Denoiser, UNetDenoiser, as_denoiser, cat_cond
from preflab.diffusion.flow import FlowMatchSchedule, euler_sample, shifted_sigmas
from preflab.diffusion.guidance import (
    cfg, cfg_with_negative_model, ddim_sample, lcm_guidance, negative_model_weights, npo_guidance, sampling_timesteps,
)
from preflab.diffusion.inversion import ddim_invert, ddim_variance, inverse_grid, inverse_step
from preflab.diffusion.loss import diffusion_dpo_loss, dpo_scale, implicit_accuracy, per_sample_mse, pseudo_huber
from preflab.diffusion.noising import NoisedPair, PairNoiser
from preflab.diffusion.schedule import NoiseSchedule
from preflab.diffusion.smoothing import PICKSCORE_MAX, PICKSCORE_MIN, order_by_score, smoothed_preference

__all__ = [
    "Denoiser", "UNetDenoiser", "as_denoiser", "cat_cond", "cfg", "cfg_with_negative_model", "ddim_sample",
    "lcm_guidance", "negative_model_weights", "npo_guidance", "sampling_timesteps", "ddim_invert", "ddim_variance",
    "inverse_grid", "inverse_step", "diffusion_dpo_loss", "dpo_scale", "implicit_accuracy", "per_sample_mse",
    "pseudo_huber", "NoisedPair", "PairNoiser", "NoiseSchedule", "PICKSCORE_MAX", "PICKSCORE_MIN", "order_by_score",
    "smoothed_preference", "FlowMatchSchedule", "euler_sample", "shifted_sigmas",
]
