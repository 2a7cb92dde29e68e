"""RRHF: rank K responses by length-normalized log-prob with a hinge on mis-ordered pairs, plus SFT on the best.

Paper: Yuan, Yuan, Tan, Wang, Huang, Huang, 2023, "RRHF: Rank Responses to Align Language Models with Human
Feedback without tears" (arXiv:2304.05302), L = L_rank + L_ft; as restated by the DPO survey (eq. 10) and coded in
GanjinZero/RRHF `train.py`:

    p_i = S_theta(y_i) / |y_i|^length_penalty
    L   = rank_weight * sum_{r_i < r_j} max(0, p_i - p_j) + sft_weight * (-S_theta(y*)),   y* = argmax_i r_i

Reference-free, on a ListBatch (scores r = ListBatch.scores, higher is better; ties give no pair; invalid entries
are skipped).

Deviation from the paper: none for the rank term. The SFT term is the paper's summed NLL of y*; the released code
instead takes a mean over padded positions. The code's `rrhf_weight` (default 100, train.sh uses 1) is rank_weight.
"""
from dataclasses import dataclass

import torch

from preflab.errors import ConfigError
from preflab.objectives.base import ListBatch, Objective, ObjectiveOutput, as_loss_dtype


@dataclass(frozen=True)
class RRHF(Objective):
    rank_weight: float = 1.0     # weight of the ranking hinge (the code's rrhf_weight)
    sft_weight: float = 1.0      # weight of the NLL on the best-scored response
    length_penalty: float = 1.0  # p = S / |y|^length_penalty

    batch_type = ListBatch
    needs_reference = False
    paper = "Yuan et al. 2023, RRHF: Rank Responses to Align Language Models with Human Feedback (arXiv:2304.05302)"
    checked_against = ("official code: GanjinZero/RRHF@e1a2b61 train.py rrhf_loss (rank term); the SFT term is the "
                       "paper's sum (the code's mean over padded positions differs), re-read 2026-12")
    tags = {"data": ("list-wise",), "framework": ("offline",), "constraint": ("reference-free",), "property": ()}

    def validate(self):
        super().validate()
        if self.rank_weight < 0 or self.sft_weight < 0:
            raise ConfigError(f"RRHF: weights must be >= 0, got {self.rank_weight}, {self.sft_weight}.")

    def compute(self, batch: ListBatch) -> ObjectiveOutput:
        s = as_loss_dtype(batch.policy.sum)                                   # [B, K]
        p = s / batch.policy.length.to(s.dtype).clamp_min(1) ** self.length_penalty
        r, valid = batch.scores.to(s.dtype), batch.valid
        # pair (i, j) counts when r_i < r_j: penalize p_i > p_j
        pairs = (r.unsqueeze(-1) < r.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
        hinge = torch.relu(p.unsqueeze(-1) - p.unsqueeze(-2))
        rank = torch.where(pairs, hinge, torch.zeros_like(hinge)).sum((-1, -2))
        best = torch.where(valid, r, torch.full_like(r, -torch.inf)).argmax(-1, keepdim=True)
        sft = -s.gather(-1, best).squeeze(-1)
        losses = self.rank_weight * rank + self.sft_weight * sft
        acc = ((p.unsqueeze(-1) < p.unsqueeze(-2)) & pairs).sum((-1, -2)) / pairs.sum((-1, -2)).clamp_min(1)
        metrics = {"loss/rank": rank.detach().mean(), "loss/sft": sft.detach().mean(),
                   "rewards/accuracies": acc.detach().to(s.dtype).mean()}
        return ObjectiveOutput(losses.mean(), losses, metrics)


OBJECTIVE = RRHF
