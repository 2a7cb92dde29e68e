"""RSO's statistical rejection sampler (Liu et al., 2023, arXiv:2309.06657, Algorithm 1) on a known categorical."""
import math

import pytest
import torch
from scipy.stats import chisquare

from preflab.errors import ConfigError
from preflab.loops.pair_builders import build_pairs
from preflab.loops.rso import acceptance_probs, rank_pairs, rso_pairs, rso_sample

PI_SFT = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
REWARD = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)


def test_acceptance_probabilities_fixture():
    # rewards [0, 1, 2], beta 1: exp(r - max r)
    torch.testing.assert_close(acceptance_probs([0.0, 1.0, 2.0], 1.0),
                               torch.tensor([math.exp(-2), math.exp(-1), 1.0], dtype=torch.float64))
    assert [round(x, 4) for x in acceptance_probs([0.0, 1.0, 2.0], 1.0).tolist()] == [0.1353, 0.3679, 1.0]
    with pytest.raises(ConfigError, match="beta"):
        acceptance_probs([0.0], 0.0)


def test_accepted_law_is_pi_star():
    """pi_sft = (.5, .3, .2), r = (0, .5, 1), beta = .5: pi* = pi_sft e^(r/beta) / Z = (.1790, .2919, .5291).
    20k runs, each over 64 candidates from pi_sft, accepting one sample: chi-square against pi*."""
    target = PI_SFT * torch.exp(REWARD / 0.5)
    target = target / target.sum()
    torch.testing.assert_close(target, torch.tensor([0.1790, 0.2919, 0.5291], dtype=torch.float64), atol=5e-5,
                               rtol=0)
    g = torch.Generator().manual_seed(0)
    runs = 20_000
    arms = torch.multinomial(PI_SFT, 64 * runs, replacement=True, generator=g).view(runs, 64)
    counts = torch.zeros(3, dtype=torch.float64)
    for row in arms:
        counts[row[rso_sample(REWARD[row], 0.5, 1, g).accepted[0]]] += 1
    freq = counts / runs
    # measured (seed 0): (0.1812, 0.2883, 0.5305)
    assert (freq - target).abs().max() < 0.01, freq
    assert chisquare(counts.numpy(), (target * runs).numpy()).pvalue > 1e-3
    # and clearly not pi_sft
    assert (freq - PI_SFT).abs().max() > 0.3


def test_several_accepted_samples_follow_pi_star_when_candidates_are_many():
    """m = 4 of N = 128 candidates (without replacement): the pooled law stays within 0.02 of pi*."""
    target = PI_SFT * torch.exp(REWARD / 0.5)
    target = target / target.sum()
    g = torch.Generator().manual_seed(1)
    arms = torch.multinomial(PI_SFT, 128 * 3000, replacement=True, generator=g).view(3000, 128)
    counts = torch.zeros(3, dtype=torch.float64)
    for row in arms:
        sample = rso_sample(REWARD[row], 0.5, 4, g)
        assert len(sample.accepted) == 4 and len(set(sample.accepted)) == 4
        for a in sample.accepted:
            counts[row[a]] += 1
    assert ((counts / counts.sum()) - target).abs().max() < 0.02


def test_rounds_use_the_max_of_the_remaining_candidates():
    """Rewards (0, 1, 2), beta 1, m = 2, scanned in order. Round 1 accepts 0, 1, 2 with e^-2, e^-1, 1 (stopping at
    the second acceptance); if only 2 was accepted, round 2 uses M = 1 (the remaining max): 0 w.p. e^-1, else 1.
        P{0,1} = e^-3
        P{0,2} = e^-2 (1 - e^-1) + (1 - e^-2)(1 - e^-1) e^-1
        P{1,2} = (1 - e^-2) e^-1 + (1 - e^-2)(1 - e^-1)^2
    Keeping M = 2 in round 2 would give P{0,2} lower by 0.038: the test separates the two rules."""
    e = math.exp(-1)
    exact = {(0, 1): e ** 3, (0, 2): e ** 2 * (1 - e) + (1 - e ** 2) * (1 - e) * e,
             (1, 2): (1 - e ** 2) * e + (1 - e ** 2) * (1 - e) ** 2}
    assert math.isclose(sum(exact.values()), 1.0, rel_tol=1e-12)
    g = torch.Generator().manual_seed(0)
    runs = 20_000
    counts = {k: 0 for k in exact}
    rounds = 0
    for _ in range(runs):
        sample = rso_sample([0.0, 1.0, 2.0], 1.0, 2, g)
        counts[tuple(sorted(sample.accepted))] += 1
        rounds += sample.rounds
    for key, p in exact.items():
        assert abs(counts[key] / runs - p) < 0.012, (key, counts[key] / runs, p)   # 3.5 sd
    # P(second round) = (1 - e^-2)(1 - e^-1) = 0.5466
    assert abs((rounds - runs) / runs - (1 - e ** 2) * (1 - e)) < 0.015


