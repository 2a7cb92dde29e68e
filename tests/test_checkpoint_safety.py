"""Runs and checkpoints that cannot be lost or mixed up: atomic replacement, timelines, checksums, stale saves,
output_dir safety, the run lock, config changes on resume (issues 18.6-18.10, 11.9-11.11)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import preflab.checkpoint as ck
from preflab.checkpoint import (clean_interrupted_saves, latest_checkpoint, list_checkpoints, load_checkpoint,
                                save_checkpoint)
from preflab.cli import main
from preflab.errors import ConfigError, PreflabError
from preflab.models.tiny import tiny_causal_lm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "loops"))
from tiny_run import run  # noqa: E402


class Killed(BaseException):
    """Stands for SIGKILL inside a save: nothing after it runs (not caught by `except OSError`)."""


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = tiny_causal_lm(vocab_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


# ---------------------------------------------------------------- 18.6: atomic replacement and timelines
def test_kill_while_replacing_a_checkpoint_leaves_complete_checkpoints_only(tmp_path, monkeypatch):
    old_model, opt, sched = _model_and_optimizer(0)
    save_checkpoint(tmp_path, 3, old_model, opt, sched, {})
    old = weights(tmp_path / "checkpoint-3")
    new_model, opt2, sched2 = _model_and_optimizer(1)
    real_rmtree = ck.shutil.rmtree

    def killed_mid_delete(path, *a, **k):  # deletes the weights first, then the process dies
        (Path(path) / "model.safetensors").unlink(missing_ok=True)
        raise Killed

    monkeypatch.setattr(ck.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, 3, new_model, opt2, sched2, {})
    monkeypatch.setattr(ck.shutil, "rmtree", real_rmtree)
    for path in list_checkpoints(tmp_path):  # every COMPLETE-marked folder must hold its weights
        assert (path / "model.safetensors").is_file(), f"{path} is marked complete but has no weights"
    clean_interrupted_saves(tmp_path)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    load_checkpoint(tmp_path / "checkpoint-3", old_model, opt, sched)
    assert max_diff(weights(tmp_path / "checkpoint-3"), {k: v for k, v in new_model.state_dict().items()}) == 0.0

    # a kill between "old aside" and "new in": the old checkpoint is put back on the next start
    real_replace, calls = os.replace, {"n": 0}

    def killed_between_renames(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", killed_between_renames)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, 3, old_model, opt, sched, {})
    monkeypatch.setattr(ck.os, "replace", real_replace)
    assert list_checkpoints(tmp_path) == []
    clean_interrupted_saves(tmp_path)
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-3"]
    assert max_diff(weights(tmp_path / "checkpoint-3"), new_model.state_dict()) == 0.0
    assert old  # the first checkpoint was readable before it was replaced


def test_rollback_then_resume_true_follows_the_current_timeline(tmp_path, monkeypatch):
    from preflab.loops.offline import Trainer

    run(tmp_path / "straight", max_steps=6)
    out = tmp_path / "run"
    run(out, max_steps=6, save_steps=2)  # checkpoints 2, 4, 6
    original, calls = Trainer.forward, {"n": 0}

    def dies_at_second_step(self, mb):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return original(self, mb)

    monkeypatch.setattr(Trainer, "forward", dies_at_second_step)
    with pytest.raises(Killed):  # roll back to checkpoint-2, then killed before the next save
        run(out, max_steps=6, save_steps=2, resume_from_checkpoint=str(out / "checkpoint-2"))
    monkeypatch.setattr(Trainer, "forward", original)
    assert latest_checkpoint(out) == out / "checkpoint-2", "the abandoned run's checkpoint-6 must not be latest"
    summary, _ = run(out, max_steps=6, save_steps=2, resume_from_checkpoint=True)
    assert summary["resumed_from_step"] == 2
    assert max_diff(weights(tmp_path / "straight"), weights(out)) <= 1e-6
    timeline = json.loads((out / "timeline.json").read_text())["timeline"]
    assert [step for _, step in timeline] == [0, 2]  # the killed run saved nothing: it left no trace
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["timeline"] == timeline, "checkpoint-6 was replaced by the current timeline's"


# ---------------------------------------------------------------- 18.7 / 11.11: checksums cover tensor data
def _flip_bytes_in_tensor_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    middle = header + (len(data) - header) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_latest_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
    run(tmp_path / "straight", max_steps=4)
    out = tmp_path / "run"
    run(out, max_steps=4, save_steps=2)
    marker = json.loads((out / "checkpoint-4" / "COMPLETE").read_text())
    assert set(marker["files"]) >= {"model.safetensors", "optimizer.safetensors", "trainer_state.json"}
    bad = out / "checkpoint-4" / "model.safetensors"
    _flip_bytes_in_tensor_data(bad)
    capsys.readouterr()
    summary, _ = run(out, max_steps=4, save_steps=2, resume_from_checkpoint=True)
    assert summary["resumed_from_step"] == 2
    assert str(bad) in capsys.readouterr().out
    assert max_diff(weights(tmp_path / "straight"), weights(out)) <= 1e-6


def test_damaged_checkpoint_given_by_path_is_an_error_naming_the_file(tmp_path):
    out = tmp_path / "run"
    run(out, max_steps=2, save_steps=2)
    bad = out / "checkpoint-2" / "optimizer.safetensors"
    bad.write_bytes(bad.read_bytes()[:-40])  # truncated
    with pytest.raises(PreflabError, match=f"{bad}.*truncated"):
        run(out, max_steps=4, resume_from_checkpoint=str(out / "checkpoint-2"))
    _flip_bytes_in_tensor_data(out / "checkpoint-2" / "model.safetensors")
    model, opt, sched = _model_and_optimizer()
    with pytest.raises(PreflabError, match="model.safetensors"):
        load_checkpoint(out / "checkpoint-2", model, opt, sched)


# ---------------------------------------------------------------- 18.9: stale saves and appended files
def test_stale_temporary_checkpoints_are_removed_and_appended_logs_truncated_on_resume(tmp_path):
    out = tmp_path / "run"
    run(out, max_steps=4, save_steps=2)
    stale = out / ".tmp-checkpoint-3-99999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    margins = out / "pair_margins.jsonl"
    margins.write_text("".join(json.dumps({"step": s, "margins": [0.1]}) + "\n" for s in (2, 4)) + '{"step": 4, "ma')
    run(out, max_steps=4, save_steps=2, resume_from_checkpoint=str(out / "checkpoint-2"))
    assert not stale.exists()
    assert [json.loads(line)["step"] for line in margins.read_text().splitlines()] == [2]


# ---------------------------------------------------------------- 18.10: output_dir safety
def _cli(out, *extra):
    return main(["train", str(ROOT / "examples" / "quickstart.yaml"), f"output_dir={out}", "max_steps=1",
                 "per_device_train_batch_size=2", "eval_fraction=0", "eval_steps=0", "save_steps=0",
                 "disable_tqdm=true", "max_length=64", *extra])


def test_a_project_folder_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import preflab.models.load as load

    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my notes")
    (project / "config.yaml").write_text("mine: 1")

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before output_dir was checked")

    monkeypatch.setattr(load, "load_models", no_model)
    assert _cli(project) == 2
    assert "overwrite_output_dir" in capsys.readouterr().err
    assert (project / "README.md").read_text() == "my notes"
    monkeypatch.undo()
    assert _cli(project, "overwrite_output_dir=true") == 0
    assert _cli(project) == 0  # it is a preflab run now


@pytest.mark.parametrize("where", ["root", "home", "git", "pyproject"])
def test_root_home_and_checkouts_are_refused_even_with_overwrite(tmp_path, monkeypatch, where):
    from preflab.rundir import check_output_dir

    target = {"root": Path("/"), "home": tmp_path / "home", "git": tmp_path / "repo",
              "pyproject": tmp_path / "proj"}[where]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "pyproject.toml").write_text("[project]\n")
    with pytest.raises(ConfigError, match="output_dir"):
        check_output_dir(target, overwrite=True)
    assert check_output_dir(target / "outputs" / "run") == (target / "outputs" / "run").resolve()


# ---------------------------------------------------------------- 11.9: one writer per output_dir
HOLDER = """
import sys, time
from preflab.rundir import claim_output_dir
claim_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PreflabError, match=f"in use by another preflab run \\(PID {holder.pid} "):
            run(out, max_steps=1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = out / ".preflab.lock"
    assert json.loads(lock.read_text())["pid"] == holder.pid  # a SIGKILLed run leaves its lock file
    capsys.readouterr()
    run(out, max_steps=1)
    assert f"stale lock of a run that is no longer running (PID {holder.pid}" in capsys.readouterr().err
    assert not lock.exists(), "the lock is released when the run ends"


def test_lock_is_released_when_the_run_fails(tmp_path, monkeypatch):
    from preflab.loops.offline import Trainer

    def fails(self, mb):
        raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, "forward", fails)
    with pytest.raises(RuntimeError):
        run(tmp_path / "run", max_steps=2)
    assert not (tmp_path / "run" / ".preflab.lock").exists()
    started = time.time()
    holder = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(120)", ""), str(tmp_path / "run")],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert holder.returncode == 0 and "locked" in holder.stdout, holder.stderr
    assert time.time() - started < 60


