"""APO-zero: anchored preference optimisation that raises the winner and lowers the loser (TRL `apo_zero`).

Paper: D'Oosterlinck et al., 2024, "Anchored Preference Optimization and Contrastive Revisions: Addressing
Underspecification in Alignment" (arXiv:2408.06266), Eq. 7. With r = beta * (S_theta - S_ref):

    L = (1 - sigmoid(r_w)) + sigmoid(r_l)

Use when the chosen outputs are better than the model's own. Bounded in [0, 2].

Deviation from the paper: none. (Not Accelerated PO, `apo_accelerated`.)
"""
from dataclasses import dataclass

import torch

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


@dataclass(frozen=True)
class APOZero(Objective):
    beta: float = 0.1

    paper = "D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions (arXiv:2408.06266)"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='apo_zero' "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",),
            "property": ("likelihood",)}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        losses = (1 - torch.sigmoid(self.beta * h_w)) + torch.sigmoid(self.beta * h_l)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = APOZero
