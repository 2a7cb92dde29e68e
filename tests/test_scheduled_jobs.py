"""User trial 26: `preflab train` as a scheduler's job (Slurm, Kubernetes). A job gets SIGTERM and a grace period
before SIGKILL, is restarted with the same command, and its exit status decides whether it is retried."""
import errno
import json
import os
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

import preflab.checkpoint as ck
import preflab.loops.driver as driver
from preflab.cli import main
from preflab.errors import EXIT_OUTPUT_DIR_BUSY, EXIT_REFUSED, EXIT_TERMINATED, EXIT_WRITE_FAILED

ROOT = Path(__file__).resolve().parents[1]
# one command for every start of the job: resume_from_checkpoint: auto (save_steps 4: step 3 is no periodic save)
JOB = ["train", str(ROOT / "examples" / "quickstart.yaml"), "max_steps=6", "per_device_train_batch_size=2",
       "eval_fraction=0", "eval_steps=0", "disable_tqdm=true", "max_length=64", "logging_steps=1", "save_steps=4",
       "resume_from_checkpoint=auto"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))


def _sigterm_during_step(monkeypatch, step: int, signals: int = 1) -> None:
    """The scheduler's SIGTERM (`signals` of them) arrives while optimizer step `step` (1-based) computes."""
    real, calls = driver.optimizer_step, {"n": 0}

    def step_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "optimizer_step", step_then_signal)


