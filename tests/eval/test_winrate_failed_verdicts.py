"""A failed evaluation is no verdict: None, NaN and +-inf rewards and a TRL judge's -1 leave the prompt out of n
(counted as `failed`), never as a win, tie or loss (preflab.eval.winrate's module docstring)."""
import math

import pytest

from preflab.eval.winrate import judge_outcomes, wilson_interval, win_rate


def test_non_finite_rewards_are_failed_prompts_not_comparisons():
    inf = math.inf
    result = win_rate([2.0, 1.0, inf, 0.0, None, 5.0, math.nan],
                      [1.0, 1.0, 0.0, -inf, 0.0, 5.0, 1.0])
    # scored prompts: 2 > 1 win, 1 = 1 tie, 5 = 5 tie; inf, -inf, None, NaN on either side: failed
    assert (result.wins, result.ties, result.losses, result.n, result.failed) == (1, 2, 0, 3, 4)
    assert result.win_rate == pytest.approx(2 / 3)
    assert (result.ci_low, result.ci_high) == pytest.approx(wilson_interval(2 / 3, 3))


class IndexJudge:
    """TRL's pairwise judge: .judge(prompts, [[policy, reference], ...]) -> index of the better one, -1 failed."""

    def __init__(self, picks):
        self.picks = picks

    def judge(self, prompts, completions):
        return self.picks


def test_trl_judge_index_zero_is_the_policy_and_minus_one_is_no_verdict():
    outcomes = judge_outcomes(IndexJudge([0, 1, -1, 0]), ["p"] * 4, ["a"] * 4, ["b"] * 4)
    assert outcomes == [1.0, 0.0, None, 1.0]
    probabilities = judge_outcomes(lambda p, a, b: [0.25, math.nan, math.inf, 1.0], ["p"] * 4, ["a"] * 4, ["b"] * 4)
    assert probabilities == [0.25, None, None, 1.0]
