"""MCTS-DPO step loss: conservative DPO on a step pair from the first differing token on, smoothed by visit counts.

Paper: Xie, Goyal, Zheng, Kan, Lillicrap, Kawaguchi, Shieh, 2024, "Monte Carlo Tree Search Boosts Reasoning via
Iterative Preference Learning" (arXiv:2405.00451); loss as coded in YuxiXie/MCTS-DPO@fb23437 `mcts_rl/algorithms/mcts`:

    z   = [S_theta - S_ref](y_w[d:]) - [S_theta - S_ref](y_l[d:])
    eps = min(1 - N_w / (N_w + N_l), 0.5)          (computed as 1 - 1/(1 + N_l / max(1, N_w)))
    L   = (1 - eps) l(beta z) + eps l(-beta z),     l(u) = -log sigmoid(u)

d = first position (on the completion axis, shared by both sides) where the chosen and rejected token ids differ;
tokens before d are excluded from both sums. Extras: `chosen_visits`, `rejected_visits` [B] (MCTS visit counts
N_w, N_l), `diverge_index` [B] int. `use_visits=False` gives eps = 0 (DPO on the divergent suffix).
The search and the step-pair builder are `mcts_dpo` (loop + builder), not here.

Deviation from the paper: none (the code's IPO flag is not offered; use `ipo` on the same batch).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.objectives.base import (
    Objective, ObjectiveOutput, PairBatch, SequenceLogps, as_loss_dtype, reward_metrics,
)


def visit_smoothing(n_w: torch.Tensor, n_l: torch.Tensor) -> torch.Tensor:
    """eps = min(1 - N_w/(N_w + N_l), 0.5), written as in the released code (0 when both counts are 0)."""
    return (1 - 1 / (1 + n_l / n_w.clamp_min(1))).clamp(max=0.5)


def suffix_sum(seq: SequenceLogps, d: torch.Tensor) -> torch.Tensor:
    keep = seq.mask & (torch.arange(seq.mask.shape[-1], device=d.device) >= d.unsqueeze(-1))
    return as_loss_dtype(torch.where(keep, seq.token_logps, torch.zeros_like(seq.token_logps)).sum(-1))


@dataclass(frozen=True)
class MCTSStepDPO(Objective):
    reward_meaning = "beta * log-ratio from the first differing token"
    beta: float = 0.1        # `scale_coeff` in the released scripts
    use_visits: bool = True  # visit-count label smoothing; False gives eps = 0

    required_extras = ("chosen_visits", "rejected_visits", "diverge_index")
    paper = ("Xie et al. 2024, Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning "
             "(arXiv:2405.00451)")
    checked_against = ("official code: YuxiXie/MCTS-DPO@fb23437 mcts_rl/algorithms/mcts/trainer.py (conservative "
                       "branch, visit-count confidence from utils.calculate_preference_confidence), re-read 2026-12")
    tags = {"data": ("pair-wise", "step-level"), "framework": ("online", "iterative"), "constraint": ("reference",),
            "property": ()}

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        d = torch.as_tensor(batch.extra("diverge_index", "MCTSStepDPO"), device=batch.policy_chosen.mask.device).long()
        h_w = suffix_sum(batch.policy_chosen, d) - suffix_sum(batch.ref_chosen, d)
        h_l = suffix_sum(batch.policy_rejected, d) - suffix_sum(batch.ref_rejected, d)
        n_w, n_l = (torch.as_tensor(batch.extra(k, "MCTSStepDPO"), dtype=h_w.dtype, device=h_w.device)
                    for k in ("chosen_visits", "rejected_visits"))
        eps = visit_smoothing(n_w, n_l) if self.use_visits else torch.zeros_like(h_w)
        z = self.beta * (h_w - h_l)
        losses = (1 - eps) * -F.logsigmoid(z) + eps * -F.logsigmoid(-z)
        metrics = reward_metrics(batch, self.beta, self.beta * h_w, self.beta * h_l)
        metrics["label_smoothing"] = eps.detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        i = torch.arange(batch.size) % 4
        return {"chosen_visits": torch.tensor([10.0, 3.0, 5.0, 1.0])[i],
                "rejected_visits": torch.tensor([2.0, 3.0, 0.0, 4.0])[i],
                "diverge_index": torch.tensor([1, 0, 1, 0])[i]}


OBJECTIVE = MCTSStepDPO
