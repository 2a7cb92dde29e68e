"""Idealized ranking accuracy, the difficulty of flipping a ranking, ties and listwise ranking accuracy.

Chen, Malladi, et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings", arXiv:2405.19534.

Idealized ranking accuracy (Cor. 3.3, Eq. 3): the ranking accuracy of the exact optimum of DPO/RLHF on data with
the true rater proportion alpha = P(y_w > y_l | x),
    R* = mean 1[ (S_ref(y_w) - S_ref(y_l)) + (1/beta)(log alpha - log(1 - alpha)) > 0 ],
with alpha = 1 replaced by 1 - eps, eps = 1e-3 (App. C.4); R~* uses the per-token means A_ref. With beta unknown
the paper reports min / median / max over beta in {0.01, 0.1, 1, 5, 10}. Alignment gap = R* - R, one ranking rule on
both sides (with tied pairs: the tie rule below for both; ranking_report).

Difficulty (Thm 4.1): with c = S_ref(y_l) - S_ref(y_w), a model ranks the pair correctly iff its DPO loss
L = l(beta [(S_theta(y_w) - S_ref(y_w)) - (S_theta(y_l) - S_ref(y_l))]) <= l(beta c),   l(z) = softplus(-z).
Pairs the reference ranks wrongly (c > 0) need L below log 2, the value at the start of DPO; the larger c, the
lower L must go ("hard to flip", Fig. 3).
Deviation from the paper: the paper names no cut-off for "hard"; preflab calls a pair hard when beta c >
`hard_margin` (default 1, i.e. L must fall below l(1) = 0.313 before the ranking flips) and reports the median
threshold l(beta c) so that the cut-off can be judged.

Ties (as restated in methods/objectives.md §C #13): a pair with alpha = 0.5 counts as correct iff
|pi(y_1) - pi(y_2)| < 0.01. Deviation: for whole responses both probabilities are tiny, so that rule is almost
always true; preflab compares in log space, |S(y_1) - S(y_2)| < tie_tolerance (a 1% probability ratio by default).
n > 2 responses (App. A.6, Def. A.8): correct iff the model's order equals the raters' full order (exact match).
"""
from __future__ import annotations

import math
from statistics import median

import torch
import torch.nn.functional as F
from torch import Tensor

PAPER_BETAS = (0.01, 0.1, 1.0, 5.0, 10.0)
EPS = 1e-3


