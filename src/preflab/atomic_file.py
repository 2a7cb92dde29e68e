"""Writing a file whole or not at all (the tokenization cache, the reference log-prob cache, a tool box's result
cache, a run's summary.json, eval.json, metric_panels.json, timeline.json, metrics.jsonl cut back at a resume, a
recipe's state, an HTML report). It imports nothing of preflab, so every room can use it."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def current_umask() -> int:
    """The process's umask: the Umask line of /proc/self/status (Linux 4.7+: read without changing it), else by
    setting and restoring it (os.umask has no read-only form; 0o077 meanwhile, so a file another thread makes in
    that instant is private rather than open to all)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, ValueError, IndexError, StopIteration):
        old = os.umask(0o077)
        os.umask(old)
        return old


def plain_file_mode() -> int:
    """0o666 & ~umask: the mode open(path, "w") gives a new file (a run's summary.json has always had it)."""
    return 0o666 & ~current_umask()


def fsync_file(path: str | Path) -> None:
    """Flush a written file's bytes to disk (os.fsync), so that a rename of it is not kept by a power loss while its
    contents are not (ext4 / XFS may write the rename first: an empty file under the final name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: str | Path) -> None:
    """Flush a folder's entries (a file renamed into it) to disk; a filesystem that cannot (some network mounts,
    Windows) is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _then_fsynced(write: Callable[[str], None]) -> Callable[[str], None]:
    """write, then fsync_file of the file it wrote (before write_atomically renames it)."""
    def write_and_fsync(tmp: str) -> None:
        write(tmp)
        fsync_file(tmp)

    return write_and_fsync


def write_atomically(path: Path, write: Callable[[str], None], mode: int | None = None,
                     durable: bool = False) -> None:
    """Fill `path` through write(tmp): tmp is a new empty file beside `path` (tempfile.mkstemp: a name no other
    writer gets, mode 0600; the same folder, so the same filesystem and os.replace is an atomic rename), renamed onto
    `path` once write returns. A reader (another rank, a later run) sees the old file or the new one, never part of
    one; two writers at once each rename a whole file. On any error, a KeyboardInterrupt included, the temp file is
    removed and the error raised; an OSError with an errno (a full disk, a read-only folder) is raised as one naming
    `path` (its filename), whatever file it named: a write to an open file names none, and the temp file's name is
    one the user never sees (summary.json's full disk said only the run folder). path's folder is made first. mode:
    the file's permission bits (os.chmod of tmp before write), for a file others read that a plain open() made
    before (plain_file_mode); None keeps 0600. durable: the temp file is fsynced before the rename and the folder
    after it, so the file also survives a power loss whole (a run's summary.json, eval.json: a rename alone may
    reach the disk before the bytes, leaving an empty file); about 1-10 ms a file on a local disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if durable:
        write = _then_fsynced(write)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        write(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_folder(path.parent)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise


def write_text_file(path: Path, text: str) -> Path:
    """`text` (UTF-8) to `path` whole or not at all (write_atomically), with a plain file's mode: the small files of
    a run folder a plain write_text made before (metric_panels.json, timeline.json, the recipe state, a report)."""
    path = Path(path)
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), mode=plain_file_mode())
    return path


def write_json_file(path: Path, data, durable: bool = False, **dump_options) -> Path:
    """json.dump(data, **dump_options) to `path` whole or not at all (write_atomically; durable: fsynced, see
    there), with a plain file's mode (plain_file_mode: files others read in a run folder, summary.json and eval.json,
    which open() made before)."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, **dump_options)

    write_atomically(path, write, mode=plain_file_mode(), durable=durable)
    return path
