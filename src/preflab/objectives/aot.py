"""AOT (paired): distributional alignment by optimal transport of sorted margins (TRL `loss_type="aot"`).

Paper: Melnyk et al., 2024, "Distributional Preference Alignment of LLMs via Optimal Transport" (arXiv:2406.05882).
The 1-D OT plan between the batch's margin distributions is the sorted matching: with u = S_theta(y_w) - S_theta(y_l)
and v = S_ref(y_w) - S_ref(y_l) sorted across the batch, d_k = u_(k) - v_(k) and

    L_k = (1 - eps) l(beta d_k) + eps l(-beta d_k),   l(z) = -log sigmoid(z),  eps = label_smoothing

`losses[k]` belongs to the k-th quantile, not to pair k; at B = 1 the loss is DPO's. The value depends on batch size.

Deviation from the paper: none in the value (TRL 1.16's form). Where margins tie exactly, the gradient is averaged
over the tied entries (the symmetric subgradient), so it does not depend on how `torch.sort` breaks ties.
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, reward_metrics


def sorted_tie_averaged(x: Tensor) -> Tensor:
    """sort(x) over dim 0 ([B]); the gradient of equal values is shared equally among them."""
    values = torch.sort(x, dim=0).values
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[1:] = values[1:].detach() != values[:-1].detach()
    group = starts.long().cumsum(0) - 1  # [B] index of each value's tie group
    sums = values.new_zeros(int(group[-1]) + 1).index_add(0, group, values)
    counts = values.new_zeros(sums.shape).index_add(0, group, torch.ones_like(values))
    return (sums / counts)[group]


def smoothed_logistic(z: Tensor, eps: float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@dataclass(frozen=True)
class AOT(Objective):
    beta: float = 0.1
    label_smoothing: float = 0.0  # eps of the smoothed logistic loss, in [0, 0.5)

    paper = "Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport (arXiv:2406.05882)"
    checked_against = "reference code: TRL 1.16 DPOTrainer loss_type='aot' (tests/objectives/test_trl_parity.py, 1e-9)"
    tags = {"data": ("point-wise",), "framework": ("offline",), "constraint": ("reference",),
            "property": ("distribution",)}
    # sorts the micro-batch's margins and matches them by rank: its quantiles (base.couples_micro_batch)
    micro_batch_statistic: ClassVar[bool] = True

    def validate(self):
        super().validate()
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"{type(self).__name__}: label_smoothing must be in [0, 0.5), "
                              f"got {self.label_smoothing}.")

    def margins(self, batch: PairBatch) -> tuple[Tensor, Tensor]:
        """The two [B] samples whose sorted difference is d."""
        loss = lambda s: as_loss_dtype(s.sum)  # noqa: E731
        return (loss(batch.policy_chosen) - loss(batch.policy_rejected),
                loss(batch.ref_chosen) - loss(batch.ref_rejected))

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        u, v = self.margins(batch)
        d = sorted_tie_averaged(u) - sorted_tie_averaged(v)
        losses = smoothed_logistic(self.beta * d, self.label_smoothing)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = AOT