# ---------------------------------------------------------------- 11.10: config changes on resume
def test_resume_refuses_meaning_changes_and_notes_harmless_ones(tmp_path, capsys):
    out = tmp_path / "run"
    run(out, max_steps=4, save_steps=2)
    ckpt = str(out / "checkpoint-2")
    with pytest.raises(ConfigError, match=r"beta \(0.1 -> 3.0\).*learning_rate.*allow_config_change"):
        run(out, max_steps=4, resume_from_checkpoint=ckpt, beta=3.0, learning_rate=0.5)
    with pytest.raises(ConfigError, match="per_device_train_batch_size"):
        run(out, max_steps=4, resume_from_checkpoint=ckpt, per_device_train_batch_size=2)
    with pytest.raises(ConfigError, match="at step 4, beyond this run's last step 3"):
        run(out, max_steps=3, resume_from_checkpoint=str(out / "checkpoint-4"))
    import preflab.models.load as load

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the config change was refused")

    with pytest.MonkeyPatch.context() as mp:  # refused before any model loads
        mp.setattr(load, "load_models", no_model)
        assert _cli(out, "resume_from_checkpoint=true", "beta=3.0", "model_name_or_path=builtin:tiny-llama") == 2
    assert "beta (0.1 -> 3.0)" in capsys.readouterr().err
    summary, _ = run(out, max_steps=5, logging_steps=2, resume_from_checkpoint=ckpt)
    printed = capsys.readouterr().out
    assert "max_steps (4 -> 5)" in printed and "logging_steps (1 -> 2)" in printed
    assert summary["train_examples_seen"] == 3 * 4
    summary, _ = run(out, max_steps=4, resume_from_checkpoint=ckpt, beta=3.0, allow_config_change=True)
    assert summary["resumed_from_step"] == 2
    assert "beta (0.1 -> 3.0)" in capsys.readouterr().out


