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
