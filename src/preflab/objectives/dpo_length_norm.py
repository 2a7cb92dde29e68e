"""DPO on length-normalised log-ratios (TRL 1.4+ `loss_type="sigmoid_norm"`).

Paper: Rafailov et al., 2023, "Direct Preference Optimization" (arXiv:2305.18290), Eq. 7, with each log-ratio divided
by its response length n (>= 1), the per-token normalisation SimPO (Meng et al., 2024, arXiv:2405.14734) uses:

    L = -log sigmoid(beta * (s(h_w)/n_w - s(h_l)/n_l)),   h = S_theta - S_ref,  s = f-divergence score map

Deviation from the paper: the length normalisation is TRL's (no paper defines this exact loss; it keeps the reference
and has no SimPO margin gamma). Not RSO's "sigmoid-norm", which is plain DPO (`dpo`).
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives._fdiv import check_fdiv, fdiv_scores
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, reward_metrics


@dataclass(frozen=True)
class DPOLengthNorm(Objective):
    beta: float = 0.1
    f_divergence: str = "reverse_kl"
    f_alpha: float = 0.5

    aliases = ("sigmoid_norm",)
    paper = "Rafailov et al. 2023, Direct Preference Optimization (arXiv:2305.18290); TRL's length-normalised form"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='sigmoid_norm' "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ("length",)}

    def validate(self):
        super().validate()
        check_fdiv("DPOLengthNorm", self.f_divergence)

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        s_w, s_l = fdiv_scores(batch, self.f_divergence, self.f_alpha)
        a_w = s_w / as_loss_dtype(batch.policy_chosen.length).clamp_min(1)
        a_l = s_l / as_loss_dtype(batch.policy_rejected.length).clamp_min(1)
        losses = -F.logsigmoid(self.beta * (a_w - a_l))
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = DPOLengthNorm
