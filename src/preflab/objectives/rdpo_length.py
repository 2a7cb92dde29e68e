"""R-DPO: length-regularised DPO, a length-difference offset inside DPO's sigmoid.

Paper: Park, Rafailov, Ermon & Finn, 2024, "Disentangling Length from Quality in Direct Preference Optimization"
(arXiv:2403.19159). With Delta = h_w - h_l, h = S_theta - S_ref, |y| = response length in tokens:

    L = -log sigmoid(beta * Delta + alpha * (|y_w| - |y_l|))

A longer chosen response already raises the logit, so the policy gains less from learning length.

Deviation from the paper: none intended, but the formula and its sign are UNVERIFIED against the PDF (taken from the
SimPO paper's baseline table and a paper summary), and so is the default alpha = 0.05 (the low end of SimPO's search
grid for R-DPO, alpha in {0.05, 0.1, 0.5, 1.0}). Not rDPO (`robust_dpo`).
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, logratios, reward_metrics


@dataclass(frozen=True)
class RDPOLength(Objective):
    beta: float = 0.1
    alpha: float = 0.05  # weight of the length difference |y_w| - |y_l| (unverified default)

    paper = "Park et al. 2024, Disentangling Length from Quality in Direct Preference Optimization (arXiv:2403.19159)"
    checked_against = ("unverified: form and sign from SimPO's baseline table and summaries (methods/objectives.md "
                       "§A8); alpha = 0.05 unverified")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ("length",)}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        length_gap = as_loss_dtype(batch.policy_chosen.length) - as_loss_dtype(batch.policy_rejected.length)
        losses = -F.logsigmoid(self.beta * (h_w - h_l) + self.alpha * length_gap)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = RDPOLength
