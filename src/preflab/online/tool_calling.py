"""Tool calling inside GRPO-family online runs, as TRL 1.16's GRPOTrainer(tools=[...]) does it.

    tools: [calculator, my_tools.py:search]      # config: built-ins and user functions (as reward_funcs names code)
    max_tool_calling_iterations: 4                # TRL GRPOConfig's; None (the default): no limit but the budget
    tool_timeout_s: 60                            # preflab's: one call's wall-clock limit (None: none, as TRL)

The tools are Python functions with type hints and a Google-style docstring (the model sees the JSON schema
transformers' get_json_schema builds from them, rendered by the chat template: `apply_chat_template(prompt,
tools=...)`). Built-ins (BUILTIN_TOOLS): `calculator` (preflab.tools.Calculator's arithmetic, parsed with ast) and
`python` (a program run in preflab.sandbox, never in this process). User functions are trusted code, as reward
functions are.

A round (ToolCallingGenerator.generate), TRL's _tool_call_loop rule:
1. every prompt's K completions are sampled by the run's own generator (online/generator.py); each is cut at its
   first eos and parsed with the tokenizer's response parser (`tokenizer.parse_response(ids, prefix=prompt_ids,
   tools=...)`, transformers' response_template); a completion the parser cannot read is plain text (no calls).
2. for each completion whose last assistant turn holds tool_calls, every call is run in order (sync functions first,
   then async ones, as TRL gathers them); a call that raises, names no known tool, or is not of type "function"
   gives the observation `{'error': '<message>'}` and counts as a failure; so does a call past tool_timeout_s
   (counted as a timeout too: _call_sync / _gather_async). The results become tool messages
   {"role": "tool", "name": ..., "content": str(result)}; a list result (TRL's multimodal content blocks) is refused,
   naming the tool (text policies only: text_only_refusal).
3. the tool messages' tokens are the chat template's rendering of them after an assistant turn that ended in eos
   (tool_suffix_ids), including the next assistant header; they are appended to the completion with loss mask 0.
   A completion whose tokens with them would pass max_completion_length (or the policy's positions) keeps its
   completion as it was and leaves the loop (its calls still count, as TRL counts them).
4. the rest continue: one sample each from prompt + completion + tool tokens, cut to what is left of
   max_completion_length, appended with loss mask 1, parsed again; up to max_tool_calling_iterations rounds of 2-4.

Outputs per completion (OnlineRun reads them): the token ids (model and tool tokens), `last_loss_masks` (TRL's
tool_mask: 0 exactly on the tool tokens), `last_columns` ({"num_tool_calls", "tool_errors"}: calls and failed calls,
a judge's columns), `last_messages` (the conversation TRL hands its reward functions: the parsed assistant turns and
tool messages) and round totals in `last_metrics`: TRL's `tools/call_frequency` (calls per completion) and
`tools/failure_frequency` (failed / calls, 0 without calls), with the counts `tools/calls`, `tools/failures` and `tools/timeouts`.

The held-out evaluation (online/tasks.py dataset_evaluate) runs the same loop around its greedy or sampled answers
(EvalTurns).

Several processes: each holds every completion (the generator gathers them); the main process runs each tool call once
and sends the results to the others, which continue from the same tool messages. Each stretch a process runs on its
own in between ends in an agreement (generate; preflab.rank_agreement.ranks_agree): a failure on any process stops
every process with that process's error.

Determinism: the first turns are the generator's draws at `seed`; iteration t's continuations are drawn at
seed + (t + 1) x CONTINUATION_SEED_STRIDE (one sample per continued completion), so a round depends on (seed,
prompts, weights, tools' answers) only and a resumed run redraws it exactly.
"""
from __future__ import annotations

import asyncio
import inspect

from preflab.errors import ConfigError, nearest
from preflab.rank_agreement import main_result, ranks_agree

CONTINUATION_SEED_STRIDE = 1_000_003


