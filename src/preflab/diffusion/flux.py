"""Flux (FLUX.1-dev / -schnell, diffusers FluxTransformer2DModel): the same rectified flow as SD3
(preflab.diffusion.flow: x_t = (1 - sigma) x_0 + sigma eps, target eps - x_0), with Flux's own transformer interface.

The run keeps latents unpacked [B, C, H, W] everywhere (noising is element-wise and the per-sample MSE is a mean over
all elements, so both commute with packing); `call_flux` packs x_t into 2x2 patches [B, (H/2)(W/2), 4C] with the
position ids the transformer needs, calls it as diffusers' FluxPipeline does (timestep / 1000 = sigma, the guidance
embedding for Flux-dev), and unpacks its velocity back to [B, C, H, W]. `pack_latents`, `unpack_latents` and
`latent_image_ids` equal FluxPipeline._pack_latents / _unpack_latents / _prepare_latent_image_ids.

Training timesteps follow diffusers' examples/dreambooth/train_dreambooth_lora_flux.py: u from
compute_density_for_timestep_sampling(weighting_scheme="none") (uniform, its default), index = floor(1000 u),
t = scheduler.timesteps[index] on the scheduler's *training* grid, which for Flux's use_dynamic_shifting scheduler is
unshifted (sigma_i = (N - i) / N); loss weight 1; guidance = args.guidance_scale (3.5) when the transformer has a
guidance embedding. Sampling is FluxPipeline's: Euler steps on sigmas linspace(1, 1/n, n) shifted by
mu = calculate_shift(image tokens) (resolution-dependent "dynamic shifting").
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from preflab.errors import ConfigError

FLUX_T5_MAX_LENGTH = 512  # FluxPipeline.encode_prompt's default max_sequence_length
FLUX_DEFAULT_GUIDANCE = 3.5  # train_dreambooth_lora_flux.py --guidance_scale default (FLUX.1-dev is guidance-distilled)


def is_flux_transformer(model: Any) -> bool:
    return type(model).__name__ == "FluxTransformer2DModel"


def pack_latents(latents: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: each 2x2 patch's C x 2 x 2 values as one token (row-major patches)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ConfigError(f"Flux packs latents into 2x2 patches; latents {h}x{w} are not even.")
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """[B, (H/2)(W/2), 4C] -> [B, C, H, W] (H, W: latent pixels), the inverse of `pack_latents`."""
    b, _, d = tokens.shape
    return tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(
        b, d // 4, height, width)


def latent_image_ids(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """[(H/2)(W/2), 3] position ids of the packed tokens: (0, row, column) in patch units (H, W: latent pixels)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def call_flux(transformer, x_t: Tensor, t: Tensor, cond: dict) -> Tensor:
    """The transformer's velocity [B, C, H, W] at unpacked x_t and model timesteps t = 1000 sigma [B].
    cond: {"encoder_hidden_states": T5 states [B, L, D], "pooled_projections": CLIP pooled [B, P], and for a
    guidance-embedded transformer (Flux-dev) "guidance": [B]}; other keys (user_index) are ignored."""
    b, _, h, w = x_t.shape
    states = cond["encoder_hidden_states"]
    guidance = cond.get("guidance")
    if transformer.config.guidance_embeds and guidance is None:
        raise ConfigError("this Flux transformer has a guidance embedding (Flux-dev); its conditioning needs a "
                          "'guidance' value (flux_guidance).")
    if not transformer.config.guidance_embeds:
        guidance = None
    t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(b)
    out = transformer(hidden_states=pack_latents(x_t), timestep=t.to(x_t.dtype) / 1000, guidance=guidance,
                      pooled_projections=cond["pooled_projections"], encoder_hidden_states=states,
                      txt_ids=torch.zeros(states.shape[1], 3, device=x_t.device, dtype=states.dtype),
                      img_ids=latent_image_ids(h, w, x_t.device, x_t.dtype), return_dict=False)[0]
    return unpack_latents(out, h, w)


def flux_sampling_grid(scheduler, num_steps: int, image_tokens: int):
    """A copy of `scheduler` set to FluxPipeline's inference grid: sigmas linspace(1, 1/n, n), shifted by
    mu = calculate_shift(image_tokens, base/max_image_seq_len, base/max_shift from the scheduler's config)."""
    import copy

    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    grid = copy.deepcopy(scheduler)
    config = grid.config
    mu = calculate_shift(image_tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    grid.set_timesteps(sigmas=sigmas, mu=mu)  # diffusers' retrieve_timesteps(scheduler, n, sigmas=..., mu=...)
    return grid
