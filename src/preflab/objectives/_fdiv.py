"""TRL's f-divergence score maps s(h) for h = log(pi_theta/pi_ref) (Wang et al., 2023, "Beyond Reverse KL").

    reverse_kl        s(h) = h
    forward_kl        s(h) = 1 - exp(-h)
    js_divergence     s(h) = log 2 + log sigmoid(h)
    alpha_divergence  s(h) = (exp((alpha - 1) h) - 1) / (alpha - 1)   (exponent clamped to [-80, 80] as TRL does)
"""
import math

import torch
import torch.nn.functional as F

FDIV_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def score_map(h: torch.Tensor, kind: str = "reverse_kl", alpha: float = 0.5) -> torch.Tensor:
    if kind == "reverse_kl":
        return h
    if kind == "forward_kl":
        return 1 - torch.exp(-h.clamp(min=-80.0))
    if kind == "js_divergence":
        return math.log(2.0) + F.logsigmoid(h)
    if kind == "alpha_divergence":
        return (torch.exp(((alpha - 1) * h).clamp(-80.0, 80.0)) - 1) / (alpha - 1)
    raise ValueError(f"unknown f-divergence {kind!r}; use one of {FDIV_TYPES}")
