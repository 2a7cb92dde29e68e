"""Named lab experiments: `preflab lab list` shows them, `preflab lab run NAME` runs one.

An experiment is a function `fn(quick: bool) -> ExperimentResult`; `quick=True` shrinks iteration counts
(for tests) without changing what is compared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from preflab.errors import ConfigError, nearest

EXPERIMENTS: dict = {}
_MODULES = ("preflab.lab.experiments_dpo", "preflab.lab.experiments_nash", "preflab.lab.experiments_contrasts")


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    fn: Callable


def experiment(name: str, summary: str):
    """Decorator registering an experiment function under `name`."""
    def wrap(fn):
        if name in EXPERIMENTS:
            raise ConfigError(f"lab experiment {name!r} registered twice.")
        EXPERIMENTS[name] = Experiment(name, summary, fn)
        return fn
    return wrap


def _load() -> None:
    import importlib

    for module in _MODULES:
        importlib.import_module(module)


def list_experiments() -> list[Experiment]:
    _load()
    return [EXPERIMENTS[k] for k in sorted(EXPERIMENTS)]


def run_experiment(name: str, quick: bool = False):
    _load()
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown lab experiment {name!r}.{nearest(name, EXPERIMENTS)} "
                          "Run `preflab lab list` to see them.")
    result = EXPERIMENTS[name].fn(quick)
    result.name = name
    return result