def _logged_steps(out: Path) -> list:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_saves_the_step_under_way_and_the_same_command_resumes_to_the_uninterrupted_weights(
        tmp_path, monkeypatch, capsys):
    """Before: SIGTERM stopped at once and the steps since the last periodic checkpoint were lost (here all 3), and
    the restarted command was refused (`true` with nothing to resume at the first start, unset with checkpoints at
    the restart). Now the step under way finishes, checkpoint-3 is saved, the exit status is 143, and the same command
    resumes it and ends with the uninterrupted run's weights; run once more it trains nothing."""
    whole, job = tmp_path / "whole", tmp_path / "job"
    assert main([*JOB, f"output_dir={whole}"]) == 0
    assert f"resume_from_checkpoint: auto: {whole} holds no checkpoint of a run to continue, starting at step 0." in \
        capsys.readouterr().out

    with monkeypatch.context() as patch:
        _sigterm_during_step(patch, 3)
        assert main([*JOB, f"output_dir={job}"]) == EXIT_TERMINATED == 143
    err = capsys.readouterr().err
    assert [p.name for p in ck.list_checkpoints(job)] == ["checkpoint-3"]
    assert f"terminated (SIGTERM). Saved {job / 'checkpoint-3'} (step 3) before stopping: no step is lost." in err

    assert main([*JOB, f"output_dir={job}"]) == 0
    summary = json.loads((job / "summary.json").read_text())
    assert summary["resumed_from_step"] == 3 and summary["global_step"] == 6
    assert _logged_steps(job) == [1, 2, 3, 4, 5, 6] == _logged_steps(whole)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(job / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert summary["final_metrics"]["loss"] == pytest.approx(
        json.loads((whole / "summary.json").read_text())["final_metrics"]["loss"], abs=1e-6)

    before = (job / "summary.json").read_bytes()
    capsys.readouterr()
    assert main([*JOB, f"output_dir={job}"]) == 0  # the scheduler runs the finished job again: nothing changes
    assert "nothing to train" in capsys.readouterr().out
    assert (job / "summary.json").read_bytes() == before


def test_a_second_sigterm_or_a_run_without_checkpoints_stops_at_once(tmp_path, monkeypatch, capsys):
    """The grace period is not waited out: a second SIGTERM during the step stops at once (no checkpoint, the
    step not logged), and so does one SIGTERM to a run that saves no checkpoints (save_steps 0)."""
    for name, extra, signals in (("twice", [], 2), ("no_saves", ["save_steps=0"], 1)):
        out = tmp_path / name
        with monkeypatch.context() as patch:
            _sigterm_during_step(patch, 3, signals)
            assert main([*JOB, f"output_dir={out}", *extra]) == 143
        assert ck.list_checkpoints(out) == []
        assert _logged_steps(out) == [1, 2]  # step 3 was cut short
        assert f"{out} holds no finished checkpoint of this run" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command puts the handler it found back
    from preflab.stop_signal import stop_requested

    assert not stop_requested()  # a later run in this process (a notebook's, from Python) does not inherit it


def test_exit_status_tells_a_failed_write_from_a_wrong_config_or_data(tmp_path, monkeypatch, capsys):
    """Before: a full disk, a wrong option and a bad data row all exited 2, so a scheduler could not tell the job it
    may retry once there is room from the one it must not. A failed write is 74 now (BSD sysexits' EX_IOERR)."""
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(ck, "save_file", full_disk)
        assert main([*JOB, f"output_dir={tmp_path / 'full'}"]) == EXIT_WRITE_FAILED == 74
    said = capsys.readouterr().err
    assert said.startswith(f"preflab: error: could not write checkpoint {tmp_path / 'full' / 'checkpoint-4'}: No "
                           "space left on device.")
    assert main([*JOB, f"output_dir={tmp_path / 'full'}"]) == 0  # room again: the same command runs the job

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b"}\n')
    assert main([*JOB, f"output_dir={tmp_path / 'cfg'}", "beta=-1"]) == EXIT_REFUSED == 2
    assert main([*JOB, f"output_dir={tmp_path / 'data'}", f"dataset_name={bad}"]) == 2
    assert "field 'rejected': missing" in capsys.readouterr().err
    from preflab.cli import build_parser

    said = build_parser().format_help()  # `preflab --help` lists the statuses a scheduler reads
    assert "  2    refused: the config, data or command line is wrong" in said
    assert "  74   a file could not be written" in said and "  143  SIGTERM" in said
    assert "  75   output_dir is in use by another live preflab run" in said


def test_output_dir_held_by_another_live_run_exits_75_naming_its_pid(tmp_path, capsys):
    """Before: the second of two runs on one output_dir exited 2, "fix the input", though the same command succeeds
    once the first ends (a scheduler's retry started while the old pod still stops). Now 75 (BSD sysexits'
    EX_TEMPFAIL) with the holder's PID, before any model loads. The other run's flock is taken here on a descriptor
    of its own (flock locks of two open() calls exclude each other, even in one process), its record beside it."""
    import fcntl
    import socket

    out = tmp_path / "busy"
    out.mkdir()
    lock = out / ".preflab.lock"
    lock.write_text(json.dumps({"pid": 4242, "host": socket.gethostname(), "started": "2026-12-08T01:00:00+00:00"}))
    held = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([*JOB, f"output_dir={out}"]) == EXIT_OUTPUT_DIR_BUSY == 75
    finally:
        os.close(held)
    said = capsys.readouterr().err
    assert said == (f"preflab: error: output_dir {out} is in use by another preflab run (PID 4242 on host "
                    f"{socket.gethostname()}, started 2026-12-08T01:00:00+00:00; lock file {lock}). Wait for it to "
                    "finish, stop it, or choose another output_dir.\n")
    assert sorted(p.name for p in out.iterdir()) == [".preflab.lock"]  # nothing loaded, nothing written


def test_resume_auto_is_refused_where_a_run_keeps_no_checkpoint_folders(tmp_path):
    """The recipes keep their own state files: `auto` there would have been read as `true` (a first start refused
    or an unasked resume), so it is refused naming what to set."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.recipes import run_recipe

    cfg = config_from_dict({"task": "otc", "output_dir": str(tmp_path / "otc"), "resume_from_checkpoint": "auto"})
    with pytest.raises(ConfigError, match="resume_from_checkpoint: auto is for runs that keep checkpoint-N folders; "
                                          "task 'otc' keeps its own state: set resume_from_checkpoint: true"):
        run_recipe(cfg)
    assert not (tmp_path / "otc").exists()


def test_progress_in_a_log_file_is_plain_lines_at_most_every_30_seconds_and_at_the_last_step():
    """Before: in a log file (stderr no terminal) the tqdm bar, redrawn with carriage returns, made one endless line.
    Now a plain line at most every LOG_LINE_SECONDS (30 s) and at the last step; on a terminal the bar as before."""
    import io
    from types import SimpleNamespace

    from preflab.log_lines import LOG_LINE_SECONDS
    from preflab.runlog import Progress

    result = SimpleNamespace(loss=0.5, metrics={"rewards/margins": 0.25, "rewards/accuracies": 0.75})
    log, now = io.StringIO(), {"t": 0.0}
    bar = Progress(10, 2, True, stream=log, clock=lambda: now["t"])
    for _ in range(8):  # steps 3..10, 10 s apart: 30 s have passed at steps 5 and 8, then the last step
        now["t"] += 10.0
        bar.update(result, 100)
    bar.close()
    lines = log.getvalue().splitlines()
    assert LOG_LINE_SECONDS == 30.0 and "\r" not in log.getvalue()
    assert lines == ["train: step 5/10 (50%), 0.1 steps/s, ETA 50 s, loss=0.5000 margin=0.250 acc=0.75 tok/s=10",
                     "train: step 8/10 (80%), 0.1 steps/s, ETA 20 s, loss=0.5000 margin=0.250 acc=0.75 tok/s=10",
                     "train: step 10/10 (100%), 0.1 steps/s, ETA 0 s, loss=0.5000 margin=0.250 acc=0.75 tok/s=10"]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    bar = Progress(10, 0, True, stream=screen, clock=lambda: now["t"])
    bar.update(result, 100)
    bar.close()
    assert "\r" in screen.getvalue() and "train: step" not in screen.getvalue()  # tqdm's bar, redrawn in place
    quiet = io.StringIO()
    Progress(10, 0, False, stream=quiet).update(result, 100)  # disable_tqdm: nothing at all
    assert quiet.getvalue() == ""


def test_a_bar_another_library_draws_is_plain_lines_in_a_log_file_by_the_training_bars_rule():
    """vLLM's "Processed prompts" bar of an online round (generation_backend: vllm) drew tqdm redraws into the log
    file. Its use_tqdm takes a tqdm class: preflab.log_lines.bar_class() gives one that prints the training bar's
    lines (LogLines: at most every 30 s and at the end). Driven here as vLLM's _run_engine drives it: a postfix
    string set before each update, format_dict["elapsed"] read, refresh() at the total, close()."""
    import io

    from preflab.log_lines import LogLineBar, bar_class

    log, now = io.StringIO(), {"t": 0.0}
    make = bar_class(stream=log, clock=lambda: now["t"])
    bar = make(total=8, desc="Processed prompts", dynamic_ncols=True, mininterval=0,
               postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s")
    assert isinstance(bar, LogLineBar)
    for done in range(1, 9):  # 8 prompts, 12 s apart: 30 s have passed at prompts 3 and 6, then the last
        now["t"] += 12.0
        assert bar.format_dict["elapsed"] >= 0
        bar.postfix = f"est. speed input: {10 * done:.2f} toks/s, output: {5 * done:.2f} toks/s"
        bar.update(1)
        if bar.n == 8:
            bar.refresh()
    bar.close()
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines() == [
        "Processed prompts: 3/8 (38%), 0.0833 it/s, ETA 60 s, est. speed input: 30.00 toks/s, output: 15.00 toks/s",
        "Processed prompts: 6/8 (75%), 0.0833 it/s, ETA 24 s, est. speed input: 60.00 toks/s, output: 30.00 toks/s",
        "Processed prompts: 8/8 (100%), 0.0833 it/s, ETA 0 s, est. speed input: 80.00 toks/s, output: 40.00 toks/s"]

    log, now["t"] = io.StringIO(), 0.0  # a bar closed before its total says where it stopped, once
    bar = bar_class(stream=log, clock=lambda: now["t"])(total=10, desc="gen", mininterval=0)
    now["t"] = 4.0
    bar.update(2)
    bar.close()
    bar.close()
    assert log.getvalue() == "gen: 2/10 (20%), 0.5 it/s, ETA 16 s\n"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    bar = bar_class(stream=screen)(total=3, desc="gen")
    bar.update(3)
    bar.close()
    assert not isinstance(bar, LogLineBar) and "\r" in screen.getvalue()  # a terminal keeps tqdm's bar