# ---------------------------------------------------------------- 18.8: the weights after the update
def _linear_step(lr, monkeypatch=None):
    from preflab.objectives.base import ObjectiveOutput
    from preflab.step import optimizer_step
    from types import SimpleNamespace

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    before = [p.detach().clone() for p in layer.parameters()]

    def forward(mb):
        losses = layer(torch.ones(2, 4)).squeeze(-1) ** 2
        return ObjectiveOutput(loss=losses.mean(), losses=losses, metrics={})

    result = optimizer_step([SimpleNamespace(row_ids=[0, 1])], forward, list(layer.parameters()), opt, sched)
    return result, layer, opt, sched, before


def test_an_update_that_makes_weights_nonfinite_is_rolled_back_and_skipped(monkeypatch):
    result, layer, opt, sched, before = _linear_step(1e308)
    assert result.skipped and result.nonfinite_weights
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before))
    assert opt.state_dict()["state"] == {} and sched.last_epoch == 0  # optimizer and schedule untouched
    import preflab.weight_guard as guard

    def no_copy(*a, **k):
        raise AssertionError("a normal step must not copy the weights")

    monkeypatch.setattr(guard, "Snapshot", no_copy)
    result, layer, opt, sched, before = _linear_step(1e-2)
    assert not result.skipped and sched.last_epoch == 1
    assert not torch.equal(next(layer.parameters()), before[0])


def test_huge_learning_rate_stops_with_the_last_good_weights(tmp_path):
    from preflab.errors import NonFiniteError
    from preflab.models.tiny import tiny_tokenizer

    with pytest.raises(NonFiniteError, match="would have made the weights inf/NaN") as err:
        run(tmp_path, learning_rate=1e308, max_steps=3)
    assert str(tmp_path / "checkpoint-3") in str(err.value)
    saved = weights(tmp_path / "checkpoint-3")
    initial = tiny_causal_lm(tiny_tokenizer(), seed=0).state_dict()
    assert all(torch.equal(saved[k], initial[k]) for k in saved), "the checkpoint must hold the last good weights"
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["nonfinite_what"] for r in rows if r.get("nonfinite")] == ["weights"] * 3


