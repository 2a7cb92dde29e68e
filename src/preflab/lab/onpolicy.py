"""The didactic bandit of the on-policy-data paper: mode-seeking vs mass-covering, on-policy vs offline, exactly.

Tajwar et al. 2024, "Preference Fine-Tuning of LLMs Should Leverage Suboptimal, On-Policy Data",
arXiv:2404.14367 (code: Asap7772/understanding-rlhf, bandit_experiment/).

Actions: 100 bins of [-1, 1]; pi_ref = tanh of a Cauchy(loc -0.7, scale 0.4) sample, binned — computed exactly from
the Cauchy CDF F(c) = 1/2 + arctan((c - loc)/scale)/pi at arctanh of the bin edges (interior mode at bin 16,
heavy boundary bins 0 and 99). Rewards R(a) = exp(-((a - c)/10)^2): "aligned" c = 20 (near pi_ref's mode),
"misaligned" c = 70 (where pi_ref has ~0.2% per bin).

Exact gradients in logit space z (pi = softmax z), from the paper's Sec. 4:
    mass-covering (forward KL / maximum likelihood):   grad_z KL(p || pi) = pi - p
    mode-seeking  (reverse KL / on-policy RL):          grad_z KL(pi || p) = pi * (log(pi/p) - KL(pi || p))
Methods compared at equal numbers of exact updates from pi_ref:
    offline Pref-FT   MLE on best-of-N samples of pi_ref:  p = BoN_N(pi_ref)   (mass-covering, offline data)
    on-policy Pref-FT MLE on best-of-N samples of pi_t:    p = BoN_N(pi_t)     (mass-covering, on-policy data)
    on-policy RL      reverse KL to pi* = pi_ref exp(R/beta)/Z, i.e. max E_pi R - beta KL(pi || pi_ref)
    MLE on pi*        forward KL to the same pi* (the mass-covering fit of the mode-seeking method's target)
Theory: offline Pref-FT converges to BoN_N(pi_ref), whose E[R] is capped by pi_ref's coverage of the reward peak
(0.31 misaligned vs 0.94 aligned), while on-policy methods are not capped; near the target, reverse KL removes
mass from bins where the target has almost none faster than forward KL (ratio log(pi/p) - KL >> 1 there).
"""
from __future__ import annotations

import numpy as np

from preflab.lab.closed_forms import best_of_n_law, kl_optimum
from preflab.lab.simplex import kl, safe_log, softmax


def cauchy_reference(n_bins: int = 100, loc: float = -0.7, scale: float = 0.4) -> np.ndarray:
    """Exact bin probabilities of tanh(Cauchy(loc, scale)) over n equal bins of [-1, 1]."""
    edges = np.linspace(-1.0, 1.0, n_bins + 1)
    with np.errstate(divide="ignore"):
        c = np.arctanh(edges)
    cdf = 0.5 + np.arctan((c - loc) / scale) / np.pi
    cdf[0], cdf[-1] = 0.0, 1.0
    return np.diff(cdf)


def bump_reward(n_bins: int = 100, center: float = 70.0, width: float = 10.0) -> np.ndarray:
    """R(a) = exp(-((a - center)/width)^2) over bin indices a."""
    a = np.arange(n_bins, dtype=np.float64)
    return np.exp(-(((a - center) / width) ** 2))


def forward_kl_grad(pi, p) -> np.ndarray:
    """grad_z KL(p || softmax z) = pi - p (mass-covering)."""
    return np.asarray(pi) - np.asarray(p)


def reverse_kl_grad(pi, p) -> np.ndarray:
    """grad_z KL(softmax z || p) = pi (log pi/p - KL(pi || p)) (mode-seeking)."""
    pi = np.asarray(pi, dtype=np.float64)
    return pi * (safe_log(pi) - safe_log(p) - kl(pi, p))


def target_fns(ref, reward, beta: float, n: int) -> dict:
    """name -> (gradient function of pi) for the four methods of the module docstring."""
    star = kl_optimum(ref, reward, beta)
    offline = best_of_n_law(ref, reward, n)
    return {
        "offline Pref-FT (MLE on BoN of pi_ref)": lambda pi: forward_kl_grad(pi, offline),
        "on-policy Pref-FT (MLE on BoN of pi_t)": lambda pi: forward_kl_grad(pi, best_of_n_law(pi, reward, n)),
        "on-policy RL (reverse KL to pi*)": lambda pi: reverse_kl_grad(pi, star),
        "MLE on pi* samples (forward KL to pi*)": lambda pi: forward_kl_grad(pi, star),
    }


def compare_methods(reward, ref=None, *, beta: float = 0.1, n: int = 10, steps: int = 300, lr: float = 1.0,
                    record: tuple = ()) -> dict:
    """Run every method by exact gradient descent on the logits from pi_ref.

    Returns name -> {"steps", "expected_reward", "offtarget_mass", "policy"} where offtarget_mass is the mass on
    bins with pi*(a) < 1e-3 max pi* (where the KL-regularized target puts almost nothing)."""
    ref = cauchy_reference(len(reward)) if ref is None else np.asarray(ref)
    star = kl_optimum(ref, reward, beta)
    off = star < 1e-3 * star.max()
    record = set(record) | {0, steps}
    out = {}
    for name, grad in target_fns(ref, reward, beta, n).items():
        z = safe_log(ref)
        rec = {"steps": [], "expected_reward": [], "offtarget_mass": []}
        for t in range(steps + 1):
            pi = softmax(z)
            if t in record:
                rec["steps"].append(t)
                rec["expected_reward"].append(float(pi @ reward))
                rec["offtarget_mass"].append(float(pi[off].sum()))
            if t < steps:
                z = z - lr * grad(pi)
        rec["policy"] = pi
        out[name] = rec
    return out


def offline_ceiling(reward, ref=None, n: int = 10) -> float:
    """E[R] under BoN_N(pi_ref): the limit of offline Pref-FT (the minimizer of its forward KL)."""
    ref = cauchy_reference(len(reward)) if ref is None else np.asarray(ref)
    return float(best_of_n_law(ref, reward, n) @ reward)
