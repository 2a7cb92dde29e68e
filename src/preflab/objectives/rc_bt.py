"""Rc-BT: MAPL's intra-sample loss for reward models -- the same response scored under two prompts.

Paper: MAPL, "Multi-Level Aware Preference Learning: Enhancing RLHF for Complex Multi-Instruction Tasks"
(2025, arXiv:2505.12845); response-conditioned Bradley-Terry from Cai et al., 2025 (arXiv:2502.00814).
Spec: methods/models-and-loops.md #14 (3rd-party review + memory -- unverified).

    L_intra = -log sigmoid((r(x_w, y) - r(x_l, y)) / tau)

Rewards travel as length-1 sequence "log-probs": PairBatch.from_sums(r(x_w, y), r(x_l, y)); no reference.
It is `rc_dpo` with beta = 1/tau and zero reference log-probs. The builder is `preflab.data.mapl`.

Training a reward model with it: `preflab train` with task: reward and reward_head: bt on the builder's intra rows
{prompt_chosen: x_w, prompt_rejected: x_l, completion: y}: the BT head's loss on those rows is this formula (tau:
reward_head_params.tau), with r(x_w, y) and r(x_l, y) scored as two sequences (tests/loops/test_mapl_train.py asserts
the equality). Under task: dpo, loss_type: rc_bt reads the policy's summed log-probs S(y | x) as r(x, y): a
reference-free Rc-DPO.

Deviation from the paper: not checked against the paper's equations (no code released); no margin term; tau is
GPM-style temperature (1 = plain Bradley-Terry).
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, reward_metrics


@dataclass(frozen=True)
class RcBT(Objective):
    reward_meaning = "r(x, y): summed log-prob (no reference, no beta)"
    tau: float = 1.0  # temperature of the Bradley-Terry logit

    needs_reference = False
    paper = "MAPL 2025, Multi-Level Aware Preference Learning (arXiv:2505.12845); Rc-BT (arXiv:2502.00814)"
    checked_against = "3rd-party: a review of MAPL (L_intra); L_inter and tau from memory, unverified"
    tags = {"data": ("pair-wise", "prompt-side"), "framework": ("reward-model",), "constraint": ("reference-free",),
            "property": ()}

    def validate(self):
        super().validate()
        if not self.tau > 0:
            raise ConfigError(f"RcBT: tau must be > 0, got {self.tau}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        r_w, r_l = as_loss_dtype(batch.policy_chosen.sum), as_loss_dtype(batch.policy_rejected.sum)
        losses = -F.logsigmoid((r_w - r_l) / self.tau)
        metrics = reward_metrics(batch, 1.0, r_w, r_l)
        return ObjectiveOutput(losses.mean(), losses, metrics)


OBJECTIVE = RcBT