# ---------------------------------------------------------------- 19.2, 11.12, 19: what exact resume needs
def _objectives_with_parameters():
    from preflab.objectives import list_objectives, objective_class

    return [n for n in list_objectives() if issubclass(objective_class(n), torch.nn.Module)]


def test_objectives_with_parameters_are_discovered():
    assert "sparsepo" in _objectives_with_parameters()


def _resume_at_3_of_6(out, monkeypatch=None, **kw):
    """Uninterrupted 6 steps (checkpoint at 3), then resume from checkpoint-3; (straight, resumed) results."""
    straight, trainer = run(out, max_steps=6, save_steps=3, **kw)
    final = weights(out)
    extras = {k: v.clone() for k, v in trainer.checkpoint_extras().items()}
    resumed, trainer = run(out, max_steps=6, save_steps=3, resume_from_checkpoint=str(out / "checkpoint-3"), **kw)
    assert resumed["resumed_from_step"] == 3
    return (final, extras), (weights(out), trainer.checkpoint_extras())


@pytest.mark.parametrize("name", _objectives_with_parameters())
def test_exact_resume_with_an_objective_that_has_parameters(tmp_path, name):
    (w0, e0), (w1, e1) = _resume_at_3_of_6(tmp_path, loss_type=name, learning_rate=1e-2)
    assert e0 and set(e0) == set(e1)
    saved = load_file(str(tmp_path / "checkpoint-3" / "extra.safetensors"))
    assert max((saved[k] - e0[k]).abs().max().item() for k in e0) > 1e-4, "the objective's parameters must train"
    assert max((e0[k] - e1[k]).abs().max().item() for k in e0) <= 1e-6
    assert max_diff(w0, w1) <= 1e-6


def test_resume_restores_the_rng_that_dropout_draws_from(tmp_path, monkeypatch):
    kw = dict(tiny_arch="gpt2", disable_dropout=False, learning_rate=1e-2)
    (w0, _), (w1, _) = _resume_at_3_of_6(tmp_path, **kw)
    assert max_diff(w0, w1) <= 1e-6
    # the test has teeth: without restoring the torch RNG, dropout draws other masks and the result moves
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)
    run(tmp_path, max_steps=6, save_steps=3, resume_from_checkpoint=str(tmp_path / "checkpoint-3"), **kw)
    assert max_diff(w0, weights(tmp_path)) > 1e-5


def test_cuda_rng_states_of_eleven_or_more_devices_come_back_to_their_devices(tmp_path, monkeypatch):
    """On a GPU machine each visible device's RNG state is saved as cuda.<i> and set back in device order: cuda.10
    belongs to device 10, not after cuda.1 (a name order gave device 2 the state of device 10 on 11+ GPUs).
    torch.cuda is faked (monkeypatch: undone after the test), no GPU is touched."""
    states = [torch.full((8,), i, dtype=torch.uint8) for i in range(12)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    ck.write_rng(tmp_path)
    ck.restore_rng(tmp_path)
    assert [int(t[0]) for t in restored] == list(range(12))


def test_resume_and_save_total_limit_order_checkpoints_by_step_not_name(tmp_path):
    model, opt, sched = _model_and_optimizer()
    for step in (8, 9, 10):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, save_total_limit=2)
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-9", tmp_path / "checkpoint-10"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert ck.resume_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_scheduler_does_not_advance_on_a_skipped_step(tmp_path, monkeypatch):
    from preflab.loops.offline import Trainer

    original, calls = Trainer.forward, {"n": 0}

    def nan_at_step_2(self, mb):
        calls["n"] += 1
        out = original(self, mb)
        if calls["n"] == 2:
            out.loss, out.losses = out.loss * float("nan"), out.losses * float("nan")
        return out

    monkeypatch.setattr(Trainer, "forward", nan_at_step_2)
    run(tmp_path, max_steps=4, learning_rate=1e-3, lr_scheduler_type="linear")
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    lrs = [r["learning_rate"] for r in rows if "learning_rate" in r]
    # linear decay over 4 steps; each row logs the rate its step used (as transformers does); the skipped step 2
    # leaves the schedule where step 1 left it, so step 3 uses step 2's rate
    assert lrs == pytest.approx([1e-3, 1e-3 * 0.75, 1e-3 * 0.75, 1e-3 * 0.5], rel=1e-9)


