"""Idealized ranking accuracy and Thm 4.1 (Chen et al. 2024) against the spec's toy set and the lab's closed form."""
import math
from statistics import median

import numpy as np
import pytest
import torch

from preflab.lab import closed_forms
from preflab.eval.ranking import (difficulty_summary, dpo_pair_losses, idealized_ranking_accuracy,
                                  idealized_ranking_accuracy_range, listwise_ranking_accuracy,
                                  ranking_accuracy_with_ties, ranking_loss_threshold, ranking_report)

# methods/objectives.md §C #13: (S_ref(y_w), S_ref(y_l), alpha)
TOY = torch.tensor([(-40.0, -42.0, 0.75), (-50.0, -45.0, 0.75), (-30.0, -30.5, 0.6), (-60.0, -58.0, 0.999)],
                   dtype=torch.float64)
W, L, A = TOY[:, 0], TOY[:, 1], TOY[:, 2]


def softplus(x):
    return math.log1p(math.exp(x))


def test_toy_set_values_from_the_spec():
    assert float((W >= L).double().mean()) == 0.5                      # the reference's own R
    assert idealized_ranking_accuracy(W, L, A, beta=0.1) == 1.0
    assert idealized_ranking_accuracy(W, L, A, beta=1.0) == 0.75
    assert idealized_ranking_accuracy(W, L, A, beta=10.0) == 0.5
    assert idealized_ranking_accuracy_range(W, L, A) == {"min": 0.5, "median": 0.75, "max": 1.0}


def test_matches_an_independent_numpy_formula_and_the_lab_names():
    """R* = mean 1[(S_ref(y_w) - S_ref(y_l)) + (log a - log(1 - a))/beta > 0], a = clip(alpha, eps, 1 - eps), written
    here in numpy (the lab's closed_forms names delegate to preflab.eval.ranking: one implementation)."""
    g = torch.Generator().manual_seed(0)
    w = -torch.rand(200, generator=g, dtype=torch.float64) * 50
    r = -torch.rand(200, generator=g, dtype=torch.float64) * 50
    alpha = torch.rand(200, generator=g, dtype=torch.float64) * 0.5 + 0.5
    alpha[:20] = 1.0                                                     # unanimous -> 1 - eps
    a = np.clip(alpha.numpy(), 1e-3, 1 - 1e-3)
    values = []
    for beta in (0.01, 0.1, 0.5, 1.0, 5.0, 10.0):
        expected = float(np.mean((w.numpy() - r.numpy()) + (np.log(a) - np.log(1 - a)) / beta > 0))
        values.append(expected)
        assert idealized_ranking_accuracy(w, r, alpha, beta) == expected
        assert closed_forms.idealized_ranking_accuracy(w.numpy(), r.numpy(), alpha.numpy(), beta) == expected
    assert len(set(values)) > 2  # beta matters on this data
    paper = [v for v, b in zip(values, (0.01, 0.1, 0.5, 1.0, 5.0, 10.0)) if b != 0.5]
    assert idealized_ranking_accuracy_range(w, r, alpha) == {"min": min(paper), "median": float(np.median(paper)),
                                                             "max": max(paper)}
    expected_threshold = np.log1p(np.exp(-0.1 * (r.numpy() - w.numpy())))
    np.testing.assert_allclose(ranking_loss_threshold(w, r, 0.1).numpy(), expected_threshold, rtol=1e-12)
    np.testing.assert_allclose(closed_forms.ranking_loss_threshold(w.numpy(), r.numpy(), 0.1), expected_threshold,
                               rtol=1e-12)


def test_unanimous_alpha_uses_one_minus_eps():
    # S_ref(w) - S_ref(l) = -6; logit(0.999) / beta = 6.9068 / beta: right for beta = 1, wrong for beta = 2
    assert idealized_ranking_accuracy([-16.0], [-10.0], 1.0, beta=1.0) == 1.0
    assert idealized_ranking_accuracy([-16.0], [-10.0], 1.0, beta=2.0) == 0.0


