"""MaxMin-RLHF: BT fits, EM over planted user groups, and the max-min policy."""
import numpy as np
import pytest

from preflab.lab.maxmin import (bt_fit, em_mixture, group_utilities, maxmin_policy, pointwise_min_policy,
                                pooled_policy, purity, sample_user_counts)
from preflab.lab.closed_forms import kl_optimum

GROUPS = np.array([np.arange(6.0), np.arange(6.0)[::-1]])  # MM: majority ranks 0..5, minority reversed


def test_bt_fit_recovers_rewards_up_to_a_constant_and_is_flat_on_a_cycle():
    r = np.array([0.0, 1.0, 2.0, 3.0])
    soft = 1 / (1 + np.exp(-(r[:, None] - r[None, :])))
    np.fill_diagonal(soft, 0.0)
    np.testing.assert_allclose(bt_fit(soft, l2=0.0), [-1.5, -0.5, 0.5, 1.5], atol=1e-7)
    cycle = np.zeros((3, 3))
    cycle[0, 1] = cycle[1, 2] = cycle[2, 0] = 1.0
    np.testing.assert_allclose(bt_fit(cycle, l2=0.0), 0.0, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_em_separates_the_planted_groups(seed):
    counts, truth = sample_user_counts(GROUPS, [16, 4], 30, seed=seed)
    fit = em_mixture(counts, 2, iterations=5)
    assert purity(fit.assignments, truth) == 1.0
    minority = fit.rewards[np.bincount(fit.assignments).argmin()]
    assert minority[0] > minority[-1]                      # the minority's reversed ordering is recovered
    assert all(b >= a - 1e-9 for a, b in zip(fit.loglik, fit.loglik[1:]))


def test_maxmin_policy_closed_form_values():
    R, ref = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.6]]), np.full(3, 1 / 3)
    pi, utilities, w = maxmin_policy(R, ref, 0.05)
    np.testing.assert_allclose(pi, [0.1065, 0.1065, 0.787], atol=1e-3)
    np.testing.assert_allclose(R @ pi, [0.579, 0.579], atol=1e-3)
    assert utilities[0] == pytest.approx(utilities[1], abs=1e-8)
    np.testing.assert_allclose(maxmin_policy(R, ref, 0.0)[0], [0, 0, 1], atol=1e-9)
    pooled = pooled_policy(R, [0.8, 0.2], ref, 0.05)
    assert (R @ pooled)[1] < 0.05                         # one pooled reward serves the majority only
    # group-min differs from the pointwise min of the rewards
    R2, ref2 = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0.8, 0.2])
    np.testing.assert_allclose(maxmin_policy(R2, ref2, 0.05)[0], [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(pointwise_min_policy(R2, ref2, 0.05), ref2, atol=1e-12)
    assert group_utilities(ref2, R2, ref2, 0.05)[1] == pytest.approx(0.2)


def test_maxmin_on_em_groups_raises_the_minority_reward():
    counts, truth = sample_user_counts(GROUPS, [16, 4], 30, seed=0)
    fit = em_mixture(counts, 2, iterations=5)
    ref, beta = np.full(6, 1 / 6), 1.0
    pooled = kl_optimum(ref, bt_fit(counts.sum(0)), beta)
    mm, _, _ = maxmin_policy(fit.rewards, ref, beta)
    minority_pooled, minority_mm = (GROUPS @ pooled)[1], (GROUPS @ mm)[1]
    assert minority_mm > minority_pooled + 0.5
    assert min(GROUPS @ mm) > min(GROUPS @ pooled)


C3 = np.array([[0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [1.0, 1.0, 0.0]])  # C[i, j]: times y_i beat y_j


def test_one_soft_em_round_by_hand_weighs_the_clusters_by_their_priors():
    """Soft EM from the round-robin start z_u = u mod 2 on three users: r_k = BT fit of sum_u gamma_uk C_u,
    w = (2/3, 1/3), gamma_u = softmax_k(log w_k + l_{u,k}) (the prior matters: the clusters are unequal)."""
    from preflab.lab.maxmin import bt_loglik

    counts = np.stack([C3, C3.T, 2 * C3])
    fit = em_mixture(counts, 2, iterations=1, hard=False)
    r = [bt_fit(counts[0] + counts[2]), bt_fit(counts[1])]
    np.testing.assert_allclose(fit.rewards, r, atol=1e-12)
    np.testing.assert_allclose(fit.weights, [2 / 3, 1 / 3], atol=1e-12)
    logit = np.log([2 / 3, 1 / 3]) + np.array([[bt_loglik(c, r[k]) for k in range(2)] for c in counts])
    expected = np.exp(logit - logit.max(1, keepdims=True))
    np.testing.assert_allclose(fit.responsibilities, expected / expected.sum(1, keepdims=True), atol=1e-12)


def test_an_emptied_cluster_is_reseeded_with_the_worst_fitting_user():
    """Users with the same tastes and 1, 2, 3 times the labels: after the round-robin start every user fits
    cluster 0 (trained on 4x the counts) better, so cluster 1 empties and takes the user whose log-likelihood under
    its cluster is lowest: the one with the most labels (user 2), not user 0."""
    counts = np.stack([C3, 2 * C3, 3 * C3])
    fit = em_mixture(counts, 2, iterations=1, hard=True)
    assert fit.history[0].tolist() == [0, 0, 1]


def test_group_utilities_subtract_beta_kl_of_the_policy_from_the_reference():
    """F_k(pi) = E_pi r_k - beta KL(pi || pi_ref), by hand at pi = (1/2, 1/2), pi_ref = (0.8, 0.2)."""
    R, ref, pi = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([0.8, 0.2]), np.array([0.5, 0.5])
    kl = 0.5 * np.log(0.5 / 0.8) + 0.5 * np.log(0.5 / 0.2)
    np.testing.assert_allclose(group_utilities(pi, R, ref, 0.1), [0.5 - 0.1 * kl, 1.0 - 0.1 * kl], atol=1e-12)
