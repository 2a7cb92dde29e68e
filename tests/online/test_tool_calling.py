"""Tool calling inside GRPO runs (preflab.online.tool_calling), against TRL 1.16's GRPOTrainer._tool_call_loop.

The turns are sampled by a scripted generator (its answer is a function of the context: which prompt, how many tool
results it holds), so the tool loop's tokens, masks and counts are exact values, and TRL's loop on a stand-in trainer
object (its _generate_single_turn answering from the same script) gives the same ones. The tokenizer is the tiny
char-level one with a small tool-calling chat template and a response_template written here."""
import copy
import math
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.rollout import prepare_prompts
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.online.tool_calling import (ToolCallingGenerator, calculator, load_tools, parse_turn, run_tool_calls,
                                         tool_suffix_ids, tool_template_problem)

sys.path.insert(0, str(Path(__file__).parent))

TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|system|>\ntools:{% for t in tools %} {{ t.function.name }}{% endfor %}"
    "{{ eos_token }}\n{% endif %}{% for m in messages %}"
    "{% if m.role == 'assistant' %}<|assistant|>\n{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>"
    "{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}</tool_call>"
    "{% endfor %}{{ eos_token }}\n"
    "{% elif m.role == 'tool' %}<|tool|>\n{{ m.content }}{{ eos_token }}\n"
    "{% else %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"}, "start_anchor": "<|assistant|>\n",
    "fields": {"tool_calls": {"open": "<tool_call>", "close": "</tool_call>", "repeats": True, "content": "json",
                              "transform": {"type": "function", "function": "{content}"}},
               "content": {"close": "</s>", "content": "text"}}}


def add(a: int, b: int) -> int:
    """Adds two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


def tool_tokenizer():
    tok = tiny_tokenizer("char")
    tok.chat_template = TEMPLATE
    tok.response_template = RESPONSE_TEMPLATE
    return tok


def call(name, **arguments) -> str:
    import json

    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def script(context: str) -> str:
    """The scripted model's next assistant turn, from the conversation so far (its text)."""
    results = context.count("<|tool|>")
    if "two plus three" in context:
        return f"ok{call('add', a=2, b=3)}</s>" if results == 0 else "it is 5</s>"
    if "both" in context:  # two calls in one turn, then the answer
        return f"{call('add', a=1, b=1)}{call('add', a=4, b=5)}</s>" if results == 0 else "2 and 9</s>"
    if "broken" in context:  # an unknown tool, then a failing call, then text
        if results == 0:
            return f"{call('mul', a=2, b=3)}</s>"
        return f"{call('add', a='x', b=3)}</s>" if results == 1 else "gave up</s>"
    if "forever" in context:
        return f"again{call('add', a=results, b=1)}</s>"
    return "no tools</s>"


class ScriptedTurns:
    """A generator (online/generator.py's interface) answering with `script`, cut at max_new_tokens."""

    def __init__(self, tok, max_new_tokens, vary=False):
        self.tok, self.max_new_tokens, self.vary, self.calls = tok, max_new_tokens, vary, []

    def generate(self, prompt_ids, num_generations, seed):
        self.calls.append((len(prompt_ids), num_generations, seed, self.max_new_tokens))
        out = []
        g = torch.Generator().manual_seed(seed)
        for p in prompt_ids:
            for _ in range(num_generations):
                text = script(self.tok.decode(p))
                if self.vary and torch.rand((), generator=g) < 0.5 and "<tool_call>" not in text:  # a seeded
                    # variant of a final answer: a longer one
                    text = text.replace("</s>", " indeed</s>")
                out.append(self.tok(text, add_special_tokens=False).input_ids[:self.max_new_tokens])
        return out


PROMPTS = [[{"role": "user", "content": "what is two plus three ?"}],
           [{"role": "user", "content": "add both pairs"}],
           [{"role": "user", "content": "a broken call"}],
           [{"role": "user", "content": "hello"}]]


def prompt_ids(tok, prompts=PROMPTS, tools=(add,)):
    return [r.prompt_ids for r in prepare_prompts([{"prompt": p} for p in prompts], tok, tools=list(tools))]


