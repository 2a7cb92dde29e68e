"""AOT (unpaired): optimal transport between the chosen and rejected log-ratio distributions (TRL `aot_unpaired`).

Paper: Melnyk et al., 2024, "Distributional Preference Alignment of LLMs via Optimal Transport" (arXiv:2406.05882),
the unpaired variant. With h = S_theta - S_ref sorted separately across the batch for chosen and rejected,
d_k = h_w,(k) - h_l,(k) and

    L_k = (1 - eps) l(beta d_k) + eps l(-beta d_k),   l(z) = -log sigmoid(z),  eps = label_smoothing

`losses[k]` belongs to the k-th quantile; at B = 1 the loss is DPO's. TRL 0.2x called this loss `aot_pair`
(still accepted, with a warning).

Deviation from the paper: none in the value (TRL 1.16's form); tied values share their gradient (see `aot`).
"""
from dataclasses import dataclass
from typing import ClassVar

from preflab.objectives.aot import AOT
from preflab.objectives.base import PairBatch, logratios


@dataclass(frozen=True)
class AOTUnpaired(AOT):
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='aot_unpaired' "
                       "(tests/objectives/test_trl_parity.py, 1e-9)")
    # sorts the micro-batch's two log-ratio samples and matches them by rank (base.couples_micro_batch)
    micro_batch_statistic: ClassVar[bool] = True

    def margins(self, batch: PairBatch):
        return logratios(batch)


OBJECTIVE = AOTUnpaired
