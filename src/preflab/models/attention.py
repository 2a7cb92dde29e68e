"""What a model's attention accepts: unwrapping DDP/PEFT wrappers, whether a custom 4-D mask is honoured, and the
mask in the form the attention implementation expects. Used by the prefix-shared and packed layouts
(preflab.data.prefix) and by the scorer (preflab.scoring.lm)."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

MASK_IMPLEMENTATIONS = ("sdpa", "eager")
_warned: set[str] = set()


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / PEFT wrappers (LoRA layers stay active inside it)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def supports_custom_mask(model) -> tuple[bool, str]:
    """(True, "") when `model` applies a 4-D attention mask and explicit position ids as given; else (False, why).

    Checked: the attention implementation (sdpa or eager) and that every layer is full attention (a sliding-window
    or linear-attention layer would get the full mask instead of its own)."""
    config = getattr(unwrap(model), "config", None)
    if config is None:
        return False, f"{type(model).__name__} has no transformers config"
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in MASK_IMPLEMENTATIONS:
        return False, f"attn_implementation={impl!r} does not take a custom 4-D mask (use sdpa or eager)"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None) or []
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other:
        return False, f"{text.model_type} has {other} layers, which would receive the full-attention mask"
    if getattr(text, "use_sliding_window", False) and getattr(text, "sliding_window", None):
        return False, f"{text.model_type} uses sliding-window attention"
    return True, ""


def effective_layout(layout: str, *models) -> str:
    """`layout`, or "padded" (with a one-time warning per reason) when a model cannot take a custom 4-D mask."""
    if layout == "padded":
        return layout
    for model in models:
        if model is None:
            continue
        ok, why = supports_custom_mask(model)
        if not ok:
            if why not in _warned:
                _warned.add(why)
                warnings.warn(f"preflab: layout {layout!r} needs a custom 4-D attention mask but {why}; "
                              "falling back to the padded layout (same log-probs, slower).", stacklevel=2)
            return "padded"
    return layout


def model_mask(mask: Tensor, model, dtype: torch.dtype) -> Tensor:
    """A bool 4-D layout mask in the form `model`'s attention implementation expects: bool for sdpa, additive
    float (0 where allowed, dtype min elsewhere) for eager. 2-D masks and float masks pass through."""
    if mask.dim() != 4 or mask.dtype != torch.bool:
        return mask
    impl = getattr(getattr(unwrap(model), "config", None), "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
