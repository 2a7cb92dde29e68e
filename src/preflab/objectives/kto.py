"""KTO: Kahneman-Tversky optimisation on unpaired desirable / undesirable examples (TRL KTOTrainer `kto`).

Paper: Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization" (arXiv:2402.01306), Eq. 7.
With r = S_theta(y) - S_ref(y) and the reference point z0 from mismatched completions y' (x_i with y_{i-1}):

    z0 = max(0, mean_batch(S_theta(y') - S_ref(y')))      (no gradient)
    L  = lambda_D (1 - sigmoid(beta (r - z0)))  if desirable,   lambda_U (1 - sigmoid(beta (z0 - r)))  otherwise

Inputs: UnpairedBatch with policy, ref, label and the mismatched sides policy_kl, ref_kl.

Deviation from the paper: none (TRL 1.16's estimator). On one process z0 is the micro-batch's mean. On several, TRL
1.16's KTOTrainer gathers each process's micro-batch mean and takes their mean before the clamp
(accelerator.gather_for_metrics(kl).mean().clamp(min=0)); so does preflab: the training loop sets
UnpairedBatch.kl_mean_over_processes (loops/offline.py Trainer.forward: one all-reduce of one number per micro-batch),
and every process's z0 is that mean's clamp. The mismatched completions are each process's own micro-batch's, as
TRL's are each process's own batch's. Metrics follow TRL: kl, rewards/*, logps/*; the per-label means carry their
counts (unpaired_metrics), so the logged means are exact over the whole optimizer step and logging window.
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, UnpairedBatch, as_loss_dtype


def unpaired_metrics(batch: UnpairedBatch, beta: float, r: Tensor, kl: Tensor) -> tuple[dict, dict]:
    """TRL's KTO metrics and their counts: (metrics, metric_counts) for ObjectiveOutput.

    rewards/chosen and logps/chosen are means over the desirable examples, rewards/rejected and logps/rejected over
    the undesirable ones; each carries its count (ObjectiveOutput.metric_counts), so the step sums value x count over
    micro-batches, ranks and logging windows and logs the exact mean over all desirable (undesirable) examples, as
    TRL's gathered sums / counts are within one micro-batch. A side without examples has value 0 and count 0 (every
    batch reports the same names: the step's all-reduce needs one layout on every rank). rewards/margins is
    rewards/chosen - rewards/rejected (ObjectiveOutput.metric_differences: recomputed from the exact means).

    With batch.label_counts (the training loop's batches) the counts are host ints; otherwise 0-dim device tensors
    (label.sum()). No device read, no boolean-mask indexing."""
    r, lp, label = (beta * r).detach(), batch.policy.sum.detach(), batch.label.to(r.device)
    metrics, counts = {"kl": kl.detach()}, {}
    if batch.label_counts is not None:
        sides = tuple(batch.label_counts)
        divisors = tuple(max(c, 1) for c in sides)
    else:
        desirable = label.sum().to(r.dtype)
        sides = (desirable, label.shape[0] - desirable)
        divisors = tuple(c.clamp_min(1) for c in sides)
    for k, (name, rows) in enumerate((("chosen", label), ("rejected", ~label))):
        metrics[f"rewards/{name}"] = torch.where(rows, r, 0.0).sum() / divisors[k]
        metrics[f"logps/{name}"] = torch.where(rows, lp, 0.0).sum() / divisors[k]
        counts[f"rewards/{name}"] = counts[f"logps/{name}"] = sides[k]
    metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics, counts


MARGINS = {"rewards/margins": ("rewards/chosen", "rewards/rejected")}


@dataclass(frozen=True)
class KTO(Objective):
    beta: float = 0.1
    desirable_weight: float = 1.0    # lambda_D
    undesirable_weight: float = 1.0  # lambda_U

    batch_type = UnpairedBatch
    # the batch kind scores mismatched completions (x_i, y_{i-1}) for the reference point only when this is True;
    # they are formed inside each micro-batch, so a micro-batch of one example pairs it with its own completion
    # (TRL refuses batch size 1 too: preflab.loops.offline)
    uses_mismatched_completions: ClassVar[bool] = True
    micro_batch_statistic: ClassVar[bool] = True  # z0 is each micro-batch's mean (base.couples_micro_batch)
    # ... taken over the processes' micro-batches on several processes (base.statistic_over_processes_parts)
    statistic_over_processes: ClassVar[bool] = True
    paper = "Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization (arXiv:2402.01306)"
    checked_against = "reference code: TRL 1.16 KTOTrainer loss_type='kto' (tests/objectives/test_trl_parity.py, 1e-9)"
    tags = {"data": ("point-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def validate(self):
        super().validate()
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ConfigError(f"{type(self).__name__}: desirable_weight and undesirable_weight must be >= 0.")

    def reference_point(self, batch: UnpairedBatch) -> Tensor:
        """z0 = max(0, the mean KL estimate): over the processes' micro-batches where the training loop set
        batch.kl_mean_over_processes (several processes), else this batch's (UnpairedBatch.mismatched_kl)."""
        own = batch.mismatched_kl()  # (also checks that the mismatched completions were scored)
        kl = batch.kl_mean_over_processes if batch.kl_mean_over_processes is not None else own
        return kl.to(own).clamp(min=0)

    def compute(self, batch: UnpairedBatch) -> ObjectiveOutput:
        r = as_loss_dtype(batch.policy.sum) - as_loss_dtype(batch.ref.sum)  # [B]
        z0 = self.reference_point(batch)
        label = batch.label.to(r.device)
        losses = torch.where(label, self.desirable_weight * (1 - torch.sigmoid(self.beta * (r - z0))),
                             self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - r))))
        metrics, counts = unpaired_metrics(batch, self.beta, r, z0)
        return ObjectiveOutput(losses.mean(), losses, metrics, counts, MARGINS)


OBJECTIVE = KTO
