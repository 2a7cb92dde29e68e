"""SFT term: the batch's token-mean negative log-likelihood of the chosen responses (TRL `loss_type="sft"`).

Paper: the behaviour-cloning / NLL term that TRL's `rpo_alpha` added to DPO, from Pang et al., 2024, "Iterative
Reasoning Preference Optimization" (arXiv:2404.19733), the NLL part of its loss; TRL 1.x composes it as
`loss_type=["sigmoid", "sft"]`. Over all chosen response tokens t of the batch:

    L = -(sum_i sum_t m_it lp_theta(y_w,i)[t]) / (sum_i sum_t m_it)     (one scalar, the same for every pair)

Deviation from the paper: Pang et al. normalise the NLL by each response's length; this is TRL's batch token mean
(long answers weigh more). `losses` repeats the scalar for every pair so that loss == losses.mean().

`token_mean` says over which tokens the mean runs: "micro_batch" (the default, TRL DPOTrainer's: each micro-batch's
own chosen tokens, so accumulation or several processes average the micro-batches' means) or "step" (every chosen
token of the optimizer step, all micro-batches of all processes: transformers' `num_items_in_batch` normalisation, so
2 processes x batch b = 1 process x batch 2b = accumulation 2 x b). With "step" the offline Trainer gives each
training micro-batch extras["examples_per_token"] = N / T of the step (N pairs, T chosen tokens) and pair i's loss is
its token-summed NLL x N / T (preflab.step divides the sum of the losses by N); a batch without that extra (an
evaluation batch) is its own step, its token mean.
f_divergence / f_alpha are accepted because TRL accepts them with `sft`; they have no effect on it (as in TRL).
"""
from dataclasses import dataclass

import torch

from preflab.errors import ConfigError
from preflab.objectives._fdiv import check_fdiv
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, objective_parts

TOKEN_MEANS = ("micro_batch", "step")


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
    token_mean: str = "micro_batch"   # or "step": the mean over every chosen token of the optimizer step

    needs_reference = False
    paper = "Pang et al. 2024, Iterative Reasoning Preference Optimization (arXiv:2404.19733), NLL term"
    checked_against = "reference code: TRL 1.16 DPOTrainer loss_type='sft' (tests/objectives/test_trl_parity.py, 1e-9)"
    tags = {"data": ("point-wise",), "framework": ("offline",), "constraint": ("reference-free",),
            "property": ("likelihood",)}

    @property
    def micro_batch_statistic(self) -> bool:
        """token_mean "micro_batch" divides by each micro-batch's chosen tokens (base.couples_micro_batch)."""
        return self.token_mean == "micro_batch"

    def validate(self):
        super().validate()
        check_fdiv("SFT", self.f_divergence)
        if self.token_mean not in TOKEN_MEANS:
            raise ConfigError(f"sft: token_mean must be one of {list(TOKEN_MEANS)}, got {self.token_mean!r}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        ratio = batch.extras.get("examples_per_token") if self.token_mean == "step" else None
        if ratio is None:
            nll = batch_token_nll(batch.policy_chosen)
            losses = nll.expand(batch.size)
        else:  # this batch's share of the step's token mean, in per-pair losses whose mean over the step is it
            losses = -as_loss_dtype(batch.policy_chosen.masked()).sum(-1) * ratio
            nll = losses.mean()
        metrics = {"logps/chosen": batch.policy_chosen.sum.detach().mean(),
                   "logps/rejected": batch.policy_rejected.sum.detach().mean(), "nll_loss": nll.detach()}
        return ObjectiveOutput(losses.mean(), losses, metrics)


OBJECTIVE = SFT


def wants_step_token_mean(objective) -> bool:
    """Whether `objective` (or a part of a weighted sum, or the objective a WPO weighting wraps) is an sft term with
    token_mean "step", which needs the step's examples-per-token ratio in each training batch's extras."""
    inner = getattr(objective, "inner", None)
    if inner is not None:
        return wants_step_token_mean(inner)
    if isinstance(objective, SFT):
        return objective.token_mean == "step"
    return any(wants_step_token_mean(p) for p in objective_parts(objective) if p is not objective)
