"""Pair diagnostics from sequence log-probs: ranking accuracy, implicit-reward accuracy, 3D metrics, lengths.

Notation (methods/objectives.md §0): S(y) = summed response log-prob, A(y) = S(y)/|y|, h(y) = S_theta(y) - S_ref(y).

Ranking accuracy (Chen, Malladi, et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings",
arXiv:2405.19534, Def. 2.3; R~ in Remark 2.4):
    R  = mean 1[S_theta(y_w) >= S_theta(y_l)]          (summed log-probs)
    R~ = mean 1[A_theta(y_w) >= A_theta(y_l)]          (length-normalized, the geometric-mean probability)
It is not TRL's `rewards/accuracies` (implicit-reward accuracy), which compares h, strictly:
    rewards/accuracies = mean 1[beta h(y_w) > beta h(y_l)]            (ANCHORS.md §3.1: ties count 0)

3D properties of DPO (Yan et al. 2024, "3D-Properties: Identifying Challenges in DPO and Charting a Path
Forward", arXiv:2406.07327): with drift_w = S_theta(y_w) - S_ref(y_w) and drift_l likewise,
    logps_drift/chosen, logps_drift/rejected   mean drift_w, mean drift_l      (Drastic drop of the rejected side)
    logps_drift/drop_ratio                     |mean drift_l| / max(|mean drift_w|, eps)
    logps_drift/suppression_rate               mean 1[drift_w < 0 and drift_l < 0]   (Degradation: both fall)
    dispersion (see `unseen_*`)                where the lost mass goes (Dispersion onto unseen responses)
Deviation from the papers: the drop ratio is a ratio of means over the eval set (a per-pair ratio explodes when
drift_w is near 0); the summaries that need extra responses are computed by preflab.eval.run.

Token implicit reward (Wang et al. 2025, "Implicit Reward as the Bridge", arXiv:2507.00018; methods/objectives.md
§C #10):
    r_t = beta (lp_theta[t] - lp_ref[t]),  sum_t r_t = beta h(y).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from preflab.objectives.base import PairBatch, SequenceLogps


@dataclass
class PairScores:
    """Per-pair sequence log-prob sums [N] and response lengths [N] (float64 on CPU); ref_* None without a
    reference. Concatenating the scores of several batches gives exact metrics over the whole eval set."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    chosen_length: Tensor
    rejected_length: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None

    @classmethod
    def from_batch(cls, batch: PairBatch) -> "PairScores":
        f = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
        ref = batch.has_reference
        return cls(f(batch.policy_chosen.sum), f(batch.policy_rejected.sum), f(batch.policy_chosen.length),
                   f(batch.policy_rejected.length), f(batch.ref_chosen.sum) if ref else None,
                   f(batch.ref_rejected.sum) if ref else None)

    @classmethod
    def cat(cls, parts: list["PairScores"]) -> "PairScores":
        out = {}
        for fd in fields(cls):
            values = [getattr(p, fd.name) for p in parts]
            out[fd.name] = None if any(v is None for v in values) else torch.cat(values)
        return cls(**out)

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None and self.ref_rejected is not None

    @property
    def size(self) -> int:
        return int(self.policy_chosen.shape[0])

    def to_lists(self) -> dict[str, list[float]]:
        """JSON-ready per-pair columns (eval.json's `per_pair`)."""
        return {fd.name: getattr(self, fd.name).tolist() for fd in fields(self) if getattr(self, fd.name) is not None}

    @classmethod
    def from_lists(cls, columns: dict) -> "PairScores":
        t = lambda k: torch.tensor(columns[k], dtype=torch.float64) if columns.get(k) is not None else None  # noqa
        return cls(*(t(fd.name) for fd in fields(cls)))


def ranking_accuracy(chosen_logps: Tensor, rejected_logps: Tensor) -> Tensor:
    """R = mean 1[chosen >= rejected] (Chen et al. 2024); pass per-token means for R~."""
    return (chosen_logps >= rejected_logps).double().mean()


def implicit_reward_accuracy(chosen_logratio: Tensor, rejected_logratio: Tensor) -> Tensor:
    """TRL's rewards/accuracies: mean 1[h(y_w) > h(y_l)] (strict; beta > 0 does not change it)."""
    return (chosen_logratio > rejected_logratio).double().mean()


