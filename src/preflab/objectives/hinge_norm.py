"""RSO hinge-norm: a hinge on the reference-normalised margin (TRL `loss_type="hinge"`).

Paper: Liu et al., 2023, "Statistical Rejection Sampling Improves Preference Optimization" (arXiv:2309.06657),
the hinge-norm loss (SLiC's hinge with the log-probs normalised by the SFT/reference policy):

    L = max(0, 1 - beta * (s(h_w) - s(h_l))),   h = S_theta - S_ref,  s = f-divergence score map (identity default)

beta = 1/delta (delta the hinge margin). Zero loss once beta * margin >= 1.

Deviation from the paper: none in the formula. beta defaults to TRL's DPOConfig 0.1; TRL's paper index uses the
paper's gamma = 0.05. The original SLiC (no reference, plus an NLL term) is `slic`.
"""
from dataclasses import dataclass

import torch

from preflab.objectives._fdiv import check_fdiv, fdiv_scores
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, reward_metrics


@dataclass(frozen=True)
class HingeNorm(Objective):
    beta: float = 0.1                 # 1 / hinge margin
    f_divergence: str = "reverse_kl"  # TRL's f_divergence_type
    f_alpha: float = 0.5              # TRL's f_alpha_divergence_coef

    aliases = ("hinge",)
    paper = "Liu et al. 2023, Statistical Rejection Sampling Improves Preference Optimization (arXiv:2309.06657)"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='hinge' (tests/objectives/test_trl_parity.py, "
                       "1e-9)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def validate(self):
        super().validate()
        check_fdiv("HingeNorm", self.f_divergence)

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        s_w, s_l = fdiv_scores(batch, self.f_divergence, self.f_alpha)
        losses = torch.relu(1 - self.beta * (s_w - s_l))
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = HingeNorm
