"""Robust DPO (rDPO): an unbiased DPO loss under labels flipped with probability eps (TRL `loss_type="robust"`).

Paper: Chowdhury, Kini & Natarajan, 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback"
(arXiv:2403.00409), the de-biased loss (equation number not checked against the PDF).
With z = beta * (s(h_w) - s(h_l)), l(z) = -log sigmoid(z):

    L = [(1 - eps) l(z) - eps l(-z)] / (1 - 2 eps)  =  l(z) - eps/(1 - 2 eps) * z,    0 <= eps < 0.5

Unbiased: (1 - eps) L(z) + eps L(-z) = l(z). The per-pair loss is unbounded below (gradient never zero).

Deviation from the paper: none. label_smoothing (eps) defaults to TRL's 0.0 (= DPO); the paper's experiments use 0.1.
Not cDPO (`cdpo`), whose linear term has the opposite sign.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives._fdiv import check_fdiv, fdiv_scores
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, reward_metrics


@dataclass(frozen=True)
class RobustDPO(Objective):
    beta: float = 0.1
    label_smoothing: float = 0.0      # eps: label flip rate, in [0, 0.5)
    f_divergence: str = "reverse_kl"
    f_alpha: float = 0.5

    aliases = ("robust",)
    paper = "Chowdhury et al. 2024, Provably Robust DPO: Aligning LMs with Noisy Feedback (arXiv:2403.00409)"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='robust' (tests/objectives/test_trl_parity.py, "
                       "1e-9)")
    tags = {"data": ("pair-wise", "noise"), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def validate(self):
        super().validate()
        check_fdiv("RobustDPO", self.f_divergence)
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"RobustDPO: label_smoothing (flip rate) must be in [0, 0.5), "
                              f"got {self.label_smoothing}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        s_w, s_l = fdiv_scores(batch, self.f_divergence, self.f_alpha)
        z, eps = self.beta * (s_w - s_l), self.label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = RobustDPO
