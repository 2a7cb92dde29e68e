"""Closed forms of preflab.lab against the numbers in methods/objectives.md and methods/models-and-loops.md."""
import re

import numpy as np
import pytest

from preflab.lab.closed_forms import (apo_coefficients, bald, best_of_n_law, idealized_ranking_accuracy,
                                      idealized_ranking_accuracy_range, kl_optimum, ranking_accuracy,
                                      ranking_loss_threshold, rso_acceptance, rso_accepted_law)
from preflab.lab.experiments_dpo import RANKING_TOY, ranking_bandit
from preflab.lab.population import solve
from preflab.objectives import get_objective


def test_kl_optimum_matches_the_dpo_fixture():
    np.testing.assert_allclose(kl_optimum([0.5, 0.3, 0.2], [0, 0.1, 0.3], 0.1), [0.0938, 0.1529, 0.7533], atol=5e-5)
    np.testing.assert_allclose(kl_optimum([0.4, 0.3, 0.2, 0.1], [0, 1, 2, 3], 0.5),
                               [0.00742401, 0.04114233, 0.20266865, 0.74876501], atol=1e-8)


def test_idealized_ranking_accuracy_on_the_toy_set():
    s_w, s_l, a = RANKING_TOY.T
    assert ranking_accuracy(s_w, s_l) == 0.5
    assert idealized_ranking_accuracy(s_w, s_l, a, 0.1) == 1.0
    assert idealized_ranking_accuracy(s_w, s_l, a, 1.0) == 0.75
    assert idealized_ranking_accuracy(s_w, s_l, a, 10.0) == 0.5
    assert idealized_ranking_accuracy_range(s_w, s_l, a) == {"min": 0.5, "median": 0.75, "max": 1.0}
    # alpha = 1 is replaced by 1 - 1e-3: finite margin logit(0.999)/beta
    assert idealized_ranking_accuracy([-10.0], [-10.0 + 6.0], [1.0], 1.0) == 1.0
    assert idealized_ranking_accuracy([-10.0], [-10.0 + 7.0], [1.0], 1.0) == 0.0


def test_ranking_threshold_of_thm_4_1():
    np.testing.assert_allclose(ranking_loss_threshold([-10.0, -10.0], [-8.0, 20.0], 0.1),
                               [0.5981388694, 0.0485873516], atol=1e-10)


@pytest.mark.parametrize("beta", [0.1, 1.0, 10.0])
def test_trained_dpo_optimum_reaches_the_idealized_ranking_accuracy(beta):
    pi = solve(get_objective("dpo", beta=beta), ranking_bandit())
    s_w, s_l, a = RANKING_TOY.T
    np.testing.assert_allclose(np.log(pi[:, 0]) - np.log(pi[:, 1]), (s_w - s_l) + np.log(a / (1 - a)) / beta,
                               atol=1e-5)
    assert ranking_accuracy(np.log(pi[:, 0]), np.log(pi[:, 1])) == idealized_ranking_accuracy(s_w, s_l, a, beta)


def test_best_of_n_law():
    np.testing.assert_allclose(best_of_n_law([0.4, 0.3, 0.2, 0.1], [0, 1, 2, 3], 4),
                               [0.0256, 0.2145, 0.4160, 0.3439], atol=1e-12)
    tied = best_of_n_law([0.25, 0.25, 0.5], [1.0, 1.0, 0.0], 2)  # tie group {0, 1} split in proportion to pi
    np.testing.assert_allclose(tied, [0.375, 0.375, 0.25])


def test_best_of_n_law_splits_an_unequal_tie_group_by_pi():
    """A tie group whose members have different pi: enumerate every ordered n-tuple of draws and pick uniformly among
    the drawn samples of the highest reward. {0, 1} tie at reward 1 with pi 0.1 and 0.3: the group's best-of-3 mass
    1 - 0.6^3 = 0.784 splits 1 : 3, not evenly."""
    import itertools

    pi, reward, n = np.array([0.1, 0.3, 0.6]), np.array([1.0, 1.0, 0.0]), 3
    law = np.zeros(3)
    for draws in itertools.product(range(3), repeat=n):
        top = max(reward[d] for d in draws)
        best = [d for d in draws if reward[d] == top]
        for d in best:
            law[d] += np.prod(pi[list(draws)]) / len(best)
    np.testing.assert_allclose(law, [0.196, 0.588, 0.216], atol=1e-12)
    np.testing.assert_allclose(best_of_n_law(pi, reward, n), law, atol=1e-12)


