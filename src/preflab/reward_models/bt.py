"""Bradley-Terry reward-model loss with margin and reward centering.

Bradley & Terry (1952), "Rank analysis of incomplete block designs"; as a reward-model loss Ouyang et al. (2022),
"Training language models to follow instructions with human feedback", arXiv:2203.02155, Eq. 1. Per pair:

    L = -log sigma((r(x, y_w) - r(x, y_l) - m) / tau)  +  c * (r(x, y_w) + r(x, y_l))^2

m: the row's `margin` column (0 when absent; Llama 2, Touvron et al. 2023, arXiv:2307.09288, Eq. 2); tau: a
temperature (1 in TRL, 0.1 in the GPM code's PairWiseLoss); c: `center_rewards_coefficient` (Eisenstein et al.
2023, arXiv:2312.09244), whose batch mean is TRL RewardTrainer's `c * mean((r_w + r_l)^2)`. A BT model induces
the preference P(y > y' | x) = sigma((r(x, y) - r(x, y')) / tau).

Metrics (TRL RewardTrainer names): accuracy (r_w > r_l strictly, ties count as wrong), margin (mean r_w - r_l),
min_reward / mean_reward / max_reward over both sides, plus rewards/chosen and rewards/rejected. min_reward and
max_reward are the micro-batch's min / max (ObjectiveOutput.metric_extrema): the step takes each micro-batch's over
all processes and logs their mean over the micro-batches, as TRL's RewardTrainer (min() of the gathered logits per
compute_loss call, log() averaging the calls equally, whatever their sizes). Eval:
preflab.reward_models.eval.batch_extrema.
Deviation from TRL: none in the loss; tau is an addition (tau = 1 gives TRL's loss exactly).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from preflab.errors import ConfigError
from preflab.objectives.base import ObjectiveOutput


def bt_losses(r_chosen: Tensor, r_rejected: Tensor, margin: Tensor | None = None, tau: float = 1.0,
              center_rewards_coefficient: float | None = None) -> Tensor:
    """[B] per-pair BT losses for rewards [B] (see the module docstring)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    losses = -F.logsigmoid(diff / tau)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (r_chosen + r_rejected) ** 2
    return losses


EXTREMA = {"min_reward": "min", "max_reward": "max"}  # pair_metrics' per-micro-batch min / max (metric_extrema)


def pair_metrics(r_chosen: Tensor, r_rejected: Tensor) -> dict[str, Tensor]:
    """TRL RewardTrainer's metrics for rewards [B] (detached)."""
    r_c, r_r = r_chosen.detach(), r_rejected.detach()
    both = torch.cat([r_c, r_r])
    return {"accuracy": (r_c > r_r).float().mean(), "margin": (r_c - r_r).mean(), "min_reward": both.min(),
            "mean_reward": both.mean(), "max_reward": both.max(), "rewards/chosen": r_c.mean(),
            "rewards/rejected": r_r.mean()}


@dataclass(frozen=True)
class BTHead:
    """Scalar reward head (D = 1): loss, preference logit and the description saved in the model config."""

    tau: float = 1.0
    center_rewards_coefficient: float | None = None
    kind = "bt"

    def __post_init__(self):
        if not self.tau > 0:
            raise ConfigError(f"BTHead: tau must be > 0, got {self.tau}.")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ConfigError("center_rewards_coefficient must be >= 0 (TRL uses about 0.01), got "
                              f"{self.center_rewards_coefficient}.")

    @property
    def num_outputs(self) -> int:
        return 1

    def loss(self, out_chosen: Tensor, out_rejected: Tensor, extras: dict) -> ObjectiveOutput:
        """out_*: [B, 1] head outputs; extras may hold `margin` [B]."""
        r_c, r_r = out_chosen[:, 0], out_rejected[:, 0]
        losses = bt_losses(r_c, r_r, extras.get("margin"), self.tau, self.center_rewards_coefficient)
        return ObjectiveOutput(losses.mean(), losses, pair_metrics(r_c, r_r), metric_extrema=dict(EXTREMA))

    def logit(self, out_a: Tensor, out_b: Tensor) -> Tensor:
        """[B] log-odds of P(a > b)."""
        return (out_a[:, 0] - out_b[:, 0]) / self.tau

    def to_config(self) -> dict:
        """Saved in config.json; the centering coefficient too (when set), so that `preflab eval --task reward`
        recomputes the loss the run logged as eval_loss (TRL's compute_loss adds the term in evaluation too)."""
        config = {"head": self.kind, "tau": self.tau}
        if self.center_rewards_coefficient:
            config["center_rewards_coefficient"] = self.center_rewards_coefficient
        return config
