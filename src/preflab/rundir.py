"""Claiming an output_dir for one run: refuse dangerous directories, and hold a lock for the run's lifetime.

    check_output_dir(path, overwrite)  refuse /, the home directory, a git work tree root or a project folder
                                       (pyproject.toml), and a non-empty folder that is not a preflab run
    claim_output_dir(path, overwrite)  the checks, then the lock file output_dir/.preflab.lock (PID, host, start
                                       time); a second writer is refused, a stale lock (dead PID on this host) is
                                       taken over with a note
    release_output_dir(path)           drop the lock (also at interpreter exit)
    claims_released_on_error()         a block whose claims are released when it raises (a run's build:
                                       preflab.loops.driver.TrainingRun)

The lock is an flock()ed file: the kernel drops it when the holder dies, so a SIGKILLed run never blocks the next
one; the PID check covers filesystems without flock. A lock held by this very process (a second run object in one
Python session, e.g. a test) is re-entrant.
"""
from __future__ import annotations

import atexit
import contextvars
import datetime
import errno
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from preflab.errors import ConfigError, OutputDirBusy, PreflabError

LOCK_FILE = ".preflab.lock"
RUN_MARKER = ".preflab-run"  # written into every claimed output_dir: "this folder is a preflab run"
# files and folders that show an older output_dir (without RUN_MARKER) was written by preflab
_RUN_FILES = ("metrics.jsonl", "summary.json", "pair_margins.jsonl", "trainer_state.json")

_held: dict[Path, "_Lock"] = {}
# the claims made inside the innermost claims_released_on_error block (None outside one)
_recording: contextvars.ContextVar[list | None] = contextvars.ContextVar("preflab_claims_recording", default=None)


def _looks_like_run(path: Path) -> bool:
    if (path / RUN_MARKER).exists() or any((path / name).is_file() for name in _RUN_FILES):
        return True
    return any(p.is_dir() and (p / "trainer_state.json").is_file() for p in path.glob("checkpoint-*"))


