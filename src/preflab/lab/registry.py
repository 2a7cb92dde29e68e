"""Named lab experiments: `preflab lab list` shows them, `preflab lab run NAME` runs one.

An experiment is a function `fn(quick: bool) -> ExperimentResult`, registered with preflab.lab.registration's
`@experiment`; `quick=True` shrinks iteration counts (for tests) without changing what is compared.
"""
from __future__ import annotations

from preflab.errors import ConfigError, nearest
from preflab.lab.registration import EXPERIMENTS, Experiment, experiment  # noqa: F401  (the table, importable here)

# the modules that register experiments (preflab.lab.registration), imported when `preflab lab` needs them
_MODULES = ("preflab.lab.experiments_dpo", "preflab.lab.experiments_nash", "preflab.lab.experiments_contrasts")


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
