"""The objective of task: sft (SFTLoss: the completion-token NLL) and the batch it scores (SFTBatch); see
preflab.loops.sft for the data forms and the step's token-mean normalisation.

A module of its own among the objectives (below the config layer and the SFT trainer; the leading _ keeps it out of
the loss_type registry: task: sft picks it, not a loss_type): TrainConfig.objective() builds SFTLoss for task: sft,
and the config layer imports nothing that trains (preflab.loops.sft imports the offline Trainer, which imports preflab.config)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from preflab.objectives.base import Objective, ObjectiveOutput, SequenceLogps, as_loss_dtype


@dataclass
class SFTBatch:
    """Policy log-probs of each sequence's completion tokens [B, L] with their mask."""

    policy: SequenceLogps
    extras: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.policy.token_logps.shape[0]

    has_reference = False


@dataclass(frozen=True)
class SFTLoss(Objective):
    """The SFT objective of task: sft (not a preference objective; `loss_type` does not name it)."""

    batch_type: ClassVar[type] = SFTBatch
    needs_reference: ClassVar[bool] = False
    paper: ClassVar[str] = "maximum likelihood on completions (TRL SFTTrainer)"
    checked_against: ClassVar[str] = ("paper text: the completion-token NLL, equal to a hand-computed one "
                                      "(tests/loops/test_sft_task.py)")

    def compute(self, batch: SFTBatch) -> ObjectiveOutput:
        """losses_i = token-summed NLL_i x (examples per token): of this batch alone by default (then
        loss = the batch's token mean), or extras["examples_per_token"] = N / T of the whole step."""
        sums = -as_loss_dtype(batch.policy.masked()).sum(-1)
        ratio = batch.extras.get("examples_per_token")
        if ratio is None:
            ratio = batch.size / batch.policy.mask.sum().clamp_min(1).to(sums.dtype)
        losses = sums * ratio
        return ObjectiveOutput(losses.mean(), losses, {})
