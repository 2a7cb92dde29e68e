"""Atomic, verified checkpoints with exact resume: safetensors + JSON only, never pickle.

checkpoint-<step>/ holds
    model.safetensors      the trainable parameters (all of them, or only LoRA adapters)
    extra.safetensors      tensors outside the model the step updates (an objective's own parameters), if any
    optimizer.safetensors  optimizer state tensors; optimizer.json the rest of its state_dict
    rng.safetensors        torch (and CUDA) RNG states; rng.json python and numpy RNG states
    rng-rank<r>.*          written on several processes (DDP): every rank's own RNG states, which part ways as soon as
                           the ranks draw different amounts (CUDA dropout on batches of other shapes, a user's code);
                           rank r restores its own on the same world size (rank_rng_name), the main rank's otherwise
    trainer_state.json     global step, scheduler state, the metrics history position, the config, the timeline,
                           and "model_config": the checkpointed model's transformers config (model_architecture), so
                           a checkpoint is rebuilt as the model that was trained (a recipe's own tiny model, not the
                           builtin its stage config names)
    COMPLETE               written last: every other file's size and sha256; a directory without it is never picked
Each file is fsynced, then the marker, then the directory; the folder is written under a temporary name and
renamed into place. Replacing an existing checkpoint-<step> (after a rollback) renames the old one aside, renames
the new one in, then deletes the old one, so a kill at any moment leaves a complete checkpoint under every
checkpoint-<step> name (clean_interrupted_saves puts an aside folder back when the kill fell between the renames).

Timelines. Every run (every start of `train`) gets a run id; its timeline is the timeline of the checkpoint it
resumed from plus [run id, start step] (a fresh start: just [run id, 0]). It is stored in trainer_state.json and,
for the run now in charge of output_dir, in output_dir/timeline.json. A checkpoint is on the current timeline
when it was written by a run of that timeline before the next run of the timeline started from a checkpoint (at a
step <= that run's start step). `resume_from_checkpoint: true` resumes the newest intact checkpoint (highest step)
of the current timeline, so after a rollback to checkpoint-4 the abandoned run's checkpoint-8 is never picked.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from preflab.atomic_file import fsync_file
from preflab.atomic_file import fsync_folder as fsync_dir  # (online/run.py imports both from here)
from preflab.errors import ConfigError, PreflabError, WriteFailed
from preflab.final_save import STAGE_PREFIX as FINAL_STAGE_PREFIX

MARKER = "COMPLETE"
TIMELINE_FILE = "timeline.json"


def write_failure(err: Exception, path: str | Path | None = None) -> OSError | None:
    """A failed write as an OSError (errno, strerror, file), or None when `err` is not one. safetensors reports a
    full disk or a read-only folder as its own SafetensorError ("I/O error: No space left on device (os error
    28)"), not as an OSError; its errno is read from that text (EIO when it names none)."""
    if isinstance(err, OSError):
        return err
    if not isinstance(err, SafetensorError) or "I/O error" not in str(err):
        return None
    found = re.search(r"os error (\d+)", str(err))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), None if path is None else str(path))


def share_as_umask(path: Path) -> None:
    """Give a file safetensors wrote owner-only (it writes 0600, as a temporary file) the permissions the umask
    gives every other file of the run (0644 under umask 022), so the team of a shared machine can read the
    checkpoints and the model as they read config.yaml. Other modes are left as they are."""
    try:
        if path.stat().st_mode & 0o777 == 0o600:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(path, 0o666 & ~mask)
    except OSError:
        pass  # a filesystem without permissions (some network mounts) keeps what it has


def share_run_files(folder: Path) -> None:
    """share_as_umask for the files directly in `folder` (the final model, adapters, tokenizer)."""
    for path in Path(folder).iterdir():
        if path.is_file():
            share_as_umask(path)


def _write_json(path: Path, data) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_parts(optimizer) -> tuple[dict, dict]:
    """split_optimizer_state of the optimizer's state_dict, the JSON part naming its class ("optimizer": AdamW,
    Adafactor, SGD, ...; check_same_optimizer reads it)."""
    tensors, meta = split_optimizer_state(optimizer.state_dict())
    return tensors, {**meta, "optimizer": optimizer_class(optimizer), WEIGHT_DECAY_GROUPS: True}


def optimizer_class(optimizer) -> str:
    """The class name of the torch optimizer (inside accelerate's AcceleratedOptimizer); a bitsandbytes one is
    named with its package and state bits ("bitsandbytes AdamW 8-bit"): its state (state1 / state2, uint8 with
    quantization maps at 8 bits) is not torch AdamW's, nor that of the other bit width. Paged or not, the state is
    the same."""
    inner = getattr(optimizer, "optimizer", optimizer)
    name = type(inner).__name__
    if type(inner).__module__.startswith("bitsandbytes."):
        return f"bitsandbytes {name} {getattr(getattr(inner, 'args', None), 'optim_bits', 32)}-bit"
    return name


