"""The synthetic code task of the DSTC recipe: two-step arithmetic instructions -> a one-line Python function.

    "add 3 then multiply by 2"  ->  code  `def f(x): return (x+3)*2`     test  `assert f(1)==8`

Every character is in tiny_tokenizer("char")'s alphabet. The entry point is always `f`, so the model's tests can
call the model's code (the spec's "fix the entry point name"). Held-out instructions are (step, step) combinations
never seen in training, judged by hidden gold tests at inputs the training tests never use. The gold function is
computed here from the instruction's parts (trusted code, no eval); only model-written text runs in the sandbox.
"""
from __future__ import annotations

import ast
import random
from dataclasses import dataclass

from preflab.sandbox.checks import value_test

OPS = {"add": "+", "subtract": "-", "multiply by": "*"}
CONSTANTS = range(1, 6)
TEST_INPUTS = (7,)                 # inputs of the training tests (SFT targets)
HIDDEN_INPUTS = (-7, 13, 40)       # inputs of the hidden gold test (never in a training target)


@dataclass(frozen=True)
class Step:
    op: str       # a key of OPS
    k: int

    def apply(self, x: int) -> int:
        return x + self.k if self.op == "add" else x - self.k if self.op == "subtract" else x * self.k


@dataclass(frozen=True)
class CodeTask:
    first: Step
    second: Step

    @property
    def instruction(self) -> str:
        return f"{self.first.op} {self.first.k} then {self.second.op} {self.second.k}"

    def gold(self, x: int) -> int:
        return self.second.apply(self.first.apply(x))


def program(first: Step, second: Step, reversed_subtraction: bool = False) -> str:
    """`def f(x): return (x<op><k>)<op><k>` for the two steps; `reversed_subtraction` writes a first step
    "subtract k" as `(k-x)` (the warm-up data's systematic bug)."""
    head = f"({first.k}-x)" if reversed_subtraction and first.op == "subtract" else f"(x{OPS[first.op]}{first.k})"
    return f"def f(x): return {head}{OPS[second.op]}{second.k}"


def assert_line(x: int, value: int) -> str:
    return f"assert f({x})=={value}"


def code_prompt(task: CodeTask) -> str:
    """The prompt that asks for code (the paper's first template)."""
    return f"Write f: {task.instruction}.\nCode:\n"


def unit_test_prompt(task: CodeTask) -> str:
    """The prompt that asks for a test of the same function (the paper's second template)."""
    return f"Test f: {task.instruction}.\nTest:\n"


def hidden_test(task: CodeTask) -> str:
    """The hidden gold test: one value test over all hidden inputs, `assert (f(-7),f(13),f(40))==(..)` (one sandbox
    run per program; it passes iff every hidden input gives the gold value)."""
    calls = ",".join(f"f({x})" for x in HIDDEN_INPUTS)
    values = ",".join(str(task.gold(x)) for x in HIDDEN_INPUTS)
    return f"assert ({calls})==({values})"


def is_correct_test(task: CodeTask, test: str) -> bool:
    """Whether a model-written test is `assert f(<int>)==<literal>` with the gold value, decided by parsing
    (preflab.sandbox.checks.value_test: ast, never run); any other form counts as not correct."""
    split = value_test(test)
    if split is None:
        return False
    try:
        call = ast.parse(split[0], mode="eval").body
    except SyntaxError:
        return False
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"
            and len(call.args) == 1 and not call.keywords):
        return False
    try:
        x = ast.literal_eval(call.args[0])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return type(x) is int and abs(x) < 10**6 and split[1] == task.gold(x)


def all_tasks() -> list[CodeTask]:
    steps = [Step(op, k) for op in OPS for k in CONSTANTS]
    return [CodeTask(a, b) for a in steps for b in steps]


def split_tasks(n_train: int, n_test: int, seed: int) -> tuple[list[CodeTask], list[CodeTask]]:
    """Disjoint training and held-out instructions (a seeded shuffle of all 225: 15 steps x 15 steps)."""
    tasks = all_tasks()
    random.Random(seed).shuffle(tasks)
    if n_train + n_test > len(tasks):
        from preflab.errors import ConfigError

        raise ConfigError(f"dstc: n_sft_tasks + n_test = {n_train + n_test} exceeds the {len(tasks)} instructions; "
                          "lower recipe_params n_sft_tasks or n_test.")
    return tasks[:n_train], tasks[n_train:n_train + n_test]


def _perturb(step: Step, rng: random.Random) -> Step:
    """A wrong step: another constant or another operation (never the same step)."""
    if rng.random() < 0.5:
        return Step(step.op, rng.choice([k for k in CONSTANTS if k != step.k]))
    return Step(rng.choice([op for op in OPS if op != step.op]), step.k)


def noisy_code(task: CodeTask, noise: float, bug_rate: float, rng: random.Random) -> str:
    """The gold program; with probability `noise` one with a wrong step (a random slip); else, when the first step
    is a subtraction, with probability `bug_rate` the reversed subtraction `(k-x)` (a systematic bug)."""
    first, second = task.first, task.second
    if rng.random() < noise:
        if rng.random() < 0.5:
            first = _perturb(first, rng)
        else:
            second = _perturb(second, rng)
        return program(first, second)
    return program(first, second, reversed_subtraction=rng.random() < bug_rate)


def noisy_test(task: CodeTask, x: int, noise: float, rng: random.Random) -> str:
    """A correct test at input x, or with probability `noise` one with a wrong expected value."""
    value = task.gold(x)
    if rng.random() < noise:
        value += rng.choice([-2, -1, 1, 2])
    return assert_line(x, value)


def sft_rows(tasks: list[CodeTask], per_task: int, noise: float, bug_rate: float, seed: int) -> list[dict]:
    """Warm-up SFT rows {prompt, completion}: for each task `per_task` code rows (random slips with probability
    `noise`, the reversed-subtraction bug with probability `bug_rate`) and `per_task` tests at each training input
    (a wrong value with probability `noise`). The tests do not share the code's bug: the premise under which
    executing self-written code against self-written tests can find the better program."""
    rng = random.Random(seed)
    rows = []
    for task in tasks:
        for _ in range(per_task):
            rows.append({"prompt": code_prompt(task), "completion": noisy_code(task, noise, bug_rate, rng)})
            for x in TEST_INPUTS:
                rows.append({"prompt": unit_test_prompt(task), "completion": noisy_test(task, x, noise, rng)})
    rng.shuffle(rows)
    return rows
