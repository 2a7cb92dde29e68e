"""The registry of the built-in objectives: one module of preflab.objectives per method, found by its module name,
with the aliases its class declares (objective_class, resolve_name, list_objectives; preflab.objectives re-exports
them). It imports an objective module only by name when asked, and nothing of preflab.objectives.base, so base
(check_modality, which resolves a loss_type name) reads it from below.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
import warnings
from pathlib import Path

from preflab.errors import ConfigError, nearest

_PACKAGE_PATH = [str(Path(__file__).parent)]  # preflab/objectives: its modules are the objectives

# Modules of this package that are not objectives (helpers and the `preflab objectives` command).
NOT_OBJECTIVES = ("base", "cli", "contract")

# Names kept for old configs: alias -> (module, warning).
LEGACY = {"aot_pair": ("aot_unpaired", "loss_type 'aot_pair' was renamed 'aot_unpaired' in TRL 1.x; using aot_unpaired.")}


def _module_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(_PACKAGE_PATH)
                  if not m.name.startswith("_") and m.name not in NOT_OBJECTIVES)


@functools.cache
def objective_class(module_name: str) -> type:
    """The objective class of `preflab.objectives.<module_name>` (its OBJECTIVE attribute)."""
    module = importlib.import_module(f"{__package__}.{module_name}")
    cls = getattr(module, "OBJECTIVE", None)
    if cls is None:
        raise ConfigError(f"preflab/objectives/{module_name}.py defines no OBJECTIVE; add `OBJECTIVE = <class>`.")
    return cls


@functools.cache
def _aliases() -> dict[str, str]:
    table = {}
    for name in _module_names():
        for alias in objective_class(name).aliases:
            if alias in table or alias in _module_names():
                raise ConfigError(f"objective alias {alias!r} of {name} clashes with {table.get(alias, alias)}.")
            table[alias] = name
    return table


def list_objectives() -> list[str]:
    """Every registered objective's name (its module name), sorted."""
    return _module_names()


def resolve_name(name: str) -> str:
    """Module name for an objective name or alias, or a ConfigError suggesting the nearest."""
    if name in LEGACY:
        target, message = LEGACY[name]
        warnings.warn(message, stacklevel=3)
        return target
    names = _module_names()
    if name in names:
        return name
    if name in _aliases():
        return _aliases()[name]
    known = names + list(_aliases())
    if name.endswith(".py") or "/" in name:  # a user's file without the class: 'my_losses.py' for 'my_losses.py:Cls'
        from preflab.plugins import file_top_level_names

        raise ConfigError(f"unknown objective {name!r}: an objective in a file is named with its class, "
                          f"'{name}:ClassName'{file_top_level_names(Path(name).expanduser())}.")
    if "." in name:  # 'my_losses.Cls' for 'my_losses:Cls'
        module, _, cls = name.rpartition(".")
        raise ConfigError(f"unknown objective {name!r}: an objective in a module is named 'package.module:ClassName' "
                          f"(here perhaps '{module}:{cls}'), or 'path/to/file.py:ClassName'.")
    raise ConfigError(f"unknown objective {name!r}.{nearest(name, known)} Run `preflab objectives` to list them.")
