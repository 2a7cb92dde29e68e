"""Answers theory gives in closed form, against which the lab's trained policies are checked (numpy, float64).

KL-regularized optimum (Rafailov et al. 2023, arXiv:2305.18290, Eq. 4; the DPO fixed point):
    pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x)

Idealized ranking accuracy (Chen, Malladi, et al. 2024, "Preference Learning Algorithms Do Not Learn Preference
Rankings", arXiv:2405.19534, Eq. 4): the ranking accuracy of the exact DPO/RLHF optimum when the rater proportion
alpha = P(y_w > y_l | x) is known,
    R* = mean 1[ (S_ref(y_w) - S_ref(y_l)) + (1/beta) (log alpha - log(1 - alpha)) > 0 ],
alpha = 1 (or 0) is replaced by 1 - eps (eps) with eps = 1e-3, as in the paper. Their Thm 4.1: with
c = S_ref(y_l) - S_ref(y_w), a DPO model ranks the pair correctly iff L_DPO <= l(beta c), l(z) = softplus(-z).

Best-of-n law (rejection-sampling fine-tuning; models-and-loops B0.4): arms sorted by reward with CDF F,
    P(best = i) = F(i)^n - F(i-1)^n,
ties split in proportion to pi inside a tie group (what a uniform choice among tied samples gives).

RSO acceptance (Liu et al. 2024, "Statistical Rejection Sampling Improves Preference Optimization",
arXiv:2309.06657, Alg. 1): accept y ~ pi_sft with probability exp((r(y) - M)/beta), M = max_y r(y); accepted
samples follow pi_sft exp(r/beta) / Z = pi* exactly.

APO momentum coefficients (He et al. 2024, "Accelerated Preference Optimization for LLM Alignment",
arXiv:2410.06293): with an exact DPO step pi_hat_{t+1} ∝ pi_t e^{r/beta} and the extrapolation
z_{t+1} = (1+alpha) z_hat_{t+1} - alpha z_hat_t, every iterate is pi_t ∝ pi_0 exp(c_t r/beta) with
c_hat_{t+1} = c_t + 1, c_{t+1} = (1+alpha) c_hat_{t+1} - alpha c_hat_t (alpha = 0: c_t = t, iterative DPO).

BALD (Houlsby et al. 2011, arXiv:1112.5745; UPO's selection score): B = H[mean_t p_t] - mean_t H[p_t], natural log.
"""
from __future__ import annotations

import numpy as np
import torch

from preflab.lab.simplex import as_probs, log_softmax, safe_log, softmax


