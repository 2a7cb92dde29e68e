"""ORPO: odds-ratio preference optimisation, SFT plus a log-odds-ratio penalty, no reference model.

Paper: Hong, Lee & Thorne, 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
(arXiv:2403.07691), Eqs. 4 and 7 in TRL's log form. With A(y) = S_theta(y)/|y| (mean token log-prob, < 0):

    log_odds = (A_w - A_l) - (log(1 - exp(A_w)) - log(1 - exp(A_l)))
    L        = NLL - beta * log sigmoid(log_odds)          (beta = the paper's lambda, TRL's name)

NLL = the batch token-mean NLL of the chosen responses (TRL's CrossEntropyLoss), the same for every pair.

Deviation from the paper: none (TRL's ORPOTrainer form). A is clamped below 0 by one float eps so that
log(1 - exp(A)) stays finite for a response of probability 1.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, log1mexp
from preflab.objectives.sft import batch_token_nll
from preflab.objectives.simpo import policy_metrics


def log_odds_ratio(a_w: torch.Tensor, a_l: torch.Tensor) -> torch.Tensor:
    """(A_w - A_l) - (log(1 - exp(A_w)) - log(1 - exp(A_l))) of mean token log-probs A, each clamped below 0 by one
    float eps (finite for a response of probability 1)."""
    tiny = -torch.finfo(a_w.dtype).eps
    return (a_w - a_l) - (log1mexp(a_w.clamp(max=tiny)) - log1mexp(a_l.clamp(max=tiny)))


@dataclass(frozen=True)
class ORPO(Objective):
    beta: float = 0.1  # lambda, weight of the odds-ratio term (TRL ORPOConfig default)

    needs_reference = False
    paper = "Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model (arXiv:2403.07691)"
    checked_against = ("reference code: TRL 1.16 ORPOTrainer.odds_ratio_loss; NLL by hand "
                       "(tests/objectives/test_trl_parity.py, 1e-6, TRL's float32 cast)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference-free",),
            "property": ("likelihood",)}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        a_w, a_l = as_loss_dtype(batch.policy_chosen.mean), as_loss_dtype(batch.policy_rejected.mean)
        log_odds = log_odds_ratio(a_w, a_l)
        ratio = F.logsigmoid(log_odds)
        nll = batch_token_nll(batch.policy_chosen)
        losses = nll - self.beta * ratio
        metrics = policy_metrics(batch, self.beta, a_w, a_l, nll)
        metrics["log_odds_ratio"], metrics["log_odds_chosen"] = ratio.detach().mean(), log_odds.detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)


OBJECTIVE = ORPO
