"""`run_python`: run untrusted Python source in a limited subprocess and report what happened.

See the package docstring (`preflab.sandbox`) for exactly what is and is not isolated.
"""
from __future__ import annotations

import marshal
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from preflab.errors import PreflabError
from preflab.sandbox import _guard, _host

Status = Literal["ok", "error", "timeout", "memory", "output_limit", "killed", "refused"]
_LAUNCHER = Path(__file__).with_name("_launcher.py")
_GRACE_S = 0.2  # after the main process exits, how long its children may keep the output pipes open
PAST_THE_GUARD = "{n} process(es) started past the guard, alive when the run ended (killed)"
_FORK_FAILED = re.compile(r"BlockingIOError: \[Errno 11\]|can't start new thread|Resource temporarily unavailable")
# the exception line of a failed allocation: MemoryError, and subclasses such as numpy's _ArrayMemoryError
# ("numpy._core._exceptions._ArrayMemoryError: Unable to allocate ..."), or the C library's ENOMEM text
_OUT_OF_MEMORY = re.compile(r"[\w.]*MemoryError\b|.*Cannot allocate memory")


class SandboxError(PreflabError):
    """The sandbox could not be set up (bad arguments, or a requested limit could not be applied)."""


class SandboxWarning(UserWarning):
    """The sandbox runs with weaker isolation than as root (a non-root caller); the message says what is missing."""


