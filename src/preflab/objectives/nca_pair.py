"""NCA (pairwise): noise-contrastive alignment on absolute implicit rewards (TRL `loss_type="nca_pair"`).

Paper: Chen et al., 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards"
(arXiv:2402.05369), the pairwise-preference NCA loss. With r = beta * (S_theta - S_ref) per response:

    L = -log sigmoid(r_w) - 1/2 log sigmoid(-r_w) - 1/2 log sigmoid(-r_l)

Unlike DPO it is not a function of the margin alone: it pulls r_w towards log 2 and pushes r_l down.

Deviation from the paper: none (TRL 1.16's form). No f-divergence (TRL rejects one for this loss).
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


@dataclass(frozen=True)
class NCAPair(Objective):
    beta: float = 0.1

    paper = "Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards (arXiv:2402.05369)"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='nca_pair' "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("point-wise",), "framework": ("offline",), "constraint": ("reference",),
            "property": ("likelihood",)}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        r_w, r_l = self.beta * h_w, self.beta * h_l
        losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = NCAPair
