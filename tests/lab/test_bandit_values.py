"""The lab's bandit (preflab.lab.bandit) and population loss (preflab.lab.population) on hand-computed numbers:
BT preferences, pair and prompt distributions, label noise, on-policy pairs, the loss's normalisation and
regularizer, the reference start and the trajectory's records."""
import math

import numpy as np
import pytest
import torch

from preflab.lab.bandit import Bandit, dpo_fixture
from preflab.lab.population import SoftmaxPolicy, Trajectory, population_loss, population_train
from preflab.objectives import get_objective

D = torch.float64


def test_bt_preference_favours_the_higher_reward():
    env = Bandit.from_rewards([0.5, 0.5], [0.0, 1.0])
    assert float(env.pref[0, 1, 0]) == pytest.approx(1 / (1 + math.exp(-1.0)))  # P(y1 > y0) = sigmoid(1) = 0.731
    assert float(env.pref[0, 0, 1]) == pytest.approx(1 / (1 + math.exp(1.0)))


def test_pair_distribution_is_symmetric_without_self_pairs_and_sums_to_one_over_unordered_pairs():
    env = dpo_fixture()
    one_sided = env.with_pairs([[0.0, 2.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # upper triangle only
    # symmetrised (mu + mu^T) / 2 and normalised over i < j: {0,1}: 0.5, {0,2}: 0.25, {1,2}: 0.25
    expected = torch.tensor([[0.0, 0.5, 0.25], [0.5, 0.0, 0.25], [0.25, 0.25, 0.0]], dtype=D)
    torch.testing.assert_close(one_sided.pair_dist[0], expected)
    full = env.with_pairs(torch.ones(3, 3, dtype=D))  # the diagonal given is dropped: each pair 1/3
    torch.testing.assert_close(full.pair_dist[0], (1 - torch.eye(3, dtype=D)) / 3)
    assert float(full.ordered_pair_weights().sum()) == pytest.approx(1.0)


def test_a_given_prompt_distribution_is_normalised():
    env = Bandit.from_rewards([[0.5, 0.5], [0.5, 0.5]], [[0.0, 1.0], [1.0, 0.0]], prompt_dist=[1.0, 3.0])
    assert env.prompt_dist.tolist() == [0.25, 0.75]
    assert float(env.ordered_pair_weights().sum()) == pytest.approx(1.0)


def test_label_noise_flips_with_probability_eps_and_drops_the_reward():
    env = Bandit.from_rewards([0.5, 0.5], [0.0, 1.0])
    p = float(env.pref[0, 1, 0])
    noisy = env.with_label_noise(0.2)
    assert float(noisy.pref[0, 1, 0]) == pytest.approx(0.8 * p + 0.2 * (1 - p))  # 0.6848, still above 1/2
    assert noisy.reward is None
    with pytest.raises(ValueError, match="no reward"):
        noisy.optimum(0.1)


def test_a_reference_with_a_negative_probability_is_refused():
    with pytest.raises(ValueError, match="distribution"):
        Bandit.from_rewards([1.2, -0.2], [0.0, 1.0])


def test_on_policy_pairs_are_drawn_with_the_product_of_the_policy():
    env = dpo_fixture().on_policy_pairs([0.5, 0.3, 0.2])
    # pi_i pi_j over i < j: 0.15, 0.10, 0.06 (sum 0.31)
    assert float(env.pair_dist[0, 0, 1]) == pytest.approx(0.15 / 0.31)
    assert float(env.pair_dist[0, 1, 2]) == pytest.approx(0.06 / 0.31)


def test_population_loss_is_the_weighted_mean_plus_the_regularizer_once():
    env = dpo_fixture()
    model, obj = SoftmaxPolicy(env.ref), get_objective("dpo", beta=0.1)
    params = torch.tensor([[0.3, -0.2, 0.1]], dtype=D)
    w = env.ordered_pair_weights()
    base = float(population_loss(obj, model, params, w))
    assert float(population_loss(obj, model, params, 4.0 * w)) == pytest.approx(base)  # unnormalised weights
    reg = float(population_loss(obj, model, params, w, regularizer=lambda logp: logp.exp()[0, 0]))
    assert reg == pytest.approx(base + float(torch.softmax(params, -1)[0, 0]))


def test_population_training_starts_at_the_reference_and_records_its_last_gd_step():
    env = dpo_fixture()
    traj = population_train(get_objective("dpo", beta=0.1), env, optimizer="gd", lr=0.5, steps=5, record_every=2)
    np.testing.assert_allclose(traj.policies[0], env.ref.numpy(), atol=1e-12)
    assert traj.steps == [0, 2, 4, 5]


def test_trajectory_distance_is_the_largest_coordinate_gap():
    traj = Trajectory()
    traj.record(0, np.array([[0.5, 0.3, 0.2]]), 1.0)
    traj.record(1, np.array([[0.2, 0.3, 0.5]]), 0.5)
    assert traj.distances([[0.2, 0.4, 0.4]]).tolist() == pytest.approx([0.3, 0.1])
