"""Rc-DPO: MAPL's intra-sample loss in DPO form -- one response y, two prompts x_w (y fits) and x_l (y does not).

Paper: MAPL, "Multi-Level Aware Preference Learning: Enhancing RLHF for Complex Multi-Instruction Tasks"
(2025, arXiv:2505.12845); the response-conditioned Bradley-Terry (Rc-BT) idea is from Cai et al., 2025
(arXiv:2502.00814). Spec: methods/models-and-loops.md #14 (3rd-party review + memory -- unverified).

    L_intra = -log sigmoid(beta * [log pi(y|x_w)/pi_ref(y|x_w) - log pi(y|x_l)/pi_ref(y|x_l)])

This is DPO with the roles of prompt and response swapped, so it runs DPO's code on a PairBatch whose "chosen" side
is S(y | x_w) and whose "rejected" side is S(y | x_l); only the builder (`mapl`) is new. MAPL's total loss
L_orig + lambda_intra L_intra + lambda_inter L_inter is a weighted sum of objectives over the builder's three row
kinds (L_inter is plain `dpo` on synthesized multi-instruction pairs).

Deviation from the paper: not checked against the paper's equations (no code released); no margin term.
"""
from dataclasses import dataclass

from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch
from preflab.objectives.dpo import DPO


@dataclass(frozen=True)
class RcDPO(Objective):
    beta: float = 0.1  # DPO inverse temperature

    paper = "MAPL 2025, Multi-Level Aware Preference Learning (arXiv:2505.12845); Rc-BT (arXiv:2502.00814)"
    checked_against = "3rd-party: a review of MAPL; condition-side DPO form from memory, unverified"
    tags = {"data": ("pair-wise", "prompt-side"), "framework": ("offline",), "constraint": ("reference",),
            "property": ()}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        """batch.policy_chosen = S_theta(y | x_w), policy_rejected = S_theta(y | x_l); likewise the reference."""
        return DPO(beta=self.beta).compute(batch)


OBJECTIVE = RcDPO
