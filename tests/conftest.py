import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager

import pytest
import torch

from file_order import slowest_files_first  # tests/, on sys.path beside this conftest
from gpu_fakes import restore_cuda_probes

# Tiny models run faster on one thread than two (DESIGN.md, conventions).
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _no_cuda_fake_left_behind():
    """A test that faked torch.cuda's probes must leave them as it found them (gpu_fakes.py): checked after its own
    fixtures (monkeypatch) are torn down; the probes are restored either way, so no later test runs on a fake GPU."""
    yield
    left = restore_cuda_probes()
    assert not left, (f"this test left torch.cuda.{', torch.cuda.'.join(left)} replaced: fake a GPU with "
                      "monkeypatch.setattr(torch.cuda, ...), which undoes it after the test")


def _fsync_skipped(fd) -> None:
    """os.fsync for the tests: checks that `fd` is an open file descriptor (as fsync does: OSError EBADF), but does not
    wait for the disk."""
    os.fstat(fd)


@pytest.fixture(scope="session", autouse=True)
def _no_disk_flush():
    """os.fsync does not wait for the disk in the pytest process (preflab's checkpoint writes still make every call:
    each file, the COMPLETE marker, the folder). An fsync guards a checkpoint against power loss, which no test can
    cause: a killed process's writes stay in the page cache, and a test reads them back from there either way. On a
    busy disk the waits were seconds per file of checkpointing tests (tests/loops/test_best_model.py: 10 s of its 88).
    Subprocesses that the tests start (kill tests, multi-process launches) flush as usual."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", _fsync_skipped)
        yield


def _free_port() -> int:
    """A TCP port that no process listens on now: the OS picks it (bind to port 0), so it differs between calls."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """`free_port()`: a port for one process group that a test starts by hand (MASTER_PORT). A fixed port (or
    accelerate's default 29500) is shared by every test that launches at the same time: two pytest-xdist workers, or
    two suites on one machine; the second process group then fails with "address already in use"."""
    return _free_port


@pytest.fixture(scope="session")
def accelerate_launch():
    """`accelerate_launch(*args)`: the command line `python -m accelerate.commands.launch --main_process_port P
    *args` with a free port P of its own (see `free_port`; accelerate falls back from a busy 29500 to a port of its
    choosing only when 29500 is already listening, which two launches starting together both miss)."""

    def command(*args) -> list[str]:
        return [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(_free_port()), *args]

    return command


@pytest.fixture(scope="session")
def one_and_two_processes(accelerate_launch):
    """`one_and_two_processes(script, out, common)`: run `script OUT *common` twice, as one plain process at
    gradient_accumulation_steps=4 (into out/"one") and under accelerate launch on two CPU processes at
    gradient_accumulation_steps=2 (into out/"two"): the same global batch of 4 per-device examples of 1. Each must
    exit 0 (else the test fails with the end of its stderr)."""
    import os
    import subprocess

    def launch(script: str, out, common: list[str]) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        one = subprocess.run([sys.executable, script, str(out / "one"), *common, "gradient_accumulation_steps=4"],
                             env=env, capture_output=True, text=True, timeout=500)
        assert one.returncode == 0, one.stderr[-3000:]
        two = subprocess.run(accelerate_launch("--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                               "--mixed_precision", "no", "--dynamo_backend", "no", script,
                                               str(out / "two"), *common, "gradient_accumulation_steps=2"),
                             env=env, capture_output=True, text=True, timeout=500)
        assert two.returncode == 0, two.stderr[-3000:]

    return launch


class StopRun(Exception):
    """A run interrupted on purpose by the `stop_at_step` fixture."""


@pytest.fixture
def stop_at_step():
    """`with stop_at_step(run, step): run.train()`: the run (any TrainingRun with `micro_batches(step)`, e.g. an
    OnlineRun) is interrupted when it asks for the micro-batches of `step`, as if killed there; the block must end
    with that interruption (else the test fails), and `run.micro_batches` is restored afterwards."""

    @contextmanager
    def stop(run, step: int):
        original = run.micro_batches

        def micro_batches(s):
            if s == step:
                raise StopRun(f"stopped at step {step}")
            return original(s)

        run.micro_batches = micro_batches
        try:
            with pytest.raises(StopRun):
                yield
        finally:
            run.micro_batches = original

    return stop


@pytest.fixture
def stop_runs_at_step(monkeypatch):
    """`with stop_runs_at_step(cls, step): recipe(...)`: every run of class `cls` (e.g. the offline Trainer or OnlineRun
    a recipe builds inside itself) is interrupted when it asks for the micro-batches of `step`, as stop_at_step does
    to one run; the block must end with that interruption, and `cls.micro_batches` is restored afterwards."""

    @contextmanager
    def stop(cls, step: int):
        original = cls.micro_batches

        def micro_batches(self, s):
            if s == step:
                raise StopRun(f"stopped at step {step}")
            return original(self, s)

        with monkeypatch.context() as patch:
            patch.setattr(cls, "micro_batches", micro_batches)
            with pytest.raises(StopRun):
                yield

    return stop


@pytest.fixture
def kill_when():
    """`with kill_when(proc, path, within_s): ...`: a thread SIGKILLs the subprocess `proc` as soon as `path` exists,
    while the block runs in this process (the uninterrupted reference run of a kill test: the two runs share the
    machine's cores instead of taking turns). After the block it waits for the kill, and fails if `proc` ended before
    `path` appeared or `path` did not appear within `within_s` seconds of entering."""

    @contextmanager
    def kill(proc, path, within_s: float):
        failure = []

        def watch():
            deadline = time.time() + within_s
            while not path.exists():
                if proc.poll() is not None:
                    failure.append("the run ended before it could be killed")
                    return
                if time.time() >= deadline:
                    failure.append(f"{path} did not appear within {within_s} s")
                    break
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield
        except BaseException:
            proc.kill()
            raise
        finally:
            watcher.join()
        assert not failure, failure[0]

    return kill


def pytest_configure(config):
    """Under `--dist loadfile`, pytest-xdist hands the files to the workers in collection order, which
    pytest_collection_modifyitems sets (file_order.py: the slowest files first); xdist would otherwise re-sort the
    files by their number of tests."""
    if getattr(config.option, "dist", "no") == "loadfile":
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Under `--dist loadfile`, order the files slowest first (file_order.slowest_files_first); a file's tests keep
    their order. Every worker collects and orders alike, so the workers agree on the collection, as xdist requires."""
    if getattr(config.option, "dist", "no") != "loadfile":
        return
    rank = {path: i for i, path in enumerate(slowest_files_first([item.nodeid.split("::")[0] for item in items]))}
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])  # stable: a file's tests keep their order
