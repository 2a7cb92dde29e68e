"""Boundaries of the ranking accuracies' tie rules (preflab.eval.ranking): a tied pair counts when its gap is strictly
below the tolerance, and list-wise exact order needs a strict model order wherever the raters are strict."""
import torch

from preflab.eval.ranking import (idealized_ranking_accuracy_with_ties, listwise_ranking_accuracy,
                                  ranking_accuracy_with_ties)


def test_a_tie_pair_at_exactly_the_tolerance_is_not_a_tie():
    alpha = torch.tensor([0.5, 0.5])
    chosen = torch.tensor([-10.0, -10.0], dtype=torch.float64)
    rejected = torch.tensor([-10.5, -10.25], dtype=torch.float64)   # gaps 0.5 (= tolerance) and 0.25 (below)
    assert ranking_accuracy_with_ties(chosen, rejected, alpha, tie_tolerance=0.5) == 0.5
    # R*: for alpha = 1/2 the optimum's margin is the reference's own gap (logit(1/2) = 0), so the same rule applies
    assert idealized_ranking_accuracy_with_ties(chosen, rejected, alpha, beta=0.1, tie_tolerance=0.5) == 0.5


def test_listwise_model_ties_do_not_reproduce_a_strict_rater_order():
    scores = torch.tensor([[3.0, 2.0, 1.0], [2.0, 2.0, 1.0]])
    logps = torch.tensor([[-1.0, -1.0, -3.0],    # the model ties what the raters order: wrong
                          [-1.0, -1.0, -3.0]])   # the model ties what the raters tie: right
    assert listwise_ranking_accuracy(logps, scores) == 0.5
