"""Calibration of a pairwise reward / preference model: does P(chosen > rejected) mean what it says?

The model's probability that the labelled-better response wins is p_i = sigmoid(logit_i), the head's log-odds
(BT: (r_w - r_l) / tau; GPM: its skew-symmetric score); a row's `margin` is a training target, not part of it.
    brier = mean_i (1 - p_i)^2                                       (Brier 1950; the label is always "chosen")
    ece   = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|                 (Guo et al. 2017, "On Calibration of Modern
                                                                      Neural Networks", Eq. 3)
with the confidence c_i = max(p_i, 1 - p_i) of the side the model prefers, acc(B_b) the fraction of pairs in bin b
the model gets right (logit > 0, the accuracy's rule, so a tie counts as wrong) and conf(B_b) their mean
confidence, over `num_bins` equal-width bins of [0.5, 1] (the last one closed). A model that says 0.9 on pairs it
gets right 90% of the time has ece 0; accuracy alone cannot tell a reward model with usable probabilities (e.g. for
best-of-n thresholds or as a judge's win rate) from one that is right but over- or under-confident.
"""
from __future__ import annotations

import torch
from torch import Tensor


def calibration(logit: Tensor, num_bins: int = 10) -> dict:
    """{"ece", "brier", "calibration_bins": [{"low", "high", "count", "accuracy", "confidence"}, ...]} of the
    log-odds `logit` [N] of P(chosen > rejected); bins without pairs are left out of the list."""
    logit = logit.detach().double().flatten()
    p = torch.sigmoid(logit)
    confidence, correct = torch.maximum(p, 1 - p), (logit > 0).double()
    index = ((confidence - 0.5) * 2 * num_bins).floor().clamp(0, num_bins - 1).long()
    bins, ece = [], 0.0
    for b in range(num_bins):
        members = index == b
        count = int(members.sum())
        if not count:
            continue
        acc, conf = float(correct[members].mean()), float(confidence[members].mean())
        ece += count / len(logit) * abs(acc - conf)
        bins.append({"low": 0.5 + b / (2 * num_bins), "high": 0.5 + (b + 1) / (2 * num_bins), "count": count,
                     "accuracy": acc, "confidence": conf})
    return {"ece": ece, "brier": float(((1 - p) ** 2).mean()), "calibration_bins": bins}
