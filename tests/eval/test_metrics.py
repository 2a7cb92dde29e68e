"""Pair metrics against hand-computed values (methods/objectives.md §0 fixture, §C #13, #40, #10)."""
import math

import pytest
import torch

from preflab.eval.metrics import (PairScores, categorical_unseen_mass, pair_diagnostics, token_implicit_rewards,
                                  unseen_log_mass_drift)
from preflab.loops.eval_metrics import EVAL_STEP_KEYS, pair_eval_metrics
from preflab.objectives.base import PairBatch, SequenceLogps


def seq(total, n, width=8):
    """One response of n tokens whose log-probs sum to `total`, padded to width (float64)."""
    mask = torch.arange(width) < n
    return SequenceLogps((torch.full((width,), total / n, dtype=torch.float64) * mask)[None], mask[None])


def stack(*seqs):
    return SequenceLogps(torch.cat([s.token_logps for s in seqs]), torch.cat([s.mask for s in seqs]))


def two_pairs():
    """Pair 1 is the spec's toy fixture: S(w)=-10, S(l)=-12, S_ref(w)=-11, S_ref(l)=-11.5, |w|=5, |l|=8.
    Pair 2: S(w)=-12, S(l)=-13, S_ref(w)=-11, S_ref(l)=-11, |w|=|l|=2 (both likelihoods fell)."""
    return PairBatch(stack(seq(-10, 5), seq(-12, 2)), stack(seq(-12, 8), seq(-13, 2)),
                     stack(seq(-11, 5), seq(-11, 2)), stack(seq(-11.5, 8), seq(-11, 2)))


def test_pair_diagnostics_by_hand():
    m = pair_diagnostics(PairScores.from_batch(two_pairs()), beta=0.1)
    # R: -10 >= -12 and -12 >= -13 -> 1. R~: -2 < -1.5 (wrong), -6 >= -6.5 (right) -> 1/2
    assert m["ranking_accuracy"].item() == 1.0
    assert m["ranking_accuracy_norm"].item() == 0.5
    # h_w = (1, -1), h_l = (-0.5, -2): implicit reward right on both; margins beta*(1.5, 1) -> mean 0.125
    assert m["rewards/accuracies"].item() == 1.0
    assert m["rewards/margins"].item() == pytest.approx(0.125, abs=1e-12)
    assert m["rewards/chosen"].item() == pytest.approx(0.0, abs=1e-12)
    assert m["rewards/rejected"].item() == pytest.approx(-0.125, abs=1e-12)
    # reference: -11 >= -11.5 right, -11 >= -11 right (ties count as right in R)
    assert m["reference_ranking_accuracy"].item() == 1.0
    # 3D: drifts chosen (1, -1) mean 0, rejected (-0.5, -2) mean -1.25; pair 2 has both < 0
    assert m["logps_drift/chosen"].item() == pytest.approx(0.0, abs=1e-12)
    assert m["logps_drift/rejected"].item() == pytest.approx(-1.25, abs=1e-12)
    assert m["logps_drift/suppression_rate"].item() == 0.5
    assert m["logps/chosen"].item() == -11.0 and m["logps/rejected"].item() == -12.5
    assert m["length/chosen"].item() == 3.5 and m["length/rejected"].item() == 5.0
    assert m["length/chosen_longer_fraction"].item() == 0.0


def test_drop_ratio_and_ties():
    # drift_w = (-1, -1), drift_l = (-6, -2): ratio |mean -4| / |mean -1| = 4; both fell in both pairs
    b = PairBatch.from_sums([-3.0, -3.0], [-10.0, -6.0], [-2.0, -2.0], [-4.0, -4.0])
    m = pair_diagnostics(PairScores.from_batch(b), beta=1.0)
    assert m["logps_drift/drop_ratio"].item() == pytest.approx(4.0)
    assert m["logps_drift/suppression_rate"].item() == 1.0
    # equal log-probs: R counts the tie as right (>=), TRL's reward accuracy as wrong (strict >)
    tie = PairBatch.from_sums([-5.0], [-5.0], [-5.0], [-5.0])
    m = pair_diagnostics(PairScores.from_batch(tie), beta=0.1)
    assert m["ranking_accuracy"].item() == 1.0 and m["rewards/accuracies"].item() == 0.0


