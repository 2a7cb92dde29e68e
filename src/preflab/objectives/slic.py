"""SLiC-HF: a hinge on the policy's sequence log-prob margin plus an NLL regulariser, no reference model.

Paper: Zhao et al., 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback" (arXiv:2305.10425), the
calibration loss with cross-entropy regularisation (as restated by the DPO survey, Eq. 9):

    L = max(0, delta - S_theta(y_w) + S_theta(y_l)) - lambda * S_theta(y_ref)

Here y_ref = y_w (the chosen response serves as the SFT target) and lambda = `nll_weight`.

Deviation from the paper: y_ref is the chosen response rather than a separate SFT target. The defaults delta = 1 and
lambda = 0.005 are UNVERIFIED (recalled, not read in the paper). TRL's `hinge` is RSO's hinge-norm (`hinge_norm`).
"""
from dataclasses import dataclass

import torch

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, reward_metrics


@dataclass(frozen=True)
class SLiC(Objective):
    reward_meaning = "summed log-prob (no reference, no beta)"
    delta: float = 1.0        # hinge margin on S_theta(y_w) - S_theta(y_l) (unverified default)
    nll_weight: float = 0.005  # lambda, weight of -S_theta(y_ref) (unverified default)

    needs_reference = False
    paper = "Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback (arXiv:2305.10425)"
    checked_against = "3rd-party: DPO survey Eq. 9 restating SLiC-HF; delta = 1, lambda = 0.005 unverified"
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference-free",), "property": ()}

    def validate(self):
        super().validate()
        if self.delta < 0 or self.nll_weight < 0:
            raise ConfigError(f"SLiC: delta and nll_weight must be >= 0, got {self.delta}, {self.nll_weight}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        s_w, s_l = as_loss_dtype(batch.policy_chosen.sum), as_loss_dtype(batch.policy_rejected.sum)
        losses = torch.relu(self.delta - s_w + s_l) - self.nll_weight * s_w
        metrics = reward_metrics(batch, 1.0, s_w, s_l)  # rewards are the sequence log-probs (beta = 1)
        metrics["nll_loss"] = -s_w.detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)


OBJECTIVE = SLiC
