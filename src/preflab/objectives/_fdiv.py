"""TRL's f-divergence score maps s(h) for h = log(pi_theta/pi_ref) (Wang et al., 2023, "Beyond Reverse KL").

    reverse_kl        s(h) = h
    forward_kl        s(h) = 1 - exp(-h)                   (h clamped at -80 so exp stays finite; TRL does not clamp)
    js_divergence     s(h) = log 2 + log sigmoid(h)
    alpha_divergence  s(h) = (exp((alpha - 1) h) - 1) / (alpha - 1)
                      exponent clamped above at 80 as TRL 1.16 does in float32; alpha = 1 falls back to reverse_kl

TRL 1.16 (dpo_trainer.py) accepts a non-default map only for sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust,
discopop and sft; reported rewards always use beta * h, never s(h).
"""
import math

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives.base import logratios

FDIV_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def score_map(h: torch.Tensor, kind: str = "reverse_kl", alpha: float = 0.5) -> torch.Tensor:
    if kind == "reverse_kl":
        return h
    if kind == "forward_kl":
        return 1 - torch.exp(-h.clamp(min=-80.0))
    if kind == "js_divergence":
        return math.log(2.0) + F.logsigmoid(h)
    if kind == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:  # limit f'(t) -> log t, as TRL
            return h
        return (torch.exp(((alpha - 1) * h).clamp(max=80.0)) - 1) / (alpha - 1)
    raise ValueError(f"unknown f-divergence {kind!r}; use one of {FDIV_TYPES}")


def check_fdiv(owner: str, kind: str) -> None:
    """ConfigError unless `kind` is a known f-divergence (objectives call it from validate())."""
    if kind not in FDIV_TYPES:
        raise ConfigError(f"{owner}: f_divergence must be one of {FDIV_TYPES}, got {kind!r}.")


def fdiv_scores(batch, kind: str = "reverse_kl", alpha: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(s(h_w), s(h_l)) [B] of a PairBatch, in the loss dtype."""
    h_w, h_l = logratios(batch)
    return score_map(h_w, kind, alpha), score_map(h_l, kind, alpha)