def ids_of(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_calls_run_and_observations_sit_where_the_template_puts_them():
    tok = tool_tokenizer()
    gen = ToolCallingGenerator(ScriptedTurns(tok, 400), tok, [add], None, 400)
    ids = gen.generate(prompt_ids(tok, PROMPTS[:1]), 2, seed=7)
    first, post = ids_of(tok, f"ok{call('add', a=2, b=3)}</s>"), ids_of(tok, "it is 5</s>")
    observation = ids_of(tok, "\n<|tool|>\n5</s>\n<|assistant|>\n")  # the template's tool turn + next header
    assert ids == [first + observation + post] * 2
    assert gen.last_loss_masks == [[1] * len(first) + [0] * len(observation) + [1] * len(post)] * 2
    assert gen.last_columns == [{"num_tool_calls": 1, "tool_errors": 0}] * 2
    assert gen.last_messages[0] == [
        {"role": "assistant", "content": "ok",
         "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
        {"role": "tool", "name": "add", "content": "5"}, {"role": "assistant", "content": "it is 5"}]
    assert gen.last_metrics == {"tools/call_frequency": 1.0, "tools/failure_frequency": 0.0, "tools/calls": 2.0,
                                "tools/failures": 0.0, "tools/timeouts": 0.0}


def test_prompts_render_the_tools_and_the_rows_columns_stay_the_files():
    tok = tool_tokenizer()
    rows = prepare_prompts([{"prompt": PROMPTS[0], "id": 3}], tok, tools=[add])
    assert tok.decode(rows[0].prompt_ids) == "<s><|system|>\ntools: add</s>\n<|user|>\nwhat is two plus three ?</s>\n" \
                                             "<|assistant|>\n"
    assert rows[0].columns == {"id": 3}


def test_failures_give_error_observations_and_are_counted():
    tok = tool_tokenizer()
    gen = ToolCallingGenerator(ScriptedTurns(tok, 600), tok, [add], None, 600)
    ids = gen.generate(prompt_ids(tok, PROMPTS[1:3]), 1, seed=0)
    both, broken = gen.last_messages
    assert [m["content"] for m in both if m["role"] == "tool"] == ["2", "9"]  # two calls, two tool messages
    errors = [m["content"] for m in broken if m["role"] == "tool"]
    assert errors[0] == "{'error': 'Tool mul not found.'}"
    assert errors[1].startswith("{'error': ") and "str" in errors[1]  # 'x' + 3: the TypeError's text
    assert gen.last_columns == [{"num_tool_calls": 2, "tool_errors": 0}, {"num_tool_calls": 2, "tool_errors": 2}]
    assert gen.last_metrics["tools/failure_frequency"] == 2 / 4
    assert gen.last_metrics["tools/call_frequency"] == 4 / 2
    # the two tool messages of one turn are rendered together after it
    suffix = tool_suffix_ids(tok, [m for m in both if m["role"] == "tool"])
    assert tok.decode(suffix) == "\n<|tool|>\n2</s>\n<|tool|>\n9</s>\n<|assistant|>\n"
    first = ids_of(tok, f"{call('add', a=1, b=1)}{call('add', a=4, b=5)}</s>")
    assert ids[0] == first + suffix + ids_of(tok, "2 and 9</s>")


def test_loss_mask_is_zero_exactly_on_tool_tokens():
    tok = tool_tokenizer()
    gen = ToolCallingGenerator(ScriptedTurns(tok, 600), tok, [add], None, 600)
    ids = gen.generate(prompt_ids(tok), 1, seed=0)
    for c, m, conv in zip(ids, gen.last_loss_masks, gen.last_messages):
        assert len(m) == len(c)
        model_text = "".join(tok.decode([t]) for t, keep in zip(c, m) if keep)
        tool_text = "".join(tok.decode([t]) for t, keep in zip(c, m) if not keep)
        assert tool_text.count("<|tool|>") == sum(msg["role"] == "tool" for msg in conv)
        assert "<|tool|>" not in model_text and "<tool_call>" not in tool_text
    assert gen.last_loss_masks[3] == [1] * len(ids_of(tok, "no tools</s>"))  # no call: all trained


def _forever_budget(tok, turns: int) -> int:
    """A budget that holds `turns` tool-calling turns of the endless prompt and the tool results of all but the last
    (5 tokens to spare: the last result's tool turn does not fit)."""
    total = 0
    for r in range(turns):
        total += len(ids_of(tok, f"again{call('add', a=r, b=1)}</s>"))
        if r < turns - 1:
            total += len(ids_of(tok, f"\n<|tool|>\n{r + 1}</s>\n<|assistant|>\n"))
    return total + 5


@pytest.mark.parametrize("cap, calls", [(0, 0), (1, 1), (2, 2), (None, 3)])
def test_max_tool_calling_iterations_caps_the_turns(cap, calls):
    """cap n: n rounds of tool results (the last turn's call is not run); None: only the budget stops the loop, at
    the call whose result does not fit (run and counted, its result dropped, as TRL's loop)."""
    tok = tool_tokenizer()
    budget = _forever_budget(tok, calls + 1) if cap is None else 600
    gen = ToolCallingGenerator(ScriptedTurns(tok, budget), tok, [add], cap, budget)
    ids = gen.generate(prompt_ids(tok, [[{"role": "user", "content": "loop forever"}]]), 1, seed=0)
    assert gen.last_columns == [{"num_tool_calls": calls + (1 if cap is None else 0), "tool_errors": 0}]
    turns = [m for m in gen.last_messages[0] if m["role"] == "assistant"]
    assert len(turns) == calls + 1 and all(t.get("tool_calls") for t in turns)
    assert [m["content"] for m in gen.last_messages[0] if m["role"] == "tool"] == [str(r + 1) for r in range(calls)]
    assert len(ids[0]) <= budget and sum(1 - m for m in gen.last_loss_masks[0]) == sum(
        len(ids_of(tok, f"\n<|tool|>\n{r + 1}</s>\n<|assistant|>\n")) for r in range(calls))


def test_a_result_past_the_budget_is_dropped_and_the_completion_kept():
    tok = tool_tokenizer()
    first = ids_of(tok, f"ok{call('add', a=2, b=3)}</s>")
    budget = len(first) + 5  # the tool turn's tokens do not fit
    gen = ToolCallingGenerator(ScriptedTurns(tok, budget), tok, [add], None, budget)
    ids = gen.generate(prompt_ids(tok, PROMPTS[:1]), 1, seed=0)
    assert ids == [first] and gen.last_loss_masks == [[1] * len(first)]
    assert gen.last_columns == [{"num_tool_calls": 1, "tool_errors": 0}]  # executed, counted (as TRL)
    assert [m["role"] for m in gen.last_messages[0]] == ["assistant"]


def test_continuations_are_cut_to_the_budget_left():
    tok = tool_tokenizer()
    first = ids_of(tok, f"ok{call('add', a=2, b=3)}</s>")
    observation = ids_of(tok, "\n<|tool|>\n5</s>\n<|assistant|>\n")
    budget = len(first) + len(observation) + 3
    turns = ScriptedTurns(tok, budget)
    gen = ToolCallingGenerator(turns, tok, [add], None, budget)
    ids = gen.generate(prompt_ids(tok, PROMPTS[:1]), 1, seed=11)
    assert ids == [first + observation + ids_of(tok, "it ")]
    assert turns.calls == [(1, 1, 11, budget), (1, 1, 11 + 1_000_003, 3)]  # the continuation asks for what is left
    assert turns.max_new_tokens == budget


def test_a_tool_turn_that_fills_the_budget_leaves_no_room_and_no_empty_draw():
    tok = tool_tokenizer()
    first = ids_of(tok, f"ok{call('add', a=2, b=3)}</s>")
    observation = ids_of(tok, "\n<|tool|>\n5</s>\n<|assistant|>\n")
    budget = len(first) + len(observation)
    turns = ScriptedTurns(tok, budget)
    gen = ToolCallingGenerator(turns, tok, [add], None, budget)
    assert gen.generate(prompt_ids(tok, PROMPTS[:1]), 1, seed=0) == [first + observation]
    assert turns.calls[1][3] == 1 and gen.last_loss_masks == [[1] * len(first) + [0] * len(observation)]
    assert [m["role"] for m in gen.last_messages[0]] == ["assistant", "tool"]


def _trl_loop(tok, tools, prompts, cap, budget, positions=10_000):
    """TRL 1.16's GRPOTrainer._tool_call_loop on a stand-in trainer whose _generate_single_turn answers from the
    script; the first turn parsed with TRL's parse_response, as GRPOTrainer._generate does."""
    from types import SimpleNamespace

    from trl.chat_template_utils import parse_response
    from trl.trainer.grpo_trainer import GRPOTrainer

    def single_turn(ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = [ids_of(tok, script(tok.decode(p)))[:budget] for p in ids for _ in range(num_generations)]
        return out, None

    trainer = SimpleNamespace(
        max_tool_calling_iterations=cap if cap is not None else sys.maxsize, max_completion_length=budget,
        processing_class=tok, _tokenizer=tok, _is_vlm=False, chat_template=None, chat_template_kwargs={},
        use_vllm=False, model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=positions)), tools=tools,
        environment_factories=None, _generate_single_turn=single_turn)
    trainer._sync_tool_dicts = None  # set per completion below
    trainer._get_tool_suffix_ids = lambda messages: GRPOTrainer._get_tool_suffix_ids(trainer, messages)
    p_ids = [list(tok.apply_chat_template(p, tools=tools, add_generation_prompt=True, tokenize=True,
                                          return_dict=False)) for p in prompts]
    completion_ids = [ids_of(tok, script(tok.decode(p)))[:budget] for p in p_ids]
    completions = [[parse_response(tok, c, prefix=p, tools=tools)] for c, p in zip(completion_ids, p_ids)]
    trainer._sync_tool_dicts = [{fn.__name__: fn for fn in tools} for _ in prompts]
    trainer._async_tool_dicts = [{} for _ in prompts]
    mask, completions, completion_ids, _, calls, failures, _ = GRPOTrainer._tool_call_loop(
        trainer, copy.deepcopy(prompts), p_ids, completion_ids, completions, None, None, {})
    return p_ids, completion_ids, mask, completions, calls, failures


@pytest.mark.parametrize("cap, budget", [(None, 600), (1, 600), (3, 300), (None, 75)])
def test_equals_trls_tool_call_loop(cap, budget):
    pytest.importorskip("trl")
    tok = tool_tokenizer()
    prompts = PROMPTS + [[{"role": "user", "content": "loop forever"}]]
    p_ids, trl_ids, trl_mask, trl_completions, trl_calls, trl_failures = _trl_loop(tok, [add], prompts, cap, budget)
    ours = prompt_ids(tok, prompts)
    assert ours == p_ids  # the prompts, tools rendered, are TRL's tokens
    gen = ToolCallingGenerator(ScriptedTurns(tok, budget), tok, [add], cap, budget)
    ids = gen.generate(ours, 1, seed=0)
    assert ids == trl_ids
    assert gen.last_loss_masks == trl_mask
    assert gen.last_messages == trl_completions
    assert sum(c["num_tool_calls"] for c in gen.last_columns) == trl_calls
    assert sum(c["tool_errors"] for c in gen.last_columns) == trl_failures
    assert gen.last_metrics["tools/call_frequency"] == trl_calls / len(prompts)  # TRL: calls / completions
    assert gen.last_metrics["tools/failure_frequency"] == (trl_failures / trl_calls if trl_calls else 0.0)


@pytest.mark.parametrize("spare", [0, 1])
def test_a_tool_turn_that_reaches_the_policys_positions_is_dropped_as_trls_loop_drops_it(spare):
    """TRL's loop drops a tool result when prompt + completion + tool tokens >= max_position_embeddings (no position
    is left to sample the next turn from): at exactly the policy's positions the completion stays as it was (its
    call counted), with one position to spare the result and the next turn are appended; both as TRL's loop."""
    pytest.importorskip("trl")
    tok = tool_tokenizer()
    prompts = PROMPTS[:1]
    ours = prompt_ids(tok, prompts)
    first = ids_of(tok, f"ok{call('add', a=2, b=3)}</s>")
    observation = ids_of(tok, "\n<|tool|>\n5</s>\n<|assistant|>\n")
    positions = len(ours[0]) + len(first) + len(observation) + spare
    gen = ToolCallingGenerator(ScriptedTurns(tok, 400), tok, [add], None, 400, max_positions=positions)
    ids = gen.generate(ours, 1, seed=0)
    if spare:
        assert ids == [first + observation + ids_of(tok, "it is 5</s>")]
    else:
        assert ids == [first] and gen.last_loss_masks == [[1] * len(first)]
    assert gen.last_columns == [{"num_tool_calls": 1, "tool_errors": 0}]
    _, trl_ids, trl_mask, trl_completions, _, _ = _trl_loop(tok, [add], prompts, None, 400, positions=positions)
    assert (ids, gen.last_loss_masks, gen.last_messages) == (trl_ids, trl_mask, trl_completions)


def test_around_the_real_generator_without_calls_it_is_the_generator():
    """With the run's transformers generator inside (a random tiny model writes no tool call), the tool loop changes
    nothing: the same draws, every token trained, no calls."""
    from preflab.online.generator import TransformersGenerator

    tok = tool_tokenizer()
    policy = tiny_causal_lm(tok, hidden_size=32, seed=1)
    plain = TransformersGenerator(policy, tok.eos_token_id, tok.pad_token_id, 12)
    wrapped = ToolCallingGenerator(TransformersGenerator(policy, tok.eos_token_id, tok.pad_token_id, 12), tok, [add],
                                   None, 12)
    ids = wrapped.generate(prompt_ids(tok), 2, seed=5)
    assert ids == plain.generate(prompt_ids(tok), 2, seed=5)
    assert wrapped.last_loss_masks == [[1] * len(c) for c in ids]
    assert wrapped.last_metrics["tools/calls"] == 0.0 and wrapped.turns.max_new_tokens == 12


def test_parse_falls_back_to_text_on_a_malformed_call():
    tok = tool_tokenizer()
    prefix = prompt_ids(tok, PROMPTS[:1])[0]
    bad = ids_of(tok, '<tool_call>{"name": "add", "argu</s>')
    assert parse_turn(tok, bad, prefix, [add]) == {"role": "assistant", "content": '<tool_call>{"name": "add", "argu'}


def test_a_parsed_turn_drops_the_eos_its_response_template_keeps_as_trls_parse_response():
    """A response_template whose content field has no close keeps the eos text in the content (transformers' parser;
    TRL's parse_response removes it, transformers issue 42249): the turn's content is the text without it, and a call
    turn's content is empty, as TRL's."""
    pytest.importorskip("trl")
    from trl.chat_template_utils import parse_response

    tok = tool_tokenizer()
    fields = {**RESPONSE_TEMPLATE["fields"], "content": {"content": "text"}}
    tok.response_template = {**RESPONSE_TEMPLATE, "fields": fields}
    prefix = prompt_ids(tok, PROMPTS[:1])[0]
    answer, calling = ids_of(tok, "it is 5</s>"), ids_of(tok, f"ok{call('add', a=2, b=3)}</s>")
    assert tok.parse_response(answer, prefix=prefix, tools=[add])["content"] == "it is 5</s>"  # the parser keeps it
    assert parse_turn(tok, answer, prefix, [add]) == {"role": "assistant", "content": "it is 5"}
    turn = parse_turn(tok, calling, prefix, [add])
    assert turn["content"] == "" and turn["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 2, "b": 3}}
    for ids in (answer, calling):
        assert parse_turn(tok, ids, prefix, [add]) == parse_response(tok, ids, prefix=prefix, tools=[add])


def test_a_call_with_null_or_no_arguments_is_a_call_without_arguments_as_trls():
    """A call whose arguments are null or left out (templates such as Qwen3.5's omit them for a call without
    arguments) parses to arguments {}, as TRL's parse_response normalises it, and the tool runs without a failure."""
    pytest.importorskip("trl")
    from trl.chat_template_utils import parse_response

    def ping() -> str:
        """Answers pong."""
        return "pong"

    tok = tool_tokenizer()
    prefix = prompt_ids(tok, PROMPTS[:1], tools=(ping,))[0]
    for body in ('{"name": "ping", "arguments": null}', '{"name": "ping"}'):
        ids = ids_of(tok, f"<tool_call>{body}</tool_call></s>")
        turn = parse_turn(tok, ids, prefix, [ping])
        assert turn["tool_calls"] == [{"type": "function", "function": {"name": "ping", "arguments": {}}}]
        assert turn == parse_response(tok, ids, prefix=prefix, tools=[ping])
        assert run_tool_calls(turn["tool_calls"], {"ping": ping}) == (
            [{"role": "tool", "name": "ping", "content": "pong"}], 0, 0)


def test_async_tools_run_after_the_sync_ones_as_trl_orders_them():
    async def slow_double(x: int) -> int:
        """Doubles.

        Args:
            x: The number.
        """
        return 2 * x

    calls = [{"type": "function", "function": {"name": "slow_double", "arguments": {"x": 4}}},
             {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}},
             {"type": "other", "name": "z"}]
    messages, failed, timed_out = run_tool_calls(calls, {"add": add, "slow_double": slow_double})
    assert messages == [{"role": "tool", "name": "add", "content": "3"},
                        {"role": "tool", "name": "z", "content": "{'error': 'Unsupported tool call type: other'}"},
                        {"role": "tool", "name": "slow_double", "content": "8"}]
    assert (failed, timed_out) == (1, 0)
    # under a time limit the same calls give the same messages (each runs in a worker thread)
    assert run_tool_calls(calls, {"add": add, "slow_double": slow_double}, 5.0) == (messages, 1, 0)


def _hanging_tools(release):
    """A sync and an async tool that wait until `release` is set (the async one blocks its event loop too, as a
    sync sleep inside async def does), and a quick one."""
    import asyncio
    import threading

    def hang(x: int) -> int:
        """Waits.

        Args:
            x: A number.
        """
        release.wait(30)
        return x

    async def hang_async(x: int) -> int:
        """Waits without yielding.

        Args:
            x: A number.
        """
        release.wait(30)
        return x

    async def nap(x: int) -> int:
        """Sleeps politely.

        Args:
            x: A number.
        """
        await asyncio.sleep(30)
        return x

    assert threading  # (imported for the Event the caller passes)
    return {"hang": hang, "hang_async": hang_async, "nap": nap, "add": add}


def test_a_call_past_tool_timeout_s_is_an_error_observation_counted_as_a_timeout():
    """A sync call past the limit (abandoned in its thread), an async one that yields (cancelled) and one that
    blocks its loop: error observations naming the tool and the limit, failures and timeouts; the quick calls around
    them give their results."""
    import threading
    import time

    release = threading.Event()
    try:
        tools = _hanging_tools(release)
        fn_call = [{"type": "function", "function": {"name": n, "arguments": a}}
                   for n, a in (("add", {"a": 1, "b": 2}), ("hang", {"x": 1}), ("nap", {"x": 2}),
                                ("hang_async", {"x": 3}), ("add", {"a": 2, "b": 2}))]
        start = time.monotonic()
        messages, failed, timed_out = run_tool_calls(fn_call, tools, 0.3)
        assert time.monotonic() - start < 5  # 0.3 s (sync) + 1.3 s at most (the gather), not 30 s
        assert [m["name"] for m in messages] == ["add", "hang", "add", "nap", "hang_async"]
        assert [m["content"] for m in messages if m["name"] == "add"] == ["3", "4"]
        for m in messages[1:2] + messages[3:]:
            assert m["content"].startswith("{'error': ")
            assert f"tool '{m['name']}' did not return within tool_timeout_s = 0.3 s" in m["content"]
        assert (failed, timed_out) == (3, 3)
    finally:
        release.set()


def test_timeouts_reach_the_metrics_and_the_note(capsys):
    import threading

    release = threading.Event()
    tok = tool_tokenizer()

    def slow_add(a: int, b: int) -> int:
        """Adds two integers, slowly.

        Args:
            a: The first integer.
            b: The second integer.
        """
        release.wait(30)
        return a + b

    slow_add.__name__ = "add"  # the script calls `add`: it hangs now
    try:
        gen = ToolCallingGenerator(ScriptedTurns(tok, 600), tok, [slow_add], 1, 600, timeout_s=0.2)
        gen.generate(prompt_ids(tok, PROMPTS[:2], tools=[slow_add]), 1, seed=0)
    finally:
        release.set()
    # prompt 0: one call, prompt 1: two, every one timed out (one round: max_tool_calling_iterations 1)
    assert gen.last_columns == [{"num_tool_calls": 1, "tool_errors": 1}, {"num_tool_calls": 2, "tool_errors": 2}]
    assert (gen.last_metrics["tools/timeouts"], gen.last_metrics["tools/failures"]) == (3.0, 3.0)
    assert all("did not return within tool_timeout_s = 0.2 s" in m["content"]
               for conv in gen.last_messages for m in conv if m["role"] == "tool")
    out = capsys.readouterr().out
    assert out.count("a tool call timed out") == 1 and "online.tool_timeouts" in out


def test_a_list_result_is_refused_naming_the_tool():
    """TRL passes a list result (content blocks) to a VLM's processor; a text policy's run refuses it."""
    def picture(x: int) -> list:
        """Returns content blocks.

        Args:
            x: A number.
        """
        return [{"type": "text", "text": str(x)}]

    call_ = [{"type": "function", "function": {"name": "picture", "arguments": {"x": 1}}}]
    with pytest.raises(ConfigError, match="tool 'picture' returned a list"):
        run_tool_calls(call_, {"picture": picture})


def test_builtin_tools_and_user_files(tmp_path):
    assert calculator("37 * 48") == "1776"
    with pytest.raises(ValueError):
        calculator("__import__('os')")
    (tmp_path / "my_tools.py").write_text(
        'def shout(text: str) -> str:\n    """Upper case.\n\n    Args:\n        text: The text.\n    """\n'
        '    return text.upper()\n\n\ndef bare(x):\n    return x\n')
    tools = load_tools(["calculator", f"{tmp_path}/my_tools.py:shout"])
    assert [t.__name__ for t in tools] == ["calculator", "shout"] and tools[1]("hi") == "HI"
    with pytest.raises(ConfigError, match="JSON schema"):
        load_tools([f"{tmp_path}/my_tools.py:bare"])
    with pytest.raises(ConfigError, match="not a built-in tool"):
        load_tools([{"type": "function", "function": {"name": "x"}}])
    with pytest.raises(ConfigError, match="more than one tool is named"):
        load_tools(["calculator", "calculator"])


def test_python_builtin_runs_in_the_sandbox():
    from preflab.online.tool_calling import python

    try:
        out = python("print(6 * 7)")
    except RuntimeError as exc:  # a machine whose sandbox cannot start: the tool fails, which the loop counts
        pytest.skip(f"sandbox unavailable here: {exc}")
    assert out == "42"


def test_refusals_name_the_reason():
    tok = tiny_tokenizer("char")  # the plain tiny template: no tool_calls, no tool role
    assert "drops part of a tool-calling conversation" in tool_template_problem(tok)
    tok = tool_tokenizer()
    tok.response_template = None
    assert "no response_template" in tool_template_problem(tok)
    assert tool_template_problem(tool_tokenizer()) is None
    not_prefix = tool_tokenizer()  # a template that renders the last assistant turn differently
    not_prefix.chat_template = TEMPLATE.replace("{% if m.role == 'assistant' %}<|assistant|>\n",
                                                "{% if m.role == 'assistant' %}<|assistant|>\n{% if loop.last %}!"
                                                "{% endif %}")
    assert "not prefix-preserving" in tool_template_problem(not_prefix)
    with pytest.raises(ConfigError, match="is text"):
        prepare_prompts(["a text prompt"], tool_tokenizer(), tools=[add])
    with pytest.raises(ConfigError, match="'tools' column of its own"):
        prepare_prompts([{"prompt": PROMPTS[0], "tools": [{"type": "function"}]}], tool_tokenizer(), tools=[add])


def test_template_checks_agree_with_trls_and_trls_response_template_is_used(capsys):
    """tool_template_problem's verdict is TRL's supports_tool_calling and is_chat_template_prefix_preserving on the
    same templates; a tokenizer without a response_template whose chat template TRL knows (Qwen2.5's) gets TRL's,
    said in a note."""
    trl_utils = pytest.importorskip("trl.chat_template_utils")
    from preflab.models.tiny import CHAT_TEMPLATE
    from preflab.online.tool_calling import check_tool_tokenizer

    for template in (TEMPLATE, CHAT_TEMPLATE, trl_utils.qwen2_5_chat_template):
        tok = tool_tokenizer()
        tok.chat_template = template
        trl_ok = trl_utils.supports_tool_calling(tok) and trl_utils.is_chat_template_prefix_preserving(tok)
        assert (tool_template_problem(tok) is None) == trl_ok
    tok = tiny_tokenizer("char")
    tok.chat_template = trl_utils.qwen2_5_chat_template
    check_tool_tokenizer(tok)
    assert tok.response_template == trl_utils.qwen3_template
    assert "TRL's for its chat template is used" in capsys.readouterr().out


BASE = dict(task="online", trainer="grpo", online_task="dataset", dataset_name="unused", reward_funcs="x",
            model_name_or_path="builtin:tiny-llama", learning_rate=1e-2, lr_scheduler_type="constant", beta=0.0,
            max_steps=4, num_generations=3, prompts_per_generation=4, steps_per_generation=2,
            per_device_train_batch_size=2, gradient_accumulation_steps=1, max_completion_length=300,
            logging_steps=1, disable_tqdm=True, use_cpu=True, seed=3)


def test_config_refusals():
    with pytest.raises(ConfigError, match="max_tool_calling_iterations is read by runs with tools"):
        config_from_dict({**BASE, "output_dir": "x", "max_tool_calling_iterations": 2})
    with pytest.raises(ConfigError, match="tools is read by the group recipes"):
        config_from_dict({**BASE, "trainer": "online_dpo", "output_dir": "x", "tools": ["calculator"]})
    # environment_factory is built now (tests/online/test_environment_factory.py); rollout_func still is not
    assert config_from_dict({**BASE, "output_dir": "x", "environment_factory": "my_env:Env"}).environment_factory \
        == "my_env:Env"
    with pytest.raises(ConfigError, match="rollout_func is not supported"):
        config_from_dict({**BASE, "output_dir": "x", "rollout_func": "my_env:roll"})
    cfg = config_from_dict({**BASE, "output_dir": "x", "tools": ["calculator"], "max_tool_calling_iterations": 2})
    assert cfg.tools == ["calculator"] and cfg.max_tool_calling_iterations == 2 and cfg.tool_timeout_s == 60.0
    with pytest.raises(ConfigError, match="tool_timeout_s is read by runs with tools"):
        config_from_dict({**BASE, "output_dir": "x", "tool_timeout_s": 5})
    for bad in (0, -1, float("inf"), "soon"):
        with pytest.raises(ConfigError, match="tool_timeout_s"):
            config_from_dict({**BASE, "output_dir": "x", "tools": ["calculator"], "tool_timeout_s": bad})
    cfg = config_from_dict({**BASE, "output_dir": "x", "tools": ["calculator"], "tool_timeout_s": None})
    assert cfg.tool_timeout_s is None


def reward(prompts, completions, **kwargs):
    """TRL's signature; completions are the conversations: the last assistant turn's length, less 3 per tool error."""
    return [len(c[-1]["content"]) - 3 * sum("error" in m["content"] for m in c if m["role"] == "tool")
            for c in completions]


def tool_run(tmp_path, monkeypatch, heldout=None, **over):
    """A tiny GRPO run with tools whose turns are ScriptedTurns; `heldout` prompts: the held-out evaluation
    (online_task: dataset's dataset_evaluate), its turns scripted too (tasks.EvalTurns)."""
    import preflab.online.generator as generator_module
    import preflab.online.tasks as tasks_module
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task, dataset_evaluate

    tok = tool_tokenizer()
    monkeypatch.setattr(generator_module, "make_generator",
                        lambda cfg, policy, tokenizer, acc=None: ScriptedTurns(tok, cfg.max_completion_length, True))
    monkeypatch.setattr(tasks_module, "EvalTurns",
                        lambda cfg, model, tokenizer, sampled: ScriptedTurns(tok, cfg.max_completion_length, True))
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path), "tools": [f"{Path(__file__)}:add"], **over})
    policy = tiny_causal_lm(tok, hidden_size=32, seed=1)
    held = [{"prompt": p} for p in heldout or []]
    task = Task([{"prompt": p} for p in PROMPTS], [reward], held,
                dataset_evaluate(cfg, held, [reward]) if held else None)
    return OnlineRun(cfg, policy=policy, tokenizer=tok, task=task)


