"""BCO (pairwise): binary classification of chosen vs rejected implicit rewards (TRL `loss_type="bco_pair"`).

Paper: Jung et al., 2024, "Binary Classifier Optimization for Large Language Model Alignment" (arXiv:2404.04656).
With r = beta * (S_theta - S_ref):

    L = -log sigmoid(r_w) - log sigmoid(-r_l)

Deviation from the paper: TRL 1.x's form, which drops the paper's reward shift delta (a running mean of the rewards,
kept by older TRL versions); with delta = 0 the two agree.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


@dataclass(frozen=True)
class BCOPair(Objective):
    beta: float = 0.1

    paper = "Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment (arXiv:2404.04656)"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='bco_pair' (no reward shift delta) "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("point-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * h_w) - F.logsigmoid(-self.beta * h_l)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = BCOPair
