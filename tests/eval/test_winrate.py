"""Win rate: Wilson's interval by hand, ties, judge protocols, and generation on tiny models."""
import pytest
import torch

from preflab.errors import ConfigError
from preflab.eval.winrate import (compare_generations, judge_outcomes, load_callable, wilson_interval, win_rate,
                                  win_rate_from_outcomes)
from preflab.eval_cli.checkpoint import reward_model_fn
from preflab.generate import generate_text
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer


def test_wilson_interval_by_hand():
    # 7 of 10 at 95%: the textbook interval (0.3968, 0.8922)
    lo, hi = wilson_interval(0.7, 10, 0.95)
    assert lo == pytest.approx(0.3968, abs=5e-5) and hi == pytest.approx(0.8922, abs=5e-5)
    # 0 of 20: lower end exactly 0, upper z^2/(n+z^2)
    z2 = 1.959963984540054 ** 2
    lo, hi = wilson_interval(0.0, 20, 0.95)
    assert lo == 0.0 and hi == pytest.approx(z2 / (20 + z2), abs=1e-12)


def test_win_rate_counts_ties_as_half():
    result = win_rate([1.0, 2.0, 3.0, 3.0], [0.0, 3.0, 3.0, 1.0])
    assert (result.wins, result.ties, result.losses, result.n) == (2, 1, 1, 4)
    assert result.win_rate == 0.625
    assert (result.ci_low, result.ci_high) == pytest.approx(wilson_interval(0.625, 4))
    with pytest.raises(ConfigError):
        win_rate([1.0], [1.0, 2.0])
    with pytest.raises(ConfigError):
        win_rate_from_outcomes([1.5])


class IndexJudge:
    """TRL's pairwise judge protocol: .judge(prompts, [[a, b], ...]) -> index of the better answer."""

    def judge(self, prompts, completions):
        return [0 if len(a) >= len(b) else 1 for a, b in completions]


def test_judges_and_reward_functions_on_tiny_models():
    torch.manual_seed(0)
    tok = tiny_tokenizer("bytelevel")
    policy, reference = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    texts = ["the cat sat", "what is two plus three ?", "hello world", "a quick brown fox"]
    prompt_ids = [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids for t in texts]
    kw = dict(max_new_tokens=5, batch_size=4)
    # the same model on both sides: every answer is identical, so every comparison is a tie
    same = compare_generations(policy, policy, tok, prompt_ids, texts, reward_fn=lambda prompts, completions:
                               [float(len(c)) for c in completions], **kw)
    assert same["win_rate"]["ties"] == 4 and same["win_rate"]["win_rate"] == 0.5
    # a reward function: the win rate equals the comparison of the two models' own greedy generations
    answers_p = generate_text(policy, tok, prompt_ids, max_new_tokens=5)
    answers_r = generate_text(reference, tok, prompt_ids, max_new_tokens=5)
    expected = win_rate([len(a) for a in answers_p], [len(b) for b in answers_r]).win_rate
    length_reward = lambda prompts, completions: [float(len(c)) for c in completions]  # noqa: E731
    out = compare_generations(policy, reference, tok, prompt_ids, texts, reward_fn=length_reward, **kw)
    assert out["win_rate"]["win_rate"] == expected
    assert [x["policy"] for x in out["examples"]] == answers_p
    # a TRL-style judge deciding by the same rule (longer wins, ties to the policy)
    judged = compare_generations(policy, reference, tok, prompt_ids, texts, judge=IndexJudge(), **kw)
    assert judged["win_rate"]["win_rate"] == sum(len(a) >= len(b) for a, b in zip(answers_p, answers_r)) / 4
    with pytest.raises(ConfigError):
        compare_generations(policy, reference, tok, prompt_ids, texts, **kw)


def test_judge_protocols():
    answers_a, answers_b = ["long answer", "x", "same"], ["short", "longer one", "same"]
    assert judge_outcomes(IndexJudge(), ["p"] * 3, answers_a, answers_b) == [1.0, 0.0, 1.0]
    assert judge_outcomes(lambda p, a, b: [0.25] * len(a), ["p"] * 3, answers_a, answers_b) == [0.25] * 3
    assert win_rate_from_outcomes([0.25, 0.75]).win_rate == 0.5


def test_reward_model_scores_match_a_direct_forward(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny_tokenizer("bytelevel")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    model = LlamaForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    score = reward_model_fn(str(tmp_path))
    prompts, completions = ["the cat", "hello world ,"], [" sat on the mat", " hi"]
    got = score(prompts=prompts, completions=completions)
    with torch.no_grad():  # scored as reward models are trained: bos + prompt, response + eos
        want = [model(torch.tensor([tok(p + c).input_ids + [tok.eos_token_id]])).logits[0, 0].item()
                for p, c in zip(prompts, completions)]
    assert got == pytest.approx(want, abs=1e-5)       # batched with padding == one at a time


def test_load_callable_errors_name_the_spec():
    assert load_callable("math:sqrt")(9.0) == 3.0
    with pytest.raises(ConfigError, match="module:name"):
        load_callable("no_colon_here")
    with pytest.raises(ConfigError, match="nosuchmodule"):
        load_callable("nosuchmodule:f")


def test_a_judges_probability_is_counted_as_fractional_not_as_a_tie():
    """Outcomes 1, 1/2, 0 are a win, a tie, a loss; a judge's probability strictly between them (0.7, 0.2) is
    `fractional`, counted in n and in the mean as itself, never as a tie: wins + ties + losses + fractional = n."""
    result = win_rate_from_outcomes([1.0, 0.5, 0.7, 0.0, 0.2, None])
    assert (result.wins, result.ties, result.losses, result.fractional, result.n, result.failed) == (1, 1, 1, 2, 5, 1)
    assert result.win_rate == pytest.approx((1.0 + 0.5 + 0.7 + 0.0 + 0.2) / 5)