def test_beta_limits_and_first_round():
    r = torch.tensor([0.3, -1.0, 2.0, 2.0, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    # beta -> infinity: everything accepted in the first round, in order (pi_sft itself)
    assert rso_sample(r, 1e12, 5, g).accepted == [0, 1, 2, 3, 4]
    # beta -> 0: only the maximisers are ever accepted
    for _ in range(20):
        assert rso_sample(r, 1e-9, 1, g).accepted[0] in (2, 3)
    # max_rounds = 1 measures the first-round rule: frequencies match exp((r - M) / beta)
    hits = torch.zeros(5, dtype=torch.float64)
    for _ in range(4000):
        for i in rso_sample(r, 1.0, 5, g, max_rounds=1).accepted:
            hits[i] += 1
    assert (hits / 4000 - acceptance_probs(r, 1.0)).abs().max() < 0.03


def test_pairs_are_labelled_by_reward_and_ties_dropped():
    labelled = rank_pairs([3, 0, 2, 1, 4], [0.1, 0.9, 0.5, 0.7, 0.5], pairing="consecutive")
    assert labelled.pairs == [(3, 0), (1, 2)] and labelled.ties_dropped == 0   # 0.7 > 0.1, 0.9 > 0.5
    all_pairs = rank_pairs([2, 4, 1], [0.1, 0.9, 0.5, 0.7, 0.5], pairing="all")
    assert all_pairs.pairs == [(1, 2), (1, 4)] and all_pairs.ties_dropped == 1     # 2 and 4 tie at 0.5
    out = rso_pairs([0.0, 1.0, 2.0, 3.0], 1e12, 4, torch.Generator().manual_seed(0), pairing="consecutive")
    assert out.pairs == [(1, 0), (3, 2)]
    with pytest.raises(ConfigError, match="pairing"):
        rank_pairs([0, 1], [0.0, 1.0], pairing="tournament")


def _matching(pairs):
    return frozenset(frozenset(p) for p in pairs)


def test_first_round_pairs_are_a_uniform_random_matching_as_trl_first_round_ranking():
    """huggingface/trl@962e0fb examples/research_projects/rso/rso.py::first_round_ranking picks the accepted samples
    two at a time uniformly without replacement: each of the 3 matchings of 4 samples has probability 1/3 (the old
    default paired in acceptance order, always {0,1},{2,3}). Labels by reward; an odd sample out stays unpaired."""
    g = torch.Generator().manual_seed(0)
    rewards = [0.0, 1.0, 2.0, 3.0, 4.0]
    counts: dict = {}
    for _ in range(3000):
        labelled = rank_pairs([0, 1, 2, 3], rewards, generator=g)
        assert all(rewards[c] > rewards[r] for c, r in labelled.pairs) and len(labelled.pairs) == 2
        key = _matching(labelled.pairs)
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 3 and all(abs(n / 3000 - 1 / 3) < 0.04 for n in counts.values())
    odd = rank_pairs([0, 1, 2, 3, 4], rewards, generator=g)
    assert len(odd.pairs) == 2 and len({i for p in odd.pairs for i in p}) == 4


def test_rso_as_a_pair_builder():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    plan = build_pairs(scores, "rso", torch.Generator().manual_seed(0), rso_beta=1e12, rso_num_samples=4)
    pairs = [(c, r) for p, c, r in plan.triples]
    assert all(p == 0 for p, _, _ in plan.triples) and all(c > r for c, r in pairs)  # score = index on prompt 0
    assert {i for pair in pairs for i in pair} == {0, 1, 2, 3} and plan.ties_dropped == 2


def test_acceptance_rate_counts_the_candidates_each_scan_looked_at():
    """The scan stops at the m-th acceptance, else reads the whole pool. beta -> inf: the first m candidates are
    accepted, m scanned (rate 1). beta -> 0 on distinct rewards [0, 1, 2, 3], m = 2: round 1 accepts only index 3
    (the whole pool of 4 scanned), round 2 only index 2 of [0, 1, 2] (scanned up to it: 3): 2 accepted of 7."""
    g = torch.Generator().manual_seed(0)
    s = rso_sample([0.0, 1.0, 2.0, 3.0, 4.0], 1e12, 3, g)
    assert (s.accepted, s.rounds, s.scanned, s.acceptance_rate) == ([0, 1, 2], 1, 3, 1.0)
    s = rso_sample([0.0, 1.0, 2.0, 3.0], 1e-9, 2, g)
    assert (s.accepted, s.rounds, s.scanned) == ([3, 2], 2, 7)
    assert s.acceptance_rate == 2 / 7


def test_rso_round_metrics_are_the_pair_builders_totals():
    """An online rso round logs rso/acceptance_rate = accepted / scanned over its prompts and the mean rejection
    rounds per prompt (before: no RSO quantity was logged). Two prompts: beta -> inf accepts the first 2 of 4 in one
    round; beta -> 0 as above; a NaN-scored completion is not a candidate."""
    from preflab.online.trainers import rso_metrics

    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, float("nan"), 3.0]], dtype=torch.float64)
    plan = build_pairs(scores, "rso", torch.Generator().manual_seed(0), rso_beta=1e-9, rso_num_samples=2)
    # prompt 0: [3] of 4 scanned, then [2] of [0, 1, 2] (3 scanned); prompt 1 (candidates 0, 1, 3): [3] of 3, then
    # [1] of [0, 1] (2 scanned)
    assert plan.rso == {"prompts": 2, "accepted": 4, "scanned": 12, "rounds": 4}
    assert rso_metrics(plan.rso) == {"rso/acceptance_rate": 4 / 12, "rso/accepted": 4.0, "rso/scanned": 12.0,
                                     "rso/sampling_rounds": 2.0}
    assert build_pairs(scores, "best_vs_worst").rso is None
