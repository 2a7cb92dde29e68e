"""Tool rollouts (preflab.online.tool_rollout): calls executed through a ToolBox, observations forced and masked out
of the loss, executed calls counted; a model's malicious or runaway tool call is contained; the group loss does not
read the observation tokens' log-probs; rounds with loss masks round-trip through JSON."""
import time

import pytest
import torch

from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.online.examples import Example
from preflab.online.run import Round
from preflab.online.tool_rollout import CALCULATOR_SYNTAX, ToolRolloutGenerator, ToolSyntax
from preflab.tools import TOOL_ERROR_OBSERVATION, Calculator, ToolBox

TOK = tiny_tokenizer("char")


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM whose next token is script[k] when its completion has k tokens (then eos): it follows
    the KV-cache protocol the rollout uses (the 'cache' is the tokens seen, per row)."""

    def __init__(self, scripts: list[str]):
        super().__init__()
        self.scripts = [TOK(s, add_special_tokens=False).input_ids + [TOK.eos_token_id] for s in scripts]
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=True):
        if past_key_values is None:  # the prompt: each completion has 0 tokens
            past_key_values = [0] * input_ids.shape[0]
        else:
            past_key_values = [k + 1 for k in past_key_values]
        logits = torch.full((input_ids.shape[0], input_ids.shape[1], len(TOK)), -50.0)
        for i, k in enumerate(past_key_values):
            script = self.scripts[i % len(self.scripts)]
            logits[i, -1, script[min(k, len(script) - 1)]] = 50.0
        return {"logits": logits, "past_key_values": past_key_values}


def rollout(scripts, max_tool_calls=3, max_new_tokens=120, box=None, syntaxes=(CALCULATOR_SYNTAX,)):
    box = box or ToolBox([Calculator()])
    gen = ToolRolloutGenerator(ScriptedLM(scripts), TOK, box, list(syntaxes), max_new_tokens=max_new_tokens,
                               max_tool_calls=max_tool_calls)
    prompts = [[TOK.bos_token_id] + TOK("Q: x\n", add_special_tokens=False).input_ids]
    ids = gen.generate(prompts, len(scripts), seed=0)
    return gen, box, [TOK.decode(c, skip_special_tokens=True) for c in ids], ids


def observation_mask(text: str, observations: list[str]) -> list[int]:
    """1 everywhere except on the given observation substrings (in order), + the eos position."""
    mask, pos = [1] * len(text), 0
    for obs in observations:
        at = text.index(obs, pos)
        mask[at:at + len(obs)] = [0] * len(obs)
        pos = at + len(obs)
    return mask + [1]


def test_calls_are_executed_observations_forced_and_masked():
    scripts = ["[calc: 37*48]=1776\nanswer: 1776",           # one call; the model's own '=...' is overridden
               "[calc: 2+3]=5\n[calc: 2+3]=5\nanswer: 5",
               "answer: 47",                                   # no call
               "[calc 2+3] and 2+3] answer: 5"]                # malformed: no '[calc:' opener, not a call
    gen, box, texts, ids = rollout(scripts)
    assert texts == scripts
    assert [c["num_tool_calls"] for c in gen.last_columns] == [1, 2, 0, 0]
    assert gen.last_loss_masks[0] == observation_mask(scripts[0], ["=1776"])
    assert gen.last_loss_masks[1] == observation_mask(scripts[1], ["=5", "=5"])
    assert gen.last_loss_masks[2] == [1] * len(ids[2]) and gen.last_loss_masks[3] == [1] * len(ids[3])
    assert box.stats["calls"] == 3 and box.stats["cache_hits"] == 1 and box.stats["errors"] == 0
    assert gen.last_metrics["tools/calls_mean"] == 0.75


def test_observation_comes_from_the_tool_not_the_model():
    # the model 'believes' 2+3=9; the forced observation is the calculator's 5, and it is not trained on
    gen, _, texts, _ = rollout(["[calc: 2+3]=9\nanswer: 9"])
    assert texts == ["[calc: 2+3]=5\nanswer: 9"]
    assert gen.last_loss_masks[0] == observation_mask(texts[0], ["=5"])


def test_max_tool_calls_refuses_further_calls_without_counting_them():
    script = "[calc: 1+1]=2\n[calc: 1+1]=2\n[calc: 1+1]\nanswer: 2"
    gen, box, texts, _ = rollout([script], max_tool_calls=2)
    assert texts == [script] and gen.last_columns[0]["num_tool_calls"] == 2
    assert gen.last_metrics["tools/calls_refused"] == 1 and box.stats["calls"] == 2


def test_budget_counts_observation_tokens():
    gen, _, texts, ids = rollout(["[calc: 37*48]=1776\nanswer: 1776"], max_new_tokens=16)
    assert len(ids[0]) == 16 and texts[0] == "[calc: 37*48]=17"   # the observation is cut by the budget
    assert gen.last_loss_masks[0] == [1] * 13 + [0] * 3


def test_malicious_and_runaway_calls_are_contained(tmp_path):
    target = tmp_path / "pwned"
    calls = [f"__import__('os').system('touch {target}')",
             "().__class__.__base__.__subclasses__()",
             "9**9**9",
             "((((((10**64)**64)**64)**64)**64)**64)**64",
             "open('/etc/passwd').read()"]
    scripts = [f"[calc: {c}]={TOOL_ERROR_OBSERVATION}\nanswer: 1" for c in calls]
    started = time.perf_counter()
    gen, box, texts, _ = rollout(scripts, max_new_tokens=200)
    assert time.perf_counter() - started < 10
    assert texts == scripts                                        # each call got the fixed error observation
    assert [c["tool_errors"] for c in gen.last_columns] == [1] * len(calls)
    assert [c["num_tool_calls"] for c in gen.last_columns] == [1] * len(calls)   # executed (and failed): counted
    assert box.stats["errors"] == len(calls) and gen.last_metrics["tools/errors"] == len(calls)
    assert not target.exists()


def test_syntax_must_name_a_tool_in_the_box():
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="does not have"):
        ToolRolloutGenerator(ScriptedLM(["x"]), TOK, ToolBox([Calculator()]),
                             [ToolSyntax("<py>", "</py>", "Python", "code")], max_new_tokens=4)


def test_sampling_is_deterministic_given_the_seed():
    model = tiny_causal_lm(TOK, hidden_size=32, seed=1)
    gen = ToolRolloutGenerator(model, TOK, ToolBox([Calculator()]), [CALCULATOR_SYNTAX], max_new_tokens=20,
                               batch_size=2)
    prompts = [[TOK.bos_token_id] + TOK(p, add_special_tokens=False).input_ids for p in ("Q: 1+1\n", "Q: 7\n", "a")]
    first = gen.generate(prompts, 4, seed=5)
    assert gen.generate(prompts, 4, seed=5) == first and gen.generate(prompts, 4, seed=6) != first
    # the KV-cached sampler draws from the model's distribution: greedy equals argmax of full forwards
    greedy = gen.generate(prompts[:1], 1, seed=0, do_sample=False)[0]
    ids = list(prompts[0])
    for _ in range(len(greedy)):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert greedy == ids[len(prompts[0]):]


def test_round_with_loss_masks_round_trips_through_json():
    import json

    ex = Example(3, [1, 2], [[5, 6, 7], [8]], {"rewards": [1.0, 0.0]}, loss_mask=[[1, 0, 1], [1]])
    again = Round.from_json(json.loads(json.dumps(Round(0, [ex], [[0]]).to_json())))
    assert again.examples[0] == ex and again.examples[0].trained_tokens(0) == 2
    old = {k: v for k, v in ex.to_json().items() if k != "loss_mask"}   # a round saved before loss masks existed
    assert Example.from_json(old).loss_mask is None and Example.from_json(old).trained_tokens(0) == 3
