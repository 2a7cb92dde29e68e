"""The table of lab experiments and the decorator that fills it (`@experiment(name, summary)`).

The experiment modules (preflab.lab.experiments_*) register themselves here; preflab.lab.registry imports them by
name when `preflab lab` lists or runs them. The table sits below both, so the modules that register and the one that
imports them form no import cycle (they did when the decorator lived in the registry).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from preflab.errors import ConfigError

EXPERIMENTS: dict = {}


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