def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression: numbers, + - * / // % **, parentheses, abs, round, min, max and sqrt.

    Args:
        expression: The arithmetic expression, e.g. "37 * 48".
    """
    from preflab.tools.calculator import evaluate_expression, format_number

    return format_number(evaluate_expression(expression))


def python(code: str) -> str:
    """Runs a Python program (no network, no files outside its folder, time and memory limits) and returns what it
    printed.

    Args:
        code: The Python program to run.
    """
    from preflab.tools.python_tool import PythonInterpreter

    return PythonInterpreter().call({"code": code})


BUILTIN_TOOLS = {"calculator": calculator, "python": python}


def load_tools(specs) -> list:
    """The tool functions the config's `tools` names: built-in names (BUILTIN_TOOLS) or 'module:function' /
    'path/to/file.py:function'; callables (from Python) are taken as they are. Each must give transformers a JSON
    schema (type hints and an Args: docstring, as TRL requires); names must be distinct."""
    from transformers.utils import get_json_schema

    specs = [specs] if isinstance(specs, str) or callable(specs) else list(specs or [])
    tools = []
    for spec in specs:
        if callable(spec):
            fn = spec
        elif isinstance(spec, str) and spec in BUILTIN_TOOLS:
            fn = BUILTIN_TOOLS[spec]
        elif isinstance(spec, str) and ":" in spec:
            from preflab.plugins import import_object

            fn = import_object(spec, "tools")
        else:
            raise ConfigError(f"tools: {spec!r} is not a built-in tool ({', '.join(BUILTIN_TOOLS)}), "
                              "'module:function' or 'path/to/file.py:function'. (TRL's GRPOTrainer takes functions, "
                              "not JSON schemas: the schema is built from the function's type hints and docstring.)"
                              + (nearest(spec, BUILTIN_TOOLS) if isinstance(spec, str) else ""))
        if not callable(fn):
            raise ConfigError(f"tools: {spec!r} is a {type(fn).__name__}, not a function.")
        try:
            get_json_schema(fn)
        except Exception as exc:  # transformers' DocstringParsingException / TypeHintParsingException
            raise ConfigError(f"tools: {spec!r}: transformers cannot build the tool's JSON schema ({exc}); give the "
                              "function type hints and a docstring with an Args: section describing each argument."
                              ) from exc
        tools.append(fn)
    names = [fn.__name__ for fn in tools]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"tools: more than one tool is named {repeated}; the model calls a tool by its function "
                          "name, so each must be distinct.")
    return tools


# ---------------------------------------------------------------- the chat template's side
SENTINELS = ("tool_name_x7q2", "tool_arg_key_k3v9", "tool_arg_value_m5n1", "tool_result_r8w4")


def tool_template_problem(tokenizer, chat_template_kwargs: dict | None = None) -> str | None:
    """Why the tokenizer cannot run a tool-calling conversation, or None. Its chat template must render a whole
    exchange (user, assistant with tool_calls, tool) keeping the call's name, argument and the tool's result (TRL's
    supports_tool_calling); rendering the exchange must extend the rendering without the tool message
    (prefix-preserving: tool_suffix_ids relies on it); and it needs a response parser (transformers'
    `response_template`, read by parse_response with prefix= and tools=)."""
    kwargs = dict(chat_template_kwargs or {})
    if not getattr(tokenizer, "chat_template", None):
        return "the tokenizer has no chat template"
    name, key, value, result = SENTINELS
    call = [{"type": "function", "function": {"name": name, "arguments": {key: value}}}]
    head = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": call}]
    exchange = head + [{"role": "tool", "name": name, "content": result}]
    try:
        rendered = tokenizer.apply_chat_template(exchange, tokenize=False, **kwargs)
        before = tokenizer.apply_chat_template(head, tokenize=True, return_dict=False, **kwargs)
        after = tokenizer.apply_chat_template(exchange, tokenize=True, return_dict=False, add_generation_prompt=True,
                                              **kwargs)
    except Exception as exc:  # jinja2's TemplateError: a template that rejects the tool role or tool_calls
        return f"its chat template fails on a tool-calling conversation ({type(exc).__name__}: {exc})"
    lost = [s for s in SENTINELS if s not in rendered]
    if lost:
        return (f"its chat template drops part of a tool-calling conversation (the rendering lacks {lost}: the "
                "assistant's tool_calls or the tool message)")
    if list(after[:len(before)]) != list(before):
        return ("its chat template is not prefix-preserving: the conversation rendered with a tool message does not "
                "start with its rendering without it, so the tool result's tokens cannot be appended to a completion "
                "(TRL swaps in a training template of its own here; preflab does not change the template behind "
                "your back)")
    if getattr(tokenizer, "response_template", None) is None:
        return ("the tokenizer has no response_template, so tool calls cannot be parsed from completions (set "
                "tokenizer.response_template, transformers' response parsing, and save it with the tokenizer; TRL's "
                "add_response_schema knows the ones of common templates)")
    parameters = inspect.signature(tokenizer.parse_response).parameters
    if "prefix" not in parameters or "tools" not in parameters:
        import transformers

        return (f"transformers {transformers.__version__}'s parse_response takes no prefix= and tools= (transformers "
                ">= 5.15 does)")
    return None


TEMPLATE_FIX = ("Tool calling needs a policy whose chat template renders an assistant turn's tool_calls and the "
                "tool messages, as TRL's GRPOTrainer(tools=) does (e.g. Qwen3, Qwen2.5-Instruct); the built-in tiny "
                "models' templates do not. Use such a model, or save a local copy whose tokenizer has such a "
                "chat_template and a response_template.")


def check_tool_tokenizer(tokenizer, chat_template_kwargs: dict | None = None, model: str | None = None) -> None:
    """ConfigError with tool_template_problem's reason (TRL raises at startup the same way). A tokenizer without a
    response_template whose chat template TRL knows gets TRL's (add_response_schema), as TRL does, when TRL is
    installed. model: the policy's name (model_name_or_path), which the error names; a chat template that cannot
    render the exchange also gets what to do (TEMPLATE_FIX)."""
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "chat_template", None):
        try:
            from trl.chat_template_utils import add_response_schema

            add_response_schema(tokenizer)
        except Exception:  # TRL absent, or a template it does not know: the reason below says what to do
            pass
        else:
            if getattr(tokenizer, "response_template", None) is not None:
                print("preflab: note: tools: the tokenizer had no response_template; TRL's for its chat template is "
                      "used to parse the tool calls (trl.chat_template_utils.add_response_schema, as TRL's "
                      "GRPOTrainer does).", flush=True)
    problem = tool_template_problem(tokenizer, chat_template_kwargs)
    if problem:
        whose = f"; the policy is model_name_or_path {model}" if model else ""
        fix = f" {TEMPLATE_FIX}" if "chat template" in problem and "prefix-preserving" not in problem else ""
        raise ConfigError(f"tools: {problem}{whose}.{fix}")


def tool_suffix_ids(tokenizer, tool_messages: list[dict], chat_template_kwargs: dict | None = None) -> list[int]:
    """The tokens the chat template puts after an assistant turn (ended by its eos) for `tool_messages` and the next
    assistant header: rendered after a stand-in exchange (a user message, an assistant turn calling the first tool
    message's tool), minus that exchange's own tokens up to its last eos."""
    kwargs = dict(chat_template_kwargs or {})
    call = [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]
    head = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": call}]
    before = list(tokenizer.apply_chat_template(head, tokenize=True, return_dict=False, **kwargs))
    after = list(tokenizer.apply_chat_template(head + tool_messages, tokenize=True, return_dict=False,
                                               add_generation_prompt=True, **kwargs))
    ends = [i for i, t in enumerate(before) if t == tokenizer.eos_token_id]
    if ends:  # the completion ends at eos; what the template writes after it (a newline) belongs to the suffix
        before = before[:ends[-1] + 1]
    if after[:len(before)] != before:
        raise ConfigError("tools: the chat template's rendering with the tool messages does not extend its "
                          "rendering without them (not prefix-preserving); the tool results cannot be appended.")
    return after[len(before):]


def _checked_calls(calls) -> None:
    """ValueError unless `calls` is a list of {"function": {"name": str, "arguments": ...}} (or flat {"name"})
    entries; missing or null arguments become {} (a call without arguments)."""
    if not isinstance(calls, list):
        raise ValueError("tool_calls is not a list")
    for call in calls:
        if not isinstance(call, dict):
            raise ValueError("a tool call is not a mapping")
        body = call.get("function", call)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ValueError("a tool call has no name")
        if body.get("arguments") is None:
            body["arguments"] = {}


def parse_turn(tokenizer, ids: list[int], prefix: list[int], tools: list) -> dict:
    """One assistant turn's message from its token ids (parse_response with the prompt before it as prefix); text
    the parser cannot read (malformed tool calls) is the decoded text with no calls, as TRL's parse_response."""
    try:
        parsed = tokenizer.parse_response(ids, prefix=prefix, tools=tools)
        if parsed is None:
            raise ValueError("nothing parsed")
        content = parsed.get("content")
        if isinstance(content, str) and tokenizer.eos_token:
            parsed["content"] = content.removesuffix(tokenizer.eos_token)
        if not parsed.get("content"):
            parsed["content"] = ""
        if "tool_calls" in parsed and parsed["tool_calls"] is not None:
            _checked_calls(parsed["tool_calls"])
    except (ValueError, TypeError):
        parsed = {"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}
    return parsed


def _timeout_message(name: str, arguments, limit_s: float) -> str:
    """The error observation's text for a call that did not return within tool_timeout_s."""
    return (f"tool {name!r} did not return within tool_timeout_s = {limit_s:g} s (arguments {repr(arguments)[:200]}); "
            "the call was abandoned")


class TimedOut(Exception):
    """A tool call past tool_timeout_s (its message is the observation's error text)."""


def _call_sync(fn, arguments: dict, name: str, limit_s: float | None):
    """fn(**arguments) within limit_s seconds (preflab.loops.time_limit.call_within, as ToolBox's timeout_s: a worker
    thread the caller stops waiting for; Python cannot stop it, so the stuck call is abandoned in the background);
    TimedOut past it. limit_s None: called inline."""
    from preflab.loops.time_limit import call_within

    return call_within(lambda: fn(**arguments), limit_s, lambda: TimedOut(_timeout_message(name, arguments, limit_s)),
                       "preflab-tool-call")


def _gather_async(pending: list, limit_s: float | None) -> list:
    """The awaited results of the async calls `pending` ([(name, arguments, coroutine)]), gathered concurrently as
    TRL gathers them (an exception is the result). With limit_s each is awaited under asyncio.wait_for(limit_s)
    (cancelled at the limit), and the whole gather runs in a call_within worker that the caller waits for limit_s
    plus a second: a coroutine that blocks its event loop (a sync sleep inside async def) cannot be cancelled, and
    every result not in by then is TimedOut too (the loop is abandoned in the background)."""
    from preflab.loops.time_limit import call_within

    done: dict[int, object] = {}

    async def one(i, name, arguments, coro):
        try:
            done[i] = await (coro if limit_s is None else asyncio.wait_for(coro, limit_s))
        except asyncio.TimeoutError:
            done[i] = TimedOut(_timeout_message(name, arguments, limit_s))
        except Exception as exc:  # the tool's failure: an observation
            done[i] = exc

    async def gather():
        await asyncio.gather(*[one(i, *p) for i, p in enumerate(pending)])

    try:
        call_within(lambda: asyncio.run(gather()), None if limit_s is None else limit_s + 1.0, lambda: TimedOut(""),
                    "preflab-tool-call")
    except TimedOut:
        pass
    return [done[i] if i in done else TimedOut(_timeout_message(name, arguments, limit_s))
            for i, (name, arguments, _) in enumerate(pending)]


def text_only_refusal(name: str) -> ConfigError:
    """A tool returned a list (TRL's multimodal content blocks, e.g. [{"type": "image", "image": ...}, {"type": "text",
    ...}], which TRL hands to a vision-language model's processor). Tool calling here trains text policies: refused at
    the first such result, naming the tool."""
    return ConfigError(f"tools: tool {name!r} returned a list (content blocks, e.g. images: TRL passes them to a "
                       "vision-language model's processor); tool calling trains text policies here, whose chat "
                       "template takes text results. Make the tool return text (a str, or a value whose str() is the "
                       "observation).")


def run_tool_calls(calls: list[dict], tools: dict, timeout_s: float | None = None) -> tuple[list[dict], int, int]:
    """(the tool messages of `calls`, how many failed, how many of those timed out). Sync tools are called in order,
    then the async ones (gathered), as TRL orders the results; a failure's content is str({'error': message}). A call
    that does not return within timeout_s seconds (tool_timeout_s; None: no limit) is a failure whose message says
    so (_call_sync, _gather_async). A list result (multimodal content blocks) is refused (text_only_refusal)."""
    results, pending, failed, timed_out = [], [], 0, 0
    for call in calls:
        if call.get("type", "function") != "function":
            failed += 1
            results.append((call.get("name", "unknown"), {"error": f"Unsupported tool call type: {call['type']}"}))
            continue
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        try:
            fn = tools.get(name)
            if fn is None:
                raise ValueError(f"Tool {name} not found.")
            if inspect.iscoroutinefunction(fn):
                pending.append((name, arguments, fn(**arguments)))
            else:
                results.append((name, _call_sync(fn, arguments, name, timeout_s)))
        except Exception as exc:  # the model's call is wrong (or the tool failed): an observation, counted
            failed += 1
            timed_out += isinstance(exc, TimedOut)
            results.append((name, {"error": str(exc)}))
    if pending:
        for (name, _, _), result in zip(pending, _gather_async(pending, timeout_s)):
            if isinstance(result, Exception):
                failed += 1
                timed_out += isinstance(result, TimedOut)
                result = {"error": str(result)}
            results.append((name, result))
    messages = []
    for name, result in results:
        if isinstance(result, list):
            raise text_only_refusal(name)
        messages.append({"role": "tool", "name": name, "content": str(result)})
    return messages, failed, timed_out


class ToolCallingGenerator:
    """The run's generator with TRL's tool-calling loop around it (module docstring)."""

    def __init__(self, turns, tokenizer, tools: list, max_iterations: int | None, max_completion_length: int,
                 max_positions: int | None = None, chat_template_kwargs: dict | None = None, accelerator=None,
                 timeout_s: float | None = None):
        if not tools:
            raise ConfigError("ToolCallingGenerator needs at least one tool.")
        if max_iterations is not None and max_iterations < 0:
            raise ConfigError(f"max_tool_calling_iterations must be >= 0 or None, got {max_iterations}.")
        self.turns, self.tokenizer, self.tools = turns, tokenizer, list(tools)
        self.by_name = {fn.__name__: fn for fn in self.tools}
        self.max_iterations, self.max_completion_length = max_iterations, max_completion_length
        self.max_positions, self.chat_template_kwargs = max_positions, dict(chat_template_kwargs or {})
        self.accelerator, self.timeout_s = accelerator, timeout_s
        self.said_timeout = False  # the first timed-out call is said once (the counts go on in the metrics)
        # per completion of the next generate call, the tools it may call and parse with (environment_factory: the
        # standalone tools and its own environment's methods, preflab.online.environments); None: self.tools for all
        self.slot_tools: list[list] | None = None
        self.last_columns: list[dict] = []
        self.last_loss_masks: list[list[int]] = []
        self.last_messages: list[list[dict]] = []
        self.last_metrics: dict = {}

    def _sample(self, prompts: list[list[int]], k: int, seed: int, budget: int) -> list[list[int]]:
        """k samples per prompt from the run's generator with at most `budget` new tokens."""
        full = self.turns.max_new_tokens
        self.turns.max_new_tokens = budget
        try:
            return self.turns.generate(prompts, k, seed)
        finally:
            self.turns.max_new_tokens = full

    def _run_calls(self, turns: dict) -> dict:
        """{completion: run_tool_calls of its turn's calls}. With several processes every process holds every
        completion; the main process runs the calls (each once) and the others receive its results, so a tool with
        side effects or answers that vary runs once and every process continues from the same tool messages. A failure
        (a refusal, text_only_refusal; a tool result whose text cannot be made) is sent in the results' place and
        raised on every process, so none waits for the others (preflab.rank_agreement.main_result)."""
        acc = self.accelerator

        def run_all() -> dict:
            return {i: run_tool_calls(c, self._tools_by_name(i), self.timeout_s) for i, c in turns.items()}

        answers = main_result(run_all, acc, "the main process's tool calls failed")
        self._say_timeouts(answers)
        return answers

    def _agreed(self, stretch: str):
        """The agreement that ends a stretch each process runs on its own (generate; ranks_agree: one process, the
        stretch's own error as it is)."""
        return ranks_agree(f"the tool-calling loop failed while {stretch}")

    def _tools_of(self, i: int) -> list:
        """The tools completion i may call (slot_tools[i] where set, else the run's)."""
        return self.tools if self.slot_tools is None else self.slot_tools[i]

    def _tools_by_name(self, i: int) -> dict:
        return self.by_name if self.slot_tools is None else {fn.__name__: fn for fn in self.slot_tools[i]}

    def _say_timeouts(self, answers: dict) -> None:
        """The first timed-out call of the run, said once by the main process (every one is counted: tools/timeouts,
        summary.json online.tool_timeouts)."""
        if self.said_timeout or not any(a[2] for a in answers.values()):
            return
        self.said_timeout = True
        if self.accelerator is not None and not self.accelerator.is_main_process:
            return
        first = next(m["content"] for i, a in answers.items() if a[2] for m in a[0]
                     if "did not return within tool_timeout_s" in m["content"])
        print(f"preflab: note: a tool call timed out: {first} The model got that error as the tool's result and the "
              "call counts as a failure; every timeout is counted in tools/timeouts (summary.json "
              "online.tool_timeouts). Raise tool_timeout_s, or give the tool a limit of its own.", flush=True)

    def generate(self, prompt_ids: list[list[int]], num_generations: int, seed: int) -> list[list[int]]:
        """The round's completions with their tool calls run (module docstring). With several processes each stretch
        a process runs on its own before the next exchange (the first turns sampled and parsed; the tool messages
        tokenized; the continuations sampled and parsed) ends in one agreement (preflab.rank_agreement.ranks_agree,
        one all-reduce of a failure flag): a failure on any process (a tokenizer's parser or chat template raising,
        an out-of-memory sample on one device) stops every process with that process's error, named by its rank.
        Before, the failed process left while the others waited in the tool calls' broadcast (_run_calls) until the
        collective's timeout."""
        budget = self.max_completion_length
        with self._agreed("sampling and parsing the first turns"):
            ids = self._sample(prompt_ids, num_generations, seed, budget)
            prompts = [p for p in prompt_ids for _ in range(num_generations)]
            if self.slot_tools is not None and len(self.slot_tools) != len(ids):
                raise ConfigError(f"slot_tools has {len(self.slot_tools)} entries for {len(ids)} completions.")
            messages = [[parse_turn(self.tokenizer, c, p, self._tools_of(i))]
                        for i, (c, p) in enumerate(zip(ids, prompts))]
            masks = [[1] * len(c) for c in ids]
            live = [i for i in range(len(ids)) if messages[i][-1].get("tool_calls")]
        calls, failures, timeouts = [0] * len(ids), [0] * len(ids), [0] * len(ids)
        iteration = 0
        while live and (self.max_iterations is None or iteration < self.max_iterations):
            extended = {}
            answers = self._run_calls({i: messages[i][-1]["tool_calls"] for i in live})
            with self._agreed(f"tokenizing iteration {iteration + 1}'s tool messages"):
                for i in live:
                    turn_calls = messages[i][-1]["tool_calls"]
                    tool_messages, failed, timed_out = answers[i]
                    calls[i] += len(turn_calls)
                    failures[i] += failed
                    timeouts[i] += timed_out
                    suffix = tool_suffix_ids(self.tokenizer, tool_messages, self.chat_template_kwargs)
                    grown = len(ids[i]) + len(suffix)
                    if grown > budget or (self.max_positions is not None
                                          and len(prompts[i]) + grown >= self.max_positions):
                        continue  # over the budget: the completion stays as it was and leaves the loop
                    messages[i] += tool_messages
                    extended[i] = suffix
            live = list(extended)
            if not live:
                break
            with self._agreed(f"sampling and parsing iteration {iteration + 1}'s continuations"):
                contexts = [prompts[i] + ids[i] + extended[i] for i in live]
                room = [budget - len(ids[i]) - len(extended[i]) for i in live]
                more = self._sample(contexts, 1, seed + (iteration + 1) * CONTINUATION_SEED_STRIDE,
                                    max(1, max(room)))  # (a tool turn that fills the budget: a draw cut to nothing)
                still = []
                for i, context, r, new in zip(live, contexts, room, more):
                    new = new[:r]
                    masks[i] += [0] * len(extended[i]) + [1] * len(new)
                    ids[i] = ids[i] + extended[i] + new
                    if new:
                        messages[i].append(parse_turn(self.tokenizer, new, context, self._tools_of(i)))
                        if messages[i][-1].get("tool_calls"):
                            still.append(i)
            live = still
            iteration += 1
        self.last_loss_masks, self.last_messages = masks, messages
        self.last_columns = [{"num_tool_calls": c, "tool_errors": f} for c, f in zip(calls, failures)]
        total, failed = sum(calls), sum(failures)
        self.last_metrics = {"tools/call_frequency": total / max(1, len(ids)),
                             "tools/failure_frequency": failed / total if total else 0.0,
                             "tools/calls": float(total), "tools/failures": float(failed),
                             "tools/timeouts": float(sum(timeouts))}
        return ids


def make_tool_calling_generator(cfg, policy, tokenizer, accelerator=None, tools=None, turns=None):
    """The run's generator (make_generator) wrapped in the tool loop, for a config with `tools`."""
    from preflab.models.load import max_positions
    from preflab.online.generator import make_generator

    turns = turns if turns is not None else make_generator(cfg, policy, tokenizer, accelerator)
    return ToolCallingGenerator(turns, tokenizer, tools if tools is not None else load_tools(cfg.tools),
                                cfg.max_tool_calling_iterations, cfg.max_completion_length, max_positions(policy),
                                cfg.chat_template_kwargs, accelerator, cfg.tool_timeout_s)


__all__ = ["BUILTIN_TOOLS", "ToolCallingGenerator", "calculator", "check_tool_tokenizer", "load_tools",
           "make_tool_calling_generator", "parse_turn", "python", "run_tool_calls", "tool_suffix_ids",
           "tool_template_problem"]