def test_run_trains_on_the_masked_completions_and_logs_trls_metrics(tmp_path, monkeypatch):
    run = tool_run(tmp_path, monkeypatch)
    summary = run.train()
    # summary.json: the run's totals over its 2 rounds (15 calls a round, 6 of them failing)
    assert (summary["online"]["tool_calls"], summary["online"]["tool_failures"]) == (30, 12)
    assert summary["online"]["tool_timeouts"] == 0
    rnd = run.pending
    for e in rnd.examples:  # the examples' loss masks are the generator's: 0 exactly on the tool turns
        for c, m in zip(e.completions, e.loss_mask):
            tool_text = "".join(run.tokenizer.decode([t]) for t, keep in zip(c, m) if not keep)
            assert tool_text.count("<|tool|>") == run.tokenizer.decode(c).count("<|tool|>")
    metrics = rnd.metrics
    # per round: prompt 0 one call, prompt 1 two, prompt 2 two (both failing), prompt 3 none; K = 3 each
    assert metrics["tools/call_frequency"] == (3 * 1 + 3 * 2 + 3 * 2) / 12
    assert metrics["tools/failure_frequency"] == 6 / 15
    masks = [m for e in rnd.examples for m in e.loss_mask]
    assert metrics["completions/mean_length"] == pytest.approx(sum(sum(m) for m in masks) / len(masks))
    logged = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "tools/call_frequency" in line]
    assert logged and all(math.isclose(__import__("json").loads(line)["tools/call_frequency"], 15 / 12)
                          for line in logged)


