"""SparsePO with fixed activation masks ("MaPO" in the SparsePO code): token weights read off model activations.

Paper: Christopoulou, Cardenas, Lampouras, Bou-Ammar, Wang, 2024, "SparsePO: Controlling Preference Alignment of
LLMs via Sparse Token Masks" (arXiv:2410.05102), the model-activation mask variant. Not Margin-aware PO (the
diffusion method also called MaPO). Checked against methods/objectives.md §C #2, which read the official code
(huawei-noah/HEBO `SparsePO/src/trainers/mapo_trainer.py`, `masks/mask_models.py::apply_masked_z_norm`).

    a_t = mean over the hidden dimension of the hidden state at t
    m_t = min-max rescaling of the z-normalised a over the response tokens of the sequence, in [0, 1], no gradient
    L   = -log sigmoid(beta [(sum_t m h)_w - (sum_t m h)_l - (sum_t m k)_w + (sum_t m k)_l]),   k_t = -KL_t

The same m weights reward and KL (loss in _sparse.sparse_pair_loss). Extras (token_needs): chosen/rejected_token_kl
[B, T] = KL(pi_ref || pi_theta); chosen/rejected_hidden [B, T, H] (detached here).
Min-max after a z-norm equals min-max of a itself, so the z-norm step is implied.

Deviation from the paper: one activation (the scorer's last hidden state of the policy) instead of the average over
hooked MLP/attention/residual outputs of every reference layer; a response whose activations are all equal (e.g.
one token, where the code's std is undefined) gets mask 1 on every token.
"""
from dataclasses import dataclass

import torch

from preflab.objectives._sparse import sparse_pair_loss
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype
from preflab.objectives.sparsepo import SparsePO


def activation_mask(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] in [0, 1]: per-sequence min-max rescaled mean activation over response tokens (0 off the response)."""
    a = as_loss_dtype(hidden.detach()).mean(-1)
    lo = torch.where(mask, a, torch.full_like(a, float("inf"))).amin(-1, keepdim=True)
    hi = torch.where(mask, a, torch.full_like(a, float("-inf"))).amax(-1, keepdim=True)
    span = hi - lo
    flat = ~(span > 0)
    m = torch.where(flat, torch.ones_like(a), (a - lo) / torch.where(flat, torch.ones_like(span), span))
    return torch.where(mask, m, torch.zeros_like(m))


@dataclass(frozen=True)
class SparsePOMaPO(Objective):
    reward_meaning = "beta * SparsePO's mask-weighted token reward"
    beta: float = 0.1   # inverse temperature (code: 0.1 HH, 0.8 IMDB/TL;DR)

    token_needs = ("token_kl", "hidden")
    paper = "Christopoulou et al. 2024, SparsePO (arXiv:2410.05102), activation-mask variant"
    checked_against = ("official code: huawei-noah/HEBO@04f4ece SparsePO/src/trainers/mapo_trainer.py (loss; "
                       "zn_rescale masks), re-read 2026-12")
    tags = {"data": ("pair-wise", "token"), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        masks = {}
        for side in ("chosen", "rejected"):
            m = activation_mask(batch.extra(f"{side}_hidden", "SparsePOMaPO"), getattr(batch, f"policy_{side}").mask)
            masks[f"u_{side}"] = masks[f"d_{side}"] = m
        return sparse_pair_loss(batch, self.beta, masks, owner="SparsePOMaPO")

    example_extras = classmethod(SparsePO.example_extras.__func__)


OBJECTIVE = SparsePOMaPO