def split_optimizer_state(sd: dict) -> tuple[dict, dict]:
    """A torch optimizer state_dict as (tensors keyed "<index>.<key>", the JSON rest: param_groups and the
    non-tensor state values); join_optimizer_state inverts it. A state value that is a dict (bitsandbytes wraps its
    quantized state, state1 / qmap1 / absmax1 ..., in one) is split the same way one level down: its tensors keyed
    "<index>.<key>.<inner key>", its other values under meta's state[index][key]. A tensor whose storage an earlier
    one shares (bitsandbytes' quantization maps are one tensor for all parameters) is cloned: safetensors refuses
    shared storage."""
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    storages: set = set()

    def put(key, value):
        value = value.contiguous().cpu()
        storage = (value.untyped_storage().data_ptr(), value.device.type) if value.numel() else None
        if storage in storages:
            value = value.clone()
        elif storage is not None:
            storages.add(storage)
        tensors[key] = value

    for idx, state in sd["state"].items():
        meta["state"][str(idx)] = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                put(f"{idx}.{key}", value)
            elif isinstance(value, dict):
                meta["state"][str(idx)][key] = {}
                for inner, item in value.items():
                    if torch.is_tensor(item):
                        put(f"{idx}.{key}.{inner}", item)
                    else:
                        meta["state"][str(idx)][key][inner] = item
            else:
                meta["state"][str(idx)][key] = value
    return tensors, meta