@pytest.mark.parametrize("k", [None, 2])
def test_heldout_evaluation_answers_with_the_tools(tmp_path, monkeypatch, k):
    """The held-out prompts are answered through the tool-calling loop (greedy: one answer, or num_generations_eval
    sampled ones) and judged on the conversations: eval_reward and eval_tools/* equal the loop run directly on the
    same prompts at the run's seed; the summary holds them before and after; training's tool totals leave them out."""
    held = [PROMPTS[2], PROMPTS[0]]
    run = tool_run(tmp_path, monkeypatch, heldout=held, eval_dataset_name="held.jsonl",
                   **({"num_generations_eval": k} if k else {}))
    summary = run.train()
    tok = tool_tokenizer()
    direct = ToolCallingGenerator(ScriptedTurns(tok, 300, True), tok, [add], None, 300, timeout_s=60.0)
    direct.generate(prompt_ids(tok, held), k or 1, seed=3)
    rewards = reward(None, direct.last_messages)
    final = summary["final_metrics"]
    assert final["eval_reward"] == pytest.approx(sum(rewards) / len(rewards))
    # per held-out answer: the broken prompt's 2 failing calls, the sum's 1 call
    assert direct.last_metrics["tools/call_frequency"] == 3 / 2 and direct.last_metrics["tools/failures"] == 2 * (k or 1)
    for key, value in direct.last_metrics.items():
        assert final[f"eval_{key}"] == value
    assert summary["eval_tools_before"] == summary["eval_tools_after"] == direct.last_metrics
    assert summary["eval_reward_before"] == summary["eval_reward_after"] == final["eval_reward"]  # scripted turns
    assert summary["examples_after"][0]["response"] == direct.last_messages[0]
    assert (summary["online"]["tool_calls"], summary["online"]["tool_failures"]) == (30, 12)  # training's only
    # the held-out prompts are rendered with the tools, as the training prompts are (the tool list in the template)
    assert summary["data"]["eval_prompt_tokenize"]["prompt_tokens"] == sum(len(p) for p in prompt_ids(tok, held))


