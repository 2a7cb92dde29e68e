"""SFT term: the batch's token-mean negative log-likelihood of the chosen responses (TRL `loss_type="sft"`).

Paper: the behaviour-cloning / NLL term that TRL's `rpo_alpha` added to DPO, from Pang et al., 2024, "Iterative
Reasoning Preference Optimization" (arXiv:2404.19733), the NLL part of its loss; TRL 1.x composes it as
`loss_type=["sigmoid", "sft"]`. Over all chosen response tokens t of the batch:

    L = -(sum_i sum_t m_it lp_theta(y_w,i)[t]) / (sum_i sum_t m_it)     (one scalar, the same for every pair)

Deviation from the paper: Pang et al. normalise the NLL by each response's length; this is TRL's batch token mean
(long answers weigh more). `losses` repeats the scalar for every pair so that loss == losses.mean().
f_divergence / f_alpha are accepted because TRL accepts them with `sft`; they have no effect on it (as in TRL).
"""
from dataclasses import dataclass

import torch

from preflab.objectives._fdiv import check_fdiv
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype


def batch_token_nll(*sides) -> torch.Tensor:
    """Scalar: -mean of the log-probs over every masked token of the batch (0 when there is none); with several
    SequenceLogps (e.g. a prompt's and its response's), over the masked tokens of all of them together."""
    total, count = as_loss_dtype(sides[0].masked()).sum(), sides[0].mask.sum()
    for side in sides[1:]:
        total, count = total + as_loss_dtype(side.masked()).sum(), count + side.mask.sum()
    return -total / count.clamp_min(1).to(total.dtype)


@dataclass(frozen=True)
class SFT(Objective):
    f_divergence: str = "reverse_kl"  # accepted for TRL compatibility; no effect on the SFT term
    f_alpha: float = 0.5              # accepted for TRL compatibility; no effect on the SFT term

    needs_reference = False
    paper = "Pang et al. 2024, Iterative Reasoning Preference Optimization (arXiv:2404.19733), NLL term"
    checked_against = "reference code: TRL 1.16 DPOTrainer loss_type='sft' (tests/objectives/test_trl_parity.py, 1e-9)"
    tags = {"data": ("point-wise",), "framework": ("offline",), "constraint": ("reference-free",),
            "property": ("likelihood",)}

    def validate(self):
        super().validate()
        check_fdiv("SFT", self.f_divergence)

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        nll = batch_token_nll(batch.policy_chosen)
        losses = nll.expand(batch.size)
        metrics = {"logps/chosen": batch.policy_chosen.sum.detach().mean(),
                   "logps/rejected": batch.policy_rejected.sum.detach().mean(), "nll_loss": nll.detach()}
        return ObjectiveOutput(losses.mean(), losses, metrics)


OBJECTIVE = SFT
