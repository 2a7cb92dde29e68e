"""SPPO with hard win probabilities: squared regression of each log-ratio on +-1/(2 beta) (TRL `sppo_hard`).

Paper: Wu et al., 2024, "Self-Play Preference Optimization for Language Model Alignment" (arXiv:2405.00675),
Eq. 4.7 with P(y_w beats pi) = 1 and P(y_l beats pi) = 0, h = S_theta - S_ref:

    L = (h_w - 1/(2 beta))^2 + (h_l + 1/(2 beta))^2

Optimum h_w = 1/(2 beta), h_l = -1/(2 beta) (finite).

Deviation from the paper: the paper's soft probabilities (estimated with PairRM) are replaced by hard 1/0 labels, as
in TRL; the soft version is `sppo`. No f-divergence (TRL rejects one for this loss).
"""
from dataclasses import dataclass

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


@dataclass(frozen=True)
class SPPOHard(Objective):
    beta: float = 0.1

    paper = "Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment (arXiv:2405.00675)"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='sppo_hard' "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("pair-wise",), "framework": ("offline", "self-play"), "constraint": ("reference",),
            "property": ("likelihood",)}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        losses = (h_w - 0.5 / self.beta) ** 2 + (h_l + 0.5 / self.beta) ** 2
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = SPPOHard
