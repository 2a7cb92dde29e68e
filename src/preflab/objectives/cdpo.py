"""cDPO: conservative DPO, DPO with label smoothing (soft labels 1 - eps).

Paper: Mitchell, 2023, "A note on DPO with noisy preferences & relationship to IPO" (technical note, no arXiv id);
TRL <= 0.28 `loss_type="sigmoid"` with `label_smoothing`. With z = beta * Delta, Delta = h_w - h_l,
h = S_theta - S_ref, l(z) = -log sigmoid(z):

    L = (1 - eps) l(z) + eps l(-z)  =  l(z) + eps * z

A finite per-pair minimiser: sigmoid(z*) = 1 - eps, i.e. beta Delta* = log((1 - eps)/eps).

Deviation from the paper: none. TRL >= 0.29 ignores label_smoothing for `sigmoid`, so this is not a TRL alias;
eps defaults to 0.1 (preflab's choice; the note fixes no value). Not rDPO (`robust_dpo`).
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


@dataclass(frozen=True)
class CDPO(Objective):
    beta: float = 0.1
    label_smoothing: float = 0.1  # eps: weight of the flipped label, in [0, 0.5)

    paper = "Mitchell 2023, A note on DPO with noisy preferences & relationship to IPO (technical note)"
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='aot' + label_smoothing on a constant batch (= "
                       "cDPO) (tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("pair-wise", "noise"), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def validate(self):
        super().validate()
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"CDPO: label_smoothing must be in [0, 0.5), got {self.label_smoothing}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        z, eps = self.beta * (h_w - h_l), self.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = CDPO
