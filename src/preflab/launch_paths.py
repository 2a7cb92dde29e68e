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
recorded and stays a hub name. The options holding paths inside a string, list or mapping (NESTED_PATH_OPTIONS:
reward_funcs' model folders, `file.py:function` and `maxmin:RUN` judges; loss_type's, pair_builder's and an online
run's tools' `file.py:name`; recipe_params', objective_params' and vision_pair_params' files and folders, at any depth) are
recorded whole, "value" the option as written and "path" the same with each local path part made absolute:

    "reward_funcs": {"value": ["rewards.py:score", "rm", "verifier:math"],
                     "path": ["/home/me/project/rewards.py:score", "/home/me/project/rm", "verifier:math"]}

A string in such an option is local when, relative to the launch directory, it names an existing file or folder (in
a mapping option only a string with a "/" or a file suffix: `stop_after_stage: sft` stays a name where a folder sft
exists), or it is `path/file.py:function` of an existing .py file, or `maxmin...:RUN` of an existing folder (the
judge forms preflab.online.tasks.resolve_judge reads; in loss_type, pair_builder and tools only `file.py:name`); the part
before or after ":" is kept. TRL's `datasets:` mixture of one entry is dataset_name by the time the run starts
(preflab.config_trl), recorded as such. The config itself keeps the user's values (config.yaml's first line says
where the run was started).

The rule (resolve_saved_paths; preflab.models.run_config reads every saved config through it, and the resume check
compares paths with it):
- an option recorded with the value the config still holds reads its recorded absolute path where that exists; else
  the value relative to the current directory where that exists, with a note naming the option (the run's file is
  gone; another of that name here is read); else the recorded absolute path, with a note naming the option that it
  exists neither where the run was started nor here (a loader then names that path; it is never looked up on the hub);
  a nested option: the same rule for each of its local path parts;
- everything else is unchanged: absolute paths, builtin and hub names, and a run without launch.json (written by an
  older preflab: its relative paths are read relative to the current directory, as before).

A recipe's stage (preflab.recipe_options.stage_config: its config carries RECIPE_RUN_DIR, the recipe's output_dir)
also records "run_dir" (that folder, absolute) and "run_paths": each PATH_OPTIONS value naming an existing file or
folder inside it, relative to it ({"dataset_name": {"value": "/runs/A/data/episodes.jsonl", "path":
"data/episodes.jsonl"}}). The recipe writes its stages' data into its run folder and names it by the folder's path,
so after `mv A B` the resumed stage names B/data/episodes.jsonl: same_run_path takes that for the saved value (the
same place in the run folder of the resume), where before the resume was refused as a changed dataset_name. The one
rule is run_path (the recorded place joined to the run folder now); a saved stage config read from its folder
(preflab.models.run_config: `preflab eval B/fspo`) reads its paths by it too (resolve_saved_paths, the run folder now
found from the stage folder: run_folder_now), and a recipe's state file compares its recipe_params' paths inside the
run folder by it (preflab.recipe_state).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

LAUNCH_FILE = "launch.json"
# a recipe stage config's attribute (not an option; set by preflab.recipe_options.stage_config): the recipe's run folder
# (its output_dir). The stage's launch record holds the stage's paths inside that folder relative to it ("run_paths"),
# and its resume compares them against the run folder of the resume (same_run_path), so a moved run folder resumes
RECIPE_RUN_DIR = "recipe_run_dir"
# the options naming a file or folder a run reads (output_dir and resume_from_checkpoint say where it writes and
# which checkpoint it started from: not read back from a saved config)
PATH_OPTIONS = ("model_name_or_path", "ref_model_name_or_path", "processor_name_or_path", "dataset_name",
                "eval_dataset_name", "chat_template_path", "user_embeddings", "reward_aggregator")