NON_ROOT_WARNING = (
    "preflab.sandbox as a non-root caller: the code runs as your own uid. Its reads are confined to system folders, "
    "the interpreter and the working folder only where Landlock is available ({landlock}); leftover processes, "
    "including ones that call setsid(), are killed only where the run has its own user namespace ({userns}); the "
    "process limit counts all your processes. Run as root (e.g. in a container) for a fresh uid per run."
)


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    status: "ok" (exit 0), "error" (non-zero exit, e.g. an uncaught exception), "timeout" (wall-time or CPU-time
    limit), "memory" (the memory limit: MemoryError or a subclass such as numpy's), "output_limit" (stdout or stderr passed `max_output_bytes`),
    "killed" (ended by another signal, e.g. SIGSEGV), "refused" (the program tried to start a process, execute a
    program or call C code through ctypes/cffi: the call raised `SandboxRefused` and is listed in `refused`; the run
    counts as refused whether or not the program caught the exception and went on; a guarded run that still had
    processes of its own alive when it ended got past the guard: refused too, `refused` says how many).
    limits_hit: every limit that was reached, from "wall", "cpu", "memory", "output", "file_size", "processes"
    (a fork failed with EAGAIN, or `max_processes` processes were alive at the end).
    wall_s: seconds from start until the main process ended (or was stopped). cpu_s: CPU seconds of the main
    process and of the children it waited for.
    returncode: the main process's exit status (negative: killed by that signal).
    processes_left: processes of the run still alive when the main process ended or was stopped (all killed).
    isolation: what was actually applied, by aspect ("user", "network", "filesystem", "mounts").
    sandbox_uid: the fresh uid the run used (root callers only), else None.
    refused: the refused calls, as written, e.g. "os.system('ls')" (the first 20).
    """

    status: Status
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float = 0.0
    truncated: bool = False
    limits_hit: tuple[str, ...] = ()
    processes_left: int = 0
    isolation: dict[str, str] = field(default_factory=dict)
    sandbox_uid: int | None = None
    refused: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 5.0,
    cpu_s: float | None = None,
    memory_mb: int = 512,
    max_output_bytes: int = 65536,
    max_processes: int = 8,
    max_file_mb: int = 16,
    files: dict[str, str] | None = None,
    block_network: bool = True,
    python: str | None = None,
    env: dict[str, str] | None = None,
) -> SandboxResult:
    """Run `code` as `main.py` with `python -I -B` in a fresh temporary folder and return a `SandboxResult`.

    timeout_s: wall-clock limit. cpu_s: CPU-time limit per process (default ceil(timeout_s) + 1: a program that
    spins in one thread is ended by the wall clock, one whose threads burn CPU faster than it by the CPU limit).
    memory_mb: address space per process (RLIMIT_AS). max_output_bytes: cap for stdout and for stderr, each. max_processes: processes
    and threads alive at once (RLIMIT_NPROC on a fresh uid when run as root). max_file_mb: largest file a process
    may write (RLIMIT_FSIZE). files: extra files for the working folder, {relative path: text}. python: the
    interpreter (default: this one). env: extra environment variables (the environment is otherwise minimal).
    A non-root caller gets a `SandboxWarning` saying what a non-root sandbox does not protect.
    """
    return _run_python(code, stdin=stdin, timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb,
                       max_output_bytes=max_output_bytes, max_processes=max_processes, max_file_mb=max_file_mb,
                       files=files, block_network=block_network, python=python, env=env)


def _run_python(code: str, *, stdin: str = "", timeout_s: float = 5.0, cpu_s: float | None = None,
                memory_mb: int = 512, max_output_bytes: int = 65536, max_processes: int = 8, max_file_mb: int = 16,
                files: dict[str, str] | None = None, block_network: bool = True, python: str | None = None,
                env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (),
                python_guard: bool = True) -> SandboxResult:
    """`run_python` with `pass_fds` (file descriptors the program inherits under the same numbers; `run_tests`).

    python_guard=False runs `main.py` without `_guard` (process starts are then limited by the OS-level limits
    only): for tests of those limits, never for model-written code."""
    _check_args(timeout_s, cpu_s, memory_mb, max_output_bytes, max_processes, max_file_mb)
    if not sys.platform.startswith("linux"):
        raise SandboxError(f"preflab.sandbox needs Linux (rlimits, namespaces, Landlock); this is {sys.platform}.")
    exe = python or sys.executable
    # default one CPU second past the wall limit: a single-threaded spin is ended by the wall clock (SIGKILL, "wall"),
    # never by RLIMIT_CPU firing in the same instant (a race that gave either verdict on a quiet machine)
    cpu_limit = max(1, math.ceil(cpu_s)) if cpu_s is not None else math.ceil(timeout_s) + 1
    workdir = Path(tempfile.mkdtemp(prefix="preflab-sbx-"))
    uid_lock = None
    guard_r = guard_w = -1
    try:
        if python_guard:  # the guard's report: set-up failure or success, then every refused call
            guard_r, guard_w = os.pipe2(os.O_CLOEXEC)
        _write_files(workdir, code, files or {})
        uid = gid = None
        if os.geteuid() == 0:
            uid, uid_lock = _host.allocate_uid()
            gid = uid
            _host.chown_tree(workdir, uid, gid)
        config = {
            "parent_pid": os.getpid(),
            "uid": uid,
            "gid": gid,
            "workdir": str(workdir),
            "block_network": block_network,
            "max_processes": int(max_processes),
            "max_output_bytes": max_output_bytes,
            "limits": {"cpu": cpu_limit, "as": int(memory_mb) << 20, "fsize": int(max_file_mb) << 20, "nofile": 256},
            "hidden": _host.hidden_folders(exe, [str(workdir)]) if uid is not None else {},
            "readable": None if uid is not None else _host.readable_folders(exe),
            "argv": [exe, "-I", "-B", *(("-c", _guard.bootstrap(guard_w)) if python_guard else ("main.py",))],
            "env": _child_env(exe, workdir, env or {}),
        }
        fds = (*pass_fds, guard_w) if python_guard else tuple(pass_fds)
        result = _execute(config, stdin, timeout_s, max_output_bytes, cpu_limit, fds, guard_r)
        if uid is None:
            fs = result.isolation.get("filesystem", "no Landlock")
            landlock = "applied here" if "reads only beneath" in fs else "NOT applied here: " + fs
            ipc = result.isolation.get("ipc", "")
            userns = "applied here" if "user namespace" in ipc else "NOT here: " + ipc
            warnings.warn(NON_ROOT_WARNING.format(landlock=landlock, userns=userns), SandboxWarning, stacklevel=3)
        return result
    finally:
        for fd in (guard_r, guard_w):
            if fd >= 0:
                os.close(fd)
        _remove_tree(workdir)
        if uid_lock is not None:
            uid_lock.unlink(missing_ok=True)


def _remove_tree(path: Path) -> None:
    """Delete the working folder, even where the program removed permissions from its own folders."""
    def retry(func, target, _exc):
        os.chmod(os.path.dirname(target), 0o700)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, 0o700)
        func(target)

    try:
        shutil.rmtree(path, onerror=retry)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def _check_args(timeout_s, cpu_s, memory_mb, max_output_bytes, max_processes, max_file_mb) -> None:
    for name, value, low in (("timeout_s", timeout_s, 0.0), ("memory_mb", memory_mb, 16),
                             ("max_output_bytes", max_output_bytes, 1), ("max_processes", max_processes, 1),
                             ("max_file_mb", max_file_mb, 1)):
        if not isinstance(value, (int, float)) or not value >= low or (name == "timeout_s" and value == 0):
            raise SandboxError(f"{name}={value!r} is invalid: use a number >= {low} (timeout_s > 0).")
    if cpu_s is not None and not cpu_s > 0:
        raise SandboxError(f"cpu_s={cpu_s!r} is invalid: use a positive number of seconds, or None.")


def _write_files(workdir: Path, code: str, files: dict[str, str]) -> None:
    if "main.py" in files:
        raise SandboxError("files may not contain 'main.py': that is where `code` goes.")
    for rel, text in {"main.py": code, **files}.items():
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise SandboxError(f"files key {rel!r} must be a relative path inside the working folder (no '..').")
        target = workdir.joinpath(*p.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def _child_env(exe: str, workdir: Path, extra: dict[str, str]) -> dict[str, str]:
    """PATH, HOME/TMPDIR = the working folder, UTF-8, one BLAS/OpenMP thread (threads count as processes)."""
    env = {
        "PATH": f"{os.path.dirname(exe)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.update({str(k): str(v) for k, v in extra.items()})
    return env


def _execute(config: dict, stdin: str, timeout_s: float, cap: int, cpu_limit: int,
             pass_fds: tuple[int, ...] = (), guard_r: int = -1) -> SandboxResult:
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    with tempfile.TemporaryFile() as stdin_file:
        stdin_file.write(stdin.encode("utf-8"))
        stdin_file.seek(0)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_LAUNCHER), str(status_w), marshal.dumps(config).hex()],
                stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=config["workdir"],
                env=config["env"], start_new_session=True, close_fds=True, pass_fds=(status_w, *pass_fds),
            )
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
    try:
        io = _collect(proc, status_r, start + timeout_s, cap)
    finally:
        left = _stop(proc, config["uid"], _userns_of(io))
        os.close(status_r)
    io["guard"] = _read_guard(guard_r) if guard_r >= 0 else None
    _, wait_status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(wait_status)
    wall = (io["exited_at"] or time.monotonic()) - start
    return _classify(proc.returncode, io, wall, rusage, left, config, cpu_limit)


def _collect(proc: subprocess.Popen, status_r: int, deadline: float, cap: int) -> dict:
    """Read stdout/stderr (each up to `cap` bytes) and the launcher's status until the run ends or a limit hits."""
    sel = selectors.DefaultSelector()
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray()}
    for name, fd in (("stdout", proc.stdout.fileno()), ("stderr", proc.stderr.fileno()), ("status", status_r)):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    try:  # readable when the main process exits (Linux >= 5.3); else poll without reaping
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ, "exit")
    except OSError:
        pidfd = None
    out = {"exited_at": None, "timed_out": False, "overflow": False}
    open_pipes = 3
    try:
        while True:
            now = time.monotonic()
            if out["exited_at"] is None and pidfd is None and _exited(proc.pid):
                out["exited_at"] = now
            if out["exited_at"] is not None and open_pipes == 0:
                break
            end = deadline if out["exited_at"] is None else min(deadline, out["exited_at"] + _GRACE_S)
            if now >= end:
                out["timed_out"] = out["exited_at"] is None
                break
            wait = end - now if pidfd is not None else min(end - now, 0.02)
            for key, _ in sel.select(timeout=wait):
                if key.data == "exit":
                    out["exited_at"] = time.monotonic()
                    sel.unregister(pidfd)
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    open_pipes -= 1
                    continue
                buf = bufs[key.data]
                if key.data == "status":
                    buf += chunk
                else:
                    buf += chunk[: cap + 1 - len(buf)]
                    out["overflow"] = out["overflow"] or len(buf) > cap
            if out["overflow"]:
                break
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    out.update(bufs)
    return out


