"""SIGTERM as a scheduler sends it: a request to stop within a grace period, answered with a checkpoint.

A scheduler that preempts or stops a job (Slurm, Kubernetes, a cloud's spot reclaim) sends SIGTERM, waits a grace
period (Kubernetes' terminationGracePeriodSeconds, 30 s by default; Slurm's KillWait), then sends SIGKILL, and
restarts the job with the same command. `preflab train` answers the first SIGTERM in one of two ways:

- inside the optimizer steps of a run that writes checkpoints (TrainingRun._train, while `stop_deferred()` is
  open): the signal only sets a flag (`stop_requested()`); the step under way finishes, every rank learns of the
  flag in the step's own agreement (no collective more), a checkpoint of that step is saved, and Terminated is
  raised there. The steps since the last periodic checkpoint are kept (before, they were lost);
- anywhere else (loading the data and the models, an evaluation, the final save, a run with save_steps 0): it
  raises Terminated at once, as Ctrl-C raises KeyboardInterrupt.

A second SIGTERM always raises at once (and a third kills by the default action): a step or a save that outlasts the
grace period is not waited for. Ctrl-C (SIGINT) stops at once, as a person at a terminal expects.

Terminated is a KeyboardInterrupt, so the run's lock and files are released on the way out as for Ctrl-C, and the
CLI exits with 143 (128 + SIGTERM's number 15). This module imports nothing of preflab's: the CLI, which installs the
handler, and the training loop, which defers it, both sit above it.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, `kill`): raised like Ctrl-C's KeyboardInterrupt, so the run's lock and
    files are released on the way out and the message says what is kept. `checkpointed` is set (True) when the run
    saved a checkpoint of the step it stopped at."""

    checkpointed = False


_state = {"deferred": 0, "requested": False}


def _on_sigterm(signum, frame) -> None:
    """The handler: the first SIGTERM inside stop_deferred() is recorded for the loop; otherwise (or a second one)
    Terminated is raised here and the default action is put back, so a further SIGTERM kills at once."""
    if _state["deferred"] and not _state["requested"]:
        _state["requested"] = True
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _state["requested"] = False  # answered here: a later run in this process does not inherit it
    raise Terminated()


def install_sigterm_handler():
    """Install the handler (main thread only: Python delivers signals there); returns a function that puts the
    earlier one back. A fresh command starts with no stop requested."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _state["requested"] = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextmanager
def stop_deferred() -> Iterator[None]:
    """While open, a first SIGTERM only sets stop_requested() (when the CLI's handler is installed; from Python
    nothing changes). A request that arrived before it opened raises at once as ever, so none is left unanswered."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1
        if not _state["deferred"]:  # answered by the loop (or the loop ended first): a later run starts clean
            _state["requested"] = False


def stop_requested() -> bool:
    """A SIGTERM arrived inside stop_deferred() and the loop has not yet answered it."""
    return _state["requested"]