# options holding paths inside a string, list or mapping, and which strings in them are local paths (module docstring):
# "judges" any that names an existing path or is a file.py:function / maxmin:RUN form; "code" only file.py:name (an
# objective class or pair builder in a local file: `sigmoid` stays a loss name where a file sigmoid exists); "mapping"
# only those with a "/" or a file suffix
NESTED_PATH_KINDS = {"reward_funcs": "judges", "recipe_params": "mapping", "objective_params": "mapping",
                     "vision_pair_params": "mapping", "loss_type": "code", "pair_builder": "code", "tools": "code",
                     "environment_factory": "code"}
NESTED_PATH_OPTIONS = tuple(NESTED_PATH_KINDS)
# reward_funcs names a judge reads as builtins before any path (preflab.online.tasks.resolve_judge): never paths
BUILTIN_JUDGES = ("demo_true_reward", "demo_echo_reward")

_said: set = set()  # notes already printed (a saved config is read several times by one command)


def _relative(value) -> bool:
    """A value that could be a path relative to a directory: a string, not absolute, not `~...`, not builtin:."""
    return isinstance(value, str) and bool(value) and not os.path.isabs(value) and not value.startswith("~") \
        and not value.startswith("builtin:")


def launch_record(options: dict, cwd: str | None = None, run_dir: str | None = None) -> dict:
    """{"launch_dir": cwd, "local_paths": {option: {"value", "path"}}} for the run of `options` started in `cwd`
    (default: the current directory): each PATH_OPTIONS value that is a relative path to an existing file or folder
    there, with its absolute path. run_dir (a recipe stage's: the recipe's run folder, RECIPE_RUN_DIR): also
    "run_dir" and "run_paths" (run_paths_record)."""
    cwd = os.path.abspath(cwd or os.getcwd())
    local = {}
    for name in PATH_OPTIONS:
        value = options.get(name)
        if _relative(value) and os.path.exists(os.path.join(cwd, value)):
            local[name] = {"value": value, "path": os.path.normpath(os.path.join(cwd, value))}
    for name in NESTED_PATH_OPTIONS:
        value = options.get(name)
        absolute = absolutized(name, value, cwd)
        if absolute != value:
            local[name] = {"value": value, "path": absolute}
    record = {"launch_dir": cwd, "local_paths": local}
    if run_dir is not None:
        record["run_dir"] = os.path.abspath(run_dir)
        record["run_paths"] = run_paths_record(options, cwd, record["run_dir"])
    return record


def config_launch_record(cfg) -> dict:
    """launch_record of a run config in the current directory: its options, and for a recipe's stage its run folder
    (the RECIPE_RUN_DIR attribute stage_config sets), so the record holds the stage's run_paths too."""
    return launch_record(cfg.to_dict(), run_dir=getattr(cfg, RECIPE_RUN_DIR, None))


def run_paths_record(options: dict, cwd: str, run_dir: str, names=PATH_OPTIONS) -> dict:
    """{option: {"value": as written, "path": relative to run_dir}} of each value of `names` (default PATH_OPTIONS)
    naming an existing file or folder inside `run_dir` (absolute, or relative to `cwd`): a recipe stage's data files,
    which the recipe writes into its own run folder and names by their absolute path (names: a recipe's own
    recipe_params, e.g. fspo's data_file, preflab.recipe_state). A path outside run_dir is not recorded (as before: a
    resume compares it as written)."""
    paths = {}
    for name in names:
        value = options.get(name)
        if not isinstance(value, str) or not value or value.startswith("builtin:"):
            continue
        full = os.path.normpath(os.path.join(cwd, os.path.expanduser(value)))
        inside = _inside(full, run_dir)
        if inside is not None and os.path.exists(full):
            paths[name] = {"value": value, "path": inside}
    return paths


def _inside(path: str, folder: str) -> str | None:
    """`path` (absolute, normalised) relative to `folder` when it lies inside it, else None."""
    folder = os.path.normpath(folder)
    if os.path.commonpath([path, folder]) != folder or path == folder:
        return None
    return os.path.relpath(path, folder)


