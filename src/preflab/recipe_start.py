"""The starting model of a recipe run (`task: <recipe>`, preflab.recipes) and the model each of its stages trained
against, recorded in the run folder's start.json, so `preflab eval RUN/<stage>` has the stage's reference by default
and a user can see (and load) what the recipe started from.

    RUN/start.json   {"start": {"kind": "saved", "path": "start", "fingerprint": "sha256:..."},
                      "references": {"fspo": "start", "pooled": "start"}}
    RUN/start/       the starting model as the recipe built it in code: config.json, model.safetensors, tokenizer

A recipe builds its tiny model in code (no path to record), so the model is saved once, before its first stage
trains it (save_start). A start that is a local folder is recorded by its absolute path and fingerprint instead of
copied (record_start: start_record kind "path"), a hub name by its name (kind "hub"); no recipe loads its start yet
(every one refuses model_name_or_path), so only the tests use them today. "references" maps a stage to the model its
objective compared against (its reference: a frozen copy of the policy when the stage began): "start", or the name of
an earlier stage whose final model it began from (raft_ladder's DPO stage trains against its SFT stage's model).
Stages without a reference (SFT, reward models, GRPO with beta 0, SimPO) are not listed, nor dstc's DPO / KTO
iterations (each trains against the model before it, which depends on which earlier iterations found pairs): their
eval keeps the rule of any run (`preflab eval --reference`). The stages' reference is the frozen copy the trainer is
given, not the recipe's start, whenever an earlier stage trained the policy first.

The fingerprint (weights_fingerprint) hashes the names, sizes and bytes of the folder's *.safetensors files and its
config.json: the eval refuses a start whose folder changed or vanished since the recipe recorded it, naming the
path and --reference / --no-reference, rather than scoring against another model. A resume never rewrites the
start: start.json written, the saved start stays as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from preflab.errors import ConfigError

START_FILE = "start.json"
START_DIR = "start"
START = "start"  # a stage's reference is the recipe's starting model (start.json "references")
_CHUNK = 1 << 20


def weights_fingerprint(folder: str | Path) -> str:
    """sha256 over the folder's config.json and *.safetensors files (sorted by name: each one's name, size and
    bytes). Hashing the bytes, not the sizes alone: a model trained further in place keeps every file's size."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix == ".safetensors"
                                                                   or p.name == "config.json"))
    if not any(p.suffix == ".safetensors" for p in files):
        raise ConfigError(f"{folder} holds no .safetensors weights to record as the recipe's starting model.")
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}|{path.stat().st_size}|".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def start_record(name_or_path: str) -> dict:
    """start.json's "start" for a start the recipe loads rather than builds: a local folder by its absolute path and
    fingerprint (not copied), else a hub name by its name."""
    if Path(name_or_path).is_dir():
        path = os.path.abspath(name_or_path)
        return {"kind": "path", "path": path, "fingerprint": weights_fingerprint(path)}
    return {"kind": "hub", "name": str(name_or_path)}


def save_start(out: str | Path, model, tokenizer, references: dict[str, str], resume: bool) -> dict:
    """Save `model` (built in code, before any stage trains it) once under out/start/ in safetensors with its
    tokenizer, and write out/start.json: the record, with `references` (stage -> START or an earlier stage). On a
    resume whose start.json exists nothing is written (the start stays byte for byte); a start.json without resume is
    refused (never overwritten: the recipe's state file refuses such a folder first). Main process only (the caller
    wraps it in preflab.recipe_state.main_writes). Returns start.json's content."""
    out = Path(out)
    if _kept(out, resume):
        data = read_start(out)
        _note_other_start(out, data, model)
        return data
    folder, partial = out / START_DIR, out / f".{START_DIR}.tmp"
    shutil.rmtree(partial, ignore_errors=True)  # an earlier run stopped while saving it: start.json not yet written
    model.save_pretrained(str(partial), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(partial))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return _write(out, {"kind": "saved", "path": START_DIR, "fingerprint": weights_fingerprint(folder)}, references)