def _f64(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def proportion_logit(alpha, eps: float = EPS) -> Tensor:
    """log alpha - log(1 - alpha) with alpha clipped to [eps, 1 - eps] (the paper's alpha = 1 -> 1 - eps).

    alpha is a probability: a value outside [0, 1] or NaN is refused (ValueError naming it), not clipped."""
    a = _f64(alpha)
    outside = ~((a >= 0.0) & (a <= 1.0))  # NaN is outside too
    if bool(outside.any()):
        index = int(outside.flatten().nonzero()[0])
        raise ValueError(f"alpha is the rater proportion P(y_w > y_l | x), a probability in [0, 1]; got "
                         f"{float(a.flatten()[index])} (at index {index}). Pass 1 for a unanimous preference.")
    a = a.clamp(eps, 1.0 - eps)
    return torch.log(a) - torch.log1p(-a)


def idealized_margins(ref_chosen_logps, ref_rejected_logps, alpha, beta: float, eps: float = EPS) -> Tensor:
    """[N] log pi*(y_w)/pi*(y_l) of the exact optimum (Thm 3.1): (S_ref(y_w) - S_ref(y_l)) + logit(alpha)/beta."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}.")
    rc, rr = _f64(ref_chosen_logps), _f64(ref_rejected_logps)
    if rc.shape != rr.shape:
        raise ValueError(f"ref_chosen_logps and ref_rejected_logps must have one value per pair each; got shapes "
                         f"{tuple(rc.shape)} and {tuple(rr.shape)}.")
    logit = proportion_logit(alpha, eps)
    try:
        logit = logit.expand_as(rc)
    except RuntimeError:
        raise ValueError(f"alpha must be one number or one per pair (shape {tuple(rc.shape)}); got shape "
                         f"{tuple(logit.shape)}.") from None
    return (rc - rr) + logit / beta


def idealized_ranking_accuracy(ref_chosen_logps, ref_rejected_logps, alpha=1.0, beta: float = 0.1,
                               eps: float = EPS) -> float:
    """R* (Cor. 3.3): pass summed reference log-probs for R*, per-token means for R~*. alpha: [N] or a scalar."""
    return float((idealized_margins(ref_chosen_logps, ref_rejected_logps, alpha, beta, eps) > 0).double().mean())


def idealized_ranking_accuracy_range(ref_chosen_logps, ref_rejected_logps, alpha=1.0, betas=PAPER_BETAS,
                                     eps: float = EPS) -> dict[str, float]:
    """{"min", "median", "max"} of R* over `betas` (the paper's Table 1 when beta is unknown)."""
    values = [idealized_ranking_accuracy(ref_chosen_logps, ref_rejected_logps, alpha, b, eps) for b in betas]
    return {"min": min(values), "median": float(median(values)), "max": max(values)}


def ranking_loss_threshold(ref_chosen_logps, ref_rejected_logps, beta: float) -> Tensor:
    """[N] l(beta c), c = S_ref(y_l) - S_ref(y_w) (Thm 4.1): the DPO loss a pair must reach to be ranked right."""
    c = _f64(ref_rejected_logps) - _f64(ref_chosen_logps)
    return F.softplus(-beta * c)


def dpo_pair_losses(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    beta: float) -> Tensor:
    """[N] per-pair DPO loss l(beta (h_w - h_l)) (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7), float64."""
    h_w = _f64(policy_chosen_logps) - _f64(ref_chosen_logps)
    h_l = _f64(policy_rejected_logps) - _f64(ref_rejected_logps)
    return F.softplus(-beta * (h_w - h_l))


def difficulty_summary(ref_chosen_logps, ref_rejected_logps, beta: float, policy_chosen_logps=None,
                       policy_rejected_logps=None, hard_margin: float = 1.0) -> dict[str, float]:
    """Thm 4.1 in numbers: how many pairs the reference ranks wrongly, how many are hard to flip (beta c >
    hard_margin), the median loss threshold l(beta c) and, given the policy, how many wrong pairs it flipped."""
    c = _f64(ref_rejected_logps) - _f64(ref_chosen_logps)
    wrong = c > 0
    threshold = ranking_loss_threshold(ref_chosen_logps, ref_rejected_logps, beta)
    out = {
        "difficulty/ref_incorrect_fraction": float(wrong.double().mean()),
        "difficulty/hard_fraction": float((beta * c > hard_margin).double().mean()),
        "difficulty/median_loss_threshold": float(torch.quantile(threshold, 0.5)),  # mean of the middle two
    }
    if policy_chosen_logps is not None and policy_rejected_logps is not None:
        right_now = _f64(policy_chosen_logps) >= _f64(policy_rejected_logps)
        out["difficulty/flipped_fraction"] = (float((right_now & wrong).double().sum() / wrong.double().sum())
                                              if bool(wrong.any()) else math.nan)
    return out


def ranking_accuracy_with_ties(chosen_logps, rejected_logps, alpha, tie_tolerance: float = 0.01) -> float:
    """R with the paper's tie rule (in log space): alpha == 0.5 pairs count when |S_1 - S_2| < tie_tolerance,
    the others when S(y_w) >= S(y_l)."""
    cw, cl = _f64(chosen_logps), _f64(rejected_logps)
    return _accuracy_with_ties(cw - cl, alpha, tie_tolerance, strict=False)


def idealized_ranking_accuracy_with_ties(ref_chosen_logps, ref_rejected_logps, alpha, beta: float,
                                         tie_tolerance: float = 0.01, eps: float = EPS) -> float:
    """R* under the same tie rule as ranking_accuracy_with_ties: the optimum's log-ratio m* (idealized_margins; for
    alpha = 0.5, m* = S_ref(y_w) - S_ref(y_l)) counts a tie pair when |m*| < tie_tolerance, the others when m* > 0."""
    margins = idealized_margins(ref_chosen_logps, ref_rejected_logps, alpha, beta, eps)
    return _accuracy_with_ties(margins, alpha, tie_tolerance, strict=True)


def _accuracy_with_ties(margins: Tensor, alpha, tie_tolerance: float, strict: bool) -> float:
    tie = _f64(alpha).expand_as(margins) == 0.5
    ordered = margins > 0 if strict else margins >= 0
    return float(torch.where(tie, margins.abs() < tie_tolerance, ordered).double().mean())


def listwise_ranking_accuracy(logps, scores, valid=None) -> float:
    """Fraction of prompts whose K responses the model orders exactly as the raters do (n > 2 responses).

    logps [N, K] model log-probs; scores [N, K] rater scores (higher is better; tied scores may come in either
    order); valid [N, K] bool marks real responses."""
    lp, sc = _f64(logps), _f64(scores)
    valid = torch.ones_like(lp, dtype=torch.bool) if valid is None else torch.as_tensor(valid, dtype=torch.bool)
    # every ordered pair (i, j) of valid responses with score_i > score_j must have logp_i > logp_j
    both = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    rater_prefers = (sc.unsqueeze(-1) > sc.unsqueeze(-2)) & both
    model_agrees = lp.unsqueeze(-1) > lp.unsqueeze(-2)
    exact = ~(rater_prefers & ~model_agrees).flatten(1).any(-1)
    return float(exact.double().mean())


def ranking_report(ref_chosen_logps, ref_rejected_logps, chosen_length, rejected_length, alpha, beta: float,
                   policy_chosen_logps=None, policy_rejected_logps=None, hard_margin: float = 1.0,
                   betas=PAPER_BETAS, tie_tolerance: float = 0.01) -> dict[str, float]:
    """R*, R~* at `beta`, their min/median/max over `betas`, the alignment gaps to the policy's R and R~, and the
    Thm 4.1 difficulty summary: the `idealized_*` and `difficulty/*` entries of eval.json.

    The alignment gap compares like with like, one ranking rule on both sides (Chen et al. 2024, R* - R):
    - no tied pair (alpha = 0.5): alignment_gap = R* - R, each by order (R*: m* > 0; R: S(y_w) >= S(y_l));
    - tied pairs: the tie rule on both sides (a tie pair counts when its log-ratio, |m*| for the optimum and
      |S(y_w) - S(y_l)| for the policy, is < tie_tolerance; the others by order), i.e.
      alignment_gap = idealized_ranking_accuracy_with_ties - ranking_accuracy_with_ties, and the same on per-token
      means for alignment_gap_norm (idealized_ranking_accuracy_norm_with_ties - ranking_accuracy_norm_with_ties).
      A tie pair's chosen / rejected labels are arbitrary, so scoring it by order measures nothing; the paper's
      ranking accuracy scores it by the tie rule, and R* is that accuracy of the optimum. (For alpha = 0.5 the
      optimum keeps the reference's log-ratio, so R* with ties counts the pairs the reference already ties.)"""
    lw, ll = _f64(chosen_length).clamp_min(1), _f64(rejected_length).clamp_min(1)
    rc, rr = _f64(ref_chosen_logps), _f64(ref_rejected_logps)
    out = {"idealized_ranking_accuracy": idealized_ranking_accuracy(rc, rr, alpha, beta),
           "idealized_ranking_accuracy_norm": idealized_ranking_accuracy(rc / lw, rr / ll, alpha, beta)}
    for name, (chosen, rejected) in {"idealized_ranking_accuracy": (rc, rr),
                                     "idealized_ranking_accuracy_norm": (rc / lw, rr / ll)}.items():
        for stat, value in idealized_ranking_accuracy_range(chosen, rejected, alpha, betas).items():
            out[f"{name}/{stat}"] = value
    ties = bool((_f64(alpha) == 0.5).any())
    if ties:
        out["idealized_ranking_accuracy_with_ties"] = idealized_ranking_accuracy_with_ties(rc, rr, alpha, beta,
                                                                                           tie_tolerance)
        out["idealized_ranking_accuracy_norm_with_ties"] = idealized_ranking_accuracy_with_ties(
            rc / lw, rr / ll, alpha, beta, tie_tolerance)
    if policy_chosen_logps is not None and policy_rejected_logps is not None:
        pc, pr = _f64(policy_chosen_logps), _f64(policy_rejected_logps)
        if ties:
            out["ranking_accuracy_norm_with_ties"] = ranking_accuracy_with_ties(pc / lw, pr / ll, alpha,
                                                                                tie_tolerance)
            out["alignment_gap"] = (out["idealized_ranking_accuracy_with_ties"]
                                    - ranking_accuracy_with_ties(pc, pr, alpha, tie_tolerance))
            out["alignment_gap_norm"] = (out["idealized_ranking_accuracy_norm_with_ties"]
                                         - out["ranking_accuracy_norm_with_ties"])
        else:
            out["alignment_gap"] = out["idealized_ranking_accuracy"] - float((pc >= pr).double().mean())
            out["alignment_gap_norm"] = out["idealized_ranking_accuracy_norm"] - float((pc / lw >= pr / ll)
                                                                                       .double().mean())
    out.update(difficulty_summary(rc, rr, beta, policy_chosen_logps, policy_rejected_logps, hard_margin))
    return out
