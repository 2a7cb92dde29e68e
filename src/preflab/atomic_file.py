"""Writing a file whole or not at all (the tokenization cache, the reference log-prob cache, a tool box's result
cache). It imports nothing of preflab, so every room can use it."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Fill `path` through write(tmp): tmp is a new empty file beside `path` (tempfile.mkstemp: a name no other
    writer gets, mode 0600; the same folder, so the same filesystem and os.replace is an atomic rename), renamed onto
    `path` once write returns. A reader (another rank, a later run) sees the old file or the new one, never part of
    one; two writers at once each rename a whole file. On any error, a KeyboardInterrupt included, the temp file is
    removed and the error raised. path's folder is made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
