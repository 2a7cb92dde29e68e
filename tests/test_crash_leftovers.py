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
from test_checkpoint_safety import Killed, _model_and_optimizer  # tests/, on sys.path beside conftest.py

ROOT = Path(__file__).resolve().parents[1]
SAFETENSORS_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"


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


def test_write_atomically_names_the_file_it_could_not_write(tmp_path):
    """A write into an open file raises an OSError naming no file (and the rename one naming the temp file): the
    error now names the target, the old file stays whole and no temp file is left."""
    from preflab.atomic_file import write_atomically

    target = tmp_path / "summary.json"
    target.write_text("old")

    def full_disk(tmp):
        Path(tmp).write_text("par")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        write_atomically(target, full_disk)
    assert (err.value.errno, err.value.strerror, err.value.filename) == (28, "No space left on device", str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert target.read_text() == "old"


def test_a_full_disk_at_summary_json_names_summary_json(tmp_path, monkeypatch):
    """The run's message named only the run folder ("<output_dir>: No space left on device")."""
    sys.path.insert(0, str(ROOT / "tests" / "loops"))
    from tiny_run import run

    real_dump = json.dump

    def dump(data, fh, **kw):
        if Path(getattr(fh, "name", "")).name.startswith("summary.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_dump(data, fh, **kw)

    monkeypatch.setattr(json, "dump", dump)
    out = tmp_path / "run"
    with pytest.raises(PreflabError) as err:
        run(out, max_steps=1, save_steps=1)
    assert str(err.value).startswith(f"{out / 'summary.json'}: No space left on device. The latest finished "
                                     f"checkpoint is {out / 'checkpoint-1'} (step 1)")
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def _failing_rename(monkeypatch):
    """os.replace fails (a folder made read-only, an I/O error) after the temp file is written whole."""
    def replace(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", replace)


def _panel_data(out):
    from preflab.report.panel_data import write_panel_data

    write_panel_data(out, None, panels=[])
    return out / "metric_panels.json"


def _timeline(out):
    ck.write_timeline(out, [["abc", 0]])
    return out / "timeline.json"


def _truncated_metrics(out):
    from preflab.runlog import truncate_jsonl

    path = out / "metrics.jsonl"
    if not path.exists():
        path.write_text('{"step": 1}\n{"step": 2}\n')
    truncate_jsonl(path, 1)
    return path


def _recipe_state(out):
    from preflab.recipe_state import RecipeStateFile

    state = RecipeStateFile(out / "ladder_state.json", {"a": 1}, resume=True, every_process=False)
    state.data["stages"] = {"sft": {"done": True}}
    state.save()
    return state.path


@pytest.mark.parametrize("write", [_panel_data, _timeline, _truncated_metrics, _recipe_state],
                         ids=["metric_panels", "timeline", "metrics_truncated", "recipe_state"])
def test_a_failed_write_of_a_run_file_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, write):
    """metric_panels.json, timeline.json, metrics.jsonl cut back at a resume and a recipe's state were written to a
    fixed <name>.tmp, renamed over the file: a failed write or rename left the .tmp behind (now: written through
    preflab.atomic_file, whose error names the file)."""
    path = write(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    old = path.read_bytes()
    _failing_rename(monkeypatch)
    with pytest.raises(OSError) as err:
        write(tmp_path)
    assert err.value.filename == str(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert path.read_bytes() == old


def _no_space_in_temp_files(monkeypatch):
    real = Path.write_text

    def write_text(self, data, *a, **k):
        if self.name.endswith(".tmp"):
            real(self, data[:10], *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_a_full_disk_while_writing_a_report_says_which_file_and_leaves_the_old_one(tmp_path, monkeypatch, capsys):
    """`preflab report` on a full disk was an OSError traceback and left report.html.tmp beside the report."""
    from preflab.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
    (run / "summary.json").write_text(json.dumps({"global_step": 1}))
    (run / "report.html").write_text("the old report")
    _no_space_in_temp_files(monkeypatch)
    assert main(["report", str(run)]) == 74  # a failed write (preflab.errors.EXIT_WRITE_FAILED)
    assert (f"could not write the report {run / 'report.html'}: No space left on device. Free disk space or fix "
            "the folder's permissions, or write it elsewhere with --out PATH.") in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "report.html", "summary.json"]
    assert (run / "report.html").read_text() == "the old report"


def test_a_full_disk_while_writing_eval_json_says_which_file(tmp_path, monkeypatch):
    """`preflab eval`'s eval.json on a full disk was an OSError traceback."""
    from preflab.eval.run import write_json

    path = tmp_path / "eval.json"
    path.write_text('{"old": 1}')
    real_dump = json.dump

    def dump(data, fh, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", dump)
    with pytest.raises(PreflabError) as err:
        write_json(path, {"new": 2})
    monkeypatch.setattr(json, "dump", real_dump)
    assert str(err.value) == (f"could not write {path}: No space left on device. Free disk space or fix the "
                              "folder's permissions, or write it elsewhere with --out PATH.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
    assert json.loads(path.read_text()) == {"old": 1}


def test_a_full_disk_in_a_per_rank_checkpoint_is_the_documented_error(tmp_path):
    """safetensors says a full disk as its own SafetensorError (a DeepSpeed partition, every rank's RNG files):
    save_rank_checkpoint caught OSError and RuntimeError only, so the save was a traceback that left its
    .tmp-checkpoint folder behind."""
    from preflab.sharded_checkpoint import save_rank_checkpoint

    model, opt, sched = _model_and_optimizer()
    save_checkpoint(tmp_path, 1, model, opt, sched, {})

    def full_disk(tmp):
        raise SafetensorError(SAFETENSORS_ENOSPC)

    with pytest.raises(PreflabError) as err:
        save_rank_checkpoint(tmp_path, 2, full_disk, sched, {"checkpoint_format": "deepspeed"}, True)
    assert str(err.value) == (f"could not write sharded checkpoint {tmp_path / 'checkpoint-2'}: [Errno 28] No space "
                              f"left on device. Earlier checkpoints are kept (the latest: {tmp_path / 'checkpoint-1'});"
                              " free disk space or fix the permissions of output_dir (every rank writes into it: it "
                              "must be one shared folder), then resume.")
    assert _hidden(tmp_path) == []
    ck.verify_checkpoint(tmp_path / "checkpoint-1")


def test_a_full_disk_in_the_diffusion_encoding_cache_lets_the_run_go_on(tmp_path, monkeypatch, capsys):
    """The cache write caught OSError only; safetensors' SafetensorError for a full disk stopped the run (and left
    the cache's temp file behind). The run now goes on with the computed encodings, saying so."""
    import safetensors.torch

    from preflab.loops.diffusion import DiffusionRun

    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path))

    def full_disk(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"part")
        raise SafetensorError(SAFETENSORS_ENOSPC)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    values = {"emb": torch.arange(6.0).reshape(2, 3)}
    run = SimpleNamespace(main=True)
    got = DiffusionRun._cached(run, "text", torch.nn.Linear(2, 2), ["a cat"], lambda: values)
    assert torch.equal(got["emb"], values["emb"])
    cache = tmp_path / "diffusion-encodings"
    assert list(cache.iterdir()) == []
    said = capsys.readouterr().out
    assert "preflab: note: could not write the encoding cache " + str(cache) in said
    assert "(No space left on device); the run goes on without it." in said
    assert run.encodings_cache == str(cache)


def test_resuming_a_finished_run_keeps_its_summary_and_model(tmp_path, capsys):
    """resume_from_checkpoint: true on a run whose newest checkpoint is its last step trained 0 steps and replaced
    summary.json with one of empty final_metrics and 0 examples seen (trial 15). Now the run's own summary (same
    step, same timeline as the checkpoint) is returned and nothing is rewritten; a summary from another timeline (a
    rolled-back run that reached the same step and was killed before its own summary) is not taken for it."""
    sys.path.insert(0, str(ROOT / "tests" / "loops"))
    from tiny_run import run

    out = tmp_path / "run"
    first, _ = run(out, max_steps=4, save_steps=2)
    assert first["timeline"] == json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["timeline"]
    files = {name: (out / name).read_bytes() for name in ("summary.json", "model.safetensors", "config.yaml",
                                                         "timeline.json", "metrics.jsonl")}
    capsys.readouterr()
    again, _ = run(out, max_steps=4, save_steps=2, resume_from_checkpoint=True)
    assert again == json.loads(files["summary.json"])
    assert again["final_metrics"] and again["train_examples_seen"] == 16
    assert {name: (out / name).read_bytes() for name in files} == files
    assert f"{out} finished at step 4" in capsys.readouterr().out

    other = dict(again, timeline=[["older-run", 0]])  # the same step on another timeline: trained (0 steps) again
    (out / "summary.json").write_text(json.dumps(other))
    rewritten, _ = run(out, max_steps=4, save_steps=2, resume_from_checkpoint=True)
    assert rewritten["train_examples_seen"] == 0 and rewritten["resumed_from_step"] == 4
    assert json.loads((out / "summary.json").read_text())["timeline"][:-1] == first["timeline"]
