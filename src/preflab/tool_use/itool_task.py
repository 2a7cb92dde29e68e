"""The synthetic function-calling task of the iTool recipe (seed #37, spec §37.5): checkable calls, parsed, never run.

Prompts ask for one of five functions with typed arguments, or for a plain-text reply (no call), so the
tool-call / plain split of deficiency selection has two groups:

    "weather in Paris in C"            -> [get_weather(city='Paris', unit='C')]
    "convert 20 USD to EUR"            -> [convert_currency(amount=20, src='USD', dst='EUR')]
    "say hi to Ann"                    -> Hi Ann!

A model's answer is parsed with `ast.parse` and accepted only as a list of calls `name(key=<literal>, ...)` with
string / number / boolean literal values (a negative number is a literal); anything else — attribute access,
nested calls, names, comprehensions, `**kwargs`, positional arguments, text over MAX_CALL_CHARS — is an invalid
call: counted, never evaluated. Call accuracy: the parsed calls equal the gold's (function names and arguments,
argument order ignored, values compared with their types); a plain-text item is right when the reply is exactly
its text.

Difficulty (the warm-up's easy-to-hard buckets; the spec leaves the paper's criterion unverified, this is a preflab
choice): the number of arguments of the gold call, plain text counting 0. easy <= 1, medium = 2, hard >= 3.
"""
from __future__ import annotations

import ast
import random
from dataclasses import dataclass

from preflab.errors import ConfigError
from preflab.tools import validate_arguments

MAX_CALL_CHARS = 512

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Rome", "Delhi", "Berlin", "Madrid", "Sydney", "Boston",
          "Seoul", "Dublin", "Quito", "Hanoi", "Nairobi"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "INR"]
NAMES = ["Ann", "Bob", "Eve", "Joe", "Mia", "Sam", "Zoe", "Max", "Ida", "Leo"]
UNIT_WORDS = {"C": ["C", "celsius"], "F": ["F", "fahrenheit"]}

# JSON schemas of the five functions (preflab.tools.validate_arguments checks a parsed call against them)
SCHEMAS = {
    "get_weather": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"type": "string", "enum": ["C", "F"]}},
                    "required": ["city", "unit"], "additionalProperties": False},
    "get_time": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                 "additionalProperties": False},
    "set_alarm": {"type": "object", "properties": {"hour": {"type": "integer"}, "minute": {"type": "integer"}},
                  "required": ["hour", "minute"], "additionalProperties": False},
    "convert_currency": {"type": "object", "properties": {"amount": {"type": "integer"},
                                                          "src": {"type": "string"}, "dst": {"type": "string"}},
                         "required": ["amount", "src", "dst"], "additionalProperties": False},
}


@dataclass(frozen=True)
class Call:
    """One parsed call: the function name and its arguments as sorted (name, type name, value) triples."""

    name: str
    arguments: tuple

    @staticmethod
    def of(name: str, arguments: dict) -> Call:
        return Call(name, tuple(sorted((k, type(v).__name__, v) for k, v in arguments.items())))

    def as_dict(self) -> dict:
        return {k: v for k, _, v in self.arguments}


def format_calls(calls: list[tuple[str, dict]]) -> str:
    """`[f(a='x', b=2)]`: the gold's text form (string values single-quoted, arguments in the given order)."""
    return "[" + ", ".join(f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
                           for name, args in calls) + "]"


def _literal(node: ast.AST):
    """The value of a str / int / float / bool literal (a unary minus on a number allowed); ValueError else."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and type(node.operand.value) in (int, float):
        return -node.operand.value
    if isinstance(node, ast.Constant) and type(node.value) in (str, int, float, bool):
        return node.value
    raise ValueError(f"argument value is not a literal: {type(node).__name__}")


def parse_calls(text: str) -> tuple[Call, ...] | None:
    """The calls of `[f(a=1), g(b='x')]`, or None when `text` is not exactly such a list (never evaluated)."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")) or len(text) > MAX_CALL_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls = []
    for node in tree.body.elts:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
            return None
        arguments = {}
        for kw in node.keywords:
            if kw.arg is None or kw.arg in arguments:  # **kwargs, or a repeated keyword
                return None
            try:
                arguments[kw.arg] = _literal(kw.value)
            except ValueError:
                return None
        calls.append(Call.of(node.func.id, arguments))
    return tuple(calls)


def looks_like_call(text: str) -> bool:
    """A reply that tries to call something (starts with '['); the deficiency split uses the spec's ')' instead."""
    return text.strip().startswith("[")


def schema_valid(calls: tuple[Call, ...]) -> bool:
    """Every call names one of the task's functions with arguments that fit its JSON schema."""
    return all(c.name in SCHEMAS and not validate_arguments(SCHEMAS[c.name], c.as_dict()) for c in calls)


def is_correct(output: str, gold: str) -> bool:
    """Call accuracy of one reply: same calls as the gold (argument order ignored), or the exact plain text."""
    gold_calls = parse_calls(gold)
    if gold_calls is None:
        return output.strip() == gold.strip()
    calls = parse_calls(output)
    return calls is not None and sorted(calls, key=repr) == sorted(gold_calls, key=repr)