def test_without_flock_the_pid_decides_and_another_hosts_lock_is_kept(tmp_path, monkeypatch):
    import socket

    import preflab.rundir as rundir

    monkeypatch.setattr(rundir, "_try_flock", lambda fd: "unsupported")  # e.g. a network filesystem
    lock = tmp_path / ".preflab.lock"
    host = socket.gethostname()
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host, "started": "t0"}))  # a live process
    with pytest.raises(PreflabError, match=f"in use by another preflab run \\(PID {os.getppid()} "):
        rundir.acquire_lock(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": host, "started": "t0"}))
    rundir.acquire_lock(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    rundir.release_output_dir(tmp_path)
    assert not lock.exists()
    monkeypatch.undo()
    lock.write_text(json.dumps({"pid": dead.pid, "host": "another-host", "started": "t0"}))
    with pytest.raises(PreflabError, match="another host.*delete"):
        rundir.acquire_lock(tmp_path)


def test_a_checkpoint_path_that_does_not_exist_says_so_and_lists_the_runs_checkpoints(tmp_path):
    """resume_from_checkpoint=RUN/checkpoint-99 (a mistyped step) said "is not a complete preflab checkpoint (no
    COMPLETE marker)", as if the folder were damaged."""
    from preflab.checkpoint import read_marker
    from preflab.errors import PreflabError

    for step in (10, 2):
        (tmp_path / f"checkpoint-{step}").mkdir()
    with pytest.raises(PreflabError, match=r"checkpoint .*checkpoint-99 does not exist; .* holds checkpoint-2, "
                                           r"checkpoint-10\.$"):
        read_marker(tmp_path / "checkpoint-99")
    with pytest.raises(PreflabError, match="is not a complete preflab checkpoint"):
        read_marker(tmp_path / "checkpoint-2")  # there, but without its marker


def test_file_sha256_is_the_sha256_of_the_bytes_across_blocks_and_user_files_unreadable_are_none(tmp_path,
                                                                                                  monkeypatch):
    """One sha256 of a file serves the checkpoint records and the user code records (preflab.plugins was a second
    copy that read the whole file at once): read in HASH_BLOCK pieces it is hashlib's of the whole bytes; a user
    file that cannot be read is None (check_resume_code names it 'no longer readable')."""
    import hashlib

    from preflab.plugins import user_file_sha256

    data = bytes(range(256)) * 41 + b"tail"
    (tmp_path / "f.bin").write_bytes(data)
    monkeypatch.setattr(ck, "HASH_BLOCK", 1000)  # 11 blocks, the last one short
    assert ck.file_sha256(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
    assert user_file_sha256(str(tmp_path / "f.bin")) == hashlib.sha256(data).hexdigest()
    assert user_file_sha256(tmp_path / "gone.py") is None and user_file_sha256("") is None


def test_python_and_numpy_rng_states_come_back_from_a_checkpoint(tmp_path):
    """rng.json holds python's and numpy's RNG states (a user's collator or reward function may draw from them):
    restore_rng puts both back, so the draws after a resume are the draws the uninterrupted run made."""
    import random

    import numpy as np

    random.seed(3)
    np.random.seed(4)
    ck.write_rng(tmp_path)
    expected = ([random.random() for _ in range(3)], np.random.rand(3).tolist())
    random.seed(99)
    np.random.seed(99)
    ck.restore_rng(tmp_path)
    assert ([random.random() for _ in range(3)], np.random.rand(3).tolist()) == expected


def test_a_checkpoint_folder_without_its_complete_marker_is_never_listed_or_latest(tmp_path):
    """A checkpoint-<step> holding every file but the COMPLETE marker (a copied run folder that lost it, a marker
    deleted by hand) is not a checkpoint of the run: not listed, not latest (what an interrupted run names), and
    `resume_from_checkpoint: true` says so and falls back to the sealed one."""
    import shutil

    model, opt, sched = _model_and_optimizer()
    save_checkpoint(tmp_path, 3, model, opt, sched, {})
    shutil.copytree(tmp_path / "checkpoint-3", tmp_path / "checkpoint-9")
    (tmp_path / "checkpoint-9" / ck.MARKER).unlink()
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-3"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-3"
    warnings = []
    assert ck.resume_checkpoint(tmp_path, warn=warnings.append) == tmp_path / "checkpoint-3"
    assert warnings == [f"preflab: warning: {tmp_path / 'checkpoint-9'} is not a complete checkpoint "
                        f"({tmp_path / 'checkpoint-9' / ck.MARKER} is missing: deleted, or the folder was not written "
                        "by preflab); it is skipped. Falling back to an earlier checkpoint."]
