"""RLOO (preflab.objectives.rloo) on batches TRL's own code never builds: prompts with fewer valid completions than
others, clip flags of completions whose ratio and advantage disagree, groups tied only after reward_clip_range. Each
number is worked out by hand from the module docstring (mutation-mx round)."""
import math

import pytest
import torch

from preflab.objectives import ListBatch, SequenceLogps, get_objective


def test_loss_is_the_mean_over_all_valid_completions_and_each_prompt_its_share():
    """With given advantages and lp = old (rho = 1) l_i = -A_i; loss = mean over the batch's 6 valid completions
    (TRL: per_sequence_loss.mean()), losses[b] = sum of prompt b's l_i / (6 / 2) -- not each prompt's own mean."""
    adv = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    lp = torch.full((2, 4, 1), -0.5, dtype=torch.float64)
    mask = torch.ones(2, 4, 1, dtype=torch.bool)
    batch = ListBatch(SequenceLogps(lp, mask), torch.zeros(2, 4, dtype=torch.float64), valid=valid,
                      extras={"advantages": adv, "old_logps": lp.clone()})
    out = get_objective("rloo", beta=0.0)(batch)
    assert out.losses.tolist() == pytest.approx([-10 / 3, -11 / 3], abs=1e-12)
    assert out.loss.item() == pytest.approx(-21 / 6, abs=1e-12)


def test_clip_ratios_count_a_low_ratio_only_with_a_negative_advantage():
    """Scores 0, 1, 2, 3 give leave-one-out advantages -2, -2/3, 2/3, 2; ratios 0.5, 1, 0.5, 1.5 at epsilon 0.2:
    only completion 0 is low-clipped (completion 2's ratio is as low but its advantage is positive) and only
    completion 3 high-clipped."""
    old = torch.zeros(1, 4, 1, dtype=torch.float64)
    lp = torch.log(torch.tensor([0.5, 1.0, 0.5, 1.5], dtype=torch.float64)).view(1, 4, 1)
    mask = torch.ones(1, 4, 1, dtype=torch.bool)
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    out = get_objective("rloo", beta=0.0, epsilon=0.2)(ListBatch(SequenceLogps(lp, mask), scores,
                                                                 extras={"old_logps": old}))
    m = {k: v.item() for k, v in out.metrics.items()}
    assert (m["clip_ratio/low_mean"], m["clip_ratio/high_mean"], m["clip_ratio/region_mean"]) == (0.25, 0.25, 0.5)
    assert (m["clip_ratio/low_min"], m["clip_ratio/high_max"]) == (0.0, 1.0)
    # l_i = -min(rho A, clip(rho) A): -(0.8 x -2), -(1 x -2/3), -(0.5 x 2/3), -(1.2 x 2), their mean
    expected = (1.6 + 2 / 3 - 1 / 3 - 2.4) / 4
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


def test_frac_reward_zero_std_counts_groups_tied_after_the_clip():
    """TRL reads the std of the shaped rewards: groups 0 and 2 differ in their scores but clip to one value."""
    scores = torch.tensor([[2.0, 3.0, 5.0, 1.5], [0.0, 0.5, -0.5, 0.2], [-3.0, -2.0, -4.0, -5.0]],
                          dtype=torch.float64)
    lp = torch.zeros(3, 4, 2, dtype=torch.float64)
    out = get_objective("rloo", beta=0.0, reward_clip_range=(-1.0, 1.0))(
        ListBatch(SequenceLogps(lp, torch.ones(3, 4, 2, dtype=torch.bool)), scores))
    assert out.metrics["frac_reward_zero_std"].item() == pytest.approx(2 / 3)
    assert out.metrics["reward"].item() == pytest.approx(float(scores.mean()))  # the unclipped scores' mean
    assert not math.isnan(out.loss.item())
