"""SPPO with soft win probabilities: regress each response's log-ratio to pi_t onto its centred win rate.

Paper: Wu, Sun, Yuan, Ji, Yang, Gu, 2024, "Self-Play Preference Optimization for Language Model Alignment"
(arXiv:2405.00675), the per-iteration objective of Algorithm 1; as coded in uclaml/SPPO `sppo/trainer.py`
(`loss_type="sppo"`):

    L = ½ [ (h_w - (p_w - ½)/beta)² + (h_l - (p_l - ½)/beta)² ],   h = S_theta(y) - S_t(y)

p_w, p_l = P(y ≻ pi_t | x), the estimated win rate of each response against the current policy.
The reference slots carry pi_t, the previous iterate (SPPO anchors only to pi_t; the loop refreshes it each
iteration). Extras: `score_chosen`, `score_rejected` [B] = p_w, p_l in [0, 1].
With hard labels (p_w, p_l) = (1, 0) this is half of TRL's `sppo_hard`. GPO (`gpo`) is this loss with centred
scores and no ½ offset.

Deviation from the paper: none (the ½ averaging of the two squares follows the official code).
"""
from dataclasses import dataclass
from typing import ClassVar

import torch

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


@dataclass(frozen=True)
class SPPO(Objective):
    beta: float = 0.001  # targets are (p - 1/2)/beta; uclaml/SPPO scripts/pipeline.sh uses 0.001

    offset: ClassVar[float] = 0.5
    required_extras = ("score_chosen", "score_rejected")
    paper = "Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment (arXiv:2405.00675)"
    checked_against = ("official code: uclaml/SPPO@5e61c4e sppo/trainer.py loss_type='sppo' (halved sum of squares; "
                       "pipeline.sh beta 0.001), re-read 2026-12")
    tags = {"data": ("pair-wise",), "framework": ("online", "self-play"), "constraint": ("reference",),
            "property": ("general-preference",)}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)  # log pi_theta / pi_t
        name = type(self).__name__
        s_w, s_l = (torch.as_tensor(batch.extra(k, name), dtype=h_w.dtype, device=h_w.device)
                    for k in ("score_chosen", "score_rejected"))
        t_w, t_l = (s_w - self.offset) / self.beta, (s_l - self.offset) / self.beta
        losses = 0.5 * ((h_w - t_w) ** 2 + (h_l - t_l) ** 2)
        metrics = reward_metrics(batch, self.beta)
        metrics["targets/margins"] = (self.beta * (t_w - t_l)).detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        b = batch.size
        return {"score_chosen": torch.linspace(0.55, 0.9, b, dtype=torch.float64),
                "score_rejected": torch.linspace(0.1, 0.45, b, dtype=torch.float64)}


OBJECTIVE = SPPO
