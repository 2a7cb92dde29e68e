"""Old package names kept importable for one release (0.2): each old module is the new module object.

`import preflab.reward.bt` gives `preflab.reward_models.bt` itself (not a copy), so classes and isinstance
checks are shared; importing an old name warns once with the new one.
"""
from __future__ import annotations

import importlib
import sys
import warnings


def alias_package(old: str, new: str, submodules: dict[str, str]) -> None:
    """Make `old` and `old.<name>` refer to `new` and `new.<submodules[name]>`; warn with the new names."""
    warnings.warn(f"{old} was renamed {new} in preflab 0.2; the old name goes in 0.3.", DeprecationWarning,
                  stacklevel=3)
    package = importlib.import_module(new)
    shim = sys.modules[old]
    for name in getattr(package, "__all__", []):
        setattr(shim, name, getattr(package, name))
    for old_name, new_name in submodules.items():
        module = importlib.import_module(f"{new}.{new_name}")
        sys.modules[f"{old}.{old_name}"] = module
        setattr(shim, old_name, module)


def alias_module(old: str, new: str) -> None:
    """Make the module `old` the module `new` (same object); warn with the new name."""
    warnings.warn(f"{old} moved to {new} in preflab 0.2; the old name goes in 0.3.", DeprecationWarning,
                  stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
