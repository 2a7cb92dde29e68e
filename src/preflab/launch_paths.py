"""Relative paths in a run's saved config, read from another directory than the one the run was started in.

A run's config.yaml keeps the options as the user wrote them: `dataset_name: data/train.jsonl` names a file relative
to the directory `preflab train` ran in. Read from elsewhere (`preflab eval RUN` from another directory: the run's
reference, a LoRA base, the overlap check against its training rows; a resume whose config names the same files by
another relative or absolute path) the value named nothing, or a hub repository of that name. So every run writes,
beside config.yaml, LAUNCH_FILE (launch.json), and a checkpoint's trainer_state.json keeps a copy ("launch"):

    {"launch_dir": "/home/me/project",
     "local_paths": {"dataset_name": {"value": "data/train.jsonl", "path": "/home/me/project/data/train.jsonl"}}}

local_paths holds each PATH_OPTIONS value that was a relative path naming an existing file or folder when the run
started (what the loaders then read as local); a value that named none (a hub name: `gpt2`, `openai/gsm8k`) is not
recorded and stays a hub name. The config itself keeps the user's values (config.yaml's first line says where the
run was started).

The rule (resolve_saved_paths; preflab.models.run_config reads every saved config through it, and the resume check
compares paths with it):
- an option recorded with the value the config still holds reads its recorded absolute path where that exists; else
  the value relative to the current directory where that exists, with a note naming the option (the run's file is
  gone; another of that name here is read); else the recorded absolute path, with a note naming the option that it
  exists neither where the run was started nor here (a loader then names that path; it is never looked up on the hub);
- everything else is unchanged: absolute paths, builtin and hub names, and a run without launch.json (written by an
  older preflab: its relative paths are read relative to the current directory, as before).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

LAUNCH_FILE = "launch.json"
# the options naming a file or folder a run reads (output_dir and resume_from_checkpoint say where it writes and
# which checkpoint it started from: not read back from a saved config)
PATH_OPTIONS = ("model_name_or_path", "ref_model_name_or_path", "processor_name_or_path", "dataset_name",
                "eval_dataset_name", "chat_template_path", "user_embeddings", "reward_aggregator")

_said: set = set()  # notes already printed (a saved config is read several times by one command)


def _relative(value) -> bool:
    """A value that could be a path relative to a directory: a string, not absolute, not `~...`, not builtin:."""
    return isinstance(value, str) and bool(value) and not os.path.isabs(value) and not value.startswith("~") \
        and not value.startswith("builtin:")


def launch_record(options: dict, cwd: str | None = None) -> dict:
    """{"launch_dir": cwd, "local_paths": {option: {"value", "path"}}} for the run of `options` started in `cwd`
    (default: the current directory): each PATH_OPTIONS value that is a relative path to an existing file or folder
    there, with its absolute path."""
    cwd = os.path.abspath(cwd or os.getcwd())
    local = {}
    for name in PATH_OPTIONS:
        value = options.get(name)
        if _relative(value) and os.path.exists(os.path.join(cwd, value)):
            local[name] = {"value": value, "path": os.path.normpath(os.path.join(cwd, value))}
    return {"launch_dir": cwd, "local_paths": local}


def config_header(record: dict) -> str:
    """config.yaml's first line: where the run was started, which its relative paths are relative to."""
    return (f"# started in {record['launch_dir']}: relative paths below are relative to it ({LAUNCH_FILE} holds "
            "their absolute paths)\n")


def save_run_config(cfg, folder: str | Path, record: dict | None = None) -> dict:
    """Write folder/config.yaml (cfg.to_dict(), the user's values, under config_header) and folder/launch.json
    (`record`, default launch_record of cfg in the current directory); returns the record."""
    import yaml

    folder = Path(folder)
    options = cfg.to_dict()
    record = launch_record(options) if record is None else record
    (folder / "config.yaml").write_text(config_header(record) + yaml.safe_dump(options, sort_keys=False))
    (folder / LAUNCH_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def read_launch_record(folder: str | Path) -> dict | None:
    """The launch.json in `folder`, or None where there is none (a run of an older preflab) or it is no record."""
    file = Path(folder) / LAUNCH_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("local_paths"), dict) else None


def recorded_path(record: dict | None, name: str, value) -> str | None:
    """The absolute path `record` holds for option `name` when it recorded the same `value`; else None."""
    entry = (record or {}).get("local_paths", {}).get(name)
    if isinstance(entry, dict) and entry.get("value") == value and isinstance(entry.get("path"), str):
        return entry["path"]
    return None


def resolve_saved_paths(options: dict, record: dict | None, where: str = "the run's saved config",
                        note=None) -> dict:
    """`options` (a saved config) with each recorded relative path option replaced by the absolute path the module
    docstring's rule picks; the notes go to `note` (default: stderr, each once). A new dict; `options` unchanged."""
    if not record:
        return options
    note = note or _note_once
    out = dict(options)
    for name in PATH_OPTIONS:
        value = options.get(name)
        path = recorded_path(record, name, value) if _relative(value) else None
        if path is None:
            continue
        started = record.get("launch_dir")
        if os.path.exists(path):
            out[name] = path
        elif os.path.exists(value):
            out[name] = os.path.abspath(value)
            note(f"{where}: {name}={value!r} was {path} when the run started in {started}, which no longer exists; "
                 f"read {out[name]} (relative to the current directory) instead")
        else:
            out[name] = path
            note(f"{where}: {name}={value!r} exists neither where the run was started ({path}) nor relative to the "
                 f"current directory ({os.path.abspath(value)}); it is read as {path} (a moved or deleted file), not "
                 "looked up on the hub")
    return out


def same_path(name: str, saved, current, record: dict | None) -> bool:
    """Whether option `name`'s saved value (recorded in the run's launch `record`) and the current value (relative to
    the current directory) name the same existing file or folder: `data/train.jsonl` saved by a run started in
    /p and `/p/data/train.jsonl` (or `../p/data/train.jsonl`) given now."""
    if name not in PATH_OPTIONS or not isinstance(saved, str) or not isinstance(current, str):
        return False
    before = recorded_path(record, name, saved) if _relative(saved) else os.path.expanduser(saved)
    after = os.path.expanduser(current)
    if before is None or not os.path.exists(before) or not os.path.exists(after):
        return False
    return os.path.samefile(before, after)


def _note_once(text: str) -> None:
    if text not in _said:
        _said.add(text)
        print(f"preflab: note: {text}.", file=sys.stderr)