def test_theorem_4_1_thresholds_from_the_spec():
    # c = S_ref(y_l) - S_ref(y_w); l(beta c) with beta = 0.1
    t = ranking_loss_threshold(torch.tensor([0.0, 0.0]), torch.tensor([2.0, 30.0]), beta=0.1)
    assert t[0].item() == pytest.approx(0.5981388694, abs=1e-9)
    assert t[1].item() == pytest.approx(0.0485873516, abs=1e-9)


def test_theorem_4_1_is_an_iff():
    """The policy ranks a pair right (S_w >= S_l) exactly when its DPO loss is at most l(beta c)."""
    g = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (-(torch.rand(500, generator=g, dtype=torch.float64) * 40) for _ in range(4))
    for beta in (0.05, 0.1, 1.0):
        below = dpo_pair_losses(pc, pr, rc, rr, beta) <= ranking_loss_threshold(rc, rr, beta)
        assert torch.equal(below, pc >= pr)


def test_difficulty_summary_on_the_toy_set():
    # c = (-2, 5, -0.5, 2): the reference ranks pairs 2 and 4 wrongly
    policy_w = torch.tensor([-40.0, -44.0, -31.0, -60.0], dtype=torch.float64)   # flips pair 2, not pair 4
    policy_l = torch.tensor([-41.0, -46.0, -30.0, -59.0], dtype=torch.float64)
    d = difficulty_summary(W, L, 0.1, policy_w, policy_l)
    assert d["difficulty/ref_incorrect_fraction"] == 0.5
    assert d["difficulty/hard_fraction"] == 0.0                    # beta c <= 0.5 < 1 everywhere
    expected = median([softplus(0.2), softplus(-0.5), softplus(0.05), softplus(-0.2)])
    assert d["difficulty/median_loss_threshold"] == pytest.approx(expected, abs=1e-12)
    assert d["difficulty/flipped_fraction"] == 0.5
    assert difficulty_summary(W, L, 1.0)["difficulty/hard_fraction"] == 0.5      # beta c = 5 and 2 exceed 1
    no_wrong_pairs = difficulty_summary([0.0], [-1.0], 0.1, [0.0], [1.0])
    assert math.isnan(no_wrong_pairs["difficulty/flipped_fraction"])


def test_hard_fraction_counts_pairs_strictly_above_the_margin():
    """'Hard' is beta c > hard_margin: a pair exactly at the margin (beta c = 0.1 * 10 = 1.0 in float64) is not
    hard, one just above it is; c = S_ref(y_l) - S_ref(y_w)."""
    ref_w = torch.tensor([-20.0, -20.0, -20.0], dtype=torch.float64)
    ref_l = torch.tensor([-10.0, -9.5, -25.0], dtype=torch.float64)         # c = 10, 10.5, -5
    assert 0.1 * 10.0 == 1.0
    assert difficulty_summary(ref_w, ref_l, 0.1)["difficulty/hard_fraction"] == pytest.approx(1 / 3, abs=1e-15)
    assert difficulty_summary(ref_w, ref_l, 0.1, hard_margin=0.99)["difficulty/hard_fraction"] == pytest.approx(2 / 3)

def test_ranking_report_gap_and_length_normalization():
    lengths_w = torch.tensor([4.0, 10.0, 3.0, 6.0], dtype=torch.float64)
    lengths_l = torch.tensor([4.0, 5.0, 3.0, 6.0], dtype=torch.float64)
    policy_w, policy_l = W.clone(), L.clone()                        # policy == reference: R = 0.5
    rep = ranking_report(W, L, lengths_w, lengths_l, A, 0.1, policy_w, policy_l)
    assert rep["idealized_ranking_accuracy"] == 1.0
    assert rep["alignment_gap"] == 0.5
    # per-token means: (-10 vs -10.5) right, (-5 vs -9) right, (-10 vs -10.17) right, (-10 vs -9.67) wrong
    assert rep["alignment_gap_norm"] == pytest.approx(rep["idealized_ranking_accuracy_norm"] - 0.75)
    assert rep["idealized_ranking_accuracy_norm"] == idealized_ranking_accuracy(W / lengths_w, L / lengths_l, A, 0.1)


