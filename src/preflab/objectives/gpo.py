"""GPO: General Preference Optimization -- SPPO's squared loss driven by a general preference model's scores.

Paper: Zhang, Zhang, Wu, Xu, Gu, 2024, "General Preference Modeling with Preference Representations for Aligning
Language Models" (arXiv:2410.02197; v3, ICML 2025, §5). Eq. 5.3 regresses h onto s(y > pi_t)/beta - log Z, with
log Z "directly replaced with 0" (its footnote 1), s(y_i > pi_t) = (1/K) sum_k s(y_i > y_k) (Eq. 5.2); here on the
chosen and rejected responses, their two squares averaged as in SPPO's trainer (`loss_type=sppo`):

    L = ½ [ (h_w - s_w/beta)² + (h_l - s_l/beta)² ],   h = S_theta(y) - S_t(y)

The online layer feeds s_i = (1/K) sum_j (T[i][j] - T[j][i]), the released pipeline's score
(general-preference/general-preference-model@a376d95 LLM-Alignment/scripts/compute_score_from_raw.py; the mean runs
over all K candidates, self included, whose term is 0; chosen / rejected = argmax / argmin). For a skew-symmetric
table T (GPM, BT) that is 2x Eq. 5.2's score, so the scripts' beta = 0.001 (kept as the default) is Eq. 5.3's
beta = 0.0005; preflab follows the released scripts. The trainer branch that consumes the scores (`loss_type=
sppo_score`, an SPPO-trainer fork) is not in the repo, so its clamp at CLAMP_THRES = 1000 (run scripts) is not
applied here (clip the scores in the loop if needed). The reference slots carry pi_t. Extras: `score_chosen`,
`score_rejected` [B]. The loop (K samples from pi_t, GPM scoring, best/worst pair selection) lives in the online
layer, not here.
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
    checked_against = ("paper text: arXiv:2410.02197v3 §5 Eqs. 5.2-5.3 (log Z replaced by 0); official code: "
                       "general-preference/general-preference-model@a376d95 scripts/compute_score_from_raw.py "
                       "(s = mean_j (T_ij - T_ji), 2x Eq. 5.2 on a skew table); the sppo_score trainer branch (its "
                       "clamp) is not in the repo")

    @classmethod
    def example_extras(cls, batch) -> dict:
        b = batch.size
        return {"score_chosen": torch.linspace(0.05, 0.4, b, dtype=torch.float64),
                "score_rejected": torch.linspace(-0.4, -0.05, b, dtype=torch.float64)}


OBJECTIVE = GPO
