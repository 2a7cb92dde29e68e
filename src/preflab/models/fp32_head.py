"""cast_lm_head_to_fp32 (TRL 1.16 GRPOConfig; ScaleRL, Khatri et al., 2025, arXiv:2510.13786): the LM head of the
policy and of its reference model runs in float32 whatever the model's dtype or the run's autocast.

    cast_lm_head_to_fp32(model)

as TRL's GRPOTrainer does it: the output projection's parameters become float32 (`module.float()`, the same
Parameter objects, so an optimizer built before keeps them), and its forward computes

    logits = linear(h.float(), W.float(), b.float())      with autocast off

so generation (transformers' generate calls the same module) and preflab's chunked scorer (preflab.scoring.head
calls the module) both get float32 logits. With tied word embeddings the input embeddings share W, so their output is
cast back to the dtype the embeddings had (TRL's hook). The forward is bound to the module (types.MethodType), so a
deepcopy (the online run's frozen reference copy) rebinds it to its own weight. A LoRA adapter on the LM head is
refused, as TRL refuses it (its weight would be read past the adapter).
"""
from __future__ import annotations

import types

import torch
from torch import nn

from preflab.errors import ConfigError
from preflab.models.attention import unwrap


def _float32_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    with torch.autocast(hidden_states.device.type, enabled=False):
        return nn.functional.linear(hidden_states.float(), self.weight.float(),
                                    None if self.bias is None else self.bias.float())


def _cast_back(dtype):
    def hook(module, args, output):
        return output.to(dtype)
    return hook


def cast_lm_head_to_fp32(model: nn.Module, name: str = "the policy") -> None:
    """The model's output projection in float32 (module docstring); a no-op when already cast."""
    base = unwrap(model)
    if hasattr(base, "get_base_model"):  # a PEFT model: its transformers model
        base = base.get_base_model()
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        kind = type(head).__name__ if head is not None else "none"
        raise ConfigError(f"cast_lm_head_to_fp32: {name}'s LM head is {kind}, not a plain linear layer"
                          + (" (a LoRA adapter on lm_head: remove lm_head from lora_target_modules, as TRL requires)"
                             if "lora" in type(head).__module__.lower() else "") + "; remove cast_lm_head_to_fp32.")
    if getattr(head, "_preflab_fp32", False):
        return
    original = head.weight.dtype
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    tied = embeddings is not None and getattr(embeddings, "weight", None) is head.weight
    head.float()
    head.forward = types.MethodType(_float32_forward, head)
    head._preflab_fp32 = True
    if tied and original != torch.float32:
        embeddings.register_forward_hook(_cast_back(original))