def grade_outputs(outputs: list[str], golds: list[str]) -> dict:
    """call_accuracy and its parts over paired (output, gold) lists; invalid_calls counts replies that try a call
    ('[' first) but do not parse as one (e.g. planted code), schema_valid_calls the parsed ones that fit a schema."""
    right = invalid = valid_schema = tool_right = tool_n = 0
    for out, gold in zip(outputs, golds):
        ok = is_correct(out, gold)
        right += ok
        if parse_calls(gold) is not None:
            tool_n += 1
            tool_right += ok
        if looks_like_call(out):
            calls = parse_calls(out)
            invalid += calls is None
            valid_schema += calls is not None and schema_valid(calls)
    n = max(len(golds), 1)
    return {"call_accuracy": right / n, "tool_call_accuracy": tool_right / max(tool_n, 1),
            "plain_accuracy": (right - tool_right) / max(len(golds) - tool_n, 1), "invalid_calls": invalid,
            "schema_valid_calls": valid_schema, "n": len(golds)}


# ---------------------------------------------------------------------------------------------- the rule grader
def rule_grade(response: str, gold: str, finished: bool) -> str:
    """A / B / C / D for a (possibly unfinished) response against the gold, in place of the policy's
    self-evaluation (spec §37.5; the letters of iTool's grading prompt: Excellent, Acceptable, Fair, Poor).

    Finished: A = right (is_correct); gold is a call: B = same functions and argument names, some value wrong;
    C = a parsed call with a right function name; D = anything else (invalid, plain text, wrong function).
    Gold is plain text: C = other plain text, D = a call attempt. Unfinished: A when it is a prefix of the gold
    (iTool's prompt: "a fragment of the ground truth response is also excellent"), C when it has left the gold but
    still names the gold's first function, D otherwise.
    """
    response, gold = response.strip(), gold.strip()
    gold_calls = parse_calls(gold)
    if not finished:
        if gold.startswith(response):
            return "A"
        head = gold.split("(")[0] + "(" if gold_calls is not None else None
        return "C" if head and response.startswith(head) else "D"
    if is_correct(response, gold):
        return "A"
    if gold_calls is None:
        return "D" if looks_like_call(response) else "C"
    calls = parse_calls(response)
    if calls is None:
        return "D"
    if [(c.name, [a[0] for a in c.arguments]) for c in sorted(calls, key=repr)] == \
            [(c.name, [a[0] for a in c.arguments]) for c in sorted(gold_calls, key=repr)]:
        return "B"
    return "C" if {c.name for c in calls} & {c.name for c in gold_calls} else "D"


# ---------------------------------------------------------------------------------------------- data
def _weather(rng):
    city, unit = rng.choice(CITIES), rng.choice("CF")
    word = rng.choice(UNIT_WORDS[unit])
    prompt = rng.choice(["weather in {c} in {u}", "what is the weather in {c} in {u}", "{c} weather, {u} please"])
    return prompt.format(c=city, u=word), [("get_weather", {"city": city, "unit": unit})]


def _time(rng):
    city = rng.choice(CITIES)
    return rng.choice(["time in {c}", "what time is it in {c}"]).format(c=city), [("get_time", {"city": city})]


def _alarm(rng):
    hour, minute = rng.randrange(24), rng.choice([0, 15, 30, 45])
    prompt = rng.choice(["set an alarm for {h}:{m:02d}", "wake me at {h}:{m:02d}"]).format(h=hour, m=minute)
    return prompt, [("set_alarm", {"hour": hour, "minute": minute})]


def _currency(rng):
    amount = rng.choice([5, 10, 20, 50, 75, 100, 200, 500])
    src, dst = rng.sample(CURRENCIES, 2)
    prompt = rng.choice(["convert {a} {s} to {d}", "how much is {a} {s} in {d}"]).format(a=amount, s=src, d=dst)
    return prompt, [("convert_currency", {"amount": amount, "src": src, "dst": dst})]


def _plain(rng):
    if rng.random() < 0.5:
        name = rng.choice(NAMES)
        return rng.choice(["say hi to {n}", "greet {n}"]).format(n=name), f"Hi {name}!"
    return rng.choice(["thanks", "thank you", "who are you"]), None


_PLAIN_REPLIES = {"thanks": "You are welcome.", "thank you": "You are welcome.",
                  "who are you": "I am a function calling assistant."}
_MAKERS = [(_weather, 0.25), (_time, 0.15), (_alarm, 0.2), (_currency, 0.25), (_plain, 0.15)]


def prompt_text(request: str) -> str:
    return f"Q: {request}\nA: "


def make_itool_rows(n: int, seed: int = 0, exclude: set[str] | None = None) -> list[dict]:
    """n distinct rows {request, prompt, gold, kind ("tool" | "plain"), difficulty (arguments of the gold call)};
    requests in `exclude` are never produced (held-out rows exclude the training requests)."""
    rng, seen, rows = random.Random(seed), set(exclude or ()), []
    makers, weights = zip(*_MAKERS)
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise ConfigError(f"recipe_params: could not draw {n} distinct requests (seed {seed}); the task has "
                              "919 in all; ask for fewer n_train + n_test rows.")
        maker = rng.choices(makers, weights)[0]
        request, calls = maker(rng)
        if request in seen:
            continue
        seen.add(request)
        if maker is _plain:
            gold, kind, difficulty = calls or _PLAIN_REPLIES[request], "plain", 0
        else:
            gold, kind, difficulty = format_calls(calls), "tool", sum(len(a) for _, a in calls)
        rows.append({"request": request, "prompt": prompt_text(request), "gold": gold, "kind": kind,
                     "difficulty": difficulty})
    return rows


def bucket(difficulty: int) -> str:
    return "easy" if difficulty <= 1 else "medium" if difficulty == 2 else "hard"
