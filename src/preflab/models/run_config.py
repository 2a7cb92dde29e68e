"""Which training config belongs to a model folder: the one rule every reader of a saved run's config uses (preflab
eval and its --task vlm / diffusion, the reward-model loaders, reloading a task: vlm run, its processor).

    run_config_file(path)  the config.yaml the rule picks, or None
    run_config(path)       its options as a dict (or a checkpoint's own copy in trainer_state.json), or {}
    require_run_config_file(path, command)  run_config_file, or a ConfigError saying what to point `command` at
    require_run_config(path, command)  that file and its options, read once (the --task vlm / diffusion evals)
    run_file_folder(path, name)   the same rule for any file a run saves beside its weights (tokenizer, processor)
    parent_file_not_read(path, name)  the sentence saying a parent's file was passed over for a folder, or None
    run_seed(cfg, seed)    the seed the run of a saved config built its models and held its rows out with

The rule: a folder's own config.yaml; a checkpoint folder (is_checkpoint_folder: named checkpoint-<step> as
preflab.checkpoint writes them, or holding trainer_state.json, which every checkpoint writer saves) has none of its
own and reads its run's config.yaml one level up, else the copy of the run's config its trainer_state.json keeps
("config", for a checkpoint moved out of its run). Any other folder gets nothing from its parent: a model saved
inside another run's folder without a config.yaml of its own (a reward model written by hand into a recipe's or an
online run's output_dir, a policy saved into a reward run's) is no output of that run, and its task, base model,
beta or training data are not that run's. A path that is no directory (a hub name) has no saved config.
The tokenizer (preflab.eval.run_files.tokenizer_near) and the image-text processor (preflab.models.vlm_run,
vlm_parts.processor_source) saved with a model are found by the same rule (run_file_folder): beside the weights, or for
a checkpoint (whose writers save no tokenizer or processor) in its run's folder one level up; a model saved inside
another run's folder does not take that run's.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from preflab.checkpoint import checkpoint_step
from preflab.config_defaults import DEFAULT_SEED
from preflab.errors import ConfigError
from preflab.strict_yaml import load_yaml

CONFIG_FILE = "config.yaml"
STATE_FILE = "trainer_state.json"


def is_checkpoint_folder(path: str | Path) -> bool:
    """A mid-run checkpoint: named checkpoint-<step> (preflab.checkpoint.checkpoint_step, the name its writers give and
    list_checkpoints reads) or holding trainer_state.json."""
    path = Path(path)
    return checkpoint_step(path) is not None or (path / STATE_FILE).is_file()


def run_file_folder(path: str | Path, names: str | tuple[str, ...]) -> Path | None:
    """The folder whose file `names` (config.yaml, tokenizer_config.json; or any of several: an image-text processor
    saves processor_config.json or preprocessor_config.json) belongs to the model in folder `path`: `path` itself, or
    for a checkpoint folder its run's one level up (module docstring); None where neither holds one, or `path` is no
    directory."""
    path, names = Path(path), _names(names)
    if not path.is_dir():
        return None
    candidates = [path] + ([path.parent] if is_checkpoint_folder(path) else [])
    return next((c for c in candidates if any((c / n).is_file() for n in names)), None)


def parent_file_not_read(path: str | Path, names: str | tuple[str, ...]) -> str | None:
    """Where `path` (a directory) has no file `names`, is no checkpoint folder, and its parent has one, the sentence
    saying that the parent's is not read for it (run_file_folder); else None."""
    path, names = Path(path), _names(names)
    if not path.is_dir() or is_checkpoint_folder(path) or any((path / n).is_file() for n in names):
        return None
    found = [n for n in names if (path.parent / n).is_file()]
    if not found:
        return None
    return (f"{path} has no {' or '.join(names)}; its parent {path.parent} has {found[0]}, but "
            f"{_no_checkpoint_of_it(path)}, so the parent's {found[0]} is not read for it (a model saved inside "
            "another run's folder is no output of that run)")


