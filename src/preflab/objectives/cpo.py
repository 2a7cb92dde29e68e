"""CPO: contrastive preference optimisation, reference-free DPO plus a behaviour-cloning NLL (TRL CPOTrainer `sigmoid`).

Paper: Xu et al., 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in Machine
Translation" (arXiv:2401.08417), Eq. 3 plus the NLL term. With S = summed response log-prob:

    L = (1 - eps) l(z) + eps l(-z) + cpo_alpha * NLL,   z = beta (S_theta(y_w) - S_theta(y_l)),  l(z) = -log sigmoid(z)

NLL = the batch token-mean NLL of the chosen responses (TRL's CrossEntropyLoss), the same for every pair.

Deviation from the paper: none (TRL's form; eps = label_smoothing = 0 by default is the paper's loss).
"""
from dataclasses import dataclass

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype
from preflab.objectives.sft import batch_token_nll
from preflab.objectives.simpo import policy_metrics, smoothed


@dataclass(frozen=True)
class CPO(Objective):
    reward_meaning = "beta * summed log-prob (no reference)"
    beta: float = 0.1
    label_smoothing: float = 0.0
    cpo_alpha: float = 1.0  # weight of the chosen NLL term (TRL default)

    needs_reference = False
    paper = "Xu et al. 2024, Contrastive Preference Optimization (arXiv:2401.08417)"
    checked_against = ("reference code: TRL 1.16 CPOTrainer.cpo_loss loss_type='sigmoid'; NLL by hand "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference-free",),
            "property": ("likelihood",)}

    @property
    def micro_batch_statistic(self) -> bool:
        """The NLL term (cpo_alpha > 0) is the micro-batch's chosen-token mean, TRL's (base.couples_micro_batch)."""
        return self.cpo_alpha != 0

    def validate(self):
        super().validate()
        if not 0 <= self.label_smoothing < 0.5 or self.cpo_alpha < 0:
            raise ConfigError("CPO: label_smoothing must be in [0, 0.5) and cpo_alpha >= 0.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        s_w, s_l = as_loss_dtype(batch.policy_chosen.sum), as_loss_dtype(batch.policy_rejected.sum)
        nll = batch_token_nll(batch.policy_chosen) if self.cpo_alpha else s_w.new_zeros(())  # TRL logs 0 when off
        losses = smoothed(self.beta * (s_w - s_l), self.label_smoothing) + self.cpo_alpha * nll
        return ObjectiveOutput(losses.mean(), losses, policy_metrics(batch, self.beta, s_w, s_l, nll))


OBJECTIVE = CPO