def rng_parts() -> tuple[dict, dict]:
    """This process's RNG states: ({"torch", "cuda.<i>": state tensors}, {"python", "numpy": JSON-able states})."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {"python": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


HASH_BLOCK = 8 << 20  # bytes per read: one buffer reused (readinto), hashlib releases the GIL on updates this large


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file's bytes, read in HASH_BLOCK pieces into one reused buffer (a checkpoint's shards are GBs:
    never held whole in memory). OSError when it cannot be read."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def hash_threads(n_files: int) -> int:
    """Threads to hash n_files with: one per file, at most 8 and at most this process's share of the CPU cores
    (LOCAL_WORLD_SIZE processes of a launch share the machine's cores)."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, min(n_files, 8, (os.cpu_count() or 1) // local))


def file_records(folder: Path) -> dict:
    """{path relative to folder: size and sha256} of every file (sharded checkpoints have subfolders)."""
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def _aside_name(final: Path) -> Path:
    """Where a save that replaces checkpoint `final` parks the old one until the new one is in: put back by
    clean_interrupted_saves when a kill fell between the two renames."""
    return final.parent / f".old-{final.name}-{os.getpid()}"


def _doomed_name(folder: Path) -> Path:
    """Where a checkpoint that is being deleted (save_total_limit, load_best_model_at_end) is renamed first. Never
    put back: a kill part way through the deletion leaves it with some files gone (shutil.rmtree deletes in
    directory order, the COMPLETE marker maybe last), which .old-<name> would have brought back as checkpoint-<step>
    with a note that it was "restored"."""
    return folder.parent / f".del-{folder.name}-{os.getpid()}"


def _remove_atomically(folder: Path) -> None:
    """Rename a checkpoint aside (it stops being a checkpoint at once), then delete it."""
    aside = _doomed_name(folder)
    try:
        os.replace(folder, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, state: dict,
                    save_total_limit: int | None = None, extra_tensors: dict | None = None,
                    model_only: bool = False, rank_rngs: list | None = None) -> Path:
    """Write checkpoint-<step> atomically; returns its path. A failure leaves earlier checkpoints untouched.

    extra_tensors: name -> tensor updated by the step outside `model` (saved to extra.safetensors).
    model_only: transformers' save_only_model: no optimizer, scheduler or RNG state (model.safetensors, extra
    tensors and trainer_state.json, which records "save_only_model": true so that a resume is refused).
    save_total_limit: keep the newest (by step) that many checkpoints of this checkpoint's timeline.
    rank_rngs: on several processes, every rank's rng_parts() in rank order (written as rng-rank<r>).
    Cost: every file is read back once for its sha256 (about 1 s per GB on one core) and fsynced.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}-{os.getpid()}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        if extra_tensors:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra_tensors.items()},
                      str(tmp / "extra.safetensors"))
        if model_only:
            _write_json(tmp / "trainer_state.json", {**state, "global_step": step, "scheduler": None,
                                                     "save_only_model": True})
        else:
            opt_tensors, opt_meta = _optimizer_parts(optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            _write_json(tmp / "optimizer.json", opt_meta)
            write_training_state(tmp, step, scheduler, state)
            for rank, (tensors, meta) in enumerate(rank_rngs or []):
                save_file(tensors, str(tmp / f"rng-rank{rank}.safetensors"))
                _write_json(tmp / f"rng-rank{rank}.json", meta)
        commit_checkpoint(tmp, final, step)
    except (OSError, SafetensorError) as err:
        failure = write_failure(err)
        if failure is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteFailed(f"could not write checkpoint {final}: {failure.strerror or failure}. "
                          f"{what_is_kept(output_dir, failed_save=True)}") from err
    apply_save_total_limit(output_dir, final, state.get("timeline"), save_total_limit,
                           state.get("best_model_checkpoint"))
    return final


def what_is_kept(output_dir: str | Path, failed_save: bool = False, where: str = "") -> str:
    """What output_dir keeps to go on from: the latest finished checkpoint of its current timeline (its step) and
    how to resume it, that it holds the model weights only (save_only_model: no resume), or that there is none, so
    that the advice never promises a checkpoint that is not there or a resume it cannot give. As an interrupted run
    ends with it (preflab.cli.interrupted_message) and a failed one (preflab.loops.driver adds its own advice), or
    failed_save: as a failed checkpoint save ends with it, with the advice on output_dir (`where`: added to it; a
    sharded save: every rank writes into it)."""
    latest = latest_checkpoint(output_dir)
    fix = f"free disk space or fix the permissions of output_dir{where}"
    if latest is None:
        return (f"No earlier checkpoint of this run exists, so its steps are lost; {fix}, then start it again."
                if failed_save else f"{output_dir} holds no finished checkpoint of this run (none was due yet, or "
                "save_steps is 0): its steps are lost and a new start begins again at step 0.")
    if is_model_only(latest):
        return f"The latest finished checkpoint is {latest}; {MODEL_ONLY_KEPT}" + (
            f" Then {fix}, and start it again." if failed_save else "")
    return (f"Earlier checkpoints are kept (the latest: {latest}); {fix}, then resume." if failed_save else
            f"The latest finished checkpoint is {latest} (step {checkpoint_step(latest)}); the steps after it are "
            "lost. Set resume_from_checkpoint: true to continue from it.")


def write_training_state(tmp: Path, step: int, scheduler, state: dict) -> None:
    """rng.safetensors + rng.json (this process's RNG states) and trainer_state.json (state, the global step and
    the scheduler's state) into the checkpoint folder being written."""
    write_rng(tmp)
    _write_json(tmp / "trainer_state.json",
                {**state, "global_step": step, "scheduler": scheduler.state_dict() if scheduler else None})


def commit_checkpoint(tmp: Path, final: Path, step: int) -> None:
    """fsync every file of the finished folder `tmp`, write the COMPLETE marker (sizes and sha256), and rename it
    to `final` (replacing an existing one: old aside, new in, then delete the old one). OSError on failure."""
    output_dir = final.parent
    for path in tmp.rglob("*"):
        if path.is_file():
            share_as_umask(path)
            fsync_file(path)
    for folder in [p for p in tmp.rglob("*") if p.is_dir()]:
        fsync_dir(folder)
    _write_json(tmp / MARKER, {"step": step, "files": file_records(tmp)})
    fsync_dir(tmp)
    if final.exists():  # replacing after a rollback: old aside, new in, then delete the old one
        aside = _aside_name(final)
        os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(output_dir)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
        fsync_dir(output_dir)


def apply_save_total_limit(output_dir: Path, final: Path, timeline, save_total_limit: int | None,
                           best: str | None = None) -> None:
    """Keep save_total_limit checkpoints of `timeline`, deleting the oldest (by step) first, but never `final` (just
    written) nor `best` (the best_model_checkpoint): transformers' rotate_checkpoints, which keeps
    max(save_total_limit, protected ones)."""
    if not save_total_limit:
        return
    checkpoints = list_checkpoints(output_dir, timeline)
    protected = {Path(final).resolve()} | ({Path(best).resolve()} if best else set())
    keep = max(save_total_limit, len([p for p in checkpoints if p.resolve() in protected]))
    remaining = len(checkpoints)
    for old in checkpoints:
        if remaining <= keep:
            break
        if old.resolve() not in protected:
            _remove_atomically(old)
            remaining -= 1


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a folder named checkpoint-<step> (decimal digits only: checkpoint-007 is step 7; checkpoint-12a,
    checkpoint- and checkpoint-² are no checkpoint's), else None: the one reading of the name, for every place that
    looks for checkpoints."""
    match = re.fullmatch(r"checkpoint-(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def numbered_checkpoints(folder: str | Path) -> list[Path]:
    """The entries of `folder` named checkpoint-<step>, complete or not (COMPLETE marker or none: what a stopped run
    left), lowest step first (checkpoint-9 before checkpoint-10; equal steps by name). list_checkpoints keeps the
    complete ones."""
    folder = Path(folder)
    found = [(checkpoint_step(p), p) for p in folder.glob("checkpoint-*")] if folder.is_dir() else []
    return [p for _, p in sorted(f for f in found if f[0] is not None)]


def _checkpoint_timeline(path: Path) -> list:
    """[[run id, start step], ...] of the run that wrote the checkpoint; [["legacy", 0]] for older checkpoints."""
    try:
        timeline = json.loads((path / "trainer_state.json").read_text()).get("timeline")
    except (OSError, ValueError, AttributeError):
        return [["legacy", 0]]
    return timeline if isinstance(timeline, list) and timeline else [["legacy", 0]]


def on_timeline(path: Path, timeline: list | None) -> bool:
    """Whether checkpoint `path` belongs to `timeline` (see the module docstring); None: every checkpoint does."""
    if not timeline:
        return True
    writer = _checkpoint_timeline(path)[-1][0]
    runs = [entry[0] for entry in timeline]
    if writer not in runs:
        return False
    i = runs.index(writer)
    return i == len(runs) - 1 or checkpoint_step(path) <= int(timeline[i + 1][1])


def read_timeline(output_dir: str | Path) -> list | None:
    """The timeline of the run in charge of output_dir (output_dir/timeline.json), None when there is none."""
    try:
        timeline = json.loads((Path(output_dir) / TIMELINE_FILE).read_text()).get("timeline")
    except (OSError, ValueError, AttributeError):
        return None
    return timeline if isinstance(timeline, list) and timeline else None


def write_timeline(output_dir: str | Path, timeline: list) -> None:
    """output_dir/timeline.json, whole or not at all and fsynced (it decides what `resume_from_checkpoint: true`
    picks): through preflab.atomic_file.write_atomically, so a failed write leaves no timeline.json.tmp behind and
    its OSError names timeline.json."""
    from preflab.atomic_file import plain_file_mode, write_atomically

    write_atomically(Path(output_dir) / TIMELINE_FILE, lambda tmp: _write_json(Path(tmp), {"timeline": timeline}),
                     mode=plain_file_mode())
    fsync_dir(Path(output_dir))


def list_checkpoints(output_dir: str | Path, timeline: list | None = None) -> list[Path]:
    """Complete checkpoints, lowest step first (checkpoint-9 before checkpoint-10); only those of `timeline` when
    given."""
    return [p for p in numbered_checkpoints(output_dir) if (p / MARKER).is_file()
            and (p / "trainer_state.json").is_file() and on_timeline(p, timeline)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest-step complete checkpoint of output_dir's current timeline (not verified: see
    resume_checkpoint)."""
    found = list_checkpoints(output_dir, read_timeline(output_dir))
    return found[-1] if found else None


LEGACY_FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "rng.json",
                "trainer_state.json")


def read_marker(path: str | Path) -> dict | None:
    """The COMPLETE marker's file records ({relative path: {"size", "sha256"}}); None for a checkpoint written
    before checksums existed (its files are only checked for presence). PreflabError when there is no readable
    marker."""
    path = Path(path)
    try:
        marker = json.loads((path / MARKER).read_text() or "{}")
    except FileNotFoundError:
        if not path.is_dir():  # a mistyped step: say so, and which checkpoints the run has
            step = {p.name: checkpoint_step(p) for p in path.parent.glob("checkpoint-*") if p.is_dir()} \
                if path.parent.is_dir() else {}
            near = sorted(step, key=lambda n: -1 if step[n] is None else step[n])
            raise PreflabError(f"checkpoint {path} does not exist"
                               + (f"; {path.parent} holds {', '.join(near)}." if near else ".")) from None
        raise PreflabError(f"{path} is not a complete preflab checkpoint (no {MARKER} marker).") from None
    except (OSError, ValueError) as err:
        raise PreflabError(f"checkpoint {path}: its {MARKER} marker is unreadable ({err}).") from err
    files = marker.get("files") if isinstance(marker, dict) else None
    return files if isinstance(files, dict) else None


def whole_file_reads(path: Path, names) -> dict[str, int]:
    """{name: its size} for files of checkpoint `path` a loader reads whole (0 when missing: the check says so)."""
    return {name: (path / name).stat().st_size if (path / name).is_file() else 0 for name in names}


def check_file(path: Path, name: str, records: dict | None) -> str | None:
    """What is wrong with file `name` of checkpoint `path` against the marker's records (missing, another size,
    another sha256), None when it is intact. A file the marker does not list is wrong when it exists (added after
    the save) and not this function's business when it does not (the loader says what it lacks); without records
    (an old checkpoint) only presence is checked."""
    file = path / name
    record = None if records is None else records.get(name)
    if records is not None and record is None:
        if file.exists():
            return (f"checkpoint {path} is damaged: {file} is not sealed by its {MARKER} marker (added after the "
                    "save).")
        return None
    if not file.is_file():
        return f"checkpoint {path} is damaged: {file} is missing."
    if record is None:
        return None
    try:
        size = file.stat().st_size
        if size != record["size"]:
            return (f"checkpoint {path} is damaged: {file} has {size} bytes, {record['size']} were written "
                    "(truncated or overwritten).")
        if file_sha256(file) != record["sha256"]:
            return (f"checkpoint {path} is damaged: the sha256 of {file} differs from the one written (the file's "
                    "bytes changed after the save).")
    except OSError as err:  # a problem like the others: under several ranks every rank must hear of it
        return f"checkpoint {path}: {file} cannot be read ({err.strerror or err}); check its permissions and disk."
    return None


def check_files(path: str | Path, names, records: dict | None) -> dict[str, str]:
    """{name: what is wrong} for the files `names` of checkpoint `path` (check_file), hashed in parallel threads
    (hash_threads); empty when all are intact."""
    path, names = Path(path), list(names)
    if len(names) <= 1 or hash_threads(len(names)) == 1:
        found = [check_file(path, name, records) for name in names]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(hash_threads(len(names))) as pool:
            found = list(pool.map(lambda name: check_file(path, name, records), names))
    return {name: problem for name, problem in zip(names, found) if problem is not None}


def verify_checkpoint(path: str | Path) -> None:
    """PreflabError naming the file when a file of the checkpoint is missing, truncated or changed (sizes and
    sha256 from the COMPLETE marker): every file, whoever reads it (a resume checks only what each rank reads, see
    preflab.resume_verify). Checkpoints written before checksums existed are only checked for files."""
    path = Path(path)
    records = read_marker(path)
    names = list(records) if records is not None else list(LEGACY_FILES)
    problems = check_files(path, names, records)
    if problems:
        raise PreflabError(next(problems[name] for name in names if name in problems))


def resume_checkpoint(output_dir: str | Path, warn=print, verify=verify_checkpoint) -> Path | None:
    """The newest intact checkpoint of output_dir's current timeline; a damaged newer one is skipped with a
    warning naming its bad file. None when the timeline has no checkpoint; PreflabError when all are damaged.
    verify: the check of one checkpoint (PreflabError when damaged); a distributed resume passes one whose verdict
    every rank shares (preflab.resume_verify), so that all ranks pick the same checkpoint."""
    problems = []
    found = list_checkpoints(output_dir, read_timeline(output_dir))
    for path in unsealed_checkpoints(output_dir, checkpoint_step(found[-1]) if found else -1):
        warn(f"preflab: warning: {path} is not a complete checkpoint ({path / MARKER} is missing: deleted, or the "
             "folder was not written by preflab); it is skipped. Falling back to an earlier checkpoint.")
    for path in reversed(found):
        try:
            verify(path)
        except PreflabError as err:
            problems.append(str(err))
            warn(f"preflab: warning: {err} Falling back to an earlier checkpoint.")
            continue
        return path
    if problems:
        raise PreflabError(f"no intact checkpoint in {output_dir}: " + " ".join(problems))
    return None


def unsealed_checkpoints(output_dir: str | Path, above: int) -> list[Path]:
    """checkpoint-<step> folders of output_dir with a step above `above` and no COMPLETE marker (a save never
    leaves one: it writes under a temporary name), lowest step first."""
    return [p for p in numbered_checkpoints(output_dir) if checkpoint_step(p) > above and p.is_dir()
            and not (p / MARKER).is_file()]


def _intact(path: Path) -> bool:
    """Whether checkpoint folder `path` passes verify_checkpoint (its COMPLETE marker and every file it seals)."""
    try:
        verify_checkpoint(path)
    except PreflabError:
        return False
    return True


def clean_interrupted_saves(output_dir: str | Path, warn=print) -> None:
    """Remove what killed saves left in output_dir (call only while holding its lock): .tmp-checkpoint-* folders,
    .del-checkpoint-* folders (a deletion killed part way), .tmp-final-model-* folders (a final model save:
    preflab.final_save), and .old-checkpoint-* folders (put back under their name when the kill fell between the two
    renames of a replacing save and the folder is intact: one left part-deleted by an older preflab's
    save_total_limit, which renamed to .old- too, is removed, never restored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    for doomed in output_dir.glob(".del-checkpoint-*"):
        shutil.rmtree(doomed, ignore_errors=True)
    for aside in output_dir.glob(".old-checkpoint-*"):
        match = re.fullmatch(r"\.old-(checkpoint-\d+)-\d+", aside.name)
        final = output_dir / match.group(1) if match else None
        if final is not None and not final.exists() and _intact(aside):
            os.replace(aside, final)
            warn(f"preflab: note: restored {final} (a save that replaced it was interrupted).")
        else:
            shutil.rmtree(aside, ignore_errors=True)
    stale = list(output_dir.glob(".tmp-checkpoint-*"))
    for tmp in stale:
        shutil.rmtree(tmp, ignore_errors=True)
    if stale:
        warn(f"preflab: note: removed {len(stale)} unfinished checkpoint folder(s) left by an interrupted save.")
    final = list(output_dir.glob(f"{FINAL_STAGE_PREFIX}*"))  # a final model save killed part way (final_save.py)
    for tmp in final:
        shutil.rmtree(tmp, ignore_errors=True)
    if final:
        warn(f"preflab: note: removed {len(final)} unfinished final model folder(s) left by an interrupted save; "
             "output_dir's model stays marked incomplete (preflab.final_save.INCOMPLETE_MARKER, loaders refuse it) "
             "until this run's final save finishes.")


def model_architecture(module) -> dict | None:
    """The transformers config (as a JSON dict) of the model whose trainable parameters a checkpoint holds: a PEFT
    model's base model's; None for a module with no transformers config (a diffusion run's trainables). Recorded in
    trainer_state.json ("model_config") so that `preflab eval RUN/checkpoint-N` builds the architecture the run trained,
    whatever its config's model_name_or_path says (a recipe stage trains its own model under a builtin name)."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        return None
    return json.loads(config.to_json_string(use_diff=False))


# config keys that say nothing about the computation a model's weights go through in eval (versions, names, its
# dtype: the loader's dtype decides that, as for a final model); so are dropout rates (off in eval mode; a run with
# disable_dropout saves them zeroed) and special token ids (a run's eos_token option rewrites eos_token_id):
# not_architecture
NOT_ARCHITECTURE = frozenset({"transformers_version", "dtype", "torch_dtype", "_name_or_path", "architectures",
                              "use_cache", "_attn_implementation_autoset", "return_dict", "output_attentions",
                              "output_hidden_states", "_commit_hash"})


def architecture_differences(built: dict, saved: dict) -> list[str]:
    """'key: built value != saved value' for each architecture key (not not_architecture) where `built` (the
    model_architecture of a model built to take saved weights) differs from `saved` (the config those weights were
    trained in: a checkpoint's "model_config", a final model's config.json)."""
    return [f"{k}: {built.get(k)!r} != {v!r}" for k, v in sorted(saved.items())
            if not not_architecture(k) and built.get(k) != v]


def not_architecture(key: str) -> bool:
    """A transformers config key whose value does not change what a model computes from its weights in eval mode."""
    return key in NOT_ARCHITECTURE or "dropout" in key or key.endswith(("_token_id", "_token_ids"))


def check_weight_shapes(weights: dict, params: dict, source: str, target: str) -> None:
    """A PreflabError naming both shapes when a tensor of `weights` (from `source`) has another shape than the
    parameter of the same name in `params` (of `target`, the model built to receive it): torch's copy_ broadcasts,
    so a [1, 32] tensor would silently fill a [4, 32] parameter."""
    for name, value in weights.items():
        if name in params and tuple(value.shape) != tuple(params[name].shape):
            raise PreflabError(f"{source} holds {name} of shape {tuple(value.shape)}, but {target} has it of shape "
                               f"{tuple(params[name].shape)}: the weights were trained in another architecture.")


def _checked_weights(path: Path, model) -> tuple[dict, dict]:
    """(the checkpoint's model.safetensors, model's parameters by name); a PreflabError when a trainable parameter
    of model is not in the file, the file holds one the model lacks, or one of another shape."""
    weights = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise PreflabError(f"checkpoint {path} lacks {len(missing)} trainable parameters, e.g. {missing[0]}.")
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise PreflabError(f"checkpoint {path} holds {len(unknown)} tensor(s) the model does not have, e.g. "
                           f"{unknown[0]} (another model, or other LoRA settings?).")
    check_weight_shapes(weights, params, f"checkpoint {path}", "the model")
    return weights, params


def _checked_extras(path: Path, extra_tensors: dict | None, consequence: str) -> dict:
    """extra.safetensors of checkpoint `path` ({} when it has none), after checking that it holds every name of
    `extra_tensors` (a PreflabError naming one it lacks, then `consequence`)."""
    extra = load_file(str(path / "extra.safetensors")) if (path / "extra.safetensors").is_file() else {}
    lacking = sorted(set(extra_tensors or {}) - set(extra))
    if lacking:
        raise PreflabError(
            f"checkpoint {path} lacks {len(lacking)} tensor(s) the training step updates outside the model, e.g. "
            f"{lacking[0]!r} (an objective's own parameters; written by an older preflab?): {consequence}")
    return extra


def load_checkpoint_weights(path: str | Path, model, extra_tensors: dict | None = None) -> dict:
    """Copy a checkpoint's trained parameters into `model` in place, and its extra.safetensors into
    `extra_tensors` (name -> tensor, the run's checkpoint_extras: an objective's or extras producer's own
    parameters), if given; no optimizer, scheduler or RNG state (for evaluating a checkpoint, or the best model at
    the end of a run); returns trainer_state.json. `model` must be built as the run built its checkpointed module
    (same base weights, LoRA settings)."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise PreflabError(f"{path} is not a complete preflab checkpoint (no {MARKER} marker).")
    verify_checkpoint(path)
    weights, params = _checked_weights(path, model)
    extra = _checked_extras(path, extra_tensors, "its weights would be loaded without them.")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
        for name, tensor in (extra_tensors or {}).items():
            tensor.copy_(extra[name])
    return json.loads((path / "trainer_state.json").read_text())


def load_checkpoint(path: str | Path, model, optimizer, scheduler, extra_tensors: dict | None = None,
                    verify: bool = True) -> dict:
    """Restore model, optimizer, scheduler, RNG state and `extra_tensors` (name -> tensor, copied into in place)
    in place; returns trainer_state.json. verify: check sizes and sha256 first (verify_checkpoint)."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise PreflabError(f"{path} is not a complete preflab checkpoint (no {MARKER} marker).")
    refuse_model_only(path, json.loads((path / "trainer_state.json").read_text()))
    if verify:
        verify_checkpoint(path)
    weights, params = _checked_weights(path, model)
    extra = _checked_extras(path, extra_tensors, "resuming would not be exact. Start the run again without "
                                                 "resume_from_checkpoint.")
    opt_meta = json.loads((path / "optimizer.json").read_text())
    check_same_optimizer(path, opt_meta, optimizer)
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
        for name, tensor in (extra_tensors or {}).items():
            tensor.copy_(extra[name])
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    saved = join_optimizer_state(opt_tensors, opt_meta)
    regrouped = regroup_state(path, saved, optimizer, WEIGHT_DECAY_GROUPS not in opt_meta)
    optimizer.load_state_dict(regrouped)
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    if scheduler is not None and trainer_state.get("scheduler"):
        groups = len(regrouped["param_groups"])
        scheduler.load_state_dict(widen_scheduler_state(trainer_state["scheduler"], len(saved["param_groups"]),
                                                        groups))
    restore_rng(path, rank_rng_name(path, trainer_state))
    return trainer_state


def rank_rng_name(path: str | Path, trainer_state: dict) -> str:
    """The RNG files this process restores from a full-tensor checkpoint: rng-rank<r> (its own) when the checkpoint
    was written on as many processes as this run has and holds them, else rng (the main process's; a checkpoint
    of one process, or of an earlier preflab that wrote no per-rank states)."""
    import torch.distributed as dist

    on_group = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if on_group else (0, 1)
    own = f"rng-rank{rank}"
    same_world = trainer_state.get("world_size") == world > 1 and (Path(path) / f"{own}.safetensors").is_file()
    return own if same_world else "rng"


def is_model_only(path: str | Path) -> bool:
    """True for a checkpoint written with save_only_model (no optimizer, scheduler or RNG state: not resumable)."""
    try:
        return bool(json.loads((Path(path) / "trainer_state.json").read_text()).get("save_only_model"))
    except (OSError, ValueError, AttributeError):
        return False


MODEL_ONLY_KEPT = ("it holds the model weights only (save_only_model: true), so training cannot resume from it; "
                   "a new start begins again at step 0.")


def refuse_model_only(path: str | Path, trainer_state: dict) -> None:
    """ConfigError when checkpoint `path` was written with save_only_model: it has no optimizer, scheduler or RNG
    state to resume (transformers refuses such a resume too)."""
    if trainer_state.get("save_only_model"):
        raise ConfigError(
            f"resume_from_checkpoint: {path} was written with save_only_model: true and holds the model weights "
            "only (no optimizer, scheduler or RNG state), so training cannot continue from it. Start the run again without "
            "resume_from_checkpoint, and keep save_only_model: false in runs you mean to resume.")


def check_same_optimizer(path, meta: dict, optimizer) -> None:
    """ConfigError when checkpoint `path`'s optimizer state (optimizer.json's `meta`) is of another optimizer class
    than `optimizer` (another optim): torch's load_state_dict would put the saved hyperparameters and state on the
    new optimizer, which would then fail or step with the wrong state, even under allow_config_change. A checkpoint
    that names no class is of a preflab that built AdamW only."""
    saved, current = meta.get("optimizer", "AdamW"), optimizer_class(optimizer)
    if saved != current:
        raise ConfigError(
            f"resume_from_checkpoint: {path} holds {saved} optimizer state, and this run's optim builds "
            f"{current}; that state cannot continue in another optimizer. Resume with the checkpoint's optim, or start "
            "a new run in another output_dir.")


WEIGHT_DECAY_GROUPS = "weight_decay_groups"
"""optimizer.json's marker of a preflab that builds transformers' weight-decay groups
(preflab.loops.optimizer.weight_decay_groups); a checkpoint without it put every parameter in one group."""


def regroup_state(path, sd: dict, optimizer, legacy: bool) -> dict:
    """Optimizer state_dict `sd` of checkpoint `path` in the layout of `optimizer`'s param groups. Unchanged unless
    `legacy`: a checkpoint of a preflab before the weight-decay groups (no WEIGHT_DECAY_GROUPS marker: one group
    over every trainable parameter, weight_decay on all) is read into transformers' groups (preflab.loops.optimizer.
    weight_decay_groups): each parameter's state moves from its index in the one group (the optimizer's
    preflab_single_group_order) to its index in the groups, exactly; every group takes the saved group's settings,
    the one that is not the weight-decay group (preflab_group_decays) weight_decay 0.0, so the run continues with
    the new grouping (a note says so when a parameter stops decaying). A layout that does not map: ConfigError."""
    if not legacy:
        return sd
    inner = getattr(optimizer, "optimizer", optimizer)
    saved, current = sd["param_groups"], inner.param_groups
    order = getattr(inner, "preflab_single_group_order", None)
    decays = getattr(inner, "preflab_group_decays", None)
    if len(saved) != 1 or order is None or decays is None or len(saved[0]["params"]) != len(order) \
            or len(decays) != len(current):
        raise ConfigError(
            f"resume_from_checkpoint: {path} holds optimizer state of {len(saved)} parameter group(s) over "
            f"{sum(len(g['params']) for g in saved)} parameters, written by an earlier preflab, and this run's "
            f"optimizer has {len(current)} group(s) over {sum(len(g['params']) for g in current)}; that state does "
            "not map onto them. Resume with the model, use_peft/LoRA settings and objective it was written with, or "
            "start a new run in another output_dir.")
    old_index = saved[0]["params"]
    state = {new: sd["state"][old_index[old]] for new, old in enumerate(order) if old_index[old] in sd["state"]}
    groups, start = [], 0
    decay = saved[0]["weight_decay"]
    for group, decayed in zip(current, decays, strict=True):
        size = len(group["params"])
        groups.append({**saved[0], "weight_decay": decay if decayed else 0.0,
                       "params": list(range(start, start + size))})
        start += size
    kept = sum(len(g["params"]) for g, decayed in zip(current, decays) if not decayed)
    if kept and _is_main_process():
        print(f"preflab: note: {path} was written by a preflab that put every trainable parameter in one "
              "weight-decay group; its optimizer state is read into the groups transformers' Trainer builds "
              f"({start - kept} parameters at weight_decay {decay:g}, {kept} biases and norm weights at 0.0), so "
              "the run continues with the new grouping"
              + (" (the same steps: weight_decay is 0)." if decay == 0 else
                 f" (those {kept} parameters are no longer decayed from here on)."), flush=True)
    return {"state": state, "param_groups": groups}


def widen_scheduler_state(state: dict, saved_groups: int, groups: int) -> dict:
    """A learning-rate scheduler's state_dict saved over `saved_groups` (1) param groups, for `groups`: its
    per-group lists (LambdaLR's base_lrs and _last_lr, ReduceLROnPlateau's min_lrs) repeat the one group's value
    (regroup_state gave every group the saved group's settings). Unchanged when the counts agree."""
    if saved_groups == groups:
        return state
    return {key: value * groups if key in ("base_lrs", "_last_lr", "min_lrs") and isinstance(value, list)
            and len(value) == saved_groups == 1 else value for key, value in state.items()}


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def join_optimizer_state(tensors: dict, meta: dict) -> dict:
    """The torch optimizer state_dict split_optimizer_state split into `tensors` and `meta`."""
    state = {}
    for idx, values in meta["state"].items():
        state[int(idx)] = {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
    for key, value in tensors.items():
        idx, _, name = key.partition(".")
        name, _, inner = name.partition(".")
        if inner:
            state.setdefault(int(idx), {}).setdefault(name, {})[inner] = value
        else:
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def write_rng(folder: Path, name: str = "rng") -> None:
    """This process's torch (and CUDA), python and numpy RNG states into <name>.safetensors / <name>.json."""
    rng_tensors, rng_meta = rng_parts()
    save_file(rng_tensors, str(folder / f"{name}.safetensors"))
    _write_json(folder / f"{name}.json", rng_meta)


def restore_rng(path: Path, name: str = "rng") -> None:
    """Set torch (and CUDA), python and numpy RNG states from the checkpoint's <name>.safetensors / <name>.json."""
    rng = load_file(str(path / f"{name}.safetensors"))
    rng_meta = json.loads((path / f"{name}.json").read_text())
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = sorted((k for k in rng if k.startswith("cuda.")), key=lambda k: int(k.split(".", 1)[1]))
        torch.cuda.set_rng_state_all([rng[k] for k in cuda])  # device order (cuda.10 after cuda.9)
    py = rng_meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = rng_meta["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))