def _names(names: str | tuple[str, ...]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


def _no_checkpoint_of_it(path: Path) -> str:
    return f"{path.name} is no checkpoint of it (not named checkpoint-<step>, no {STATE_FILE})"


def run_seed(cfg: dict, seed: int | None = None) -> int:
    """The seed that the run of saved config `cfg` (run_config) built its builtin models with (builtin:tiny-*,
    builtin:demo-sft, a reward model's random head and base), and held out its eval_fraction rows with: `seed` when
    given (`preflab eval --seed`), else the run's saved `seed`, else TrainConfig's default (DEFAULT_SEED), the one
    `preflab train` ran with when its config named none. A builtin model's weights are its seed's random draw, so
    another seed is another model: before, a folder without config.yaml evaluated against --reference
    builtin:tiny-llama got the reference of seed 0, and a reward checkpoint or a vlm run whose config saved no seed
    was rebuilt over the base of seed 0, not the one its run trained (seed 42). Every reader of a saved run's seed
    takes it here."""
    if seed is not None:
        return int(seed)
    return int(cfg["seed"]) if cfg.get("seed") is not None else DEFAULT_SEED


def run_config_file(path: str | Path) -> Path | None:
    """The config.yaml of the run whose output folder `path` is (module docstring), or None."""
    folder = run_file_folder(path, CONFIG_FILE)
    return None if folder is None else folder / CONFIG_FILE


def run_config(path: str | Path) -> dict:
    """The training config saved with the run whose output folder `path` is (module docstring), or {}. A config.yaml
    that is not YAML, or not a mapping of options, is a ConfigError naming it. Relative paths the run read as local
    files or folders are made absolute where it was started (preflab.launch_paths: its launch.json beside
    config.yaml, or the copy in a checkpoint's trainer_state.json), so the config reads the same from any
    directory; a recipe stage's files inside its recipe's run folder are read where that folder is now (a moved
    recipe run: preflab.launch_paths.run_path)."""
    from preflab.launch_paths import resolve_saved_paths

    path = Path(path)
    found = run_config_file(path)
    if found is not None:
        return _read_saved(found)
    state = path / STATE_FILE
    if path.is_dir() and state.is_file():
        try:
            kept = json.loads(state.read_text())
            saved = kept.get("config")
        except (ValueError, AttributeError) as err:
            raise ConfigError(f"{state} is not a JSON object of training state ({err}); the checkpoint is damaged: "
                              "use another checkpoint of the run, or its final directory.") from err
        launch = kept.get("launch") if isinstance(kept.get("launch"), dict) else None
        return resolve_saved_paths(dict(saved), launch, f"{state} (config)", folder=path.parent) \
            if isinstance(saved, dict) else {}
    return {}


def _read_saved(file: Path) -> dict:
    """The options of the run config.yaml `file`, its relative local paths (and a recipe stage's paths inside its moved
    run folder) resolved by the launch.json beside it (preflab.launch_paths.resolve_saved_paths; none there: as
    written)."""
    from preflab.launch_paths import read_launch_record, resolve_saved_paths

    return resolve_saved_paths(_read_yaml(file), read_launch_record(file.parent), str(file), folder=file.parent)


def require_run_config_file(path: str | Path, command: str) -> Path:
    """run_config_file(path), or a ConfigError saying why there is none and what to point `command` (e.g. `preflab
    eval --task vlm`) at; a folder inside a run that is no checkpoint of it is told so, with the run's folder."""
    found = run_config_file(path)
    if found is not None:
        return found
    path = Path(path)
    if is_checkpoint_folder(path):
        where = f"{path} is a checkpoint without its run's {CONFIG_FILE} one level up ({path.parent / CONFIG_FILE})"
    elif (path.parent / CONFIG_FILE).is_file():
        where = (f"{path} has no {CONFIG_FILE}; its parent {path.parent} is a run, but {_no_checkpoint_of_it(path)}, "
                 f"so the run's {CONFIG_FILE} is not read for it: give {path.parent} or one of its checkpoint-N, or "
                 f"copy the run's {CONFIG_FILE} into {path} if the model there was trained by that run")
    else:
        where = f"{path} has no {CONFIG_FILE} (it is no run directory written by `preflab train`)"
    raise ConfigError(f"{where}. Point {command} at a run's output_dir (it holds {CONFIG_FILE}) or one of its "
                      "checkpoint-N folders.")


def require_run_config(path: str | Path, command: str) -> tuple[Path, dict]:
    """(require_run_config_file(path, command), the options it holds): the file read once, for the evaluations that
    load the run's config from the file and read its saved values too."""
    found = require_run_config_file(path, command)
    return found, _read_saved(found)


def _read_yaml(file: Path) -> dict:
    try:
        data = load_yaml(file.read_text())
    except ConfigError as err:  # a duplicate key or an alias bomb (strict_yaml)
        raise ConfigError(f"{file}: {err} It is the run's saved training config: fix or restore it.") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{file} is not valid YAML ({at}{getattr(err, 'problem', None) or err}); it is the run's "
                          "saved training config: fix or restore it (TrainConfig.save writes it at the start of a "
                          "run).") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file} holds a YAML {type(data).__name__}, not a mapping of options; it is the run's "
                          "saved training config: fix or restore it (TrainConfig.save writes it at the start of a "
                          "run).")
    return data
