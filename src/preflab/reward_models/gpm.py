"""GPM: general preference model with k-dimensional preference embeddings and a skew-symmetric score.

Zhang, Y. et al. (2024), "Beyond Bradley-Terry Models: A General Preference Model for Language Model Alignment",
arXiv:2410.02197 (ICML 2025), Sec. 3 (preference representation), Eq. for s and the loss as in the official code
(general-preference/general-preference-model, `GeneralPreferenceLoss`):

    v(x, y) in R^{2k}                     the head output at the last token, normalised to |v| = 1
    R = blockdiag_j [[0, -lambda_j], [lambda_j, 0]]       (lambda = 1 without a prompt head)
    s(y > y' | x) = v(y)^T R^T v(y') = sum_j lambda_j (v_{2j} v'_{2j+1} - v_{2j+1} v'_{2j})
    P(y > y' | x) = sigma(s / tau),       L = -log sigma((s(y_w > y_l) - m) / tau),   tau = 0.1

s is skew-symmetric (s(y > y') = -s(y' > y), s(y > y) = 0), so P + P^T = 1 and P(y > y) = 1/2 hold exactly, and
unlike a scalar (BT) reward it can represent cyclic preferences: k = 1 unit vectors 120 degrees apart give
A > B > C > A with s = sin 120 deg each. BT is the special case v(y) = (r(y), 1) unnormalised with tau = 1.
K responses need K forward passes (one embedding each) for the whole K x K score matrix.

Deviation from the paper: no prompt-dependent lambda(x) head (lambda = 1; `skew_score` accepts a lambda for
callers that have one); embeddings are always unit-normalised when `normalize=True` (the official training code
comments the normalisation out, its inference code applies it; preflab stores the choice in the model config).
Audit 2026-12 (paper-audit-3), the paper's text (arXiv:2410.02197v3): §4.2 normalises v to unit length "to ensure
training stability and boundedness" (the default here); App. A.2 Eq. A.1 is the cross-entropy on s / beta with
beta = 0.1 (App. E.3, Tables 8-9), tau here, hard labels being its P_D = 1 case; the scale gate there is
s = v^T D(x) R D(x) v' with D's blocks lambda_l(x) I_2, so a gate weighs block l by lambda_l(x)^2 (Table 4 reports
GPMs with and without it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from preflab.errors import ConfigError
from preflab.objectives.base import ObjectiveOutput


def skew_score(v_a: Tensor, v_b: Tensor, lam: Tensor | None = None) -> Tensor:
    """[...] s(a > b) for embeddings [..., 2k] (lambda [..., k] or None for all ones)."""
    a0, a1 = v_a[..., 0::2], v_a[..., 1::2]
    b0, b1 = v_b[..., 0::2], v_b[..., 1::2]
    terms = a0 * b1 - a1 * b0  # [..., k]
    if lam is not None:
        terms = terms * lam
    return terms.sum(-1)


def score_matrix(embeddings: Tensor, lam: Tensor | None = None) -> Tensor:
    """[K, K] S[i, j] = s(y_i > y_j) from K embeddings [K, 2k]; exactly skew-symmetric with a zero diagonal."""
    raw = skew_score(embeddings[:, None, :], embeddings[None, :, :], lam)
    return (raw - raw.transpose(0, 1)) / 2


@dataclass(frozen=True)
class GPMHead:
    """Preference-embedding head of D = `dim` = 2k outputs."""

    dim: int = 2
    tau: float = 0.1
    normalize: bool = True
    kind = "gpm"

    def __post_init__(self):
        if self.dim < 2 or self.dim % 2:
            raise ConfigError(f"GPMHead: dim must be an even number >= 2 (2k), got {self.dim}.")
        if not self.tau > 0:
            raise ConfigError(f"GPMHead: tau must be > 0, got {self.tau}.")

    @property
    def num_outputs(self) -> int:
        return self.dim

    def embed(self, outputs: Tensor) -> Tensor:
        """[B, 2k] preference embeddings from raw head outputs."""
        return F.normalize(outputs, dim=-1) if self.normalize else outputs

    def score(self, out_a: Tensor, out_b: Tensor) -> Tensor:
        """[B] s(a > b) from raw head outputs [B, 2k]."""
        return skew_score(self.embed(out_a), self.embed(out_b))

    def loss(self, out_chosen: Tensor, out_rejected: Tensor, extras: dict) -> ObjectiveOutput:
        """out_*: [B, 2k]; extras may hold `margin` [B]. Metrics: accuracy (s > 0), margin (mean s), prob."""
        s = self.score(out_chosen, out_rejected)
        margin = extras.get("margin")
        losses = -F.logsigmoid((s - (margin.to(s.dtype) if margin is not None else 0.0)) / self.tau)
        d = s.detach()
        return ObjectiveOutput(losses.mean(), losses, {"accuracy": (d > 0).float().mean(), "margin": d.mean(),
                                                        "prob": torch.sigmoid(d / self.tau).mean()})

    def logit(self, out_a: Tensor, out_b: Tensor) -> Tensor:
        """[B] log-odds of P(a > b) = s / tau."""
        return self.score(out_a, out_b) / self.tau

    def to_config(self) -> dict:
        return {"head": self.kind, "dim": self.dim, "tau": self.tau, "normalize": self.normalize}

    def unreachable_margins_note(self, pairs) -> str | None:
        """A note when rows' `margin` is one a normalised GPM cannot reach: with unit embeddings and lambda = 1,
        |s| <= 1 (R is orthogonal), so a pair with margin m >= 1 keeps a loss of at least log(1 + e^((m - 1) / tau))
        (0.69 at m = 1, 10 at m = 2 with tau 0.1) and pulls s to its bound whatever the data says. The margin is
        subtracted from s as the GPM code's PairWiseLoss does; margins on a BT logit scale (TRL's, e.g. rating
        differences) belong to reward_head: bt, or scaled below 1. None when no margin reaches 1."""
        if not self.normalize:
            return None
        big = [float(p.extras["margin"]) for p in pairs if p.extras.get("margin") is not None
               and float(p.extras["margin"]) >= 1]
        if not big:
            return None
        return (f"{len(big)} of {len(pairs)} training pairs have a margin >= 1 (largest {max(big):g}), which a "
                "normalised GPM score s (|s| <= 1) can never exceed: their loss stays at least "
                f"log(1 + e^((m - 1) / {self.tau:g})) and drives s to its bound. The margin is in units of s, not of "
                "a BT logit: scale it below 1, or use reward_head: bt.")

