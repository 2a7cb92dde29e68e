"""EXO (pairwise): reverse KL between the model's and the labels' preference distributions (TRL `exo_pair`).

Paper: Ji et al., 2024, "Towards Efficient Exact Optimization of Language Model Alignment" (arXiv:2402.00856),
Eq. 16 with K = 2. With z = beta * (s(h_w) - s(h_l)), q_w = sigmoid(z), q_l = sigmoid(-z) and label distribution
p = (1 - eps, eps), eps = `label_smoothing`:

    L = KL(q || p) = q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps)

Minimum 0 at the finite margin z* = log((1 - eps)/eps).

Deviation from the paper: none. label_smoothing defaults to 1e-3 (the paper's recommendation); TRL's default 0 is
rejected by TRL itself for this loss, so preflab requires 0 < eps < 1.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives._fdiv import check_fdiv, fdiv_scores
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, reward_metrics


@dataclass(frozen=True)
class EXOPair(Objective):
    beta: float = 0.1
    label_smoothing: float = 1e-3     # eps: probability the label distribution puts on the rejected response
    f_divergence: str = "reverse_kl"
    f_alpha: float = 0.5

    paper = "Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment (arXiv:2402.00856)"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='exo_pair' "
                       "(tests/objectives/test_trl_parity.py, 1e-7)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference", "divergence"),
            "property": ()}

    def validate(self):
        super().validate()
        check_fdiv("EXOPair", self.f_divergence)
        if not 0 < self.label_smoothing < 1:
            raise ConfigError(f"EXOPair: label_smoothing must be in (0, 1) (paper: 1e-3), got {self.label_smoothing}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        s_w, s_l = fdiv_scores(batch, self.f_divergence, self.f_alpha)
        z = self.beta * (s_w - s_l)
        eps = self.label_smoothing
        losses = (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
                  + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = EXOPair
