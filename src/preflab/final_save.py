"""The final model written into output_dir file by file whole or not at all (user trial 15).

Before, save_pretrained wrote model.safetensors (the adapter, a pipeline's subfolders) straight into output_dir: a
kill (SIGKILL, the OOM killer) during the write left a truncated model.safetensors there, and only a missing
summary.json told. staged_final_save hands the save a fresh folder inside output_dir (`.tmp-final-model-*`, the
same filesystem), and when the save returns publishes each file it wrote: fsynced, then renamed onto its place in
output_dir (os.replace: atomic), index files (`*.index.json`) last so that an index never names a shard not yet in
place; the folders touched are fsynced after. A reader sees each file old or new, never part of one. A save that
raises leaves output_dir as it was and its folder removed; one killed leaves the folder, which
preflab.checkpoint.clean_interrupted_saves removes at the next start. A kill while publishing can leave some files
new and some old (each whole): summary.json, written after, is still the sign that the model is complete.

save_pretrained removes the stale shards of a previous save in the folder it writes; it writes into the empty
stage now, so publish does that in output_dir: beside each weights file it publishes (`S.safetensors`, its index
`S.safetensors.index.json` or a shard `S-00001-of-00003.safetensors`), the files of the same family S it did not
publish are removed (a sharded save over a single-file one, and the other way round, leaves no mix).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from preflab.atomic_file import fsync_file, fsync_folder

STAGE_PREFIX = ".tmp-final-model-"
_WEIGHTS_FAMILY = re.compile(r"(?P<stem>.+?)(?:-\d{5}-of-\d{5}\.safetensors|\.safetensors\.index\.json|\.safetensors)")


@contextmanager
def staged_final_save(output_dir: str | Path) -> Iterator[Path]:
    """Yield an empty folder inside output_dir to save the final model into; published into output_dir when the
    block ends without error (publish_staged), removed in every case. An OSError naming a file in the folder (a full
    disk while the tokenizer is written) is raised naming that file's place in output_dir, the name the user knows."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=output_dir))
    try:
        yield stage
        publish_staged(stage, output_dir)
    except OSError as err:
        named = Path(err.filename) if isinstance(err.filename, str) else None
        if named is None or err.errno is None or not named.is_relative_to(stage):
            raise
        raise OSError(err.errno, err.strerror or os.strerror(err.errno),
                      str(output_dir / named.relative_to(stage))) from err
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish_staged(stage: Path, output_dir: Path) -> list[Path]:
    """Move every file under `stage` to the same relative path under output_dir (fsync, os.replace), index files
    last, then fsync the folders touched and remove stale files of each published weights family; returns the
    published paths in the order they were moved."""
    files = sorted((p for p in stage.rglob("*") if p.is_file()), key=lambda p: (p.name.endswith(".index.json"), p))
    published = []
    for src in files:
        dst = output_dir / src.relative_to(stage)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fsync_file(src)
        os.replace(src, dst)
        published.append(dst)
    folders = {p.parent for p in published}
    for folder in folders:
        _remove_stale_weights(folder, {p.name for p in published if p.parent == folder})
        fsync_folder(folder)
    return published


def _remove_stale_weights(folder: Path, names: set[str]) -> None:
    """In `folder`, remove each file of a weights family a published file belongs to (same stem S: S.safetensors,
    S.safetensors.index.json, S-0000i-of-0000n.safetensors) that was not published now."""
    stems = {m.group("stem") for m in map(_WEIGHTS_FAMILY.fullmatch, names) if m}
    for path in folder.iterdir():
        match = _WEIGHTS_FAMILY.fullmatch(path.name)
        if match and match.group("stem") in stems and path.name not in names and path.is_file():
            path.unlink()
