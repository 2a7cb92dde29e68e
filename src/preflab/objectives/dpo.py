"""DPO: direct preference optimization (Rafailov et al., 2023, Eq. 7); TRL's `loss_type="sigmoid"`.

    L = -log sigmoid(beta * [(S_theta(y_w) - S_ref(y_w)) - (S_theta(y_l) - S_ref(y_l))])

S(y) is the summed log-prob of the response tokens. The optimum on Bradley-Terry data is
pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x) (checked in preflab.lab). RSO's "sigmoid-norm" loss is this one.

Deviation from the paper: none. `f_divergence` applies TRL's score map s(h) before the margin
(reverse_kl = identity; see preflab.objectives._fdiv).
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives._fdiv import FDIV_TYPES, score_map
from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


@dataclass(frozen=True)
class DPO(Objective):
    beta: float = 0.1                 # inverse temperature of the implicit reward beta * log(pi/pi_ref)
    f_divergence: str = "reverse_kl"  # TRL's f_divergence_type: reverse_kl | forward_kl | js_divergence | alpha_divergence
    f_alpha: float = 0.5              # TRL's f_alpha_divergence_coef (alpha_divergence only)

    aliases = ("sigmoid",)
    paper = "Rafailov et al. 2023, Direct Preference Optimization (arXiv:2305.18290)"
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def validate(self):
        super().validate()
        if self.f_divergence not in FDIV_TYPES:
            raise ConfigError(f"f_divergence must be one of {FDIV_TYPES}, got {self.f_divergence!r}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)  # [B]
        s = lambda h: score_map(h, self.f_divergence, self.f_alpha)  # noqa: E731
        losses = -F.logsigmoid(self.beta * (s(h_w) - s(h_l)))
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = DPO
