"""Caller-side helpers of the sandbox: a fresh uid per run, paths to expose, and killing what a run left behind."""
from __future__ import annotations

import os
import secrets
import signal
import stat
import sys
import tempfile
from pathlib import Path

# Fresh uids are drawn from a range no distribution allocates (and away from nobody = 65534).
_UID_BASE, _UID_SPAN = 1_900_000_000, 50_000_000
_LOCK_DIR = Path(tempfile.gettempdir()) / "preflab-sandbox-uids"


def allocate_uid() -> tuple[int, Path]:
    """A uid no other preflab sandbox holds right now (lock file created with O_EXCL), and its lock path."""
    _LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    for _ in range(100):
        uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
        lock = _LOCK_DIR / str(uid)
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            continue
        if not processes_of(uid):
            return uid, lock
        lock.unlink(missing_ok=True)
    raise RuntimeError("could not find a free sandbox uid after 100 tries")


def processes_of(uid: int) -> list[int]:
    """Live (not zombie) pids whose effective uid is `uid` (the owner of /proc/<pid>)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid and not _is_zombie(entry):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _is_zombie(pid: str) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")


def kill_uid(uid: int, rounds: int = 50) -> int:
    """SIGKILL every process of `uid` (a fresh sandbox uid only!) until none is left; returns how many were seen.

    Each pid is pinned with a pidfd and its owner re-checked before the signal, so a pid reused by an unrelated
    process between the scan and the kill is never signalled. Repeated because a fork bomb may fork meanwhile
    (RLIMIT_NPROC bounds how many it can make)."""
    assert uid >= _UID_BASE, "kill_uid is only for fresh sandbox uids"
    seen: set[int] = set()
    for _ in range(rounds):
        pids = processes_of(uid)
        if not pids:
            break
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    seen.add(pid)
            except OSError:
                pass
            finally:
                os.close(fd)
    return len(seen)


def _blocked_ancestor(path: str) -> str | None:
    """The outermost proper ancestor of `path` that other users cannot enter (no o+x), or None."""
    parts = Path(path).parts
    for i in range(2, len(parts)):
        p = Path(*parts[:i])
        try:
            st = p.stat()
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH:
            return str(p)
    return None


def hidden_folders(executable: str, extra: list[str]) -> dict[str, list[str]]:
    """{folder the sandbox uid cannot enter: [interpreter trees beneath it to bind back]}.

    The interpreter trees are the real executable's folder, sys.prefix and sys.base_prefix (when the child runs
    this interpreter), plus `extra` (e.g. the working folder)."""
    trees = {os.path.dirname(os.path.realpath(executable))} | {os.path.realpath(p) for p in extra}
    if os.path.realpath(executable) == os.path.realpath(sys.executable):
        trees |= {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    out: dict[str, list[str]] = {}
    for tree in sorted(trees):
        folder = _blocked_ancestor(tree)
        if folder is not None and not any(tree.startswith(t + os.sep) for t in out.get(folder, [])):
            out.setdefault(folder, []).append(tree)
    return out


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
