"""MaxMin-RLHF in tabular form: an EM mixture of Bradley-Terry reward models over users, and the max-min policy.

Chakraborty et al. 2024, "MaxMin-RLHF: Alignment with Diverse Human Preferences", arXiv:2402.08925.

Data: user u gives counts C_u[i, j] = number of times y_i was preferred to y_j (one prompt, K responses).
- BT fit (models-and-loops B0.1): r = argmin sum_{ij} C[i, j] softplus(-(r_i - r_j)) + l2 |r|^2, centered
  (Newton's method).
- EM over users (a user's labels all come from one latent group k):
      E-step  l_{u,k} = sum_{ij} C_u[i, j] log sigmoid(r_{k,i} - r_{k,j});
              hard: z_u = argmax_k l_{u,k};  soft: gamma_{u,k} = softmax_k(log w_k + l_{u,k});
      M-step  r_k = BT fit on sum_u gamma_{u,k} C_u;  w_k = mean_u gamma_{u,k}.
  Initialization round robin z_u = u mod G (the reference code's); an emptied cluster is re-seeded with the
  worst-fitting user.
- Max-min policy (group-min rule): pi_mm = argmax_pi min_k F_k(pi), F_k(pi) = E_pi r_k - beta KL(pi || pi_ref).
  By minimax duality it is pi_w ∝ pi_ref exp(w.R / beta) at w* = argmin_{w in simplex} beta log E_ref exp(w.R/beta)
  (the inner max in closed form); at beta = 0 it is the LP max_pi min_k E_pi r_k.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog, minimize, minimize_scalar

from preflab.lab.closed_forms import kl_optimum
from preflab.lab.simplex import as_probs, kl, softmax


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def bt_loglik(counts, reward) -> float:
    """sum_{ij} C[i, j] log sigmoid(r_i - r_j)."""
    r = np.asarray(reward, dtype=np.float64)
    return float(np.sum(np.asarray(counts) * _log_sigmoid(r[:, None] - r[None, :])))


def bt_fit(counts, l2: float = 1e-3, tol: float = 1e-12, max_iter: int = 100) -> np.ndarray:
    """Centered BT rewards from a [K, K] matrix of (possibly fractional) win counts, by Newton's method.

    gradient g = -A 1 + A^T 1 + 2 l2 r with A = C * sigmoid(-(r_i - r_j)); Hessian H = diag(S 1) - S + 2 l2 I with
    S = M + M^T, M = C * sigmoid(d) sigmoid(-d); the shift direction 1 (free when l2 = 0) is fixed by centering.
    """
    C = np.asarray(counts, dtype=np.float64)
    K = C.shape[0]
    r = np.zeros(K)

    def loss(r):
        return -np.sum(C * _log_sigmoid(r[:, None] - r[None, :])) + l2 * r @ r

    for _ in range(max_iter):
        d = r[:, None] - r[None, :]
        s_neg = np.exp(_log_sigmoid(-d))
        A = C * s_neg
        g = -A.sum(1) + A.sum(0) + 2 * l2 * r
        if np.max(np.abs(g)) < tol:
            break
        M = C * s_neg * (1.0 - s_neg)
        S = M + M.T
        H = np.diag(S.sum(1)) - S + 2 * l2 * np.eye(K) + np.ones((K, K)) / K
        step = np.linalg.solve(H, g)
        t, f0 = 1.0, loss(r)
        while loss(r - t * step) > f0 - 1e-4 * t * (g @ step) and t > 1e-12:
            t *= 0.5
        r = r - t * step
        r = r - r.mean()
    return r


def sample_user_counts(group_rewards, users_per_group, pairs_per_user: int, seed: int = 0):
    """Planted groups: each user draws `pairs_per_user` uniform pairs and BT labels from its group's rewards.
    Returns (counts [U, K, K], group of each user [U])."""
    R = np.asarray(group_rewards, dtype=np.float64)
    rng = np.random.default_rng(seed)
    K = R.shape[1]
    counts, truth = [], []
    for g, n_users in enumerate(users_per_group):
        for _ in range(n_users):
            C = np.zeros((K, K))
            for _ in range(pairs_per_user):
                i, j = rng.choice(K, size=2, replace=False)
                if rng.random() < 1.0 / (1.0 + np.exp(-(R[g, i] - R[g, j]))):
                    C[i, j] += 1
                else:
                    C[j, i] += 1
            counts.append(C)
            truth.append(g)
    return np.stack(counts), np.array(truth)


@dataclass
class EMResult:
    assignments: np.ndarray            # [U] hard cluster of each user (argmax of the responsibilities)
    responsibilities: np.ndarray       # [U, G]
    rewards: np.ndarray                # [G, K] centered BT rewards per cluster
    weights: np.ndarray                # [G] cluster priors
    loglik: list = field(default_factory=list)       # total log-likelihood after each E-step
    history: list = field(default_factory=list)      # assignments after each iteration


def em_mixture(user_counts, n_groups: int = 2, *, iterations: int = 10, hard: bool = True,
               l2: float = 1e-3) -> EMResult:
    """EM for a mixture of BT reward models over users (round-robin initialization)."""
    C = np.asarray(user_counts, dtype=np.float64)
    U = C.shape[0]
    gamma = np.zeros((U, n_groups))
    gamma[np.arange(U), np.arange(U) % n_groups] = 1.0
    result = EMResult(gamma.argmax(1), gamma, np.zeros((n_groups, C.shape[1])), gamma.mean(0))
    for _ in range(iterations):
        rewards = np.stack([bt_fit(np.tensordot(gamma[:, k], C, axes=1), l2) for k in range(n_groups)])
        weights = np.clip(gamma.mean(0), 1e-12, None)
        ll = np.array([[bt_loglik(C[u], rewards[k]) for k in range(n_groups)] for u in range(U)])
        if hard:
            z = ll.argmax(1)
            for k in range(n_groups):  # re-seed an empty cluster with the worst-fitting user
                if not np.any(z == k):
                    z[np.argmin(ll[np.arange(U), z])] = k
            gamma = np.eye(n_groups)[z]
        else:
            gamma = softmax(np.log(weights) + ll, axis=1)
        result.loglik.append(float(np.sum(np.log(np.sum(weights * np.exp(ll - ll.max(1, keepdims=True)), 1))
                                          + ll.max(1))))
        result.history.append(gamma.argmax(1))
        result.rewards, result.weights = rewards, weights
    result.assignments, result.responsibilities = gamma.argmax(1), gamma
    return result


def purity(assignments, truth) -> float:
    """Agreement with the planted groups, maximized over relabelings of the clusters."""
    a, t = np.asarray(assignments), np.asarray(truth)
    labels = np.unique(np.concatenate([a, t]))
    best = 0.0
    for perm in itertools.permutations(labels):
        mapping = dict(zip(labels, perm))
        best = max(best, float(np.mean(np.array([mapping[x] for x in a]) == t)))
    return best


def group_utilities(pi, group_rewards, ref, beta: float) -> np.ndarray:
    """F_k(pi) = E_pi r_k - beta KL(pi || pi_ref) for every group k."""
    pi = np.asarray(pi, dtype=np.float64)
    return np.asarray(group_rewards) @ pi - beta * kl(pi, ref)


def maxmin_policy(group_rewards, ref, beta: float):
    """(pi_mm, utilities [G], w*) of the group-min (egalitarian) objective."""
    R = np.asarray(group_rewards, dtype=np.float64)
    G, K = R.shape
    ref = as_probs(ref, "ref")
    if beta == 0:  # LP: max v s.t. R pi >= v
        c = np.r_[np.zeros(K), -1.0]
        res = linprog(c, A_ub=np.hstack([-R, np.ones((G, 1))]), b_ub=np.zeros(G),
                      A_eq=np.r_[np.ones(K), 0.0][None], b_eq=[1.0], bounds=[(0, None)] * K + [(None, None)])
        pi = np.clip(res.x[:K], 0, None) / np.clip(res.x[:K], 0, None).sum()
        return pi, R @ pi, None
    dual = lambda w: beta * np.log(np.sum(ref * np.exp((w @ R - np.max(w @ R)) / beta))) + np.max(w @ R)  # noqa
    if G == 2:
        res = minimize_scalar(lambda a: dual(np.array([a, 1 - a])), bounds=(0, 1), method="bounded",
                              options={"xatol": 1e-12})
        w = np.array([res.x, 1 - res.x])
    else:
        res = minimize(lambda v: dual(softmax(v)), np.zeros(G), method="Nelder-Mead",
                       options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000})
        w = softmax(res.x)
    pi = kl_optimum(ref, w @ R, beta)
    return pi, group_utilities(pi, R, ref, beta), w


def pooled_policy(group_rewards, group_weights, ref, beta: float) -> np.ndarray:
    """The single-reward answer: pi_ref exp(sum_k w_k r_k / beta) / Z (what one pooled reward model gives)."""
    return kl_optimum(ref, np.asarray(group_weights) @ np.asarray(group_rewards), beta)


def pointwise_min_policy(group_rewards, ref, beta: float) -> np.ndarray:
    """pi_ref exp(min_k r_k / beta) / Z: the reference code's pointwise-min reward (differs from group-min)."""
    return kl_optimum(ref, np.min(np.asarray(group_rewards), 0), beta)