def kl_optimum(ref, reward, beta: float) -> np.ndarray:
    """pi* = pi_ref exp(r/beta) / Z on the last axis (one distribution per prompt for [X, K] inputs)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}.")
    return softmax(safe_log(ref) + np.asarray(reward, dtype=np.float64) / beta)


def _no_nan(values, name: str) -> np.ndarray:
    """`values` as float64, refused when one is NaN (naming its index): a NaN log-prob compares false, so R and R*
    counted its pair as ranked wrongly without a word (ranking_accuracy([nan, 1], [0, 0]) was 0.5). -inf (a
    response of probability 0) is a log-prob and is kept."""
    array = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(np.isnan(array))
    if bad.size:
        raise ValueError(f"{name} has NaN at index {int(bad[0])} ({bad.size} of {array.size} values): a NaN is no "
                         "log-prob, and a pair holding one would count as ranked wrongly; drop those pairs or fix "
                         "the scores that made them.")
    return array


def idealized_ranking_accuracy(ref_chosen_logps, ref_rejected_logps, alpha, beta: float, eps: float = 1e-3) -> float:
    """R* of Chen et al. (2024): the fraction of pairs the exact optimum pi_ref exp(r/beta)/Z ranks correctly.

    ref_chosen_logps, ref_rejected_logps: [N] summed reference log-probs S_ref(y_w), S_ref(y_l) (a NaN is refused);
    alpha: [N] (or scalar) rater proportion P(y_w > y_l | x) in [0, 1]; beta > 0.
    One implementation: preflab.eval.ranking (this name keeps the lab's numpy interface).
    """
    from preflab.eval import ranking

    return ranking.idealized_ranking_accuracy(_no_nan(ref_chosen_logps, "ref_chosen_logps"),
                                              _no_nan(ref_rejected_logps, "ref_rejected_logps"),
                                              np.asarray(alpha, dtype=np.float64), beta, eps)


def idealized_ranking_accuracy_range(ref_chosen_logps, ref_rejected_logps, alpha,
                                     betas=(0.01, 0.1, 1.0, 5.0, 10.0)) -> dict:
    """min / median / max of R* over beta (the paper's report when beta is unknown)."""
    vals = [idealized_ranking_accuracy(ref_chosen_logps, ref_rejected_logps, alpha, b) for b in betas]
    return {"min": float(np.min(vals)), "median": float(np.median(vals)), "max": float(np.max(vals))}


def ranking_accuracy(chosen_logps, rejected_logps) -> float:
    """mean 1[S(y_w) >= S(y_l)] on summed log-probs (Chen et al. 2024's R; preflab.eval.metrics.ranking_accuracy); a
    NaN is refused."""
    from preflab.eval.metrics import ranking_accuracy as ranking_accuracy_torch

    chosen, rejected = _no_nan(chosen_logps, "chosen_logps"), _no_nan(rejected_logps, "rejected_logps")
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen_logps and rejected_logps must have one value per pair each; got shapes "
                         f"{chosen.shape} and {rejected.shape}.")
    if chosen.size == 0:
        raise ValueError("ranking_accuracy needs at least one pair; got empty chosen_logps and rejected_logps.")
    return float(ranking_accuracy_torch(torch.as_tensor(chosen), torch.as_tensor(rejected)))


def ranking_loss_threshold(ref_chosen_logps, ref_rejected_logps, beta: float) -> np.ndarray:
    """Thm 4.1 of Chen et al. (2024): l(beta c), c = S_ref(y_l) - S_ref(y_w); ranked correctly iff L_DPO <= it.
    One implementation: preflab.eval.ranking.ranking_loss_threshold."""
    from preflab.eval import ranking

    return ranking.ranking_loss_threshold(np.asarray(ref_chosen_logps, dtype=np.float64),
                                          np.asarray(ref_rejected_logps, dtype=np.float64), beta).numpy()


def best_of_n_law(pi, reward, n: int) -> np.ndarray:
    """Law of the highest-reward sample among n i.i.d. draws from pi (one distribution per row)."""
    pi = as_probs(pi, "pi")
    reward = np.broadcast_to(np.asarray(reward, dtype=np.float64), pi.shape)
    if pi.ndim > 1:
        return np.stack([best_of_n_law(p, r, n) for p, r in zip(pi, reward)])
    out = np.zeros_like(pi)
    below = 0.0
    for value in np.unique(reward):  # ascending
        group = reward == value
        mass = pi[group].sum()
        p_best_in_group = (below + mass) ** n - below ** n
        if mass > 0:
            out[group] = p_best_in_group * pi[group] / mass
        below += mass
    return out


def rso_acceptance(reward, beta_rs: float) -> np.ndarray:
    """Per-response acceptance probability exp((r - max r)/beta_rs) of statistical rejection sampling (last axis).
    One implementation: preflab.loops.rso.acceptance_probs."""
    from preflab.loops.rso import acceptance_probs

    return acceptance_probs(np.asarray(reward, dtype=np.float64), beta_rs).numpy()


def rso_accepted_law(pi_sft, reward, beta_rs: float) -> np.ndarray:
    """Law of an accepted sample: pi_sft * acceptance / Z (equals kl_optimum(pi_sft, r, beta_rs))."""
    w = as_probs(pi_sft, "pi_sft") * rso_acceptance(reward, beta_rs)
    return w / w.sum(-1, keepdims=True)


def apo_coefficients(alpha: float, iterations: int) -> np.ndarray:
    """[c_1..c_T]: APO iterate t is pi_0 exp(c_t r/beta)/Z under exact DPO steps with momentum alpha."""
    c, c_hat_prev, out = 0.0, 0.0, []
    for _ in range(iterations):
        c_hat = c + 1.0
        c = (1.0 + alpha) * c_hat - alpha * c_hat_prev
        c_hat_prev = c_hat
        out.append(c)
    return np.array(out)


def entropy(p, axis: int = -1) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return -np.where(p > 0, p * safe_log(p), 0.0).sum(axis)


def bald(probs) -> np.ndarray:
    """Mutual information between prediction and parameters from T Monte-Carlo passes.

    probs: [T, B, C] class probabilities; returns [B] = H[mean_t p_t] - mean_t H[p_t] (nats, in [0, log C]).
    """
    probs = np.asarray(probs, dtype=np.float64)
    return entropy(probs.mean(0)) - entropy(probs).mean(0)


def bt_preference(reward) -> np.ndarray:
    """P[..., i, j] = sigmoid(r_i - r_j): the Bradley-Terry preference matrix of a reward vector."""
    r = np.asarray(reward, dtype=np.float64)
    d = r[..., :, None] - r[..., None, :]
    return np.exp(-np.logaddexp(0.0, -d))


__all__ = [
    "kl_optimum", "idealized_ranking_accuracy", "idealized_ranking_accuracy_range", "ranking_accuracy",
    "ranking_loss_threshold", "best_of_n_law", "rso_acceptance", "rso_accepted_law", "apo_coefficients",
    "entropy", "bald", "bt_preference", "log_softmax",
]