def test_heldout_evaluation_with_the_real_model_is_its_eval_answers():
    """Around the real eval answers (EvalTurns: _eval_answers, greedy or sampled at the seed), a random tiny model
    writes no call: the evaluation with tools judges exactly _eval_answers' completions of the tool-rendered prompts,
    as single assistant turns, and counts no calls."""
    from preflab.online.tasks import _eval_answers, dataset_evaluate

    tok = tool_tokenizer()
    policy = tiny_causal_lm(tok, hidden_size=32, seed=1)
    seen = []

    def judge(prompts, completions, **kwargs):
        seen.extend(completions)
        return [float(len(c[-1]["content"])) for c in completions]

    for over in ({}, {"num_generations_eval": 2}):
        cfg = config_from_dict({**BASE, "output_dir": "x", "tools": ["calculator"], "max_completion_length": 12,
                                "eval_dataset_name": "held.jsonl", **over})
        seen.clear()
        out = dataset_evaluate(cfg, [{"prompt": p} for p in PROMPTS[:2]], [judge])(policy, tok, tools=[add])
        k = over.get("num_generations_eval", 1)
        rows = [p for p in prompt_ids(tok, PROMPTS[:2]) for _ in range(k)]
        ids = _eval_answers(cfg, policy, tok, rows, sampled=bool(over))
        assert seen == [[parse_turn(tok, c, p, [add])] for c, p in zip(ids, rows)]
        assert out["reward"] == pytest.approx(sum(len(c[-1]["content"]) for c in seen) / len(seen))
        assert out["tools"]["tools/calls"] == 0.0


