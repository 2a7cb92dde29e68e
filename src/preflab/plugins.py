"""User code named in a config or on the command line: 'package.module:name' or 'path/to/file.py:name'.

    import_object("mypkg.rewards:helpfulness", "reward_funcs")    # importable (PYTHONPATH or the current directory)
    import_object("./my_rewards.py:length_reward", "--reward-fn")  # a Python file, loaded by path

The current directory is searched as TRL's scripts do (`preflab` runs as a console script, whose sys.path does not
hold it). Every failure is a ConfigError naming the option and the spec, with a did-you-mean for a misspelt name.

Each user module loaded here is recorded with its file: user_code() gives {module: {"file", "sha256"}}, which a
checkpoint saves (trainer_state.json "user_code") so that a resume can tell when the code the run trained with was
edited since (preflab.resume_check.check_resume_code).
"""
from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

from preflab.errors import ConfigError, nearest


def import_object(spec: str, option: str):
    """The object `spec` names (see the module docstring); `option` names where the spec came from."""
    module, _, attr = spec.rpartition(":")
    if not module and spec.endswith(".py") and Path(spec).expanduser().is_file():  # the file, not what to call in it
        raise ConfigError(f"{option}: {spec!r} is a Python file without the name to call; write {spec}:NAME"
                          f"{file_top_level_names(Path(spec).expanduser())}.")
    if not module or not attr:
        raise ConfigError(f"{option}: {spec!r} is not 'module:name' or 'path/to/file.py:name'; e.g. "
                          "mypkg.rewards:helpfulness.")
    where = ""
    try:
        if module.endswith(".py"):
            path = Path(module).expanduser()
            if not path.is_file():
                rel = "" if path.is_absolute() else f" (a relative path is read from the current directory, " \
                    f"{Path.cwd()})"
                raise ConfigError(f"{option}: {spec!r}: the file {module} does not exist{rel}.")
            mod = _load_file(path, option, spec)
            where = f" in {path}"
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.append(str(Path.cwd()))
            mod = importlib.import_module(module)
    except (ImportError, TypeError, ValueError) as err:
        raise ConfigError(f"{option}: cannot import {spec!r} ({err}). Give package.module:name (on PYTHONPATH or "
                          "in the current directory) or path/to/file.py:name.") from err
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's module raised while it ran (a bug in user code)
        raise ConfigError(f"{option}: {spec!r}: importing {module} raised {where_raised(err)}{type(err).__name__}: {err}. "
                          "Fix that module.") from err
    if not hasattr(mod, attr):
        names = [n for n in vars(mod) if not n.startswith("_")]
        listed = file_top_level_names(Path(module).expanduser()) if module.endswith(".py") else ""
        raise ConfigError(f"{option}: {spec!r}: no {attr!r}{where}{listed}.{nearest(attr, names)}")
    file = getattr(mod, "__file__", None)
    if file and not (mod.__name__ == "preflab" or mod.__name__.startswith("preflab.")):
        _LOADED[module] = Path(file).resolve()
    return getattr(mod, attr)


def file_top_level_names(path: Path) -> str:
    """' (its top-level functions: f, g; classes: A)' read from the file's syntax tree (nothing in it is run), or ''
    when it has none or does not parse: what a spec naming a Python file without `:name` (or a name it lacks) is told
    to choose from (reward_funcs, --reward-fn, --judge: a function; loss_type: an objective class)."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return ""
    public = lambda kinds: [n.name for n in tree.body if isinstance(n, kinds) and not n.name.startswith("_")]  # noqa: E731
    parts = [f"{kind}: {', '.join(names)}" for kind, names in
             (("functions", public((ast.FunctionDef, ast.AsyncFunctionDef))), ("classes", public(ast.ClassDef)))
             if names]
    return f" (its top-level {'; '.join(parts)})" if parts else ""


_LOADED: dict[str, Path] = {}  # module part of a spec ('my_losses.py', 'mypkg.rewards') -> its file, this process


def user_file_sha256(path: str | Path) -> str | None:
    """preflab.checkpoint.file_sha256 of a user code file; None when it cannot be read (moved or deleted since)."""
    from preflab.checkpoint import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


def user_code(config: dict) -> dict:
    """{module part of each user spec that `config` (a run's options) names and this process loaded: {"file":
    absolute path, "sha256": of its bytes now}}. preflab's own modules are not user code; a spec loaded by another
    run in this process (a notebook, a test session) and not named by `config` is not this run's."""
    def specs(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from specs(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from specs(item)

    named = {spec.rpartition(":")[0] for value in config.values() for spec in specs(value) if ":" in spec}
    return {module: {"file": str(path), "sha256": user_file_sha256(path)}
            for module, path in sorted(_LOADED.items()) if module in named}


def _load_file(path: Path, option: str, spec: str):
    """The module of a Python file, run once per file and registered in sys.modules (a dataclass defined in it
    needs its module there, and `inspect.getsource` reads it); a syntax error is a ConfigError naming file and line."""
    from importlib import util

    path = path.resolve()
    name = f"preflab_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__preflab_mtime__", None) == path.stat().st_mtime_ns:
        return loaded
    found = util.spec_from_file_location(name, path)
    mod = util.module_from_spec(found)
    mod.__preflab_mtime__ = path.stat().st_mtime_ns
    sys.modules[name] = mod
    try:
        found.loader.exec_module(mod)
    except SyntaxError as err:
        sys.modules.pop(name, None)
        raise ConfigError(f"{option}: {spec!r}: {path} line {err.lineno}: SyntaxError: {err.msg}. Fix the file.") \
            from err
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def where_raised(err: BaseException) -> str:
    """'at FILE line N: ' for the innermost frame of err's traceback, '' without one."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"at {tb.tb_frame.f_code.co_filename} line {tb.tb_lineno}: " if tb is not None else ""
