"""The reference model of online loops: who it is, its log-probs, and the refresh that makes iterative DPO.

    ref = make_reference(policy, needed=objective.needs_reference)   # a frozen copy of pi_0 (None for LoRA / unneeded)
    scores, head = reference_scores(policy, ref, layout)             # no grad; LoRA: the policy with adapters off
    refresh_reference(ref, policy)                                   # ref <- current policy weights (pi_t)

Iterative DPO (Xiong et al., 2024, arXiv:2312.11456; Dong et al., 2024, arXiv:2405.07863) trains iteration t+1
against pi_t: the loop calls `refresh_reference` at the start of every `refresh_reference_every`-th iteration.
"""
from __future__ import annotations

import torch
from torch import nn

from preflab.errors import ConfigError
from preflab.models.adapters import is_lora
from preflab.models.load import frozen_copy
from preflab.scoring.lm import LogProbScorer, Scores, backbone_and_head


def make_reference(policy: nn.Module, needed: bool, ref: nn.Module | None = None) -> nn.Module | None:
    """The given reference, else a frozen copy of the policy when needed (LoRA policies use adapters-off)."""
    if ref is not None or not needed or is_lora(policy):
        return ref
    return frozen_copy(policy)


@torch.no_grad()
def reference_scores(policy: nn.Module, ref: nn.Module | None, layout,
                     chunk_tokens: int | None = None, temperature: float = 1.0) -> tuple[Scores, nn.Module]:
    """(reference Scores, reference LM head) on a layout, without gradient; at `temperature` T the reference's
    logits divided by T (LogProbScorer's temperature; the head returned is tempered alike)."""
    if ref is not None:
        return LogProbScorer(ref, chunk_tokens, temperature)(layout), backbone_and_head(ref)[1].tempered(temperature)
    if is_lora(policy):
        with policy.disable_adapter():
            return (LogProbScorer(policy, chunk_tokens, temperature)(layout),
                    backbone_and_head(policy)[1].tempered(temperature))
    raise ConfigError("this objective needs a reference model; pass ref=... or a LoRA policy.")


@torch.no_grad()
def refresh_reference(ref: nn.Module | None, policy: nn.Module) -> None:
    """Copy the policy's current weights into the reference (the reference becomes pi_t)."""
    if ref is None:
        raise ConfigError("refresh_reference_every needs a separate reference model; a LoRA policy's reference is "
                          "its base weights, which do not move. Merge the adapters or use a full policy.")
    ref.load_state_dict(policy.state_dict())
    ref.requires_grad_(False)
    ref.eval()