def run_path(name: str, saved, record: dict | None, run_dir: str | None) -> str | None:
    """Where option `name`'s saved value lies in `run_dir`, its recipe's run folder now, when `record` (the stage's
    launch record) holds it inside the run folder it had then ("run_paths", relative to "run_dir"): run_dir joined
    with that relative path; None where the record holds no entry of that value (a path outside the run folder, a
    plain run) or run_dir is None. The one rule of a moved recipe run (`mv RUN RUN2`: RUN/data/x.jsonl is
    RUN2/data/x.jsonl): its resume compares by it (same_run_path), `preflab eval` of a stage reads by it
    (resolve_saved_paths), and so does the recipe's own state file for its recipe_params
    (preflab.recipe_state.RecipeStateFile)."""
    entries = (record or {}).get("run_paths")
    entry = entries.get(name) if isinstance(entries, dict) else None
    if run_dir is None or not isinstance(entry, dict) or entry.get("value") != saved \
            or not isinstance(entry.get("path"), str):
        return None
    return os.path.normpath(os.path.join(os.path.abspath(os.path.expanduser(run_dir)), entry["path"]))


def same_run_path(name: str, saved, current, record: dict | None, run_dir: str | None) -> bool:
    """Whether option `name`'s saved value, recorded inside the run folder of its recipe, and the current value name
    the same place inside `run_dir`, the recipe's run folder now (run_path): a recipe run moved (`mv RUN RUN2`) names
    its stage's data file RUN2/data/x.jsonl where the checkpoint saved RUN/data/x.jsonl. The file's rows are still
    checked by the resume's data fingerprint (check_resume_data)."""
    there = run_path(name, saved, record, run_dir)
    return there is not None and isinstance(current, str) \
        and os.path.normpath(os.path.abspath(os.path.expanduser(current))) == there


def run_folder_now(record: dict | None, options: dict, folder) -> str | None:
    """The recipe run folder that a stage's saved config (`options`, its launch `record`) belongs to, read from
    `folder` (the stage's output folder as it is now, holding its config.yaml): `folder` less the stage's place in
    the run folder it was saved in (its output_dir relative to the record's "run_dir"): RUN2 for RUN2/fspo saved as
    RUN/fspo. None: no recipe stage's record, no folder, or the folder's last names are not the stage's (a stage
    folder copied out of its run under another name)."""
    then, out = (record or {}).get("run_dir"), options.get("output_dir")
    if folder is None or not isinstance(then, str) or not isinstance(out, str) or not out:
        return None
    saved_at = os.path.normpath(os.path.join(str(record.get("launch_dir") or ""), os.path.expanduser(out)))
    stage = _inside(saved_at, os.path.normpath(then)) if os.path.isabs(saved_at) and os.path.isabs(then) else None
    if stage is None:
        return None
    parts, here = Path(stage).parts, Path(os.path.abspath(folder))
    if here.parts[-len(parts):] != parts:
        return None
    return str(here.parents[len(parts) - 1])


def _path_forms(text: str) -> list[tuple[str, str, str]]:
    """The ways `text`, a string inside a nested option, can hold a path: (prefix, path, suffix) with text ==
    prefix + path + suffix: `path/file.py:function` (the file); `maxmin...:RUN` (the run folder); the whole string
    (last: a recorded `/p/rewards.py:score` is the file /p/rewards.py, which a gone file leaves no other way to tell)."""
    forms = []
    head, colon, tail = text.rpartition(":")
    if colon and head.endswith(".py"):
        forms.append(("", head, colon + tail))
    name, colon, rest = text.partition(":")
    if colon and name.startswith("maxmin") and "." not in name and "/" not in name:
        forms.append((name + colon, rest, ""))
    return forms + [("", text, "")]