def test_ties_in_log_space():
    alpha = torch.tensor([0.5, 0.5, 0.8, 0.8])
    chosen = torch.tensor([-10.0, -10.0, -10.0, -12.0])
    rejected = torch.tensor([-10.005, -11.0, -11.0, -11.0])
    # tie pairs: |diff| 0.005 < 0.01 right, 1.0 wrong; others by >=: right, wrong
    assert ranking_accuracy_with_ties(chosen, rejected, alpha) == 0.5


def test_listwise_exact_match():
    scores = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [2.0, 2.0, 1.0], [3.0, 1.0, 0.0]])
    logps = torch.tensor([[-1.0, -2.0, -3.0],      # same order: right
                          [-2.0, -1.0, -3.0],      # top two swapped: wrong
                          [-2.0, -1.0, -3.0],      # tied raters: either order of the first two is right
                          [-1.0, -2.0, -0.5]])     # third response is padding (invalid): right
    valid = torch.tensor([[True] * 3, [True] * 3, [True] * 3, [True, True, False]])
    assert listwise_ranking_accuracy(logps, scores, valid) == 0.75


def test_alignment_gap_with_tied_pairs_uses_the_tie_rule_on_both_sides():
    """Hand-computed, beta = 1, lengths 1 (so the norm gap is the same):
    pair  S_ref(w), S_ref(l)  alpha  m* = dS_ref + logit(alpha)  policy S(w), S(l)
     1    -10, -11            0.5    1.0     (tie rule: wrong)   -10, -10.004  (tie rule: right; by order: right)
     2    -10, -11            0.75   1 + log 3 > 0   right       -10, -11      right
     3    -20, -20.004        0.5    0.004   (tie rule: right)   -20, -19      (tie rule: wrong; by order: wrong)
     4    -12, -10            0.999  -2 + log 999 > 0 right      -13, -10      wrong
    By order: R* = 1, R = 0.5 (the old gap, 0.5). Tie rule: R* = 0.75, R = 0.5, gap = 0.25."""
    ref_w = torch.tensor([-10.0, -10.0, -20.0, -12.0], dtype=torch.float64)
    ref_l = torch.tensor([-11.0, -11.0, -20.004, -10.0], dtype=torch.float64)
    alpha = torch.tensor([0.5, 0.75, 0.5, 0.999], dtype=torch.float64)
    pol_w = torch.tensor([-10.0, -10.0, -20.0, -13.0], dtype=torch.float64)
    pol_l = torch.tensor([-10.004, -11.0, -19.0, -10.0], dtype=torch.float64)
    ones = torch.ones(4, dtype=torch.float64)
    rep = ranking_report(ref_w, ref_l, ones, ones, alpha, 1.0, pol_w, pol_l)
    assert rep["idealized_ranking_accuracy"] == 1.0                 # R* by order, still reported as before
    assert rep["idealized_ranking_accuracy_with_ties"] == 0.75
    assert ranking_accuracy_with_ties(pol_w, pol_l, alpha) == 0.5
    assert rep["alignment_gap"] == pytest.approx(0.25, abs=1e-12)
    assert rep["alignment_gap_norm"] == pytest.approx(0.25, abs=1e-12)
    assert rep["ranking_accuracy_norm_with_ties"] == 0.5
    # without ties the gap keeps R* - R by order (and no *_with_ties keys appear)
    rep = ranking_report(ref_w, ref_l, ones, ones, torch.full((4,), 0.75, dtype=torch.float64), 1.0, pol_w, pol_l)
    assert rep["alignment_gap"] == 0.75 - 0.5 and "idealized_ranking_accuracy_with_ties" not in rep
