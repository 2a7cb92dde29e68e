"""The distillation objective of task: sft with a teacher (teacher_model_name_or_path): the generalized
Jensen-Shannon divergence between the teacher's and the student's next-token distributions at every completion
token (the dataset's completions, or the student's own samples on on-policy steps), per-token mean over the step (DistillLoss), and the per-token divergence of two logit chunks
(token_generalized_jsd), which preflab.scoring.distill runs chunk by chunk over the completion positions.

Paper: Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes"
(GKD, arXiv:2306.13649), Eq. (1). With temperature tau, student p_S = softmax(z_S / tau), teacher
p_T = softmax(z_T / tau) over the vocabulary V at one completion position, and the mixture
m = beta * p_T + (1 - beta) * p_S:

    D_beta = beta * KL(p_T || m) + (1 - beta) * KL(p_S || m)      0 < beta < 1  (beta = 0.5: the JSD)
    D_0    = KL(p_T || p_S)                                        forward KL (beta = 0, by convention)
    D_1    = KL(p_S || p_T)                                        reverse KL (beta = 1, by convention)

(As beta -> 0 or 1 the mixed form itself goes to 0; TRL, and preflab, take the two end points as the KLs.)
The loss of an optimizer step is the token mean over every completion token t of every sequence i of the step
(TRL's `batchmean` with `num_items_in_batch`: the same normalisation as task: sft's NLL):

    L = (sum_i sum_t m_it D_beta(i, t)) / (sum_i sum_t m_it)

Checked against TRL 1.16's `GKDTrainer.generalized_jsd_loss` (trl.experimental.gkd; the same divergence as its
DistillationTrainer's chunked kernel) in tests/objectives/test_distill.py.

Deviation from the paper: none in the divergence. The data mixture (GKD's lmbda: the share of steps whose
completions the student samples; seq_kd: the teacher samples the others) is preflab.loops.distill's. No tau^2
gradient rescaling (TRL has none either). tau is `temperature`, or `divergence_temperature` when set (a saved
GKDConfig: 1, as TRL's GKDTrainer.compute_loss).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, SequenceLogps, as_loss_dtype

DEFAULT_BETA = 1.0  # TRL 1.16 DistillationConfig.beta (reverse KL); GKDConfig's is 0.5


def check_beta(beta: float) -> float:
    """beta in [0, 1] (TRL's range), else ConfigError."""
    if not (isinstance(beta, (int, float)) and 0.0 <= float(beta) <= 1.0):
        raise ConfigError(f"distillation: beta must be in [0, 1] (0 forward KL, 0.5 JSD, 1 reverse KL), got {beta!r}.")
    return float(beta)


def token_generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """[C] D_beta at each of C positions from logits [C, V] (computed in at least float32; already divided by the temperature): the module
    docstring's formula, in log space (the mixture by logsumexp), differentiable in the student's logits."""
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    log_s = torch.log_softmax(student_logits.to(dtype), dim=-1)  # at least float32
    log_t = torch.log_softmax(teacher_logits.to(dtype), dim=-1)
    if beta == 0.0:
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    if beta == 1.0:
        return (log_s.exp() * (log_s - log_t)).sum(-1)
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log1p(-beta)]), dim=0)
    kl_t = (log_t.exp() * (log_t - log_m)).sum(-1)
    kl_s = (log_s.exp() * (log_s - log_m)).sum(-1)
    return beta * kl_t + (1.0 - beta) * kl_s


@dataclass
class DistillBatch:
    """The per-token divergence D_beta [B, L] at the completion tokens (zeros off the mask) with the mask, and the
    student's completion log-probs (for the logged NLL)."""

    divergence: SequenceLogps
    policy: SequenceLogps
    extras: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.divergence.token_logps.shape[0]

    has_reference = True


@dataclass(frozen=True)
class DistillLoss(Objective):
    """Generalized-JSD distillation on the dataset's completions (module docstring); `beta` and `temperature` are
    TRL's DistillationConfig names. Not a loss_type: task: sft with teacher_model_name_or_path picks it."""

    beta: float = DEFAULT_BETA
    temperature: float = 1.0

    batch_type: ClassVar[type] = DistillBatch
    needs_reference: ClassVar[bool] = True  # the teacher, loaded and held like a reference model
    paper: ClassVar[str] = "Agarwal et al. 2024, On-Policy Distillation of Language Models (arXiv:2306.13649), Eq. 1"
    checked_against: ClassVar[str] = ("reference code: TRL 1.16 GKDTrainer.generalized_jsd_loss "
                                      "(tests/objectives/test_distill.py)")

    def validate(self):  # not Objective.validate: its beta > 0 rule would refuse beta 0 (forward KL)
        check_beta(self.beta)
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"distillation: temperature must be a positive finite number, got {self.temperature!r}.")

    def compute(self, batch: DistillBatch) -> ObjectiveOutput:
        """losses_i = token-summed D_beta of sequence i x (examples per token): of this batch alone by default (then
        loss = the batch's token mean), or extras["examples_per_token"] = N / T of the whole step."""
        sums = as_loss_dtype(batch.divergence.masked()).sum(-1)
        ratio = batch.extras.get("examples_per_token")
        if ratio is None:
            ratio = batch.size / batch.divergence.mask.sum().clamp_min(1).to(sums.dtype)
        losses = sums * ratio
        nll = -(as_loss_dtype(batch.policy.masked()).sum(-1) * ratio).detach().mean()
        return ObjectiveOutput(losses.mean(), losses, {"nll_loss": nll})
