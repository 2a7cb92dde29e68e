"""Lazily resolved package exports that stay what they are, whatever is imported first.

A package maps exported names to the submodules defining them; `import pkg` stays cheap and `pkg.name` imports the
submodule on first use. Where an exported name equals its submodule's name (`preflab.lab.egpo`, the function, lives
in `preflab/lab/egpo.py`), Python's import system sets `pkg.<submodule>` to the module object after importing it,
which would turn the exported function into the module (issue 11). `LazyPackage.__setattr__` keeps the exported
object in that one case; `import pkg.name as m` still gives the module (from sys.modules).
"""
from __future__ import annotations

import importlib
import sys
import types


class LazyPackage(types.ModuleType):
    """A package module whose exported names are not replaced by same-named submodules."""

    _lazy_exports: dict[str, str] = {}

    def __setattr__(self, name, value):
        if (isinstance(value, types.ModuleType) and self._lazy_exports.get(name) == name
                and value.__name__ == f"{self.__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: dict[str, str]):
    """Install lazy `exports` ({name: submodule}) on `package`; returns the package's `__getattr__`."""
    module = sys.modules[package]
    module.__class__ = LazyPackage
    object.__setattr__(module, "_lazy_exports", dict(exports))

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
            setattr(module, name, value)  # cached: later look-ups skip __getattr__
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