def test_rso_acceptance_and_law():
    np.testing.assert_allclose(rso_acceptance([0, 1, 2], 1.0), [0.1353353, 0.3678794, 1.0], atol=1e-7)
    law = rso_accepted_law([0.5, 0.3, 0.2], [0, 0.5, 1], 0.5)
    np.testing.assert_allclose(law, [0.1790, 0.2919, 0.5291], atol=1e-4)
    np.testing.assert_allclose(law, kl_optimum([0.5, 0.3, 0.2], [0, 0.5, 1], 0.5), atol=1e-15)


def test_apo_coefficients():
    np.testing.assert_allclose(apo_coefficients(0.3, 3), [1.3, 2.69, 4.107], atol=1e-12)
    np.testing.assert_array_equal(apo_coefficients(0.0, 3), [1.0, 2.0, 3.0])


def test_bald():
    confident = np.tile([0.9, 0.1], (4, 1))[:, None, :]
    alternating = np.array([[0.99, 0.01], [0.01, 0.99]] * 2)[:, None, :]
    mixed = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3]])[:, None, :]
    np.testing.assert_allclose(bald(np.concatenate([confident, alternating, mixed], 1)), [0.0, 0.6371, 0.0350],
                               atol=1e-4)


def test_rso_acceptance_is_per_prompt_on_the_last_axis():
    """[X, K] rewards: each prompt's acceptance is relative to its own best response (exp((r - max_x r)/beta))."""
    e = np.exp(1.0)
    np.testing.assert_allclose(rso_acceptance([[0.0, 1.0, 2.0], [5.0, 5.0, 3.0]], 1.0),
                               [[e ** -2, e ** -1, 1.0], [1.0, 1.0, e ** -2]], rtol=1e-12)


def test_idealized_ranking_accuracy_refuses_an_alpha_that_is_no_probability():
    """user-trial-9: alpha = 1.2 was clipped to 1 - eps (R* = 1.0 with no word) and a NaN alpha counted its pair as
    ranked wrongly; both are refused naming the value and its index. 0 and 1 stay valid (the clip of App. C.4)."""
    s_w, s_l = [-10.0, -12.0], [-11.0, -9.0]
    for alpha, shown in ((1.2, "got 1.2 (at index 0)"), ([0.9, float("nan")], "got nan (at index 1)"),
                         ([0.9, -0.1], "got -0.1 (at index 1)"), ([-0.5, 2.0], "got -0.5 (at index 0)")):
        with pytest.raises(ValueError, match=re.escape(f"a probability in [0, 1]; {shown}")):
            idealized_ranking_accuracy(s_w, s_l, alpha, 0.1)
    # the edges: alpha = 1 -> 1 - eps: margins (1, -3) + logit(0.999)/0.1 = 69.1 > 0 for both; alpha = 0: both < 0
    assert idealized_ranking_accuracy(s_w, s_l, 1.0, 0.1) == 1.0
    assert idealized_ranking_accuracy(s_w, s_l, 0.0, 0.1) == 0.0


def test_lab_ranking_accuracies_refuse_pairs_of_unequal_length():
    """user-trial-9: 4 chosen and 3 rejected log-probs gave torch's 'The size of tensor a (4) must match ...'."""
    with pytest.raises(ValueError, match=re.escape("one value per pair each; got shapes (4,) and (3,)")):
        ranking_accuracy([-1.0, -2.0, -3.0, -4.0], [-1.0, -2.0, -3.0])
    with pytest.raises(ValueError, match=re.escape("one value per pair each; got shapes (4,) and (3,)")):
        idealized_ranking_accuracy([-1.0, -2.0, -3.0, -4.0], [-1.0, -2.0, -3.0], 1.0, 0.1)
    with pytest.raises(ValueError, match=re.escape("alpha must be one number or one per pair (shape (2,)); got "
                                                   "shape (3,)")):
        idealized_ranking_accuracy([-1.0, -2.0], [-2.0, -1.0], [0.9, 0.8, 0.7], 0.1)


def test_lab_ranking_accuracy_refuses_no_pairs():
    """user-trial-9 leftover: ranking_accuracy([], []) returned nan (a mean over no pairs) without a word."""
    with pytest.raises(ValueError, match=re.escape("ranking_accuracy needs at least one pair")):
        ranking_accuracy([], [])
    assert ranking_accuracy([-1.0, -3.0], [-2.0, -1.0]) == 0.5  # the non-empty case is unchanged
