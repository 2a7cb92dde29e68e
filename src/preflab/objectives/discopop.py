"""DiscoPOP: the log-ratio-modulated loss found by LLM-driven objective discovery (TRL `loss_type="discopop"`).

Paper: Lu et al., 2024, "Discovering Preference Optimization Algorithms with and for Large Language Models"
(arXiv:2406.08414), Eq. 5. With z = beta * (s(h_w) - s(h_l)) and m = sigmoid(z / tau), tau = `discopop_tau`:

    L = (1 - m) * (-log sigmoid(z)) + m * exp(-z)

A logistic loss for z << 0 blended into an exponential loss for z >> 0.

Deviation from the paper: none in the value. m * exp(-z) is evaluated as exp(log sigmoid(z/tau) - z), which stays
finite for large negative z when tau < 1 (TRL's direct product overflows to inf * 0 = nan there).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives._fdiv import check_fdiv, fdiv_scores
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, reward_metrics


@dataclass(frozen=True)
class DiscoPOP(Objective):
    beta: float = 0.1
    discopop_tau: float = 0.05        # temperature of the modulation (paper's recommended value)
    f_divergence: str = "reverse_kl"
    f_alpha: float = 0.5

    paper = "Lu et al. 2024, Discovering Preference Optimization Algorithms with and for LLMs (arXiv:2406.08414)"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='discopop' "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def validate(self):
        super().validate()
        check_fdiv("DiscoPOP", self.f_divergence)
        if not self.discopop_tau > 0:
            raise ConfigError(f"DiscoPOP: discopop_tau must be > 0, got {self.discopop_tau}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        s_w, s_l = fdiv_scores(batch, self.f_divergence, self.f_alpha)
        z = self.beta * (s_w - s_l)
        m = torch.sigmoid(z / self.discopop_tau)
        losses = (1 - m) * -F.logsigmoid(z) + torch.exp(F.logsigmoid(z / self.discopop_tau) - z)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = DiscoPOP
