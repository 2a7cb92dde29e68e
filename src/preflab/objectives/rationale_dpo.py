"""RDPO: DPO plus a likelihood term on a machine-generated rationale for the preference (`rationale_dpo`).

Paper: Just et al., 2024, "Data-Centric Human Preference Optimization with Rationales" (arXiv:2407.14477);
loss as coded in reds-lab/preference-learning-with-rationales@16111a1 `trainers.py::RDPOTrainer`:

    L = -log sigmoid(beta * Delta) - log sigmoid(gamma * S_theta(r | x_r))

Delta = [S_theta(y_w) - S_ref(y_w)] - [S_theta(y_l) - S_ref(y_l)]; S_theta(r | x_r) is the policy's *summed*
log-prob of the rationale r given the rationale prompt x_r (no reference term). gamma = 0 gives DPO + ln 2
(same gradients).
Extras: `rationale_logps` -- SequenceLogps [B, T_r] of the rationale under the policy (or a [B] tensor of sums).
The rationale prompt x_r is built by the data builder (`rationales`), not here.

Deviation from the paper: none (defaults beta = gamma = 0.1 from the repo's `config/loss/rdpo.yaml`).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives.base import (
    Objective, ObjectiveOutput, PairBatch, SequenceLogps, logratios, reward_metrics,
)


def rationale_sums(batch, like: torch.Tensor) -> torch.Tensor:
    r = batch.extra("rationale_logps", "rationale_dpo")
    r = r.sum if isinstance(r, SequenceLogps) else r
    return torch.as_tensor(r, dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class RationaleDPO(Objective):
    beta: float = 0.1   # DPO inverse temperature
    gamma: float = 0.1  # weight inside -log sigmoid(gamma * S(r)); the README's 7B run uses 0.001

    required_extras = ("rationale_logps",)
    gradient_extras = ("rationale_logps",)
    gradient_extras_hint = ("preflab does not yet score rationale-conditioned sequences in the training forward; use "
                            "rationale_dpo from Python with a loop that scores the rationale with the policy.")
    paper = "Just et al. 2024, Data-Centric Human Preference Optimization with Rationales (arXiv:2407.14477)"
    checked_against = ("official code: reds-lab/preference-learning-with-rationales@16111a1 trainers.py::RDPOTrainer "
                       "(summed rationale log-prob; config/loss/rdpo.yaml), re-read 2026-12")
    tags = {"data": ("pair-wise", "rationale"), "framework": ("offline",), "constraint": ("reference",),
            "property": ()}

    def validate(self):
        super().validate()
        if self.gamma < 0:
            raise ConfigError(f"RationaleDPO: gamma must be >= 0, got {self.gamma}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        s_r = rationale_sums(batch, h_w)
        losses = -F.logsigmoid(self.beta * (h_w - h_l)) - F.logsigmoid(self.gamma * s_r)
        metrics = reward_metrics(batch, self.beta)
        metrics["logps/rationale"] = s_r.detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        pc = batch.policy_chosen
        return {"rationale_logps": SequenceLogps(pc.token_logps.detach() * 2.0, pc.mask)}


OBJECTIVE = RationaleDPO