def test_an_evaluation_that_cannot_take_tools_is_refused(tmp_path):
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    tok = tool_tokenizer()
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path), "tools": ["calculator"]})
    with pytest.raises(ConfigError, match="the task's evaluation answers without tools"):
        OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                  task=Task([{"prompt": p} for p in PROMPTS], [reward], evaluate=lambda model, tokenizer: {}))


def test_grpo_train_takes_tools_from_python(tmp_path, monkeypatch):
    """preflab.online.api.grpo_train(tools=[fn], max_tool_calling_iterations=1), as GRPOTrainer(tools=[fn]): one
    round of calls per completion (prompt 2's second, failing call is not run)."""
    import preflab.online.generator as generator_module
    from preflab.online.api import grpo_train

    tok = tool_tokenizer()
    monkeypatch.setattr(generator_module, "make_generator",
                        lambda cfg, policy, tokenizer, acc=None: ScriptedTurns(tok, cfg.max_completion_length, True))
    summary = grpo_train(tiny_causal_lm(tok, hidden_size=32, seed=1), tok, [{"prompt": p} for p in PROMPTS], reward,
                         tools=[add], max_tool_calling_iterations=1, loss_type="grpo", num_generations=3,
                         max_steps=2, max_completion_length=300, use_cpu=True, output_dir=str(tmp_path))
    # a round: K = 3 x (1 + 2 + 1 + 0) calls, 3 x 1 failing (the unknown tool); 2 rounds
    assert (summary["online"]["tool_calls"], summary["online"]["tool_failures"]) == (24, 6)
    with pytest.raises(ConfigError, match="tool_timeout_s must be a finite number of seconds > 0"):
        grpo_train(tiny_causal_lm(tok, hidden_size=32, seed=1), tok, [{"prompt": p} for p in PROMPTS], reward,
                   tools=[add], tool_timeout_s=0, max_steps=2, use_cpu=True, output_dir=str(tmp_path / "x"))