def suppression_rate(drift_chosen: Tensor, drift_rejected: Tensor) -> Tensor:
    """Fraction of pairs whose chosen and rejected log-likelihoods both fell below the reference's."""
    return ((drift_chosen < 0) & (drift_rejected < 0)).double().mean()


def drop_ratio(drift_chosen: Tensor, drift_rejected: Tensor, eps: float = 1e-8) -> Tensor:
    """|mean drift_l| / max(|mean drift_w|, eps): how much faster the rejected side falls than the chosen side."""
    return drift_rejected.mean().abs() / drift_chosen.mean().abs().clamp_min(eps)


def length_stats(chosen_length: Tensor, rejected_length: Tensor) -> dict[str, Tensor]:
    """Mean response lengths (tokens) and the fraction of pairs whose chosen response is longer."""
    return {"length/chosen": chosen_length.double().mean(), "length/rejected": rejected_length.double().mean(),
            "length/chosen_longer_fraction": (chosen_length > rejected_length).double().mean()}


def token_implicit_rewards(policy: SequenceLogps, ref: SequenceLogps, beta: float) -> Tensor:
    """[B, T] per-token implicit reward beta (lp_theta[t] - lp_ref[t]), 0 off the mask; rows sum to beta h(y)."""
    return beta * (policy.masked() - ref.masked())


def categorical_unseen_mass(probs: Tensor, seen: Tensor) -> Tensor:
    """[...] 1 - sum_{y seen} pi(y): the mass a categorical policy (lab toys) puts on responses not in the data.
    probs [..., K] sum to 1 on the last axis; seen [..., K] bool marks responses that appear in the pairs."""
    return 1.0 - (probs * seen.to(probs.dtype)).sum(-1)


def unseen_log_mass_drift(policy_logps: Tensor, ref_logps: Tensor, valid: Tensor) -> Tensor:
    """[N] log sum_k pi_theta(y_k) - log sum_k pi_ref(y_k) over each prompt's extra (unseen) responses
    (policy_logps, ref_logps, valid: [N, K]); > 0 means the policy moved mass onto them (dispersion)."""
    neg = torch.tensor(float("-inf"), dtype=policy_logps.dtype)
    lse = lambda x: torch.logsumexp(torch.where(valid, x, neg), dim=-1)  # noqa: E731
    return lse(policy_logps) - lse(ref_logps)


def pair_diagnostics(scores: PairScores, beta: float) -> dict[str, Tensor]:
    """Every cheap pair metric: ranking accuracies, lengths and, with a reference, the implicit-reward accuracy,
    TRL's reward means, the reference's own ranking accuracy and the 3D drifts. Values are 0-dim float64."""
    s = scores
    out = {
        "ranking_accuracy": ranking_accuracy(s.policy_chosen, s.policy_rejected),
        "ranking_accuracy_norm": ranking_accuracy(s.policy_chosen / s.chosen_length.clamp_min(1),
                                                  s.policy_rejected / s.rejected_length.clamp_min(1)),
        "logps/chosen": s.policy_chosen.mean(),
        "logps/rejected": s.policy_rejected.mean(),
        **length_stats(s.chosen_length, s.rejected_length),
    }
    if not s.has_reference:
        return out
    h_w, h_l = s.policy_chosen - s.ref_chosen, s.policy_rejected - s.ref_rejected
    out.update({
        "rewards/chosen": beta * h_w.mean(),
        "rewards/rejected": beta * h_l.mean(),
        "rewards/margins": beta * (h_w - h_l).mean(),
        "rewards/accuracies": implicit_reward_accuracy(h_w, h_l),
        "reference_ranking_accuracy": ranking_accuracy(s.ref_chosen, s.ref_rejected),
        "reference_ranking_accuracy_norm": ranking_accuracy(s.ref_chosen / s.chosen_length.clamp_min(1),
                                                            s.ref_rejected / s.rejected_length.clamp_min(1)),
        "logps_drift/chosen": h_w.mean(),
        "logps_drift/rejected": h_l.mean(),
        "logps_drift/drop_ratio": drop_ratio(h_w, h_l),
        "logps_drift/suppression_rate": suppression_rate(h_w, h_l),
    })
    return out
