"""Cheap diagnostics logged at eval steps (Chen et al., 2024, "Preference learning algorithms do not learn
preference rankings", arXiv:2405.19534; Yan et al., 2024, "3D-properties of DPO", arXiv:2406.07327).

    ranking_accuracy          mean 1[S_theta(y_w) >= S_theta(y_l)]       (summed log-probs, as in the paper)
    ranking_accuracy_norm     mean 1[A_theta(y_w) >= A_theta(y_l)]       (per-token means)
    logps_drift/chosen        mean S_theta(y_w) - S_ref(y_w)             (< 0: chosen likelihood fell)
    logps_drift/rejected      mean S_theta(y_l) - S_ref(y_l)
"""
from __future__ import annotations

import torch

from preflab.objectives.base import PairBatch


def pair_eval_metrics(batch: PairBatch) -> dict[str, torch.Tensor]:
    pc, pr = batch.policy_chosen, batch.policy_rejected
    out = {
        "ranking_accuracy": (pc.sum >= pr.sum).float().mean(),
        "ranking_accuracy_norm": (pc.mean >= pr.mean).float().mean(),
    }
    if batch.has_reference:
        out["logps_drift/chosen"] = (pc.sum - batch.ref_chosen.sum).float().mean()
        out["logps_drift/rejected"] = (pr.sum - batch.ref_rejected.sum).float().mean()
    return out
