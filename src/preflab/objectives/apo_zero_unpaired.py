"""APO-zero, unpaired: anchored PO on desirable / undesirable examples (TRL KTOTrainer `apo_zero_unpaired`).

Paper: D'Oosterlinck et al., 2024, "Anchored Preference Optimization and Contrastive Revisions" (arXiv:2408.06266),
the unpaired form of Eq. 7. With r = S_theta(y) - S_ref(y):

    L = lambda_D (1 - sigmoid(beta r))  if desirable,   lambda_U sigmoid(beta r)  otherwise

It is KTO with the reference point z0 fixed at 0, so it needs no mismatched completions: the batch kind scores
the completions only (TRL's `calculate_KL = False` for this loss type), half of KTO's forward.

Deviation from the paper: none (TRL 1.16's form); kl is logged as 0 as TRL does.
"""
from dataclasses import dataclass
from typing import ClassVar

import torch

from preflab.objectives.base import UnpairedBatch, as_loss_dtype
from preflab.objectives.kto import KTO


@dataclass(frozen=True)
class APOZeroUnpaired(KTO):
    paper = "D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions (arXiv:2408.06266)"
    checked_against = ("reference code: TRL 1.16 KTOTrainer loss_type='apo_zero_unpaired' "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("point-wise",), "framework": ("offline",), "constraint": ("reference",),
            "property": ("likelihood",)}
    uses_mismatched_completions: ClassVar[bool] = False  # z0 = 0: no mismatched completions are read
    micro_batch_statistic: ClassVar[bool] = False  # z0 = 0: its losses are per example (base.couples_micro_batch)
    statistic_over_processes: ClassVar[bool] = False  # z0 = 0: nothing is taken over the processes

    def reference_point(self, batch: UnpairedBatch) -> torch.Tensor:
        return as_loss_dtype(batch.policy.token_logps.new_zeros(()))


OBJECTIVE = APOZeroUnpaired
