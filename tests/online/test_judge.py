"""Judges (reward functions, reward models, preference models), the (prompt, completion) cache, pair builders."""
import math

import pytest
import torch

from preflab.errors import ConfigError
from preflab.loops.judge import Judge
from preflab.loops.pair_builders import build_pairs


class Counting:
    """A reward function in TRL's signature that records every (prompt, completion) it scores."""

    def __init__(self, value=len):
        self.seen, self.value = [], value
        self.__name__ = "counting"

    def __call__(self, prompts, completions, **kwargs):
        self.seen.extend(zip(prompts, completions))
        return [float(self.value(c)) for c in completions]


def test_same_prompt_and_completion_is_scored_once():
    fn = Counting()
    judge = Judge(fn)
    prompts = ["p1", "p1", "p2", "p1"]
    completions = ["aa", "aa", "aa", "bbb"]
    scores, per_fn = judge(prompts, completions)
    assert scores.tolist() == [2.0, 2.0, 2.0, 3.0] and per_fn.shape == (4, 1)
    assert fn.seen == [("p1", "aa"), ("p2", "aa"), ("p1", "bbb")]          # duplicates scored once
    assert judge.stats() == {"judge/calls": 3.0, "judge/cache_hits": 1.0, "judge/failed": 0.0}
    scores, _ = judge(["p2", "p3", "p1"], ["aa", "c", "bbb"])
    assert scores.tolist() == [2.0, 1.0, 3.0]
    assert fn.seen[3:] == [("p3", "c")]                                   # only the new pair reaches the function
    assert judge.stats() == {"judge/calls": 4.0, "judge/cache_hits": 3.0, "judge/failed": 0.0}
    uncached = Judge(Counting(), cache=False)
    uncached(["p"], ["x"])
    uncached(["p"], ["x"])
    assert uncached.calls == 2


def test_columns_are_part_of_the_key_and_reach_the_function():
    seen = []

    def reward(prompts, completions, solution, **kwargs):
        seen.append(list(solution))
        return [float(c == s) for c, s in zip(completions, solution)]

    judge = Judge(reward)
    scores, _ = judge(["q", "q"], ["4", "4"], columns=[{"solution": "4"}, {"solution": "5"}])
    assert scores.tolist() == [1.0, 0.0] and seen == [["4", "5"]]


def test_weighted_sum_with_none_is_a_nansum_as_in_trl():
    def f1(prompts, completions, **kwargs):
        return [1.0, None, None]

    class RM:  # a reward model: .score(prompts, responses) -> Tensor
        def score(self, prompts, responses):
            return torch.tensor([2.0, 3.0, float("nan")])

    scores, per_fn = Judge([f1, RM()], weights=[1.0, 0.5])(["a", "b", "c"], ["x", "y", "z"])
    assert scores[:2].tolist() == [2.0, 1.5] and math.isnan(scores[2])
    assert math.isnan(per_fn[1, 0])
    with pytest.raises(ConfigError, match="give one weight per judge, in the order of reward_funcs"):
        Judge([f1, RM()], weights=[1.0])


def test_preference_model_scores_are_mean_win_rates():
    P = torch.tensor([[0.5, 0.7, 0.9], [0.3, 0.5, 0.6], [0.1, 0.4, 0.5]])

    class Table:  # a preference model over three canned responses
        def win_rate_matrix(self, prompt, responses):
            idx = [int(r) for r in responses]
            return P[idx][:, idx]

    scores, _ = Judge(Table())(["x"] * 5, ["0", "1", "2", "2", "0"], groups=[0, 0, 0, 1, 1])
    torch.testing.assert_close(scores[:3], torch.tensor([0.8, 0.45, 0.25], dtype=torch.float64))
    torch.testing.assert_close(scores[3:], torch.tensor([0.1, 0.9], dtype=torch.float64))


def test_bad_judges_are_clear_errors():
    with pytest.raises(ConfigError, match="one per completion"):
        Judge(lambda prompts, completions, **k: [1.0])(["a", "b"], ["x", "y"])
    with pytest.raises(ConfigError, match="neither a reward function"):
        Judge(42)


