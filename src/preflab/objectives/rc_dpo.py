"""Rc-DPO: MAPL's intra-sample loss in DPO form -- one response y, two prompts x_w (y fits) and x_l (y does not).

Paper: MAPL, "Multi-Level Aware Preference Learning: Enhancing RLHF for Complex Multi-Instruction Tasks"
(2025, arXiv:2505.12845); the response-conditioned Bradley-Terry (Rc-BT) idea is from Cai et al., 2025
(arXiv:2502.00814). Spec: methods/models-and-loops.md #14 (3rd-party review + memory -- unverified).

    L_intra = -log sigmoid(beta * [log pi(y|x_w)/pi_ref(y|x_w) - log pi(y|x_l)/pi_ref(y|x_l)])

This is DPO with the roles of prompt and response swapped, so it runs DPO's code on a PairBatch whose "chosen" side
is S(y | x_w) and whose "rejected" side is S(y | x_l); only the builder (`preflab.data.mapl`) is new. `preflab train`
(task: dpo, loss_type: rc_dpo) reads intra rows {prompt_chosen: x_w, prompt_rejected: x_l, completion: y} and scores
the two sides with their own prompts (response tokens only), in every layout.

MAPL's total loss L_orig + lambda_intra L_intra + lambda_inter L_inter in one run: a file of ordinary pairs (L_orig,
plain DPO), intra rows and inter rows (ordinary pairs on multi-instruction prompts, marked by the builder's numeric
column `mapl_inter` = 1) gives each row's DPO loss the weight `intra_weight` (intra rows: the batch extra
`intra_row`, set from the row form), `inter_weight` (rows with mapl_inter = 1) or 1 (the others); lambda's default
1 [library choice]. Per-row weights are a weighted sum over rows, so lambda is relative to the row counts: with n_o
original and n_i intra rows the expected loss is proportional to n_o L_orig + lambda_intra n_i L_intra.

Deviation from the paper: not checked against the paper's equations (no code released); no margin term; the
level weights act per row (the paper's per-level expectations need equal row counts per level to match).
"""
from dataclasses import dataclass

import torch

from preflab.errors import ConfigError, DataError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch
from preflab.objectives.dpo import DPO

INTRA_ROW = "intra_row"  # preflab.loops.batches.INTRA_ROW
INTER_COLUMN = "mapl_inter"


@dataclass(frozen=True)
class RcDPO(Objective):
    beta: float = 0.1  # DPO inverse temperature
    intra_weight: float = 1.0  # lambda_intra: weight of each intra row's loss (ordinary pairs: 1)
    inter_weight: float = 1.0  # lambda_inter: weight of rows with mapl_inter = 1 (unverified level, see docstring)

    paper = "MAPL 2025, Multi-Level Aware Preference Learning (arXiv:2505.12845); Rc-BT (arXiv:2502.00814)"
    checked_against = "3rd-party: a review of MAPL; condition-side DPO form from memory, unverified"
    tags = {"data": ("pair-wise", "prompt-side"), "framework": ("offline",), "constraint": ("reference",),
            "property": ()}

    def validate(self):
        super().validate()
        for name in ("intra_weight", "inter_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"RcDPO: {name} must be >= 0, got {getattr(self, name)}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        """batch.policy_chosen = S_theta(y | x_w), policy_rejected = S_theta(y | x_l); likewise the reference.
        extras (optional): `intra_row` bool [B], `mapl_inter` [B] (needed when inter_weight != 1)."""
        out = DPO(beta=self.beta).compute(batch)
        if self.intra_weight == 1 and self.inter_weight == 1:
            return out
        weight = torch.ones_like(out.losses)
        intra = batch.extras.get(INTRA_ROW)
        if intra is not None:
            weight = torch.where(intra.to(weight.device), torch.full_like(weight, self.intra_weight), weight)
        if self.inter_weight != 1:
            inter = batch.extras.get(INTER_COLUMN)
            if inter is None:
                raise DataError(f"rc_dpo: inter_weight={self.inter_weight} needs the numeric column "
                                f"{INTER_COLUMN!r} (1 = inter row, 0 = other) in every row of the batch; build the "
                                "file with `python -m preflab.data.mapl --levels intra,inter`, or leave inter_weight "
                                "at 1.")
            weight = torch.where(inter.to(weight.device) > 0, torch.full_like(weight, self.inter_weight), weight)
        losses = out.losses * weight
        return ObjectiveOutput(losses.mean(), losses, out.metrics, out.metric_counts, out.metric_differences,
                               out.metric_extrema)


OBJECTIVE = RcDPO
