"""EM mixture of reward models (MaxMin-RLHF, arXiv:2402.08925): planted user groups must be recovered."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from preflab.errors import ConfigError, PreflabError
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.reward_models.backbone_head import PooledHead, encode_texts
from preflab.reward_models.protocols import fit_full_batch, pair_margins
from preflab.reward_models.maxmin import cluster_purity, fit_reward_mixture


def planted_opposite_groups(seed, users_per_group=10, pairs=20, dim=6, scale=3.0):
    """Two groups with opposite linear preference directions +w / -w; users shuffled; BT-sampled labels."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)
    directions = torch.stack([w / w.norm(), -w / w.norm()])
    num_users = 2 * users_per_group
    group = (torch.arange(num_users) % 2)[torch.randperm(num_users, generator=g)]
    a, b = torch.randn(num_users * pairs, dim, generator=g), torch.randn(num_users * pairs, dim, generator=g)
    user = torch.arange(num_users).repeat_interleave(pairs)
    first_wins = torch.rand(len(user), generator=g) < torch.sigmoid(scale * ((a - b) * directions[group[user]]).sum(1))
    chosen = torch.where(first_wins[:, None], a, b)
    rejected = torch.where(first_wins[:, None], b, a)
    return chosen, rejected, user.tolist(), group, directions


def linear_model(dim):
    return lambda k: nn.Linear(dim, 1, bias=False)


@pytest.mark.parametrize("seed", range(5))
def test_em_recovers_two_opposite_groups_and_their_directions(seed):
    chosen, rejected, users, group, directions = planted_opposite_groups(seed)
    mix = fit_reward_mixture(linear_model(6), chosen, rejected, users, 2, steps=100, seed=seed)
    planted = group[torch.tensor(mix.users)]
    assert cluster_purity(mix.assignments, planted) > 0.9  # measured 1.0 for seeds 0-4
    weights = F.normalize(torch.stack([m.weight.detach().flatten() for m in mix.models]), dim=1)
    cos = weights @ directions.T  # [model, planted group]
    best = max(cos[0, 0] + cos[1, 1], cos[0, 1] + cos[1, 0]) / 2
    assert best > 0.95  # measured >= 0.988
    assert mix.loglik_trace[-1] > mix.loglik_trace[0]


def test_mixture_beats_pooled_model_and_assigns_held_out_users():
    chosen, rejected, users, group, directions = planted_opposite_groups(7)
    mix = fit_reward_mixture(linear_model(6), chosen, rejected, users, 2, steps=100, seed=0)
    torch.manual_seed(0)
    pooled = nn.Linear(6, 1, bias=False)
    fit_full_batch(lambda: -F.logsigmoid(pair_margins(pooled, chosen, rejected)).mean(), pooled.parameters(),
                   steps=200, lr=0.05)
    # held-out users of the same two groups, 10 labelled pairs each to infer the group, 40 to evaluate
    test_c, test_r, test_users, test_group, _ = planted_opposite_groups(7, users_per_group=6, pairs=50)
    test_users = torch.tensor(test_users)
    few = torch.cat([torch.nonzero(test_users == u).flatten()[:10] for u in range(12)])
    rest = torch.cat([torch.nonzero(test_users == u).flatten()[10:] for u in range(12)])
    ids, posterior = mix.assign(test_c[few], test_r[few], test_users[few].tolist())
    assert cluster_purity(posterior.argmax(1), test_group[torch.tensor(ids)]) == 1.0
    group_of = dict(zip(ids, posterior.argmax(1).tolist()))
    route = torch.tensor([group_of[int(u)] for u in test_users[rest]])  # each pair scored by its user's group
    routed = (mix.rewards(test_c[rest]) - mix.rewards(test_r[rest])).gather(0, route[None]).squeeze(0)
    mixture_acc = (routed > 0).float().mean().item()
    with torch.no_grad():
        pooled_acc = (pair_margins(pooled, test_c[rest], test_r[rest]) > 0).float().mean().item()
    # labels are BT samples at scale 3, so the Bayes accuracy is ~0.87; opposite groups cancel in a pooled model
    assert mixture_acc > 0.8 and abs(pooled_acc - 0.5) < 0.1 and mixture_acc - pooled_acc > 0.25