def check_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output_dir whose files a run must not overwrite; returns the resolved path. Nothing is written."""
    path = Path(path).expanduser()
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        raise ConfigError(f"output_dir {str(path)!r} is the filesystem root; give a folder for this run, e.g. "
                          "output_dir=outputs/my-run.")
    if resolved == Path.home().resolve():
        raise ConfigError(f"output_dir {str(path)!r} is your home directory; give a folder for this run, e.g. "
                          "output_dir=outputs/my-run.")
    if not resolved.exists():
        return resolved
    if not resolved.is_dir():
        raise PreflabError(f"output_dir {path} is not writable (it is a file); choose another output_dir.")
    for name in (".git", "pyproject.toml"):
        if (resolved / name).exists():
            raise ConfigError(
                f"output_dir {str(path)!r} holds {name}: it is a project or git checkout, whose files a run would "
                "overwrite (README.md, config.yaml). Give a subfolder, e.g. output_dir=outputs/my-run. This check "
                "cannot be turned off.")
    entries = [p.name for p in resolved.iterdir() if not p.name.startswith(".preflab")]
    if entries and not overwrite and not _looks_like_run(resolved):
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(
            f"output_dir {str(path)!r} is not empty and is not a preflab run (it holds {shown}); a run writes "
            "README.md, config.yaml and model files there. Choose a new or empty folder, or set "
            "overwrite_output_dir: true to write into it anyway.")
    return resolved


class _Lock:
    def __init__(self, path: Path, fd: int):
        self.path, self.fd, self.count = path, fd, 1

    def release(self) -> None:
        try:
            if self.path.exists() and os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                self.path.unlink()
        except OSError:
            pass
        try:
            os.close(self.fd)  # also drops the flock
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    return (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


def _try_flock(fd: int) -> str:
    """"locked" (we hold it), "busy" (another process does) or "unsupported" (no flock here: the PID decides)."""
    try:
        import fcntl
    except ImportError:
        return "unsupported"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "locked"
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return "busy"
        return "unsupported"  # ENOLCK / EOPNOTSUPP (some network filesystems)


def acquire_lock(output_dir: Path) -> _Lock:
    """Lock output_dir for this process (see the module docstring); OutputDirBusy (exit 75) when another live run
    holds it."""
    output_dir = Path(output_dir).resolve()
    if output_dir in _held:
        _held[output_dir].count += 1
        return _held[output_dir]
    path = output_dir / LOCK_FILE
    host = socket.gethostname()
    for _ in range(5):  # retry when the file was replaced between open and flock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        flock = _try_flock(fd)
        if flock == "busy":
            os.close(fd)
            holder = _read_holder(path)
            raise OutputDirBusy(
                f"output_dir {output_dir} is in use by another preflab run ({_describe(holder)}; lock file "
                f"{path}). Wait for it to finish, stop it, or choose another output_dir.")
        try:
            if not os.path.samestat(os.fstat(fd), os.stat(path)):
                os.close(fd)
                continue
        except FileNotFoundError:
            os.close(fd)
            continue
        holder = _read_holder(path)
        if holder.get("pid") and holder.get("pid") != os.getpid():
            same_host = holder.get("host") == host
            # holding the flock proves its holder is gone (a reused PID must not block us); without flock, the PID
            if same_host and flock == "unsupported" and _pid_alive(int(holder["pid"])):
                os.close(fd)
                raise OutputDirBusy(
                    f"output_dir {output_dir} is in use by another preflab run ({_describe(holder)}; lock file "
                    f"{path}). Wait for it to finish, stop it, or choose another output_dir.")
            if not same_host:
                os.close(fd)
                raise PreflabError(
                    f"output_dir {output_dir} is locked by a run on another host ({_describe(holder)}); preflab "
                    f"cannot check whether it still runs. If it has ended, delete {path} and start again.")
            print(f"preflab: note: taking over the stale lock of a run that is no longer running "
                  f"({_describe(holder)}).", file=sys.stderr)
        record = {"pid": os.getpid(), "host": host,
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "argv": sys.argv[:8]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        lock = _held[output_dir] = _Lock(path, fd)
        return lock
    raise PreflabError(f"could not lock output_dir {output_dir}: the lock file {path} keeps changing.")


def claim_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """check_output_dir, create it, take the lock and mark the folder as a preflab run; returns the path. Any failure
    after the lock is taken (the run marker's write: a full disk, a read-only file; an interrupt) releases the lock
    before it is raised: a claim that failed must not leave the folder locked by this process, which would refuse
    every later claim of it while the process lives (a notebook)."""
    resolved = check_output_dir(path, overwrite)
    try:
        resolved.mkdir(parents=True, exist_ok=True)
        acquire_lock(resolved)
    except OSError as err:
        raise _not_writable(path, err) from err
    try:
        (resolved / RUN_MARKER).touch()
    except BaseException as err:
        release_output_dir(resolved)
        if isinstance(err, OSError):
            raise _not_writable(path, err) from err
        raise
    recording = _recording.get()
    if recording is not None:
        recording.append(resolved)
    return resolved


def _not_writable(path, err: OSError) -> PreflabError:
    return PreflabError(f"output_dir {path} is not writable ({err.strerror or err}); choose another output_dir or "
                        "fix its permissions.")


@contextmanager
def claims_released_on_error() -> Iterator[None]:
    """Release each claim_output_dir made inside the block (not in a nested block) when the block raises; the error
    goes on unchanged. A claim that the block ends with belongs to what it built (a run releases it when train()
    ends). Why: a run built in a notebook that failed after locking output_dir left the lock to the notebook's
    process, so every later run into that folder, from the shell or the notebook, was refused while it lived."""
    claims: list[Path] = []
    token = _recording.set(claims)
    try:
        yield
    except BaseException:
        for path in reversed(claims):
            release_output_dir(path)
        raise
    finally:
        _recording.reset(token)


def release_output_dir(path: str | Path) -> None:
    """Drop this process's lock on output_dir (when the last claim of it in this process is released)."""
    resolved = Path(path).resolve()
    lock = _held.get(resolved)
    if lock is None:
        return
    lock.count -= 1
    if lock.count <= 0:
        del _held[resolved]
        lock.release()


def holds_lock(path: str | Path) -> bool:
    return Path(path).resolve() in _held


@atexit.register
def _release_all() -> None:
    for lock in list(_held.values()):
        lock.release()
    _held.clear()
