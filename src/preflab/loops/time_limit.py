"""One call of user code (a judge: reward function, reward model, preference model; a tool) under a wall-clock limit.

    value = call_within(lambda: judge(prompts=..., completions=...), 30.0, lambda: JudgeTimeoutError("..."))

limit_s None (judge_timeout_s unset, the default): fn() is called here, in the caller's thread, as before the option
existed: no thread, no copy, nothing else.

limit_s > 0: fn() runs in a fresh daemon thread while the caller waits at most limit_s seconds (Thread.join). Its
value is returned and its exception re-raised in the caller (the same object, so `except` clauses treat it as if the
call had run inline). When it has not returned by then, the caller raises make_error() and the run stops. Python
cannot kill a thread: the stuck call is abandoned, still running in the background (a daemon thread, so it does not
keep the process alive at exit); its eventual result is discarded. No process is forked: a judge may hold a model
in memory (and on a GPU) that a child process would copy or could not use.

The worker sees the caller's thread-local torch state that scoring depends on: autograd on or off (a reward model
called under no_grad stays under no_grad) and, on CUDA, the current device. Everything else (the global RNGs, the
model's weights, module state) is shared by the threads, and the caller waits until the call ends, so a call that
returns in time computes exactly what it computes inline.
"""
from __future__ import annotations

import math
import threading
from typing import Callable, TypeVar

import torch

from preflab.errors import ConfigError
from preflab.option_types import is_number

T = TypeVar("T")


def checked_limit(value, what: str, unset: str) -> float | None:
    """`value` as a time limit in seconds: None (no limit) or a finite number > 0 (a bool is not a number of
    seconds); anything else is a ConfigError naming `what` (judge_timeout_s, ToolBox timeout_s) and `unset` (how the
    caller writes no limit: null in a config, None in Python)."""
    if value is None:
        return None
    if not is_number(value) or not 0 < value < math.inf:
        raise ConfigError(f"{what} must be a finite number of seconds > 0 (or {unset}: no limit), got {value!r}.")
    return float(value)


def call_within(fn: Callable[[], T], limit_s: float | None, make_error: Callable[[], BaseException],
                name: str = "preflab-judge-call") -> T:
    """fn() (see the module docstring); raises make_error() when it runs longer than limit_s seconds. name: the
    worker thread's (what a stack dump of a stuck call shows)."""
    if limit_s is None:
        return fn()
    grad = torch.is_grad_enabled()
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    outcome: dict = {}

    def work() -> None:
        try:
            if device is not None:
                torch.cuda.set_device(device)
            with torch.set_grad_enabled(grad):
                outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller, which raises it
            outcome["error"] = err

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(limit_s)
    if worker.is_alive():
        raise make_error()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
