"""PRO prompt-aware weight adapter (arXiv:2511.10656): spec #12 closed forms and recovery of planted weights."""
import pytest
import torch

from preflab.errors import ConfigError, PreflabError
from preflab.reward_models.protocols import RewardModel
from preflab.reward_models.orchestrator import (OrchestratedReward, PreferenceWeightAdapter, combined_reward,
                                             fit_adapter, kl_loss, pro_targets, reward_stats)


def test_targets_match_the_spec_values():
    rewards = torch.tensor([[0.2, 1.5, -0.3], [1.0, -0.5, 0.1]], dtype=torch.float64)
    mean, std = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64)
    t1 = torch.tensor([[0.2721, 0.6056, 0.1223], [0.6310, 0.0854, 0.2835]], dtype=torch.float64)
    t05 = torch.tensor([[0.1625, 0.8047, 0.0328], [0.8195, 0.0150, 0.1655]], dtype=torch.float64)
    assert torch.allclose(pro_targets(rewards, mean, std, 1.0), t1, atol=1e-4)
    assert torch.allclose(pro_targets(rewards, mean, std, 0.5), t05, atol=1e-4)
    with pytest.raises(ConfigError):
        pro_targets(rewards, mean, std, 0.0)


def test_kl_adapter_learns_deterministic_cluster_targets():
    features = torch.eye(2).repeat(50, 1)  # two prompt clusters, one-hot features
    targets = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]).repeat(50, 1)
    torch.manual_seed(0)
    adapter = PreferenceWeightAdapter(2, 3)
    fit_adapter(adapter, features, chosen_rewards=torch.zeros(100, 3), targets=targets, loss="kl", steps=300, lr=0.1)
    assert kl_loss(adapter, features, targets).item() < 1e-4


