"""Atomic checkpoints with exact resume: safetensors + JSON only, never pickle.

checkpoint-<step>/ holds
    model.safetensors      the trainable parameters (all of them, or only LoRA adapters)
    optimizer.safetensors  optimizer state tensors; optimizer.json the rest of its state_dict
    rng.safetensors        torch (and CUDA) RNG states; rng.json python and numpy RNG states
    trainer_state.json     global step, scheduler state, the metrics history position, the config hash
    COMPLETE               written last; a directory without it is never picked as latest
It is written to a temporary sibling directory and renamed into place, so a kill at any moment leaves either the
previous checkpoint or the new complete one.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from preflab.errors import PreflabError

MARKER = "COMPLETE"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def _write_json(path: Path, data) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_parts(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, state in sd["state"].items():
        meta["state"][str(idx)] = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.contiguous().cpu()
            else:
                meta["state"][str(idx)][key] = value
    return tensors, meta


def _rng_parts() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {"python": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, state: dict,
                    save_total_limit: int | None = None) -> Path:
    """Write checkpoint-<step> atomically; returns its path. A failure leaves earlier checkpoints untouched."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}-{os.getpid()}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _optimizer_parts(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        _write_json(tmp / "optimizer.json", opt_meta)
        rng_tensors, rng_meta = _rng_parts()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        _write_json(tmp / "rng.json", rng_meta)
        _write_json(tmp / "trainer_state.json",
                    {**state, "global_step": step, "scheduler": scheduler.state_dict() if scheduler else None})
        _write_json(tmp / MARKER, {"step": step})
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PreflabError(
            f"could not write checkpoint {final}: {err.strerror or err}. Earlier checkpoints are kept; free disk "
            "space or fix the permissions of output_dir, then resume."
        ) from err
    if save_total_limit:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    output_dir = Path(output_dir)
    found = []
    for path in output_dir.glob("checkpoint-*") if output_dir.is_dir() else []:
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / MARKER).is_file() and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG state in place; returns trainer_state.json."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise PreflabError(f"{path} is not a complete preflab checkpoint (no {MARKER} marker).")
    weights = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise PreflabError(f"checkpoint {path} lacks {len(missing)} trainable parameters, e.g. {missing[0]}.")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    meta = json.loads((path / "optimizer.json").read_text())
    state = {}
    for idx, values in meta["state"].items():
        state[int(idx)] = dict(values)
    for key, value in opt_tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    if scheduler is not None and trainer_state.get("scheduler"):
        scheduler.load_state_dict(trainer_state["scheduler"])
    rng = load_file(str(path / "rng.safetensors"))
    rng_meta = json.loads((path / "rng.json").read_text())
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))])
    py = rng_meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = rng_meta["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))
    return trainer_state