def test_a_weight_count_other_than_the_judges_names_reward_weights_and_the_judges():
    """reward_funcs: [ok] with reward_weights: [1.0, 2.0] said "2 weights for 1 judges", naming neither option
    (chaos trial)."""
    def ok(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    with pytest.raises(ConfigError) as err:
        Judge([ok], weights=[1.0, 2.0])
    assert str(err.value) == ("reward_weights has 2 weights [1.0, 2.0] for 1 judge(s) ['ok'] (reward_funcs); give one "
                              "weight per judge, in the order of reward_funcs.")


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_an_infinite_reward_is_refused_naming_the_judge_and_the_completion(bad):
    """A reward function returning inf for one completion of a GRPO group made the group's mean inf and its std
    NaN: the run printed "every prompt's 4 completions got the same reward (mean 1.12e+307)" and trained on zero
    advantages (chaos trial). Now refused, naming the judge, the completion and what to return instead."""
    def capped(prompts, completions, **kwargs):
        return [bad if c == "bad" else 1.0 for c in completions]

    with pytest.raises(ConfigError, match=rf"judge 'capped' \(.*test_judge.py\) returned {bad} for completion 1 of "
                                          r"the 3 it was called with \(-?inf\); a reward must be finite .* Return a "
                                          r"finite penalty \(e.g. -1.0\) instead, or None where the judge does not"):
        Judge(capped)(["p", "p", "p"], ["ok", "bad", "fine"])
    assert Judge(lambda prompts, completions, **k: [1e300, None])(["p", "p"], ["a", "b"])[0][0].item() == 1e300


def test_best_vs_worst_all_pairs_and_ties():
    nan = float("nan")
    scores = torch.tensor([[1.0, 0.0, 0.5], [0.3, 0.3, 0.3], [nan, 1.0, 0.0]])
    plan = build_pairs(scores, "best_vs_worst")
    assert plan.triples == [(0, 0, 1), (2, 1, 2)] and plan.ties_dropped == 1 and plan.unscorable == 1
    plan = build_pairs(torch.tensor([[1.0, 0.0, 1.0]]), "all_pairs")
    assert plan.triples == [(0, 0, 1), (0, 2, 1)] and plan.ties_dropped == 1
    # a shared top score: the chosen one is drawn uniformly (not always the first)
    g = torch.Generator().manual_seed(0)
    chosen = [build_pairs(torch.tensor([[1.0, 1.0, 0.0]]), generator=g).triples[0][1] for _ in range(400)]
    assert 0.4 < chosen.count(0) / 400 < 0.6
    with pytest.raises(ConfigError, match="pair_builder"):
        build_pairs(scores, "best_of_n")


def test_best_vs_worst_is_the_released_iterative_dpo_max_min_rule():
    """RLHFlow/Online-RLHF@3a00ed8 (Dong et al. 2024's iterative DPO pipeline) `dpo_iteration/run_dpo.py::
    prepare_data`, choose_type max_min (its run_loop recipes): chosen = argmax, rejected = argmin of the K rewards,
    oriented by the rewards, and no pair when they are equal. Transcribed with numpy; scores without repeated
    extremes, where the rule is unambiguous (a shared top score: preflab draws one, np.argmax takes the first)."""
    import numpy as np

    def released_max_min(rewards):
        i0, i1 = int(np.argmax(rewards)), int(np.argmin(rewards))
        if rewards[i0] > rewards[i1]:
            return i0, i1
        if rewards[i0] < rewards[i1]:
            return i1, i0
        return None                                           # equal rewards: the sample adds no pair

    rewards = np.random.default_rng(0).normal(size=(20, 8))
    rewards[5] = 0.25                                         # all K tied
    expected = [(p, *pair) for p, row in enumerate(rewards) if (pair := released_max_min(row)) is not None]
    plan = build_pairs(torch.tensor(rewards), "best_vs_worst")
    assert plan.triples == expected and plan.ties_dropped == 1 and len(expected) == 19


def test_a_preference_judges_group_mean_is_one_half_and_its_note_says_so():
    """Borda win rates of any P with P + P^T = 1 average 1/2 in every group (the note GRPO runs print)."""
    gen = torch.Generator().manual_seed(0)
    P = torch.rand(5, 5, generator=gen, dtype=torch.float64)
    P = (P + 1 - P.T) / 2                                      # P + P^T = 1, diagonal 1/2

    class Table:
        def win_rate_matrix(self, prompt, responses):
            idx = [int(r) for r in responses]
            return P[idx][:, idx]

    judge = Judge(Table())
    scores, _ = judge(["x"] * 8, ["0", "1", "2", "3", "4", "1", "3", "4"], groups=[0] * 5 + [1] * 3)
    assert float(scores[:5].mean()) == pytest.approx(0.5, abs=1e-12)
    assert float(scores[5:].mean()) == pytest.approx(0.5, abs=1e-12)
    assert float(scores.std()) > 0.05                          # the signal is in the spread
    assert "group's mean reward is 1/2 by construction" in judge.within_group_note()
    assert Judge(lambda prompts, completions, **k: [0.0] * len(completions)).within_group_note() is None


def test_pair_builders_skip_a_prompt_with_one_scorable_completion_and_pair_rso_by_completion_index():
    """A prompt with one scorable completion gives no pair and no tie; rso's accepted samples (positions among the
    scored completions) are paired by their completion indices, never a NaN-scored one."""
    nan = float("nan")
    scores = torch.tensor([[nan, 1.0, nan], [0.0, 2.0, 1.0]])
    plan = build_pairs(scores, "best_vs_worst")
    assert plan.triples == [(1, 1, 0)] and plan.ties_dropped == 0 and plan.unscorable == 2
    plan = build_pairs(scores, "all_pairs")
    assert plan.triples == [(1, 1, 0), (1, 2, 0), (1, 1, 2)] and plan.ties_dropped == 0
    row = torch.tensor([[nan, 0.0, nan, 3.0, 1.0]])
    for seed in range(6):
        plan = build_pairs(row, "rso", torch.Generator().manual_seed(seed), rso_beta=1e12, rso_num_samples=3)
        assert len(plan.triples) == 1 and plan.ties_dropped == 0           # 3 accepted: one pair, one left over
        (p, c, r), = plan.triples
        assert p == 0 and {c, r} <= {1, 3, 4} and float(row[0, c]) > float(row[0, r])


def test_a_user_builders_index_past_the_last_completion_or_unscored_rejected_is_refused(tmp_path):
    path = tmp_path / "edge_builders.py"
    path.write_text("def past_end(scores, generator):\n    return [(0, 0, scores.shape[1])]\n\n\n"
                    "def chosen_past_end(scores, generator):\n    return [(0, scores.shape[1], 0)]\n\n\n"
                    "def nan_rejected(scores, generator):\n    return [(0, 0, 1)]\n")
    scores = torch.tensor([[0.5, 0.1]])
    for name in ("past_end", "chosen_past_end"):
        with pytest.raises(ConfigError, match=r"for scores of shape \(1, 2\); indices must be in range"):
            build_pairs(scores, f"{path}:{name}")
    with pytest.raises(ConfigError, match="paired completion 1 of prompt 0, which the judge could not score"):
        build_pairs(torch.tensor([[0.5, float("nan")]]), f"{path}:nan_rejected")


@pytest.mark.parametrize("bad", ["nan", float("nan"), math.inf, "-inf", True, "half", None])
def test_a_weight_that_is_not_a_finite_number_is_refused_naming_its_place(bad):
    """reward_weights=[1.0,nan] on the command line (YAML reads the text 'nan') ran: float('nan') made the second
    judge's every weighted score NaN and the nansum left it out of every reward, so the run trained on the first
    judge alone without a word (user trial 23); `true` ran as weight 1. Now refused in the Judge (Python callers) and
    as a config value (before anything loads)."""
    def ok(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    with pytest.raises(ConfigError) as err:
        Judge([ok, ok], weights=[1.0, bad])
    assert str(err.value).startswith(f"reward_weights[1] = {bad!r} is not a finite number (reward_weights: [1.0, "
                                     f"{bad!r}]); give one finite number per judge of reward_funcs")
    from preflab.config_options import range_errors

    errors = range_errors({"reward_weights": [1.0, bad]})
    assert len(errors) == 1 and errors[0].startswith("reward_weights=") and "must be" in errors[0]


def test_finite_weights_and_number_text_weigh_the_judges():
    """The weights that stay allowed: numbers (numpy's too) and number text, as TRL's parser reads a list item; the
    combined reward is sum_k w_k r_k (hand value: 2 x 1 + 0.5 x 3 = 3.5)."""
    import numpy as np

    def one(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    def three(prompts, completions, **kwargs):
        return [3.0] * len(completions)

    for weights in ([2, "0.5"], [np.float32(2.0), 0.5]):
        judge = Judge([one, three], weights=weights)
        assert judge.weights == [2.0, 0.5]
        scores, _ = judge(["p"], ["c"])
        assert scores.tolist() == [3.5]
    from preflab.config_options import range_errors

    assert range_errors({"reward_weights": [2, "0.5", -1.0]}) == []