def _read_guard(fd: int, limit: int = 1 << 16) -> list[str]:
    """The guard's report lines (`_guard`), read once every process of the run is gone (at most `limit` bytes)."""
    os.set_blocking(fd, False)
    data = bytearray()
    while len(data) < limit:
        try:
            chunk = os.read(fd, limit - len(data))
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data).decode("utf-8", errors="replace").splitlines()


def _guard_report(lines: list[str] | None) -> tuple[str | None, str | None, tuple[str, ...]]:
    """(set-up failure, what the guard refuses, refused calls) from its report.

    Only a first line can say whether the guard is in place ("G ...") or failed ("F ...": nothing ran); the program
    runs after that line, so it can add refusals (only to its own cost) but never fake a set-up failure."""
    if not lines:
        return None, None, ()
    if lines[0].startswith("F "):
        return lines[0][2:], None, ()
    if not lines[0].startswith("G "):
        return None, None, ()
    refused: list[str] = []
    for line in lines[1:]:
        if line.startswith("R ") and line[2:] not in refused and len(refused) < 20:
            refused.append(line[2:])
    return None, lines[0][2:], tuple(refused)


def _exited(pid: int) -> bool:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _userns_of(io: dict | None) -> int | None:
    """The run's user namespace (inode), which the launcher reports for non-root callers, else None."""
    for line in bytes((io or {}).get("status", b"")).decode("utf-8", errors="replace").splitlines():
        if line.startswith("U ") and line[2:].strip().isdigit():
            return int(line[2:])
    return None


