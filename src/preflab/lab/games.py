"""Preference games: the Nash equilibrium, regularized and not, and the duality gap (numpy, float64).

One prompt, K responses, a preference matrix P (P + P^T = 1). The KL-regularized game (Munos et al. 2023,
"Nash Learning from Human Feedback", arXiv:2312.00886):
    J_beta(pi, pi') = pi^T P pi' - beta KL(pi || pi_ref) + beta KL(pi' || pi_ref),
symmetric and constant-sum; its unique equilibrium solves the fixed point
    pi*_beta = softmax(log pi_ref + P pi*_beta / beta).
beta = 0 gives the plain game, whose equilibrium is the Minimax (von Neumann) Winner
    pi* = argmax_pi min_pi' pi^T P pi',  value 1/2   (Swamy et al. 2024, arXiv:2401.04056),
solved here as a linear program (scipy's linprog): max v s.t. (P^T pi)_j >= v for all j, pi in the simplex.

Duality gap (exploitability), with both best responses in closed form:
    DG_beta(pi) = max_pi' J(pi', pi) - min_pi' J(pi, pi')
                = beta log E_ref exp(P pi / beta) + beta log E_ref exp(-P^T pi / beta) + 2 beta KL(pi || pi_ref),
    DG_0(pi)    = max_y (P pi)_y - min_y (P^T pi)_y,
zero exactly at the equilibrium.

Fixtures (methods/models-and-loops.md §0): G3, the intransitive game P = 1/2 + M/6 with
M = [[0, a, -b], [-a, 0, c], [b, -c, 0]], (a, b, c) = (1, 2, 3), equilibrium (c, b, a)/(a+b+c) = (1/2, 1/3, 1/6);
rock-paper-scissors (uniform equilibrium).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from preflab.lab.simplex import as_probs, safe_log, softmax


def cyclic_game(a: float = 1.0, b: float = 2.0, c: float = 3.0, scale: float | None = None) -> np.ndarray:
    """P = 1/2 + M/(2 scale) for the antisymmetric cycle 0 > 1 > 2 > 0; scale defaults to max(a, b, c)."""
    M = np.array([[0.0, a, -b], [-a, 0.0, c], [b, -c, 0.0]])
    return 0.5 + M / (2.0 * (scale if scale is not None else max(a, b, c)))


def g3() -> np.ndarray:
    """The G3 fixture: intransitive with the non-uniform equilibrium (1/2, 1/3, 1/6)."""
    return cyclic_game(1.0, 2.0, 3.0)


def rock_paper_scissors() -> np.ndarray:
    """Deterministic rock-paper-scissors: P in {0, 1/2, 1}, uniform equilibrium."""
    return cyclic_game(1.0, 1.0, 1.0)


def check_preference_matrix(P, atol: float = 1e-12) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"P must be a square matrix, got shape {P.shape}.")
    if not np.allclose(P + P.T, 1.0, atol=atol) or np.any(P < -atol) or np.any(P > 1 + atol):
        raise ValueError("P must hold probabilities with P + P^T = 1 (so P_ii = 1/2).")
    return P


def nash(P) -> np.ndarray:
    """Equilibrium of the plain game (the Minimax Winner) by linear programming."""
    P = check_preference_matrix(P)
    K = P.shape[0]
    # variables (pi_1..pi_K, v); minimize -v s.t. v - (P^T pi)_j <= 0, sum pi = 1, pi >= 0
    c = np.zeros(K + 1)
    c[-1] = -1.0
    A_ub = np.hstack([-P.T, np.ones((K, 1))])
    A_eq = np.hstack([np.ones((1, K)), np.zeros((1, 1))])
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(K), A_eq=A_eq, b_eq=[1.0],
                  bounds=[(0, None)] * K + [(None, None)], method="highs")
    if not res.success:  # pragma: no cover - the LP is always feasible and bounded
        raise RuntimeError(f"linprog failed: {res.message}")
    pi = np.clip(res.x[:K], 0.0, None)
    return pi / pi.sum()


def best_response_map(pi, P, beta: float, ref) -> np.ndarray:
    """softmax(log pi_ref + P pi / beta): the regularized best response to pi."""
    return softmax(safe_log(ref) + np.asarray(P) @ pi / beta)


def fixed_point_residual(pi, P, beta: float, ref) -> float:
    """max |pi - softmax(log pi_ref + P pi / beta)|; zero exactly at pi*_beta."""
    return float(np.max(np.abs(pi - best_response_map(pi, P, beta, ref))))


def reg_nash(P, beta: float, ref=None, *, tol: float = 1e-12, max_iter: int = 200_000,
             method: str = "extragradient", step: float | None = None) -> np.ndarray:
    """Equilibrium pi*_beta of the KL-regularized game, with fixed-point residual < tol.

    method "extragradient" iterates the extragradient map on F(theta) = theta - log pi_ref - P softmax(theta)/beta
    (the logit form of the fixed-point equation); "fixed_point" iterates the damped best-response map
    theta <- (1 - s) theta + s (log pi_ref + P pi / beta) with s = beta / (1 + max |P|) by default. Both stop at
    residual 1e-5 and finish with Newton steps on F. The undamped map pi <- softmax(log pi_ref + P pi / beta)
    oscillates for small beta (on G3 at beta = 0.01 its residual stays near 1).
    """
    P = check_preference_matrix(P)
    K = P.shape[0]
    ref = np.full(K, 1.0 / K) if ref is None else as_probs(ref, "ref")
    log_ref = safe_log(ref)
    F = lambda th: th - log_ref - P @ softmax(th) / beta  # noqa: E731
    theta = log_ref.copy()
    s = step if step is not None else min(0.5, beta / (1.0 + np.abs(P).max()))
    for it in range(max_iter):
        if method == "extragradient":
            half = theta - s * F(theta)
            theta = theta - s * F(half)
        elif method == "fixed_point":
            theta = (1 - s) * theta + s * (log_ref + P @ softmax(theta) / beta)
        else:
            raise ValueError(f"method must be extragradient or fixed_point, got {method!r}.")
        theta -= theta.max()
        if it % 25 == 0 and fixed_point_residual(softmax(theta), P, beta, ref) < 1e-5:
            break
    for _ in range(50):  # Newton on F: J = I - P (diag(pi) - pi pi^T) / beta
        pi = softmax(theta)
        if fixed_point_residual(pi, P, beta, ref) < tol:
            break
        J = np.eye(K) - P @ (np.diag(pi) - np.outer(pi, pi)) / beta
        theta = theta - np.linalg.solve(J, F(theta))
    pi = softmax(theta)
    if fixed_point_residual(pi, P, beta, ref) > max(tol, 1e-9):
        raise RuntimeError(f"reg_nash did not converge (residual {fixed_point_residual(pi, P, beta, ref):.2e}).")
    return pi


def dual_gap(pi, P, beta: float = 0.0, ref=None) -> float:
    """Exploitability DG_beta(pi) >= 0 (closed-form best responses; beta = 0 is the plain game)."""
    P = np.asarray(P, dtype=np.float64)
    pi = np.asarray(pi, dtype=np.float64)
    if beta == 0:
        return float(np.max(P @ pi) - np.min(P.T @ pi))
    K = P.shape[0]
    ref = np.full(K, 1.0 / K) if ref is None else np.asarray(ref, dtype=np.float64)
    lse = lambda v: float(np.log(np.sum(ref * np.exp(v - v.max()))) + v.max())  # noqa: E731
    kl = float(np.sum(np.where(pi > 0, pi * (safe_log(pi) - safe_log(ref)), 0.0)))
    return max(0.0, beta * lse(P @ pi / beta) + beta * lse(-(P.T @ pi) / beta) + 2 * beta * kl)


@dataclass(frozen=True)
class PreferenceGame:
    """A preference game (P, pi_ref) with its solutions and the exploitability of a policy."""

    P: np.ndarray
    ref: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "P", check_preference_matrix(self.P))
        object.__setattr__(self, "ref", as_probs(self.ref, "ref"))
        if self.ref.shape != (self.P.shape[0],):
            raise ValueError("ref must have one entry per row of P.")

    @classmethod
    def uniform_ref(cls, P) -> "PreferenceGame":
        P = np.asarray(P, dtype=np.float64)
        return cls(P, np.full(P.shape[0], 1.0 / P.shape[0]))

    def win_rates(self, pi) -> np.ndarray:
        """P(y > pi) for every response y."""
        return self.P @ np.asarray(pi, dtype=np.float64)

    def nash(self) -> np.ndarray:
        return nash(self.P)

    def reg_nash(self, beta: float, **kwargs) -> np.ndarray:
        return reg_nash(self.P, beta, self.ref, **kwargs)

    def dual_gap(self, pi, beta: float = 0.0) -> float:
        return dual_gap(pi, self.P, beta, self.ref)