def tabular_mm_setup(seed, majority=16, minority=4, pairs=30):
    """Spec #35 check: 6 items, group 1 rewards 0..5, group 2 reversed; users 16 + 4; BT-sampled pairs."""
    rng = torch.Generator().manual_seed(seed)
    rewards = torch.stack([torch.arange(6.0), torch.arange(6.0).flip(0)])
    group = torch.tensor([0] * majority + [1] * minority)[torch.randperm(majority + minority, generator=rng)]
    user = torch.arange(len(group)).repeat_interleave(pairs)
    i, j = torch.randint(0, 6, (2, len(user)), generator=rng)
    j = torch.where(i == j, (j + 1) % 6, j)
    r = rewards[group[user]]
    margin = (r.gather(1, i[:, None]) - r.gather(1, j[:, None])).squeeze(1)
    i_wins = torch.rand(len(user), generator=rng) < torch.sigmoid(margin)
    eye = torch.eye(6)
    return eye[torch.where(i_wins, i, j)], eye[torch.where(i_wins, j, i)], user.tolist(), group


@pytest.mark.parametrize("seed", range(5))
def test_em_recovers_imbalanced_groups_on_tabular_mm_setup(seed):
    chosen, rejected, users, group = tabular_mm_setup(seed)
    mix = fit_reward_mixture(linear_model(6), chosen, rejected, users, 2, iterations=5, steps=150,
                             weight_decay=1e-3, seed=seed)
    assert cluster_purity(mix.assignments, group[torch.tensor(mix.users)]) == 1.0
    tables = torch.stack([m.weight.detach().flatten() for m in mix.models])
    majority = int(mix.priors.argmax())
    ranks = tables.argsort(1)
    assert torch.equal(ranks[majority], torch.arange(6))           # majority: 0 < 1 < ... < 5
    assert torch.equal(ranks[1 - majority], torch.arange(6).flip(0))  # minority: reversed
    assert abs(mix.priors[majority].item() - 0.8) < 1e-6


def test_soft_em_and_round_robin_init_also_recover():
    chosen, rejected, users, group, _ = planted_opposite_groups(3)
    soft = fit_reward_mixture(linear_model(6), chosen, rejected, users, 2, hard=False, steps=100, seed=1)
    assert cluster_purity(soft.assignments, group[torch.tensor(soft.users)]) > 0.9
    assert torch.allclose(soft.responsibilities.sum(1), torch.ones(20))
    rr = fit_reward_mixture(linear_model(6), chosen, rejected, users, 2, init="round_robin", steps=100)
    assert cluster_purity(rr.assignments, group[torch.tensor(rr.users)]) > 0.9


def test_extra_cluster_is_never_left_empty():
    chosen, rejected, users, group, _ = planted_opposite_groups(0)
    mix = fit_reward_mixture(linear_model(6), chosen, rejected, users, 3, steps=60, seed=0)
    assert (mix.responsibilities.sum(0) >= 1).all()
    # the two big clusters are still pure: purity over three clusters stays high
    assert cluster_purity(mix.assignments, group[torch.tensor(mix.users)]) > 0.9


def test_em_on_tiny_lm_backbone_recovers_cat_vs_dog_groups():
    tok = tiny_tokenizer("bytelevel")
    cat = ["the cat sat on the mat", "a cat jumps over the dog", "the cat ran to the park", "hello cat"]
    dog = ["the dog ran to the park", "a dog sat on the mat", "the lazy dog", "hello dog"]
    rng = random.Random(0)
    group = [u % 2 for u in range(12)]
    rng.shuffle(group)
    chosen, rejected, users = [], [], []
    for u in range(12):
        for _ in range(6):
            c, d = rng.choice(cat), rng.choice(dog)
            w, l = (c, d) if group[u] == 0 else (d, c)
            chosen.append("q: pick one . a: " + w)
            rejected.append("q: pick one . a: " + l)
            users.append(u)

    def make(k):
        return PooledHead(tiny_causal_lm(tok, "llama", hidden_size=16, num_layers=1, num_heads=2, seed=k))

    mix = fit_reward_mixture(make, encode_texts(tok, chosen), encode_texts(tok, rejected), users, 2,
                             iterations=4, steps=30, lr=0.01, seed=0)
    assert cluster_purity(mix.assignments, torch.tensor(group)[torch.tensor(mix.users)]) == 1.0


def test_cluster_purity_values_and_errors():
    assert cluster_purity([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0  # relabelling does not matter
    assert cluster_purity([0, 0, 0, 0], [0, 0, 1, 1]) == 0.5
    assert cluster_purity([0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 0]) == pytest.approx(4 / 6)
    with pytest.raises(PreflabError):
        cluster_purity([0, 1], [0, 1, 1])
    with pytest.raises(ConfigError):
        fit_reward_mixture(linear_model(2), torch.zeros(2, 2), torch.zeros(2, 2), [0, 1], 2, init="kmeans")
    with pytest.raises(PreflabError, match="cannot fill"):
        fit_reward_mixture(linear_model(2), torch.zeros(2, 2), torch.zeros(2, 2), [0, 0], 2)
