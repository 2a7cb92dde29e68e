"""GPO: General Preference Optimization -- SPPO's squared loss driven by a general preference model's scores.

Paper: Zhang, Zhang, Wu, Xu, Gu, 2024, "General Preference Modeling with Preference Representations for Aligning
Language Models" (arXiv:2410.02197). Loss as used by the repo's GPO scripts (SPPO trainer, `loss_type=sppo_score`,
that branch not in the repo -- form from memory, unverified):

    L = ½ [ (h_w - s_w/beta)² + (h_l - s_l/beta)² ],   h = S_theta(y) - S_t(y)

s_i = (1/K) sum_j (T[i][j] - T[j][i]), the antisymmetrized GPM score of response i against the K samples of pi_t
(already centred, so no ½ offset). Audit 2026-12 (repo @a376d95): LLM-Alignment/scripts/compute_score_from_raw.py
builds chosen_probs_win / chosen_probs_lose exactly so (the mean runs over all K candidates, self included, whose
term is 0) and picks chosen / rejected by the GPM score argmax / argmin; the trainer consuming them is not in the
repo. The reference slots carry pi_t. Extras: `score_chosen`, `score_rejected` [B].
The loop (K samples from pi_t, GPM scoring, best/worst pair selection) lives in the online layer, not here.

Deviation from the paper: the ½ averaging of the two squares follows SPPO's code; the official run scripts
clamp targets at CLAMP_THRES = 1000, which is not applied here (clip the scores in the loop if needed).
"""
from dataclasses import dataclass
from typing import ClassVar

import torch

from preflab.objectives.sppo import SPPO


@dataclass(frozen=True)
class GPO(SPPO):
    beta: float = 0.001  # targets are s/beta (LLM-Alignment/run_gpo_llama-3_table_gp.sh uses 0.001)

    offset: ClassVar[float] = 0.0
    paper = "Zhang et al. 2024, General Preference Modeling with Preference Representations (arXiv:2410.02197)"
    checked_against = ("official code: general-preference/general-preference-model@a376d95 "
                       "scripts/compute_score_from_raw.py (s = mean_j (T_ij - T_ji)); its sppo_score loss is not in "
                       "the repo (unverified)")

    @classmethod
    def example_extras(cls, batch) -> dict:
        b = batch.size
        return {"score_chosen": torch.linspace(0.05, 0.4, b, dtype=torch.float64),
                "score_rejected": torch.linspace(-0.4, -0.05, b, dtype=torch.float64)}


OBJECTIVE = GPO