def test_reference_free_batch_has_only_policy_metrics():
    m = pair_diagnostics(PairScores.from_batch(PairBatch.from_sums([-1.0, -4.0], [-2.0, -3.0])), beta=0.1)
    assert m["ranking_accuracy"].item() == 0.5
    assert not any(k.startswith(("rewards/", "logps_drift/", "reference_")) for k in m)


def test_token_implicit_rewards_sum_to_sequence_reward_and_ignore_padding():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    pol = SequenceLogps(-torch.rand(2, 4, generator=g, dtype=torch.float64), mask)
    ref = SequenceLogps(-torch.rand(2, 4, generator=g, dtype=torch.float64), mask)
    r = token_implicit_rewards(pol, ref, beta=0.3)
    torch.testing.assert_close(r.sum(-1), 0.3 * (pol.sum - ref.sum))
    assert (r[~mask] == 0).all()
    # garbage in the padding changes nothing
    noisy = SequenceLogps(torch.where(mask, pol.token_logps, torch.full_like(pol.token_logps, 1e9)), mask)
    torch.testing.assert_close(token_implicit_rewards(noisy, ref, 0.3), r)


def test_unseen_mass_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    seen = torch.tensor([[True, True, False], [False, True, True]])
    torch.testing.assert_close(categorical_unseen_mass(probs, seen), torch.tensor([0.2, 0.1], dtype=torch.float64))
    # policy puts 0.1 + 0.3 = 0.4 on prompt 1's unseen responses, the reference 0.2: drift log 2; the invalid
    # third entry (huge log-prob) is ignored. Prompt 2: one response, 0.05 vs 0.2 -> log(1/4).
    lg = math.log
    pol = torch.tensor([[lg(0.1), lg(0.3), 50.0], [lg(0.05), 0.0, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[lg(0.1), lg(0.1), 50.0], [lg(0.2), 0.0, 0.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(unseen_log_mass_drift(pol, ref, valid),
                               torch.tensor([lg(2.0), lg(0.25)], dtype=torch.float64))


def test_pair_scores_round_trip_and_concatenation():
    s = PairScores.from_batch(two_pairs())
    back = PairScores.from_lists(s.to_lists())
    torch.testing.assert_close(back.ref_rejected, s.ref_rejected)
    both = PairScores.cat([s, s])
    assert both.size == 4 and both.has_reference
    assert PairScores.cat([s, PairScores.from_batch(PairBatch.from_sums([-1.0], [-2.0]))]).ref_chosen is None


def test_trainer_eval_metrics_keep_names_and_average_exactly_over_chunks():
    """pair_eval_metrics keeps the trainer's names, and the trainer's size-weighted mean over eval chunks equals
    the metric over the whole eval set (every value is a mean over pairs)."""
    g = torch.Generator().manual_seed(1)
    sums = [-(torch.rand(8, generator=g, dtype=torch.float64) * 10) for _ in range(4)]
    full = pair_eval_metrics(PairBatch.from_sums(*sums))
    assert set(full) == set(EVAL_STEP_KEYS)
    parts = [(slice(0, 3), 3), (slice(3, 8), 5)]
    chunked = {k: sum(float(pair_eval_metrics(PairBatch.from_sums(*[s[sl] for s in sums]))[k]) * n
                      for sl, n in parts) / 8 for k in full}
    for key, value in full.items():
        assert chunked[key] == pytest.approx(float(value), abs=1e-12), key
    # the two long-standing names still mean what they meant
    assert float(full["ranking_accuracy"]) == float((sums[0] >= sums[1]).double().mean())
    assert float(full["logps_drift/rejected"]) == pytest.approx(float((sums[1] - sums[3]).mean()))
    assert set(pair_eval_metrics(PairBatch.from_sums(sums[0], sums[1]))) == {"ranking_accuracy",
                                                                              "ranking_accuracy_norm"}