def _local_form(text: str, cwd: str, kind: str) -> str | None:
    """`text` with its local path part (module docstring; `kind` of NESTED_PATH_KINDS) absolute under `cwd`, or None
    where it has none."""
    if kind == "judges" and text in BUILTIN_JUDGES:
        return None
    for prefix, path, suffix in _path_forms(text):
        if not _relative(path) or (kind == "mapping" and "/" not in path and not os.path.splitext(path)[1]) \
                or (kind == "code" and not (suffix and path.endswith(".py"))):
            continue
        full = os.path.join(cwd, path)
        if (os.path.isfile(full) if suffix else os.path.exists(full)):
            return prefix + os.path.normpath(full) + suffix
    return None


def absolutized(name: str, value, cwd: str | None = None):
    """Nested option `name`'s `value` with each local path part (module docstring) made absolute under `cwd`
    (default: the current directory), in lists and dict values at any depth; everything else unchanged."""
    cwd = os.path.abspath(cwd or os.getcwd())
    kind = NESTED_PATH_KINDS.get(name, "mapping")

    def walk(item):
        if isinstance(item, str):
            return _local_form(item, cwd, kind) or item
        if isinstance(item, (list, tuple)):
            return [walk(v) for v in item]
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        return item

    return walk(value)


def config_header(record: dict) -> str:
    """config.yaml's first line: where the run was started, which its relative paths are relative to."""
    return (f"# started in {record['launch_dir']}: relative paths below are relative to it ({LAUNCH_FILE} holds "
            "their absolute paths)\n")


def save_run_config(cfg, folder: str | Path, record: dict | None = None, options: dict | None = None,
                    comment: str = "") -> dict:
    """Write folder/config.yaml (cfg.to_dict(), the user's values, under config_header) and folder/launch.json
    (`record`, default launch_record of cfg in the current directory); returns the record. options: the options to
    write instead of all of cfg's (a recipe run's: those it reads, preflab.recipe_stages.recipe_config_options), with
    `comment` (a line saying why) under the header."""
    import yaml

    folder = Path(folder)
    given = options is not None
    options = cfg.to_dict() if options is None else options
    record = launch_record(options) if record is None else record
    text = cfg.yaml_text() if hasattr(cfg, "yaml_text") and not given else yaml.safe_dump(options, sort_keys=False)
    (folder / "config.yaml").write_text(config_header(record) + (f"# {comment}\n" if comment else "") + text)
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


def recorded_path(record: dict | None, name: str, value):
    """The absolute path `record` holds for option `name` when it recorded the same `value` (a nested option: its
    value with the local path parts absolute); else None."""
    entry = (record or {}).get("local_paths", {}).get(name)
    if not isinstance(entry, dict) or entry.get("value") != value or "path" not in entry:
        return None
    if name in NESTED_PATH_OPTIONS or isinstance(entry["path"], str):
        return entry["path"]
    return None


def resolve_saved_paths(options: dict, record: dict | None, where: str = "the run's saved config",
                        note=None, folder=None) -> dict:
    """`options` (a saved config) with each recorded relative path option replaced by the absolute path the module
    docstring's rule picks; the notes go to `note` (default: stderr, each once). A new dict; `options` unchanged.
    folder: where the saved config is read from (its run's output folder now). A recipe stage's path recorded inside
    its recipe's run folder (record's "run_paths") reads the same place in that folder now (run_folder_now,
    run_path) where that exists: `preflab eval RUN2/fspo` after `mv RUN RUN2` reads RUN2/data/episodes.jsonl, as the
    moved run's resume does, where before it read the gone RUN/data/episodes.jsonl (and skipped its overlap check)."""
    if not record:
        return options
    note = note or _note_once
    out = dict(options)
    started = record.get("launch_dir")
    moved = run_folder_now(record, options, folder)
    moved = None if moved is None or os.path.normpath(moved) == os.path.normpath(record["run_dir"]) else moved
    for name in PATH_OPTIONS:
        value = options.get(name)
        there = run_path(name, value, record, moved)
        if there is not None and os.path.exists(there):
            note(f"{where}: {name}={value!r} lies in its recipe's run folder {record['run_dir']}, now {moved}: read "
                 f"{there}")
            out[name] = there
            continue
        path = recorded_path(record, name, value) if _relative(value) else None
        if path is not None:
            out[name] = _pick(f"{where}: {name}={value!r}", value, path, started, note)
    for name in NESTED_PATH_OPTIONS:
        value = options.get(name)
        recorded = recorded_path(record, name, value) if value is not None else None
        if recorded is not None:
            out[name] = _resolved_nested(f"{where}: {name}", value, recorded, started, note)
    return out


