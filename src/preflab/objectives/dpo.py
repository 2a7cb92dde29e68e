"""DPO: direct preference optimization (Rafailov et al., 2023, Eq. 7); TRL's `loss_type="sigmoid"`.

    L = -log sigmoid(beta * [(S_theta(y_w) - S_ref(y_w)) - (S_theta(y_l) - S_ref(y_l))])

S(y) is the summed log-prob of the response tokens. The optimum on Bradley-Terry data is
pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x) (checked in preflab.lab). RSO's "sigmoid-norm" loss is this one.

Deviation from the paper: none. `f_divergence` applies TRL's score map s(h) before the margin
(reverse_kl = identity; see preflab.objectives._fdiv). `ld_alpha` is TRL's LD-DPO option (Liu et al., 2024,
arXiv:2409.06411): in S, policy and reference alike, tokens past the shorter response's length l_s = min(|y_w|, |y_l|)
are weighted by ld_alpha, S_ld(y) = sum_{t <= l_s} lp_t + ld_alpha * sum_{t > l_s} lp_t (None = off; 1.0 = DPO).
"""
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from preflab.objectives._fdiv import FDIV_TYPES, score_map
from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, SequenceLogps, logratios, reward_metrics


def ld_weighted(batch: PairBatch, ld_alpha: float) -> PairBatch:
    """LD-DPO: the batch with every side's tokens beyond the pair's shared length l_s scaled by ld_alpha."""
    shared = torch.minimum(batch.policy_chosen.mask.sum(-1), batch.policy_rejected.mask.sum(-1)).unsqueeze(-1)

    def scale(side: SequenceLogps | None) -> SequenceLogps | None:
        if side is None:
            return None
        position = side.mask.long().cumsum(-1)  # 1-based index among response tokens
        weight = torch.where(position <= shared, 1.0, ld_alpha).to(side.token_logps.dtype)
        return SequenceLogps(side.masked() * weight, side.mask)

    return replace(batch, policy_chosen=scale(batch.policy_chosen), policy_rejected=scale(batch.policy_rejected),
                   ref_chosen=scale(batch.ref_chosen), ref_rejected=scale(batch.ref_rejected))


@dataclass(frozen=True)
class DPO(Objective):
    beta: float = 0.1                 # inverse temperature of the implicit reward beta * log(pi/pi_ref)
    f_divergence: str = "reverse_kl"  # TRL's f_divergence_type: reverse_kl | forward_kl | js_divergence | alpha_divergence
    f_alpha: float = 0.5              # TRL's f_alpha_divergence_coef (alpha_divergence only)
    ld_alpha: float | None = None     # TRL's ld_alpha (LD-DPO weight of the verbose tail), in [0, 1]; None = off

    aliases = ("sigmoid",)
    paper = "Rafailov et al. 2023, Direct Preference Optimization (arXiv:2305.18290)"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='sigmoid' + f_divergence_type + ld_alpha "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def validate(self):
        super().validate()
        if self.f_divergence not in FDIV_TYPES:
            raise ConfigError(f"f_divergence must be one of {FDIV_TYPES}, got {self.f_divergence!r}.")
        if self.ld_alpha is not None and not (isinstance(self.ld_alpha, (int, float)) and 0 <= self.ld_alpha <= 1):
            raise ConfigError(f"DPO: ld_alpha must be None or a number in [0, 1], got {self.ld_alpha!r}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        if self.ld_alpha is not None:
            batch = ld_weighted(batch, float(self.ld_alpha))
        h_w, h_l = logratios(batch)  # [B]
        s = lambda h: score_map(h, self.f_divergence, self.f_alpha)  # noqa: E731
        losses = -F.logsigmoid(self.beta * (s(h_w) - s(h_l)))
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = DPO