def _stop(proc: subprocess.Popen, uid: int | None, userns: int | None = None) -> int:
    """Kill the run's process group and every process of its fresh uid (root) or of its user namespace (non-root),
    and wait (bounded) until they are gone; return how many others were alive.

    The main process is not reaped yet (alive or a zombie), so its pid still names our process group."""
    if uid is not None:
        left = len([p for p in _host.processes_of(uid) if p != proc.pid])
    elif userns is not None:
        left = len([p for p in _host.processes_in_userns(userns) if p != proc.pid])
    else:
        left = 0
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _host.kill_uid(uid)
    else:
        _host.kill_group(proc.pid)
        if userns is not None:
            _host.kill_userns(userns)
    for pipe in (proc.stdout, proc.stderr):
        pipe.close()
    return left


def _classify(rc: int, io: dict, wall: float, rusage, left: int, config: dict, cpu_limit: int) -> SandboxResult:
    lines = io["status"].decode("utf-8", errors="replace").splitlines()
    fatal = [ln[2:] for ln in lines if ln.startswith("F ")]
    guard_failed, guarded, refused = _guard_report(io.get("guard"))
    fatal += [guard_failed] if guard_failed else []
    if fatal or rc == 125 and not lines:
        hint = ""
        if any("execve" in f or "CLONE_NEWNS" in f or "mount" in f for f in fatal):
            hint = " Pass python= an interpreter that other users can run (e.g. /usr/bin/python3)."
        detail = "; ".join(fatal) or bytes(io["stderr"]).decode(errors="replace")
        raise SandboxError(f"the sandbox could not be set up: {detail}. Nothing was run.{hint}")
    isolation = dict(ln[2:].split("\t", 1) for ln in lines if ln.startswith("I "))
    if guarded:
        isolation["processes"] = guarded
        if left:  # the guard refuses every way to start a process: these got past it (all were killed)
            refused = (*refused[:19], PAST_THE_GUARD.format(n=left))
    cap = config["max_output_bytes"]
    stdout = bytes(io["stdout"][:cap]).decode("utf-8", errors="replace")
    stderr = bytes(io["stderr"][:cap]).decode("utf-8", errors="replace")
    cpu = rusage.ru_utime + rusage.ru_stime
    last_line = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    hit = []
    if io["timed_out"]:
        hit.append("wall")
    if rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and cpu >= cpu_limit):
        hit.append("cpu")
    if _OUT_OF_MEMORY.match(last_line):
        hit.append("memory")
    if io["overflow"]:
        hit.append("output")
    if "File too large" in last_line:
        hit.append("file_size")
    if _FORK_FAILED.search(stderr) or (config["max_processes"] > 1 and left + 1 >= config["max_processes"]):
        hit.append("processes")
    if io["overflow"]:
        status: Status = "output_limit"
    elif "wall" in hit or "cpu" in hit:
        status = "timeout"
    elif "memory" in hit and rc != 0:
        status = "memory"
    elif rc < 0:
        status = "killed"
    elif refused:
        status = "refused"
    else:
        status = "ok" if rc == 0 else "error"
    return SandboxResult(
        status=status, returncode=rc, stdout=stdout, stderr=stderr, wall_s=wall, cpu_s=cpu,
        truncated=bool(io["overflow"]), limits_hit=tuple(hit),
        processes_left=left, isolation=isolation, sandbox_uid=config["uid"], refused=refused,
    )
