"""ASFT: aligned SFT through absolute likelihood; reference-free and pointwise (no y_w / y_l interaction).

Paper: Wang, Sun, Hua, Fang, 2024, "ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood"
(arXiv:2409.10571), the ASFT loss. Formula as restated by Gorbatovski et al., 2025 (arXiv:2502.01237); the ASFT
PDF itself was not read (only its abstract and reviews are reachable) and its authors' code was not found.

Audit 2026-12 (paper-audit-2) of the restating authors' library, turbo-llm/turbo-alignment@72e737d:
`turbo_alignment/trainers/dpo.py:333-359` (ASFTLoss) computes, per pair,
-ce_coef * A_w + lambda_ * [-log sigmoid(beta r_w) - log sigmoid(-beta r_l)], r = A - log(1 - exp(A)) (exp(A)
clamped at 1 - 1e-7), on length-averaged log-probs (`trainers/dpo.py:609-613` refuses ASFT without
average_log_prob), then the mean over pairs: the form below, term by term (no reference, nothing detached).
Its defaults are not one value: the class has beta = lambda_ = ce_coef = 1 (`trainers/dpo.py:334`), but the
pipeline settings (`settings/pipelines/train/dpo.py:83-86`) set lambda_ = 1 and inherit beta = 0.1 from
DPOLossSettings (`:35`), so a config naming only `loss_type: asft` runs the TEMPERED form (beta 0.1, lambda 1), not
ASFT. The first port (ff8e0f7 "ASFT init", 2024-10-10, PR #38 "ASFT from arXiv 2409.10571") had no temperature and
called the alignment weight `beta`, default 0.1 (`trainers/dpo.py:305,324` there; its ORPO likewise, `:277`):
lambda = 0.1. Gorbatovski et al. §4.1/§5.1: of lambda in {0.1, 0.2, 0.5, 1.0} the one-stage form did best with
lambda = 1 (Llama 3.1 8B, UltraFeedback, base init). So: the form matches; lam = 0.1 here is kept (it is ORPO's
weight and the first port's; no code by the ASFT authors says otherwise); lam = 1.0 is the restating authors'
current default and their best grid value; lam = 1.0, beta = 0.1 is turbo-alignment's config default.
Not to be confused with Anchored SFT (Zhu et al. 2025, arXiv:2509.23753; zhuchichi56/ASFT, LLaMA-Factory's
`use_asft_loss` / `asft_alpha`), a reference-anchored SFT loss of the same abbreviation.

    p(y) = exp(A_theta(y)),  A = mean token log-prob;   r(y) = log(p / (1 - p))   (log-odds)
    L = -A_theta(y_w) - lam * [log sigmoid(beta r(y_w)) + log sigmoid(-beta r(y_l))]
      = -(1 + lam) A_theta(y_w) - lam * log(1 - exp(A_theta(y_l)))      at beta = 1 (ASFT)

`beta` is the tempered variant of Gorbatovski et al. (beta = 1 is ASFT). Checks: ORPO <= ASFT for every input.

Deviation from the paper: A is clamped to <= -1e-6 inside the log-odds so that log(1 - p) stays finite for
empty or probability-1 responses (the gradient is zero beyond the clamp).
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, log1mexp, reward_metrics


@dataclass(frozen=True)
class ASFT(Objective):
    reward_meaning = "mean token log-prob (no reference, no beta)"
    lam: float = 0.1    # weight of the alignment terms; ASFT authors' value not found (see the docstring)
    beta: float = 1.0   # temperature on the log-odds (1 = ASFT; other values: the tempered variant)

    needs_reference = False
    paper = "Wang et al. 2024, ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood (arXiv:2409.10571)"
    checked_against = ("3rd-party: turbo-llm/turbo-alignment@72e737d trainers/dpo.py:333-359 ASFTLoss (restating "
                       "authors' code, same form on mean log-probs; their lambda_ default 1.0, first port 0.1); ASFT "
                       "paper not read and its code not found, so lam = 0.1 stays unverified")
    tags = {"data": ("point-wise",), "framework": ("offline",), "constraint": ("reference-free",),
            "property": ("likelihood",)}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        a_w, a_l = as_loss_dtype(batch.policy_chosen.mean), as_loss_dtype(batch.policy_rejected.mean)
        odds = lambda a: a.clamp(max=-1e-6) - log1mexp(a.clamp(max=-1e-6))  # noqa: E731
        align = F.logsigmoid(self.beta * odds(a_w)) + F.logsigmoid(-self.beta * odds(a_l))
        losses = -a_w - self.lam * align
        metrics = reward_metrics(batch, 1.0, chosen=a_w, rejected=a_l)
        metrics["log_odds/chosen"], metrics["log_odds/rejected"] = odds(a_w).detach().mean(), odds(a_l).detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)


OBJECTIVE = ASFT
