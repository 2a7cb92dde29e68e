"""Max-min aggregation (MaxMin-RLHF, arXiv:2402.08925): closed-form values from spec #35."""
import pytest
import torch

from preflab.errors import ConfigError
from preflab.reward_models.protocols import RewardModel
from preflab.reward_models.maxmin_aggregate import (MaxMinReward, Standardizer, group_min, maxmin_objective,
                                                 maxmin_rewards, pointwise_min)

D = torch.float64


def solve(rewards, ref, beta, rule, steps=800):
    """Adam with a 1/t learning-rate decay on softmax logits (the max-min objective has a kink at the optimum)."""
    logits = torch.zeros(len(ref), dtype=D, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t / 100))
    for _ in range(steps):
        opt.zero_grad()
        (-maxmin_objective(torch.softmax(logits, 0), rewards, ref, beta, rule)).backward()
        opt.step()
        sched.step()
    return torch.softmax(logits, 0).detach()


def test_maxmin_protects_the_minority_where_a_pooled_reward_does_not():
    rewards = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.6]], dtype=D)  # MM bandit
    assert int(pointwise_min(rewards).argmax()) == 2  # utilities (0.6, 0.6)
    pooled = 0.8 * rewards[0] + 0.2 * rewards[1]  # 16 vs 4 users
    assert int(pooled.argmax()) == 0 and rewards[1, 0] == 0.0  # minority utility 0
    policy = solve(rewards, torch.full((3,), 1 / 3, dtype=D), 0.05, "group")
    # stationarity: pi = (a, a, 1 - 2a) with a / (1 - 2a) = exp(-0.1 / beta)  ->  a = 0.10651
    a = torch.exp(torch.tensor(-2.0, dtype=D)) / (1 + 2 * torch.exp(torch.tensor(-2.0, dtype=D)))
    assert torch.allclose(policy, torch.stack([a, a, 1 - 2 * a]), atol=1e-3)
    assert torch.allclose(rewards @ policy, torch.full((2,), 0.6 - 0.2 * a.item(), dtype=D), atol=1e-3)  # 0.5787


def test_group_min_and_pointwise_min_are_different_rules():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    ref = torch.tensor([0.8, 0.2], dtype=D)
    group_opt = solve(rewards, ref, 0.05, "group")
    pointwise_opt = solve(rewards, ref, 0.05, "pointwise")
    assert torch.allclose(group_opt, torch.tensor([0.5, 0.5], dtype=D), atol=5e-3)  # the kink
    assert torch.allclose(pointwise_opt, ref, atol=1e-4)  # min_k r_k = 0 everywhere: stay at pi_ref
    # per-sample rewards on a batch drawn from pi_ref: arms (0, 0, 0, 0, 1)
    batch = rewards[:, [0, 0, 0, 0, 1]]
    worst, k_min, utilities = group_min(batch)
    assert k_min == 1 and torch.allclose(utilities, torch.tensor([0.8, 0.2], dtype=D))
    assert torch.equal(maxmin_rewards(batch, "group"), torch.tensor([0, 0, 0, 0, 1.0], dtype=D))
    assert torch.equal(maxmin_rewards(batch, "pointwise"), torch.zeros(5, dtype=D))
    with pytest.raises(ConfigError):
        maxmin_rewards(batch, "mean")


class TableReward:
    """A stub RewardModel: reward of response i is table[i] (prompts ignored)."""

    def __init__(self, table):
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def score(self, prompts, responses):
        return self.table[torch.as_tensor(responses)]


def test_standardisation_makes_the_min_scale_free():
    g1 = TableReward([1.0, 0.0, 0.6])
    g2_raw = [0.0, 1.0, 0.6]
    g2_scaled = TableReward([100 * r + 50 for r in g2_raw])  # same preferences, another scale
    reference = ([None] * 3, [0, 1, 2])
    plain = MaxMinReward([g1, g2_scaled], rule="pointwise")
    assert isinstance(plain, RewardModel)
    assert int(plain.score(*reference).argmax()) == 0  # the unscaled min lets group 1's scale decide: wrong arm
    fixed = MaxMinReward([g1, g2_scaled], rule="pointwise")
    fixed.fit_standardizer(*reference)
    same = MaxMinReward([g1, TableReward(g2_raw)], rule="pointwise")
    same.fit_standardizer(*reference)
    assert torch.allclose(fixed.score(*reference), same.score(*reference), atol=1e-5)
    assert int(fixed.score(*reference).argmax()) == 2
    z = Standardizer.fit(torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(z(torch.tensor([[1.0, 2.0, 3.0]])), torch.tensor([[-1.0, 0.0, 1.0]]))


def test_maxmin_reward_group_rule_records_the_worst_group():
    model = MaxMinReward([TableReward([1.0, 0.0]), TableReward([0.0, 1.0])], rule="group")
    out = model.score([None] * 5, [0, 0, 0, 0, 1])
    assert model.last_group == 1 and torch.allclose(model.last_utilities, torch.tensor([0.8, 0.2]))
    assert torch.equal(out, torch.tensor([0.0, 0, 0, 0, 1]))
