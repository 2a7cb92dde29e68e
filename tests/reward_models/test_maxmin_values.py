"""MaxMin aggregation (reward_models/maxmin_aggregate.py) on hand-computed numbers: the z-score's statistics, the group
utilities with a partly failed sample, the tabular objective's KL term and a failed sample's NaN."""
import math

import pytest
import torch

from preflab.errors import PreflabError
from preflab.reward_models.maxmin_aggregate import (MaxMinReward, Standardizer, group_min, maxmin_objective,
                                                 maxmin_rewards)

D = torch.float64


def test_standardizer_is_the_sample_mean_and_std_and_centres_each_group():
    # group 0: 1, 2, 3 -> mean 2, sample std 1 (population std would be sqrt(2/3)); group 1: 10, 10, 16 -> 12, sqrt(12)
    rewards = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 16.0]], dtype=D)
    z = Standardizer.fit(rewards)
    assert z.mean.tolist() == [2.0, 12.0]
    assert z.std.tolist() == pytest.approx([1.0, math.sqrt(12.0)])
    out = z(torch.tensor([[2.0, 4.0], [12.0, 12.0 + math.sqrt(12.0)]], dtype=D))
    assert out.flatten().tolist() == pytest.approx([0.0, 2.0, 0.0, 1.0])


def test_standardizer_needs_two_responses_per_group():
    with pytest.raises(PreflabError, match=r"\[K, N>=2\]"):
        Standardizer.fit(torch.tensor([[1.0], [2.0]]))


def test_a_sample_one_group_failed_on_is_left_out_of_every_groups_utility():
    """Group 1 failed on sample 2 (NaN): U is the mean over samples 0 and 1 for both groups, (1.5, 0.5) -> k_min 1;
    with the sample counted for group 0 alone, U_1 would be NaN and argmin meaningless."""
    rewards = torch.tensor([[1.0, 2.0, 9.0], [0.0, 1.0, float("nan")]], dtype=D)
    worst, k_min, utilities = group_min(rewards)
    assert utilities.tolist() == [1.5, 0.5] and k_min == 1
    assert worst[:2].tolist() == [0.0, 1.0] and worst[2].isnan()


def test_pointwise_rule_takes_each_samples_smallest_reward():
    rewards = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 0.5]])
    assert maxmin_rewards(rewards, "pointwise").tolist() == [0.0, -2.0, 0.5]


def test_tabular_objective_pays_beta_times_kl_of_the_policy_from_the_reference():
    rewards = torch.tensor([[1.0, 0.0], [0.2, 0.6]], dtype=D)
    policy, ref, beta = torch.tensor([0.75, 0.25], dtype=D), torch.tensor([0.5, 0.5], dtype=D), 0.3
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL(pi || ref) = 0.1308; KL(ref || pi) = 0.1438 differs
    # group: min(0.75, 0.3) = 0.3; pointwise: pi . (0.2, 0) = 0.15
    assert float(maxmin_objective(policy, rewards, ref, beta, "group")) == pytest.approx(0.3 - beta * kl)
    assert float(maxmin_objective(policy, rewards, ref, beta, "pointwise")) == pytest.approx(0.15 - beta * kl)


class _Table:
    def __init__(self, table, refuse=()):
        self.table, self.refuse = table, set(refuse)

    def score(self, prompts, responses):
        if any(r in self.refuse for r in responses):
            raise ValueError("cannot score")
        return torch.tensor([self.table[r] for r in responses])


def test_a_sample_a_group_model_cannot_score_is_nan_not_zero():
    mm = MaxMinReward([_Table({"a": 1.0, "b": 3.0, "c": -1.0}, refuse={"c"}), _Table({"a": 2.0, "b": 2.0, "c": 5.0})])
    rewards = mm.group_rewards(["x"] * 3, ["a", "b", "c"])
    assert rewards[0, :2].tolist() == [1.0, 3.0] and rewards[0, 2].isnan() and mm.failed == 1
    out = mm.score(["x"] * 3, ["a", "b", "c"])  # U over a, b: (2, 2) -> k_min 0 (first of the tie)
    assert mm.last_utilities.tolist() == [2.0, 2.0] and out[:2].tolist() == [1.0, 3.0] and out[2].isnan()
