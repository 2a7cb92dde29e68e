"""Caller-side helpers of the sandbox: a fresh uid per run, paths to expose, and killing what a run left behind."""
from __future__ import annotations

import fcntl
import os
import secrets
import select
import signal
import stat
import sys
import tempfile
import time
from pathlib import Path

# Folders a non-root caller's sandbox may read beneath (Landlock), besides the interpreter and the working folder.
SYSTEM_READABLE = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/dev", "/proc",
                   "/sys/devices/system/cpu")
NS_GET_PARENT = 0xB702  # ioctl on a namespace fd: the parent user namespace (linux/nsfs.h)
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
    return _live_pids(lambda pid: os.stat(f"/proc/{pid}").st_uid == uid)


def _live_pids(ours) -> list[int]:
    """Live (not zombie) pids for which ours(pid) holds; a process that exits while it is looked at is left out."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if ours(int(entry)) and not _is_zombie(entry):
                    pids.append(int(entry))
            except (OSError, ValueError, IndexError):  # gone meanwhile: no /proc entry, or an empty stat
                pass
    return pids


def _is_zombie(pid: str) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")


def kill_uid(uid: int, timeout_s: float = 2.0) -> int:
    """SIGKILL every process of `uid` (a fresh sandbox uid only!) and wait until none is left (at most
    `timeout_s`); returns how many were seen.

    Each pid is pinned with a pidfd and its owner re-checked before the signal, so a pid reused by an unrelated
    process between the scan and the kill is never signalled. Repeated because a fork bomb may fork meanwhile
    (RLIMIT_NPROC bounds how many it can make)."""
    assert uid >= _UID_BASE, "kill_uid is only for fresh sandbox uids"
    return _kill_until_gone(lambda: processes_of(uid), lambda pid: os.stat(f"/proc/{pid}").st_uid == uid, timeout_s)


def kill_group(pgid: int, timeout_s: float = 2.0) -> int:
    """SIGKILL every live process of process group `pgid` and wait until none is left (at most `timeout_s`)."""
    return _kill_until_gone(lambda: _group_members(pgid), lambda pid: _pgid_of(pid) == pgid, timeout_s)


def kill_userns(userns: int, timeout_s: float = 2.0) -> int:
    """SIGKILL every process of the caller's uid inside user namespace `userns` (an inode) or one nested in it, and
    wait until none is left (at most `timeout_s`). A process cannot leave a user namespace, so setsid() or a new
    process group does not hide it."""
    return _kill_until_gone(lambda: processes_in_userns(userns), lambda pid: _in_userns(pid, userns), timeout_s)


def processes_in_userns(userns: int) -> list[int]:
    """Live pids of the caller's uid in user namespace `userns` or a namespace nested in it."""
    me = os.getuid()
    return _live_pids(lambda pid: os.stat(f"/proc/{pid}").st_uid == me and _in_userns(pid, userns))


def _in_userns(pid: int, userns: int, max_depth: int = 33) -> bool:
    """Whether `pid` lives in user namespace `userns` or below it (walks parents with NS_GET_PARENT)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
    except OSError:
        return False
    try:
        for _ in range(max_depth):  # Linux nests user namespaces at most 32 deep
            if os.fstat(fd).st_ino == userns:
                return True
            try:
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:  # the initial namespace (or one outside our view): not below `userns`
                return False
            os.close(fd)
            fd = parent
        return False
    finally:
        os.close(fd)


def _kill_until_gone(scan, still_ours, timeout_s: float) -> int:
    """Kill what `scan()` lists, wait on pidfds until those have exited, and rescan, until the scan is empty."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        pids = scan()
        if not pids or time.monotonic() >= deadline:
            return len(seen)
        fds = []
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if still_ours(pid):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    seen.add(pid)
            except OSError:
                pass
            fds.append(fd)
        if not fds:  # nothing could be pinned (all exited meanwhile?): rescan after a short pause
            time.sleep(0.01)
            continue
        try:  # a pidfd is readable once its process has exited
            pending = list(fds)
            while pending and time.monotonic() < deadline:
                ready, _, _ = select.select(pending, [], [], max(0.0, deadline - time.monotonic()))
                pending = [fd for fd in pending if fd not in ready]
        finally:
            for fd in fds:
                os.close(fd)


def _pgid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[2])


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) pids in process group `pgid`."""
    return _live_pids(lambda pid: _pgid_of(pid) == pgid)


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


def interpreter_trees(executable: str) -> set[str]:
    """The real executable's folder, and sys.prefix and sys.base_prefix when the child runs this interpreter."""
    trees = {os.path.dirname(os.path.realpath(executable))}
    if os.path.realpath(executable) == os.path.realpath(sys.executable):
        trees |= {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    else:
        trees.add(os.path.dirname(os.path.dirname(os.path.realpath(executable))))  # <prefix>/bin/python
    return trees


def readable_folders(executable: str) -> list[str]:
    """Folders a non-root caller's sandbox may read beneath (with the working folder): system folders and the
    interpreter's trees (a venv in the caller's home is readable, the rest of the home is not)."""
    return sorted(set(SYSTEM_READABLE) | interpreter_trees(executable))


def hidden_folders(executable: str, extra: list[str]) -> dict[str, list[str]]:
    """{folder the sandbox uid cannot enter: [interpreter trees beneath it to bind back]}.

    The interpreter trees are those of `interpreter_trees`, plus `extra` (e.g. the working folder)."""
    trees = interpreter_trees(executable) | {os.path.realpath(p) for p in extra}
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
