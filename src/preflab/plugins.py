"""User code named in a config or on the command line: 'package.module:name' or 'path/to/file.py:name'.

    import_object("mypkg.rewards:helpfulness", "reward_funcs")    # importable (PYTHONPATH or the current directory)
    import_object("./my_rewards.py:length_reward", "--reward-fn")  # a Python file, loaded by path

The current directory is searched as TRL's scripts do (`preflab` runs as a console script, whose sys.path does not
hold it). Every failure is a ConfigError naming the option and the spec, with a did-you-mean for a misspelt name.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from preflab.errors import ConfigError, nearest


def import_object(spec: str, option: str):
    """The object `spec` names (see the module docstring); `option` names where the spec came from."""
    module, _, attr = spec.rpartition(":")
    if not module or not attr:
        raise ConfigError(f"{option}: {spec!r} is not 'module:name' or 'path/to/file.py:name'; e.g. "
                          "mypkg.rewards:helpfulness.")
    where = ""
    try:
        if module.endswith(".py"):
            path = Path(module).expanduser()
            if not path.is_file():
                raise ConfigError(f"{option}: {spec!r}: the file {module} does not exist.")
            from importlib import util

            loaded = util.spec_from_file_location(f"preflab_user_{path.stem}", path)
            mod = util.module_from_spec(loaded)
            loaded.loader.exec_module(mod)
            where = f" in {path}"
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.append(str(Path.cwd()))
            mod = importlib.import_module(module)
        return getattr(mod, attr)
    except AttributeError as err:
        names = [n for n in vars(mod) if not n.startswith("_")] if "mod" in locals() else []
        raise ConfigError(f"{option}: {spec!r}: no {attr!r}{where}.{nearest(attr, names)}") from err
    except (ImportError, TypeError, ValueError) as err:
        raise ConfigError(f"{option}: cannot import {spec!r} ({err}). Give package.module:name (on PYTHONPATH or "
                          "in the current directory) or path/to/file.py:name.") from err