def _note_other_start(out: Path, data: dict, model) -> None:
    """A resume whose recipe built another model than the saved start (allow_config_change let recipe_params that
    build it change: seed, hidden_size, ...) keeps start/ (the finished stages began from it) and says so: the stages
    run from now on begin from the new model, and start.json's references name the old one."""
    folder = out / START_DIR
    if data["start"].get("kind") != "saved" or not (folder / "model.safetensors").is_file():
        return
    from safetensors.torch import load_file

    saved, built = load_file(str(folder / "model.safetensors")), model.state_dict()
    if all(k in built and saved[k].shape == built[k].shape and bool((saved[k] == built[k].detach().cpu()).all())
           for k in saved):
        return
    print(f"preflab: note: {folder} (this run's starting model, kept on resume) is not the model this session built "
          "(recipe_params changed under allow_config_change): the finished stages began from the saved one, the "
          "stages still to run begin from the new one; evaluate those with --reference DIR.", flush=True)


def record_start(out: str | Path, name_or_path: str, references: dict[str, str], resume: bool) -> dict:
    """out/start.json for a recipe that loads its start (start_record: a local folder's path and fingerprint, not a
    copy; a hub name), under save_start's rules (written once, never on a resume that has it)."""
    out = Path(out)
    if _kept(out, resume):
        return read_start(out)
    return _write(out, start_record(name_or_path), references)


def _kept(out: Path, resume: bool) -> bool:
    """True when out/start.json exists and a resume keeps it; an existing one without resume is refused."""
    if not (out / START_FILE).is_file():
        return False
    if not resume:
        raise ConfigError(f"{out / START_FILE} exists: set resume_from_checkpoint=true to continue that run, or use "
                          "a new output_dir.")
    return True


def _write(out: Path, start: dict, references: dict[str, str]) -> dict:
    from preflab.atomic_file import write_json_file

    data = {"start": start, "references": dict(references)}
    write_json_file(out / START_FILE, data, indent=1)
    return data


def read_start(run: str | Path) -> dict:
    """start.json of the recipe run folder `run` ({} where there is none: a run of an earlier preflab)."""
    path = Path(run) / START_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); pass --reference DIR or --no-reference.") from e
    if not isinstance(data, dict) or not isinstance(data.get("start"), dict):
        raise ConfigError(f"{path} holds no \"start\" record; pass --reference DIR or --no-reference.")
    return data


def start_path(run: str | Path, record: dict) -> str:
    """The starting model `record` names, checked: its folder exists and its fingerprint is the recorded one (a hub
    start is refused: the eval loads local folders only). ConfigError naming the path and what to pass."""
    what = f"the starting model of recipe run {run} (recorded in {Path(run) / START_FILE})"
    fix = "Pass --reference DIR (the model the stage trained against) or --no-reference for the policy-only metrics."
    if record.get("kind") == "hub":
        raise ConfigError(f"{what} is the hub model {record.get('name')!r}; preflab eval loads local folders only "
                          f"(`hf download NAME --local-dir DIR`). {fix}")
    path = Path(record["path"]) if record.get("kind") == "path" else Path(run) / str(record.get("path", START_DIR))
    if not path.is_dir():
        raise ConfigError(f"{path}, {what}, is missing (moved or deleted). {fix}")
    now = weights_fingerprint(path)
    if now != record.get("fingerprint"):
        raise ConfigError(f"{path}, {what}, changed since the recipe recorded it (fingerprint "
                          f"{str(record.get('fingerprint'))[:19]}... -> {now[:19]}...): it is not the model the "
                          f"recipe started from. {fix}")
    return str(path)


def stage_reference(checkpoint: str | Path) -> tuple[str, str] | None:
    """(reference, what it is) for `preflab eval` of a recipe stage folder RUN/<stage> (or its checkpoint-<step>):
    the model the stage trained against by RUN/start.json, checked (start_path); None where the folder is no stage
    of a recipe run with start.json, or the stage trained without a reference."""
    stage = Path(checkpoint)
    if stage.name.startswith("checkpoint-"):
        stage = stage.parent
    run = stage.parent
    data = read_start(run)
    source = (data.get("references") or {}).get(stage.name) if data else None
    if source is None:
        return None
    if source == START:
        return start_path(run, data["start"]), "the recipe's starting model"
    earlier = run / source
    if not (earlier / "config.json").is_file():
        raise ConfigError(f"{earlier}, the model recipe stage {stage.name} trained against (its stage {source}'s "
                          f"final model, recorded in {run / START_FILE}), is missing. Pass --reference DIR or "
                          "--no-reference for the policy-only metrics.")
    return str(earlier), f"recipe stage {source}'s final model"