def test_default_fit_is_the_papers_kl_on_normalised_preferred_rewards():
    """fit_adapter's default is PRO's form: targets from the z-scored rewards of the preferred responses only.
    Two prompt clusters, 2 rows each; K = 2 rewards of the preferred response: cluster A (1, 0), (3, 0); cluster B
    (0, 2), (0, 2). Per-objective mean (1, 1), population std (sqrt 1.5, 1) -> z-scores A: (0, -1), (2/s, -1);
    B: (-1/s, 1) twice, s = sqrt 1.5. A one-hot linear adapter reaches each cluster's mean target (the KL minimiser)."""
    features = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float64)
    chosen = torch.tensor([[1.0, 0], [3, 0], [0, 2], [0, 2]], dtype=torch.float64)
    mean, std = reward_stats(chosen)
    torch.testing.assert_close(mean, torch.tensor([1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(std, torch.tensor([1.5 ** 0.5, 1.0], dtype=torch.float64))
    s1 = 1.5 ** 0.5
    z = torch.tensor([[0.0, -1], [2 / s1, -1], [-1 / s1, 1], [-1 / s1, 1]], dtype=torch.float64)
    w = torch.softmax(z, -1)
    want = torch.stack([w[:2].mean(0), w[2:].mean(0)])  # A: (0.8320, 0.1680), B: (0.1399, 0.8601)
    torch.manual_seed(0)
    adapter = PreferenceWeightAdapter(2, 2).double()
    fit_adapter(adapter, features, chosen_rewards=chosen, steps=600, lr=0.1)
    with torch.no_grad():
        torch.testing.assert_close(adapter(torch.eye(2, dtype=torch.float64)), want, atol=2e-3, rtol=0)
    assert want[0, 0].item() == pytest.approx(0.83201, abs=1e-4) and want[1, 1].item() == pytest.approx(0.86015, abs=1e-4)
    with pytest.raises(ConfigError, match="loss='bt'"):  # rejected rewards are not PRO's input: refused, not ignored
        fit_adapter(adapter, features, chosen_rewards=chosen, rejected_rewards=chosen.flip(0))
    with pytest.raises(PreflabError, match="same reward"):
        fit_adapter(adapter, features, chosen_rewards=torch.ones(4, 2, dtype=torch.float64))


def test_constant_adapter_reduces_to_fixed_weight_morlhf():
    adapter = PreferenceWeightAdapter(5, 3)
    with torch.no_grad():
        adapter.net.weight.zero_()
        adapter.net.bias.copy_(torch.log(torch.tensor([0.5, 0.3, 0.2])))
    rewards = torch.randn(7, 3)
    fixed = rewards @ torch.tensor([0.5, 0.3, 0.2])
    assert torch.allclose(combined_reward(adapter(torch.randn(7, 5)), rewards), fixed, atol=1e-6)


def test_per_prompt_weights_beat_any_fixed_weights_on_the_two_type_toy():
    """Two prompt types, two responses with reward vectors e1, e2; type A prefers e1, type B e2. The adapter trained
    on those labels picks each type's best response (total value 2); trained without prompt features it learns one
    fixed weighting, and any fixed weighting picks the same response for both types (total value 1)."""
    arms = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.eye(2).repeat(20, 1)  # one-hot prompt type, A then B
    chosen = torch.where(features[:, :1] > 0, arms[0], arms[1])
    rejected = torch.where(features[:, :1] > 0, arms[1], arms[0])
    torch.manual_seed(0)
    adapter, fixed = PreferenceWeightAdapter(2, 2), PreferenceWeightAdapter(2, 2)
    fit_adapter(adapter, features, chosen_rewards=chosen, rejected_rewards=rejected, loss="bt", steps=200,
                lr=0.1)
    fit_adapter(fixed, torch.zeros_like(features), chosen_rewards=chosen, rejected_rewards=rejected, loss="bt", steps=200,
                lr=0.1)

    def value(weights):  # each type gets the response its weights score highest; value = that type's true reward
        return sum(arms[int(combined_reward(weights[t].expand(2, 2), arms).argmax())][t].item() for t in (0, 1))
    with torch.no_grad():
        w = adapter(torch.eye(2))
        w_fixed = fixed(torch.zeros(2, 2))
    assert w[0, 0] > 0.9 and w[1, 1] > 0.9  # A weights reward 1, B weights reward 2
    assert value(w) == 2.0 and value(w_fixed) == 1.0
    torch.testing.assert_close(w_fixed[0], w_fixed[1])  # no features: one weighting for both types


def planted(seed, n, A, b, reward_scale=2.0):
    """Prompt features x ~ N(0, I); planted weights w*(x) = softmax(A x + b) over K = 3 reward models; K rewards
    per response ~ N(0, reward_scale^2); labels sampled from sigmoid(w*(x) . (r(y_a) - r(y_b)))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, A.shape[1], generator=g)
    w = torch.softmax(x @ A.T + b, -1)
    ra, rb = reward_scale * torch.randn(n, 3, generator=g), reward_scale * torch.randn(n, 3, generator=g)
    a_wins = torch.rand(n, generator=g) < torch.sigmoid(combined_reward(w, ra - rb))
    return x, w, torch.where(a_wins[:, None], ra, rb), torch.where(a_wins[:, None], rb, ra)


def test_bt_trained_adapter_recovers_planted_prompt_dependent_weights():
    g = torch.Generator().manual_seed(123)
    A, b = 1.5 * torch.randn(3, 4, generator=g), 0.5 * torch.randn(3, generator=g)
    x, _, chosen, rejected = planted(0, 2000, A, b)
    torch.manual_seed(0)
    adapter, fixed = PreferenceWeightAdapter(4, 3), PreferenceWeightAdapter(4, 3)
    fit_adapter(adapter, x, chosen_rewards=chosen, rejected_rewards=rejected, loss="bt", steps=400)
    fit_adapter(fixed, torch.zeros_like(x), chosen_rewards=chosen, rejected_rewards=rejected, loss="bt", steps=400)
    tx, tw, tc, tr = planted(1, 2000, A, b)  # held-out prompts
    with torch.no_grad():
        l1 = (adapter(tx) - tw).abs().sum(1).mean().item()  # measured 0.060
        l1_fixed = (fixed(torch.zeros_like(tx)) - tw).abs().sum(1).mean().item()  # measured 0.655
        planted_pref = combined_reward(tw, tc - tr) > 0
        agree = ((combined_reward(adapter(tx), tc - tr) > 0) == planted_pref).float().mean().item()  # 0.984
        fixed_pref = combined_reward(fixed(torch.zeros_like(tx)), tc - tr) > 0
        agree_fixed = (fixed_pref == planted_pref).float().mean().item()
    assert l1 < 0.15 and l1_fixed > 0.5
    assert agree > 0.95 and agree - agree_fixed > 0.1  # fixed weights: measured 0.834


class LinearReward:
    def __init__(self, k):
        self.k = k

    def score(self, prompts, responses):
        return torch.as_tensor(responses, dtype=torch.float32)[:, self.k]


def test_orchestrated_reward_is_a_reward_model_with_per_prompt_weights():
    adapter = PreferenceWeightAdapter(2, 2)
    with torch.no_grad():
        adapter.net.weight.copy_(torch.tensor([[5.0, 0.0], [0.0, 5.0]]))
        adapter.net.bias.zero_()
    featurize = lambda prompts: torch.tensor([[1.0, 0.0] if p == "A" else [0.0, 1.0] for p in prompts])  # noqa: E731
    reward = OrchestratedReward([LinearReward(0), LinearReward(1)], adapter, featurize)
    assert isinstance(reward, RewardModel)
    responses = [[1.0, 0.0], [0.0, 1.0]]
    scores_a, scores_b = reward.score(["A", "A"], responses), reward.score(["B", "B"], responses)
    assert scores_a.argmax() == 0 and scores_b.argmax() == 1
    w = torch.softmax(torch.tensor([5.0, 0.0]), 0)
    assert torch.allclose(scores_a, torch.stack([w[0], w[1]]), atol=1e-6)