def _pick(said: str, value: str, path: str, started, note) -> str:
    """The path that relative `value`, recorded as absolute `path` in the run started in `started`, reads now (the
    module docstring's rule); `said` begins the note."""
    if os.path.exists(path):
        return path
    if os.path.exists(value):
        note(f"{said} was {path} when the run started in {started}, which no longer exists; read "
             f"{os.path.abspath(value)} (relative to the current directory) instead")
        return os.path.abspath(value)
    note(f"{said} exists neither where the run was started ({path}) nor relative to the current directory "
         f"({os.path.abspath(value)}); it is read as {path} (a moved or deleted file), not looked up on the hub")
    return path


def _resolved_nested(said: str, value, recorded, started, note):
    """Nested `value` with each string its record made absolute (`recorded`, the same structure) read by _pick."""
    if isinstance(value, str) and isinstance(recorded, str) and value != recorded:
        for prefix, path, suffix in _path_forms(value):
            inner = recorded[len(prefix):len(recorded) - len(suffix)]
            if recorded.startswith(prefix) and recorded.endswith(suffix) and os.path.isabs(inner):
                return prefix + _pick(f"{said} entry {value!r}", path, inner, started, note) + suffix
        return recorded
    if isinstance(value, (list, tuple)) and isinstance(recorded, list) and len(value) == len(recorded):
        return [_resolved_nested(said, v, r, started, note) for v, r in zip(value, recorded)]
    if isinstance(value, dict) and isinstance(recorded, dict):
        return {k: _resolved_nested(said, v, recorded.get(k, v), started, note) for k, v in value.items()}
    return value


def same_path(name: str, saved, current, record: dict | None) -> bool:
    """Whether option `name`'s saved value (recorded in the run's launch `record`) and the current value (relative to
    the current directory) name the same existing file or folder: `data/train.jsonl` saved by a run started in
    /p and `/p/data/train.jsonl` (or `../p/data/train.jsonl`) given now."""
    if name in NESTED_PATH_OPTIONS:
        return _same_nested(name, saved, current, record)
    if name not in PATH_OPTIONS or not isinstance(saved, str) or not isinstance(current, str):
        return False
    before = recorded_path(record, name, saved) if _relative(saved) else os.path.expanduser(saved)
    after = os.path.expanduser(current)
    if before is None or not os.path.exists(before) or not os.path.exists(after):
        return False
    return os.path.samefile(before, after)


def same_local_paths(recorded, current, name: str = "recipe_params") -> bool:
    """Whether `recorded` (a nested value with its local paths made absolute where a run started: absolutized) and
    `current` (as written now, relative to the current directory) name the same files and folders."""
    from preflab.home_paths import home_expanded

    return _canonical(recorded) == _canonical(absolutized(name, home_expanded(current)))


def _same_nested(name: str, saved, current, record: dict | None) -> bool:
    """same_path of a nested option: the recorded absolute form of `saved` and `current` with its local path parts
    made absolute here are equal once each existing path part is its real path (symlinks and `..` resolved)."""
    before = recorded_path(record, name, saved) if saved is not None else None
    return before is not None and same_local_paths(before, current, name)


def _canonical(value):
    """`value` with each absolute path part naming an existing file or folder replaced by its real path."""
    if isinstance(value, str):
        for prefix, path, suffix in _path_forms(value):
            if os.path.isabs(path) and os.path.exists(path):
                return prefix + os.path.realpath(path) + suffix
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


def _note_once(text: str) -> None:
    if text not in _said:
        _said.add(text)
        print(f"preflab: note: {text}.", file=sys.stderr)
