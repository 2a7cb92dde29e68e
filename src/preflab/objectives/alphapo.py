"""AlphaPO: SimPO with an alpha-shaped reward of the length-normalised likelihood (TRL CPOTrainer `alphapo`).

Paper: Gupta et al., 2025, "AlphaPO: Reward Shape Matters for LLM Alignment" (arXiv:2501.03884). With
A(y) = S_theta(y)/|y| and p = exp(A) (the per-token geometric-mean probability):

    r(y) = (1 - p^(-alpha)) / alpha = (1 - exp(-alpha A)) / alpha        (r -> A as alpha -> 0)
    L    = (1 - eps) l(z) + eps l(-z) + cpo_alpha * NLL,   z = beta (r_w - r_l) - gamma,  l(z) = -log sigmoid(z)

TRL's form (CPOConfig(loss_type="alphapo") = simpo with cpo_alpha = 0 and the reward transform `alpha`).

Deviation from the paper: the exponent -alpha A is clamped above at 80 (as TRL clamps its alpha-divergence), so the
loss stays finite for very unlikely responses; TRL's CPO trainer does not clamp. Defaults alpha = 0.25, beta = 2.5,
gamma = 0.1 are TRL's paper-index recipe (Mistral-Instruct, Table 3 of the paper); TRL's CPOConfig default alpha = 0.
A preflab run whose config leaves `beta` out trains at TRL CPOConfig's 0.1 (deliberate: TRL's loss type keeps TRL's
default, preflab.objectives._own_beta), not the recipe's 2.5; set beta for the paper's setting. (No AlphaPO
release by its authors was found in the paper audit of 2026-12: find_repos/find_string "alphapo" give only
unrelated names.)
"""
from dataclasses import dataclass

import torch
from torch import Tensor

from preflab.objectives.base import PairBatch
from preflab.objectives.simpo import SimPO


@dataclass(frozen=True)
class AlphaPO(SimPO):
    reward_meaning = "beta * AlphaPO's shaped mean log-prob (no reference)"
    beta: float = 2.5
    simpo_gamma: float = 0.1
    alpha: float = 0.25  # reward shape; 0 gives SimPO

    paper = "Gupta et al. 2025, AlphaPO: Reward Shape Matters for LLM Alignment (arXiv:2501.03884)"
    checked_against = ("reference code: TRL 1.16 CPOTrainer.cpo_loss loss_type='alphapo' (simpo + alpha) "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")

    def rewards(self, batch: PairBatch) -> tuple[Tensor, Tensor]:
        a_w, a_l = super().rewards(batch)
        if self.alpha == 0:
            return a_w, a_l
        shape = lambda a: (1 - torch.exp((-self.alpha * a).clamp(max=80.0))) / self.alpha  # noqa: E731
        return shape(a_w), shape(a_l)


OBJECTIVE = AlphaPO
