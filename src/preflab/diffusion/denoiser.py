"""The denoiser interface every diffusion piece calls: `denoiser(x_t, t, cond) -> prediction`.

x_t: [B, ...] latents; t: [B] long timesteps; cond: whatever the model is conditioned on (a tensor [B, L, D] of text
states, a dict of such tensors, or None). A diffusers `UNet2DConditionModel` (or any model whose forward takes
`(sample, timestep, encoder_hidden_states=..., ...)` and returns `.sample`) is adapted by `as_denoiser`; any other
callable (a plain function, an nn.Module with forward(x_t, t, cond)) is used as is. Nothing here imports diffusers.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor

from preflab.errors import PreflabError

Denoiser = Callable[[Tensor, Tensor, Any], Tensor]


class UNetDenoiser:
    """Adapts a diffusers-style model: a tensor cond goes in as `encoder_hidden_states`; a dict cond is passed as
    keyword arguments (e.g. {"encoder_hidden_states": ..., "added_cond_kwargs": {...}} for SDXL)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        kwargs = dict(cond) if isinstance(cond, dict) else {"encoder_hidden_states": cond}
        out = self.model(x_t, timestep=t, **kwargs)
        return out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, tuple) else out)


def as_denoiser(model: Any) -> Denoiser:
    """A callable (x_t, t, cond) -> prediction for a diffusers model or an already conforming callable."""
    if not callable(model):
        raise PreflabError(f"a denoiser must be callable as f(x_t, t, cond); got {type(model).__name__}.")
    if isinstance(model, torch.nn.Module) and "encoder_hidden_states" in inspect.signature(model.forward).parameters:
        return UNetDenoiser(model)
    return model


def cat_cond(first: Any, second: Any) -> Any:
    """Conditioning of two batches joined on the batch axis (tensors, dicts of them, nested; None stays None)."""
    if first is None and second is None:
        return None
    if isinstance(first, Tensor) and isinstance(second, Tensor):
        return torch.cat([first, second], 0)
    if isinstance(first, dict) and isinstance(second, dict) and first.keys() == second.keys():
        return {k: cat_cond(first[k], second[k]) for k in first}
    if not isinstance(first, (Tensor, dict)) and first == second:
        return first  # a shared non-tensor setting (a scale, a flag)
    raise PreflabError(
        f"cannot join conditionings of types {type(first).__name__} and {type(second).__name__}: give both sides "
        "the same structure (tensors, or dicts with the same keys)."
    )
