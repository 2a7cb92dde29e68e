"""DPO^gamma: DPO with an attenuated reference model (the ranking-accuracy paper's variant).

Paper: Chen et al., 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings" (arXiv:2405.19534).
With S = summed response log-prob:

    L = -log sigmoid(beta * [(S_theta(y_w) - S_theta(y_l)) + gamma * (S_ref(y_l) - S_ref(y_w))])

gamma = 1 is DPO, gamma = 0 reference-free DPO; the paper sweeps gamma in {0, 0.25, ..., 2}.

Audit 2026-12 (paper-audit-2) against the authors' code, angie-chen55/pref-learning-ranking-acc@a86bdef
`dpo_trainer.py:1068-1071` (loss_type "alpha_scaling", their gamma is the `alpha` flag, README.md:77-104):
-log sigmoid(beta * (pi_logratios - alpha * ref_logratios)) on SUMMED response log-probs (`dpo_trainer.py:1235`
averages only for ipo), the reference log-ratio multiplied by gamma inside the sigmoid, beta 0.1 in the README
command; logged rewards beta * (S_theta - S_ref) per side, not gamma-scaled (`dpo_trainer.py:1118-1133`).
Matches the form above term by term. Their script's `alpha` default is 0.1 (`dpo.py:32-33`) but the README passes
it explicitly; gamma defaults to 1 here (= DPO) because the paper fixes no single value.

Deviation from the paper: none.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, reward_metrics


@dataclass(frozen=True)
class DPOGamma(Objective):
    beta: float = 0.1
    gamma: float = 1.0  # weight of the reference margin (1 = DPO, 0 = no reference)

    paper = "Chen et al. 2024, Preference Learning Algorithms Do Not Learn Preference Rankings (arXiv:2405.19534)"
    checked_against = ("official code: angie-chen55/pref-learning-ranking-acc@a86bdef dpo_trainer.py:1068-1071 "
                       "(loss_type alpha_scaling, summed log-probs, beta 0.1), read 2026-12")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        s = lambda side: as_loss_dtype(side.sum)  # noqa: E731
        policy_margin = s(batch.policy_chosen) - s(batch.policy_rejected)
        z = policy_margin + self.gamma * (s(batch.ref_rejected) - s(batch.ref_chosen))
        losses = -F.logsigmoid(self.beta * z)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = DPOGamma
