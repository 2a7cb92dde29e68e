"""Cheap diagnostics logged at eval steps (Chen et al., 2024, "Preference learning algorithms do not learn
preference rankings", arXiv:2405.19534; Yan et al., 2024, "3D-properties of DPO", arXiv:2406.07327).

    ranking_accuracy               mean 1[S_theta(y_w) >= S_theta(y_l)]       (summed log-probs, as in the paper)
    ranking_accuracy_norm          mean 1[A_theta(y_w) >= A_theta(y_l)]       (per-token means)
    reference_ranking_accuracy     mean 1[S_ref(y_w) >= S_ref(y_l)]           (where the policy started)
    logps_drift/chosen             mean S_theta(y_w) - S_ref(y_w)             (< 0: chosen likelihood fell)
    logps_drift/rejected           mean S_theta(y_l) - S_ref(y_l)
    logps_drift/suppression_rate   mean 1[both drifts < 0]                    (3D: degradation)

Every value is a mean over pairs, so the trainer's size-weighted average over eval chunks is exact. The formulas
live in preflab.eval.metrics (`pair_diagnostics`); only these cheap keys are returned so that an objective's own
metrics (e.g. SimPO's rewards/*) are never overwritten. `preflab eval` computes the rest.
"""
from __future__ import annotations

import torch

from preflab.eval.metrics import PairScores, pair_diagnostics
from preflab.objectives.base import PairBatch

EVAL_STEP_KEYS = ("ranking_accuracy", "ranking_accuracy_norm", "reference_ranking_accuracy", "logps_drift/chosen",
                  "logps_drift/rejected", "logps_drift/suppression_rate")


def pair_eval_metrics(batch: PairBatch) -> dict[str, torch.Tensor]:
    """The EVAL_STEP_KEYS available for this batch (the reference-based ones only when it has a reference)."""
    values = pair_diagnostics(PairScores.from_batch(batch), beta=1.0)
    return {key: values[key] for key in EVAL_STEP_KEYS if key in values}
