"""Small numerics on the probability simplex (numpy, float64), shared by the lab modules.

    softmax(z)_k = exp(z_k - max z) / sum_j exp(z_j - max z)
    KL(p || q)   = sum_k p_k (log p_k - log q_k)        (0 log 0 = 0)
    TV(p, q)     = 1/2 sum_k |p_k - q_k|

All functions act on the last axis, so a [X, K] array holds one distribution per prompt.
"""
from __future__ import annotations

import numpy as np


def as_probs(p, name: str = "distribution", atol: float = 1e-9) -> np.ndarray:
    """`p` as a float64 array on the simplex (last axis), or a ValueError that says what is wrong."""
    p = np.asarray(p, dtype=np.float64)
    if np.any(p < -atol) or not np.allclose(p.sum(-1), 1.0, atol=atol):
        raise ValueError(f"{name} must be non-negative and sum to 1 on its last axis; got {p}.")
    return np.clip(p, 0.0, None)


def softmax(z, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(z, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=axis, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


def safe_log(p, floor: float = 1e-300) -> np.ndarray:
    """log p with 0 mapped to log(floor) (a finite stand-in for -inf)."""
    return np.log(np.maximum(np.asarray(p, dtype=np.float64), floor))


def kl(p, q) -> np.ndarray:
    """KL(p || q) on the last axis; terms with p_k = 0 contribute 0."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    terms = np.where(p > 0, p * (safe_log(p) - safe_log(q)), 0.0)
    return terms.sum(-1)


def tv(p, q) -> np.ndarray:
    """Total-variation distance 1/2 |p - q|_1 on the last axis."""
    return 0.5 * np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum(-1)


def max_abs(p, q) -> float:
    """max_k |p_k - q_k| over all entries: the 'distance to the closed form' used by the lab's tests."""
    return float(np.max(np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64))))


def geometric_mixture(p, q, weight_q: float) -> np.ndarray:
    """p^(1-w) q^w / Z: the normalized geometric mixture (Nash-MD's and INPO's anchor)."""
    return softmax((1.0 - weight_q) * safe_log(p) + weight_q * safe_log(q))