def test_resume_mid_round_is_exact(tmp_path, monkeypatch, stop_at_step):
    full = tool_run(tmp_path / "full", monkeypatch)
    full.train()
    cut = tool_run(tmp_path / "cut", monkeypatch, save_steps=1)
    with stop_at_step(cut, 3):
        cut.train()
    resumed = tool_run(tmp_path / "cut", monkeypatch, save_steps=1, resume_from_checkpoint=True)
    assert resumed.train()["resumed_from_step"] == 3
    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    start = tiny_causal_lm(tool_tokenizer(), hidden_size=32, seed=1).state_dict()
    assert any(float((a[k] - start[k]).abs().max()) > 1e-3 for k in a)  # and the weights did move


@pytest.mark.parametrize("over, message", [
    ({"generation_backend": "vllm"}, "start a new vLLM engine"),
    ({"trainer": "online_dpo"}, "tools is read by the group recipes")])
def test_run_refuses_what_tool_calling_does_not_build(tmp_path, monkeypatch, over, message):
    with pytest.raises(ConfigError, match=message):
        tool_run(tmp_path, monkeypatch, **over)


def test_run_refuses_a_tokenizer_without_tool_support(tmp_path, monkeypatch):
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    tok = tiny_tokenizer("char")
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path), "tools": ["calculator"]})
    with pytest.raises(ConfigError, match="tools: its chat template drops part of a tool-calling conversation"):
        OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                  task=Task([{"prompt": p} for p in PROMPTS], [reward]))


def test_preflab_eval_refuses_a_win_rate_of_a_run_trained_with_tools(tmp_path, capsys):
    """`preflab eval RUN --reward-fn ...` samples answers without tools: for a tool run it stops before loading,
    with the reason and the evaluation that answers with the tools."""
    import yaml

    from preflab.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**BASE, "output_dir": str(run), "tools": ["calculator"]}))
    assert main(["eval", str(run), "--data", str(tmp_path / "none.jsonl"), "--reference", "builtin:tiny-llama",
                 "--reward-fn", "demo_true_reward"]) == 2
    err = capsys.readouterr().err
    assert f"{run} was trained with tools (['calculator'])" in err and "(--reward-fn) samples plain answers" in err
    assert "eval_dataset_name or eval_fraction" in err
