"""Tie rules that a `>` / `>=` slip would change silently: TRL's rewards/accuracies counts a tie as 0 (TRL 1.16
DPOTrainer: `(chosen_rewards > rejected_rewards).float()`); the ranking accuracy R of Chen et al. (2024) counts a
tie as correct (1[S(y_w) >= S(y_l)]); the idealized ranking accuracy R* counts a zero optimum margin as wrong
(1[... > 0], methods/objectives.md §C #13); the lab's and the library's functions agree."""
import pytest
import torch

from preflab.eval.metrics import implicit_reward_accuracy, ranking_accuracy
from preflab.eval.ranking import idealized_ranking_accuracy
from preflab.lab import closed_forms
from preflab.objectives import PairBatch, get_objective

# h_w - h_l = [0.5, 0, 0, -0.5]: one win, two exact ties, one loss
POLICY_CHOSEN = torch.tensor([-1.0, -2.0, -3.0, -4.0], dtype=torch.float64)
POLICY_REJECTED = torch.tensor([-1.5, -2.0, -3.25, -3.5], dtype=torch.float64)
REF_CHOSEN = torch.tensor([-1.0, -1.0, -3.0, -4.0], dtype=torch.float64)
REF_REJECTED = torch.tensor([-1.0, -1.0, -3.25, -4.0], dtype=torch.float64)


def test_trl_rewards_accuracies_counts_ties_as_zero():
    batch = PairBatch.from_sums(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED)
    h_w, h_l = POLICY_CHOSEN - REF_CHOSEN, POLICY_REJECTED - REF_REJECTED
    assert (h_w - h_l).tolist() == [0.5, 0.0, 0.0, -0.5]
    for loss_type in ("sigmoid", "ipo", "hinge"):
        metrics = get_objective(loss_type, beta=0.1)(batch).metrics
        assert metrics["rewards/accuracies"].item() == 0.25, loss_type  # >= would give 0.75, half-credit 0.5
    assert implicit_reward_accuracy(h_w, h_l).item() == 0.25


def test_ranking_accuracy_counts_ties_as_correct():
    chosen, rejected = [-2.0, -3.0, -1.0, -5.0], [-2.0, -1.0, -1.0, -6.0]  # tie, loss, tie, win
    assert ranking_accuracy(torch.tensor(chosen), torch.tensor(rejected)).item() == 0.75
    assert closed_forms.ranking_accuracy(chosen, rejected) == 0.75


def test_idealized_ranking_accuracy_counts_a_zero_optimum_margin_as_wrong():
    # alpha = 0.5 adds nothing: margins S_ref(y_w) - S_ref(y_l) = [0, 2, 0];
    # alpha = 0.75 at beta = ln 3 adds logit(0.75)/beta = 1: -1 + 1 = 0
    ref_chosen, ref_rejected = [-3.0, -3.0, -1.0], [-3.0, -5.0, -1.0]
    for fn in (idealized_ranking_accuracy, closed_forms.idealized_ranking_accuracy):
        assert fn(ref_chosen, ref_rejected, 0.5, 1.0) == pytest.approx(1 / 3)
        assert fn([-2.0], [-1.0], 0.75, float(torch.log(torch.tensor(3.0, dtype=torch.float64)))) == 0.0
        assert fn([-2.0], [-1.0], 0.75, 1.0) == 1.0  # logit(0.75) = ln 3 > 1: the optimum flips the pair
