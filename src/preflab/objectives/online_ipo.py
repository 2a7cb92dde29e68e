"""Online IPO: squared regression of a sampled pair's log-ratio gap onto its preference gap against an opponent.

Paper: Calandriello et al., 2024, "Human Alignment of Large Language Models through Online Preference
Optimisation" (arXiv:2403.08635), online IPO; the form EGPO uses (Zhou, Fazel, Du, 2025, "Extragradient Preference
Optimization (EGPO)", arXiv:2503.08942), as coded in zhourunlong/EGPO@f295bf3 `simulations/loss_funcs.py` and
`lms/trainers/extragradient_trainer.py`:

    OIPO-1:  L = [(h(y) - h(y')) - (P(y ≻ y'') - P(y' ≻ y''))/beta]²,   h = S_theta - S_ref
    OIPO-2:  L = [(h(y) - h(y')) - (P(y ≻ y') - ½)/beta]²

y, y' are two samples (an unordered pair: "chosen" = y, "rejected" = y'), y'' a sample of the opponent.
Extras: `pref_y` = P(y ≻ y''), `pref_yp` = P(y' ≻ y'') [B]. OIPO-2 is OIPO-1 with y'' = y', so the loop passes
pref_y = P(y ≻ y') and pref_yp = ½. `token_agg="mean"` uses per-token mean log-probs (EGPO's LLM code,
`normalize_logprobs=True`). EGPO's extragradient step (half step, opponent refresh, restore, full step) is a loop
wrapper (`egpo`) around this loss, not part of it.

Deviation from the paper: none; the loop supplies the probabilities (population form: average over all pairs).
"""
from dataclasses import dataclass

import torch

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype


@dataclass(frozen=True)
class OnlineIPO(Objective):
    beta: float = 0.1        # KL strength of the regularized game; targets are preference gaps / beta
    token_agg: str = "sum"   # "sum" (S) or "mean" (S/|y|, EGPO's LLM default)

    required_extras = ("pref_y", "pref_yp")
    paper = "Calandriello et al. 2024 (arXiv:2403.08635); Zhou et al. 2025, EGPO (arXiv:2503.08942)"
    checked_against = ("official code: zhourunlong/EGPO@f295bf3 simulations/loss_funcs.py online_ipo_1/2(_sample) "
                       "and extragradient (the lab's EGPO loop tested equal: tests/lab/test_nash_loops.py), "
                       "re-read 2026-12")
    tags = {"data": ("pair-wise",), "framework": ("online", "self-play"), "constraint": ("reference",),
            "property": ("general-preference",)}

    def validate(self):
        super().validate()
        if self.token_agg not in ("sum", "mean"):
            raise ConfigError(f"OnlineIPO: token_agg must be 'sum' or 'mean', got {self.token_agg!r}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        agg = (lambda s: s.sum) if self.token_agg == "sum" else (lambda s: s.mean)  # noqa: E731
        h = lambda p, r: as_loss_dtype(agg(p)) - as_loss_dtype(agg(r))  # noqa: E731
        gap = h(batch.policy_chosen, batch.ref_chosen) - h(batch.policy_rejected, batch.ref_rejected)
        p_y, p_yp = (torch.as_tensor(batch.extra(k, "OnlineIPO"), dtype=gap.dtype, device=gap.device)
                     for k in ("pref_y", "pref_yp"))
        target = (p_y - p_yp) / self.beta
        losses = (gap - target) ** 2
        metrics = {"logratio/gap": gap.detach().mean(), "target/gap": target.detach().mean()}
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        b = batch.size
        return {"pref_y": torch.linspace(0.3, 0.8, b, dtype=torch.float64), "pref_yp": torch.full((b,), 0.5)}


OBJECTIVE = OnlineIPO
