"""The entropy bonus's coefficient over a GRPO-family run (entropy_coef, use_adaptive_entropy), as TRL 1.16's
GRPOTrainer keeps it.

Static (use_adaptive_entropy false): every step applies entropy_coef.
Adaptive (Skywork-OR1, He et al., 2025, arXiv:2505.22312, as TRL implements it): the coefficient c starts at
entropy_coef; at the end of each optimizer step, with H the step's token-mean entropy over the bonus's tokens (every
micro-batch and process: sum of H_t over count of tokens),

    c <- min(c + entropy_coef_delta, entropy_coef_max)   if H <= entropy_target
    c <- max(c - entropy_coef_delta, entropy_coef_min)   otherwise

and a step applies c only when the previous step's H was <= entropy_target (0 before the first measurement: H starts
at +inf). The state (c, the last H) is saved with the online state and restored on resume (TRL:
entropy_ctrl_state.json in the checkpoint).
"""
from __future__ import annotations

import math

import torch


class EntropyCoefficient:
    def __init__(self, objective):
        self.adaptive = objective.use_adaptive_entropy
        self.coef = float(objective.entropy_coef)
        self.low, self.high = objective.entropy_coef_min, objective.entropy_coef_max
        self.delta, self.target = objective.entropy_coef_delta, objective.entropy_target
        self.last_entropy = math.inf
        self.window: torch.Tensor | None = None  # [entropy sum, token count] of this step's micro-batches

    def applied(self) -> float:
        """The coefficient this step's micro-batches apply."""
        if not self.adaptive:
            return self.coef
        return self.coef if self.last_entropy <= self.target else 0.0

    def add(self, mean_entropy: torch.Tensor, count: torch.Tensor) -> None:
        """One micro-batch's bonus entropy (its token mean) and token count, on the device (no host read)."""
        stats = torch.stack([mean_entropy.detach().double() * count.double(), count.detach().double()])
        self.window = stats if self.window is None else self.window + stats

    def end_step(self, reduce) -> None:
        """The step's last micro-batch: the window summed over processes (`reduce`, accelerate's sum), the
        coefficient moved (adaptive only), the window emptied. One host read."""
        if self.window is None:
            return
        totals = reduce(self.window)
        self.window = None
        if not self.adaptive:
            return
        entropy = float(totals[0] / totals[1].clamp(min=1.0))
        if entropy <= self.target:
            self.coef = min(self.coef + self.delta, self.high)
        else:
            self.coef = max(self.coef - self.delta, self.low)
        self.last_entropy = entropy

    def state(self) -> dict:
        return {"entropy_coef": self.coef, "last_entropy": self.last_entropy}

    def load_state(self, state: dict) -> None:
        self.coef, self.last_entropy = float(state["entropy_coef"]), float(state["last_entropy"])
