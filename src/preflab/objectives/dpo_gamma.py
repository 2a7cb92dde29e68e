"""DPO^gamma: DPO with an attenuated reference model (the ranking-accuracy paper's variant).

Paper: Chen et al., 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings" (arXiv:2405.19534).
With S = summed response log-prob:

    L = -log sigmoid(beta * [(S_theta(y_w) - S_theta(y_l)) + gamma * (S_ref(y_l) - S_ref(y_w))])

gamma = 1 is DPO, gamma = 0 reference-free DPO; the paper sweeps gamma in {0, 0.25, ..., 2}.

Deviation from the paper: none. gamma defaults to 1 (= DPO) because the paper fixes no single value.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, reward_metrics


@dataclass(frozen=True)
class DPOGamma(Objective):
    beta: float = 0.1
    gamma: float = 1.0  # weight of the reference margin (1 = DPO, 0 = no reference)

    paper = "Chen et al. 2024, Preference Learning Algorithms Do Not Learn Preference Rankings (arXiv:2405.19534)"
    checked_against = ("paper text: Chen et al. 2024 (PDF in angie-chen55/pref-learning-ranking-acc), per "
                       "methods/objectives.md §C #13")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        s = lambda side: as_loss_dtype(side.sum)  # noqa: E731
        policy_margin = s(batch.policy_chosen) - s(batch.policy_rejected)
        z = policy_margin + self.gamma * (s(batch.ref_rejected) - s(batch.ref_chosen))
        losses = -F.logsigmoid(self.beta * z)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = DPOGamma
