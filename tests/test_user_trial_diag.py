"""User trial of the diagnostics (preflab eval / report / lab): each test is a mistake or an edge a researcher
hits, with the number or the message the old code got wrong."""
import json
import math

import pytest
import torch
import yaml

from preflab.cli import main
from preflab.errors import ConfigError, DataError
from preflab.eval.loading import load_for_eval
from preflab.eval.run import EvalOptions, eval_beta, evaluate_models
from preflab.eval.winrate import judge_outcomes, win_rate, win_rate_from_outcomes, wilson_interval
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

ROWS = [
    {"prompt": "what is two plus three ?", "chosen": " five", "rejected": " the cat sat"},
    {"prompt": "hello world ,", "chosen": " preference optimization", "rejected": " the dog ran"},
    {"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a quick brown fox jumps"},
]


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer("bytelevel")
    return tok, tiny_causal_lm(tok, seed=1).eval(), tiny_causal_lm(tok, seed=2).eval()


# --- win rate: a failed verdict is no verdict (never a tie, a loss or a crash) ---------------------------------

class FailingTrlJudge:
    """TRL's BasePairwiseJudge: index of the better answer, -1 where the judge failed (e.g. an unparsable reply)."""

    def judge(self, prompts, completions):
        return [0, -1, 1, -1]


def test_a_trl_judge_failure_is_left_out_not_counted_as_a_tie():
    outcomes = judge_outcomes(FailingTrlJudge(), ["p"] * 4, ["a"] * 4, ["b"] * 4)
    assert outcomes == [1.0, None, 0.0, None]
    result = win_rate_from_outcomes(outcomes)
    # one win, one loss over the 2 judged prompts: 0.5 on n = 2 (the old code: 2 ties -> 0.5 on n = 4, and a
    # narrower interval than the data supports)
    assert (result.n, result.failed, result.wins, result.losses, result.ties) == (2, 2, 1, 1, 0)
    assert (result.ci_low, result.ci_high) == pytest.approx(wilson_interval(0.5, 2))


def test_nan_or_none_rewards_have_no_verdict_instead_of_a_loss():
    # prompt 2: the policy's reward is NaN (the old code: a loss); prompt 4: None (the old code: TypeError)
    result = win_rate([1.0, float("nan"), 3.0, None, 2.0], [0.0, 1.0, 4.0, 1.0, 2.0])
    assert (result.n, result.failed) == (3, 2)
    assert result.win_rate == pytest.approx((1 + 0 + 0.5) / 3)
    callable_judge = lambda p, a, b: [1.0, None, float("nan"), 0.25]  # noqa: E731
    assert judge_outcomes(callable_judge, ["p"] * 4, ["a"] * 4, ["b"] * 4) == [1.0, None, None, 0.25]


def test_a_judge_with_the_wrong_number_of_verdicts_or_none_at_all_is_refused():
    with pytest.raises(ConfigError, match="2 verdicts for 3 prompts"):
        judge_outcomes(lambda p, a, b: [1.0, 1.0], ["p"] * 3, ["a"] * 3, ["b"] * 3)
    with pytest.raises(ConfigError, match="no verdict on any of the 3"):
        win_rate_from_outcomes([None, None, None])
    with pytest.raises(ConfigError, match="index of the"):
        judge_outcomes(type("J", (), {"judge": lambda self, p, c: [2]})(), ["p"], ["a"], ["b"])


# --- eval options and data ------------------------------------------------------------------------------------

def test_rater_proportions_outside_the_unit_interval_are_refused(tiny):
    tok, policy, ref = tiny
    rows = [dict(ROWS[0], alpha=0.75), dict(ROWS[1], alpha=75), dict(ROWS[2], alpha=0.5)]
    # the old code clipped 75 to 1 - 1e-3 and reported R* as if the raters had been unanimous
    with pytest.raises(DataError, match=r"row 1, field 'alpha': 75 is not a rater proportion"):
        evaluate_models(policy, tok, rows, ref=ref, options=EvalOptions(keep_per_pair=False))
    ok = evaluate_models(policy, tok, [dict(ROWS[0], alpha=0.75), dict(ROWS[1], alpha=1)], ref=ref, beta=1.0)
    assert ok["per_pair"]["alpha"] == [0.75, 1.0]


def test_run_beta_zero_or_another_objective_is_said(tmp_path):
    assert eval_beta(None, {"beta": 0.3, "loss_type": "sigmoid"}) == (0.3, [])
    assert eval_beta(0.2, {"beta": 0.0}) == (0.2, [])
    beta, notes = eval_beta(None, {"beta": 0.0, "task": "online"})     # GRPO without a KL term
    assert beta == 0.1 and "no KL term" in notes[0]
    beta, notes = eval_beta(None, {"beta": 0.5, "loss_type": "ipo", "task": "dpo"})
    assert beta == 0.5 and "loss_type ipo" in notes[0] and "DPO's" in notes[0]


@pytest.mark.parametrize("option", [["--beta", "0"], ["--beta", "-0.1"], ["--batch-size", "0"], ["--limit", "0"],
                                    ["--win-rate-prompts", "0"], ["--max-new-tokens", "0"]])
def test_eval_options_out_of_range_stop_before_any_model_loads(tmp_path, capsys, option):
    # the old code: a ValueError traceback after loading both models (beta, batch size), or a win rate over 0
    # prompts written as null
    assert main(["eval", str(tmp_path / "nowhere"), "--data", "x.jsonl", "--no-reference", *option]) == 2
    assert option[0] in capsys.readouterr().err


def test_a_reference_with_another_tokenizer_is_refused(tmp_path, tiny):
    tok, _, _ = tiny
    other = tiny_tokenizer("bytelevel", vocab_size=400)    # same text, other ids
    tiny_causal_lm(other, seed=3).save_pretrained(tmp_path / "ref", safe_serialization=True)
    other.save_pretrained(tmp_path / "ref")
    # the old code scored the reference on the policy's token ids without a word
    with pytest.raises(ConfigError, match="another tokenizer"):
        load_for_eval(str(tmp_path / "ref"), tokenizer=tok)
    model, own = load_for_eval(str(tmp_path / "ref"))
    assert own.get_vocab() == other.get_vocab()
    load_for_eval(str(tmp_path / "ref"), tokenizer=own)          # the same tokenizer passes
