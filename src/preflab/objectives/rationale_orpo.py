"""RORPO: reference-free ORPO plus a likelihood term on the preference rationale (`rationale_orpo`).

Paper: Just et al., 2024, "Data-Centric Human Preference Optimization with Rationales" (arXiv:2407.14477);
loss as coded in reds-lab/preference-learning-with-rationales@16111a1 `trainers.py::SimpleRORPOTrainer`:

    log_odds = (A_w - A_l) - [log(1 - e^{A_w}) - log(1 - e^{A_l})]
    L = NLL(y_w) - [beta * log sigmoid(log_odds) + gamma * A_theta(r | x_r)]

A = *mean* token log-prob of the policy (no reference); NLL(y_w) = the batch's token-mean cross-entropy on the
chosen response tokens, -sum_i S(y_w,i) / sum_i |y_w,i|, the same for every pair: the source's
`RationaleOddsPairedPreferenceTrainer.forward` takes it on `concatenated_labels`, whose prompt tokens
`dataloader.py` sets to -100, so its scope is the response only (ORPO's nll_scope "response"; TRL's ORPOTrainer
and the ORPO reference code also count the prompt, `orpo`'s default).
Extras: `rationale_logps` -- SequenceLogps [B, T_r] of the rationale r given the rationale prompt x_r (a [B] tensor
is read as the per-token means A_theta(r | x_r)).

Deviation from the paper: none. log(1 - e^A) uses a stable log1mexp, with A clamped below 0 by one float eps.
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, SequenceLogps, as_loss_dtype, reward_metrics
from preflab.objectives.orpo import log_odds_ratio
from preflab.objectives.sft import batch_token_nll


@dataclass(frozen=True)
class RationaleORPO(Objective):
    reward_meaning = "beta * mean token log-prob (no reference)"
    beta: float = 0.1   # weight of the odds-ratio term (ORPO's lambda)
    gamma: float = 1.0  # weight of the rationale's mean log-prob (`config/loss/rorpo-simple.yaml`)

    needs_reference = False
    required_extras = ("rationale_logps",)
    gradient_extras = ("rationale_logps",)
    gradient_extras_hint = ("preflab does not yet score rationale-conditioned sequences in the training forward; use "
                            "rationale_orpo from Python with a loop that scores the rationale with the policy.")
    paper = "Just et al. 2024, Data-Centric Human Preference Optimization with Rationales (arXiv:2407.14477)"
    checked_against = ("official code: reds-lab/preference-learning-with-rationales@16111a1 "
                       "trainers.py::SimpleRORPOTrainer (mean log-probs; rorpo-simple.yaml gamma 1), re-read 2026-12")
    tags = {"data": ("pair-wise", "rationale"), "framework": ("offline",), "constraint": ("reference-free",),
            "property": ()}
    # the NLL term is the micro-batch's chosen-token mean, as ORPO's (base.couples_micro_batch)
    micro_batch_statistic: ClassVar[bool] = True

    def validate(self):
        super().validate()
        if self.gamma < 0:
            raise ConfigError(f"RationaleORPO: gamma must be >= 0, got {self.gamma}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        a_w, a_l = as_loss_dtype(batch.policy_chosen.mean), as_loss_dtype(batch.policy_rejected.mean)
        r = batch.extra("rationale_logps", "rationale_orpo")
        a_r = torch.as_tensor(r.mean if isinstance(r, SequenceLogps) else r, dtype=a_w.dtype, device=a_w.device)
        log_odds = log_odds_ratio(a_w, a_l)
        nll = batch_token_nll(batch.policy_chosen).expand_as(a_w)
        losses = nll - (self.beta * F.logsigmoid(log_odds) + self.gamma * a_r)
        metrics = reward_metrics(batch, self.beta, self.beta * a_w, self.beta * a_l)
        metrics.update({"log_odds_ratio": log_odds.detach().mean(), "nll_loss": nll.detach().mean(),
                        "logps/rationale": a_r.detach().mean()})
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        pc = batch.policy_chosen
        return {"rationale_logps": SequenceLogps(pc.token_logps.detach() * 0.5, pc.mask)}


OBJECTIVE = RationaleORPO
