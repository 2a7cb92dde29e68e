"""What a kill or a failed write leaves on disk (user trial 15): a checkpoint deletion killed part way never comes
back as a checkpoint, a failed write of a run's small files leaves the old file and no temp file, and a full disk
names the file it could not write."""
import errno
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import preflab.checkpoint as ck
from preflab.checkpoint import clean_interrupted_saves, list_checkpoints, save_checkpoint
from preflab.errors import PreflabError
from preflab.models.tiny import tiny_causal_lm

ROOT = Path(__file__).resolve().parents[1]
SAFETENSORS_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not caught by `except OSError`)."""


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = tiny_causal_lm(vocab_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_save_total_limit_deletion_killed_part_way_never_comes_back(tmp_path, monkeypatch):
    """save_total_limit renamed the evicted checkpoint to .old-checkpoint-N, the name a replacing save parks the
    old one under; a kill while rmtree had deleted some of its files (COMPLETE still there) made the next start
    "restore" it as checkpoint-N with files missing (seen in the trial: 'restored .../checkpoint-2 (a save that
    replaced it was interrupted)'). The eviction now renames to .del-checkpoint-N, which is only ever deleted."""
    model, opt, sched = _model_and_optimizer()
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, save_total_limit=2)
    real_rmtree = ck.shutil.rmtree

    def killed_mid_delete(path, *a, **k):  # the weights go first, then the process dies
        (Path(path) / "model.safetensors").unlink()
        raise Killed

    monkeypatch.setattr(ck.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, 3, model, opt, sched, {}, save_total_limit=2)
    monkeypatch.setattr(ck.shutil, "rmtree", real_rmtree)
    assert _hidden(tmp_path) == [f".del-checkpoint-1-{os.getpid()}"]
    notes = []
    clean_interrupted_saves(tmp_path, warn=notes.append)
    assert notes == []
    assert _hidden(tmp_path) == []
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-2", tmp_path / "checkpoint-3"]
    assert not (tmp_path / "checkpoint-1").exists()


def test_an_old_aside_is_put_back_only_when_every_file_checks_out(tmp_path):
    """An .old-checkpoint-N whose replacement never arrived is put back (its weights bit for bit); one with a file
    missing (an older preflab's save_total_limit, killed part way) is removed, not restored."""
    model, opt, sched = _model_and_optimizer()
    save_checkpoint(tmp_path, 4, model, opt, sched, {})
    save_checkpoint(tmp_path, 6, model, opt, sched, {})
    weights = load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    os.replace(tmp_path / "checkpoint-4", tmp_path / ".old-checkpoint-4-123")
    os.replace(tmp_path / "checkpoint-6", tmp_path / ".old-checkpoint-6-123")
    (tmp_path / ".old-checkpoint-6-123" / "optimizer.safetensors").unlink()
    notes = []
    clean_interrupted_saves(tmp_path, warn=notes.append)
    assert notes == [f"preflab: note: restored {tmp_path / 'checkpoint-4'} (a save that replaced it was "
                     "interrupted)."]
    assert _hidden(tmp_path) == []
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-4"]
    back = load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    assert all(torch.equal(weights[k], back[k]) for k in weights)
