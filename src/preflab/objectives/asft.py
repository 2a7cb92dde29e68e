"""ASFT: aligned SFT through absolute likelihood; reference-free and pointwise (no y_w / y_l interaction).

Paper: Wang, Sun, Hua, Fang, 2024, "ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood"
(arXiv:2409.10571), the ASFT loss. Formula as restated by Gorbatovski et al., 2025 (arXiv:2502.01237); the ASFT
PDF itself was not read. Audit 2026-12: the same form is coded in turbo-llm/turbo-alignment@72e737d
(`turbo_alignment/trainers/dpo.py::ASFTLoss`, the restating authors' library): -ce_coef * A_w + lambda_ *
[-log sigmoid(beta r_w) - log sigmoid(-beta r_l)] on length-averaged log-probs (it refuses ASFT without
average_log_prob), defaults beta = 1, lambda_ = 1, ce_coef = 1 (an earlier version used 0.1 as lambda). The default
lam = 0.1 here is kept (ORPO's weight; the ASFT paper's value is unverified); pass lam=1.0 for turbo-alignment's.
Audit 2026-12 (paper-audit): Gorbatovski et al. §5.1 report that of lam in {0.1, 0.2, 0.5, 1.0} the one-stage form
(this loss) did best with lam = 1 (Llama 3.1 8B on UltraFeedback), so the only published comparison also favours 1.0.
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
    lam: float = 0.1    # weight of the alignment (log-odds) terms; unverified default
    beta: float = 1.0   # temperature on the log-odds (1 = ASFT; other values: the tempered variant)

    needs_reference = False
    paper = "Wang et al. 2024, ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood (arXiv:2409.10571)"
    checked_against = ("3rd-party: turbo-llm/turbo-alignment@72e737d ASFTLoss (restating authors' code, same form "
                       "on mean log-probs); ASFT paper not read, lam default unverified")
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
