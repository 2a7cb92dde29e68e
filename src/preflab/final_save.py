"""The final model written into output_dir as one unit: preflab loads a finished save's files or refuses the folder,
never part of a save or a mix of two (user trial 15; atomic-final).

Before, save_pretrained wrote model.safetensors (the adapter, a pipeline's subfolders) straight into output_dir: a
kill (SIGKILL, the OOM killer) during the write left a folder that looked like a model (config.json there, the
weights partial or from an older save). The run folder also holds the logs and checkpoint-* folders and is what
`preflab eval RUN` and from_pretrained read, so the model files stay directly in it; the unit is kept by a marker:

    1. INCOMPLETE_MARKER (`.preflab-final-incomplete`, JSON: when, which process) is written into output_dir and
       fsynced: from now on every preflab loader of the folder refuses it (check_final_model_complete: "final model
       incomplete: ... rerun with resume_from_checkpoint=true").
    2. the save writes into a fresh folder inside output_dir (`.tmp-final-model-*`: the same filesystem); the old
       files are not touched.
    3. publish_staged: each file fsynced, then renamed onto its place (os.replace: atomic), index files
       (`*.index.json`) last so that an index never names a shard not yet in place; stale shards of the old save are
       removed; the folders touched are fsynced.
    4. the marker is removed and output_dir fsynced: the commit point. Only now does the folder load again.

A save that raises (a full disk, a bug) or is killed at any point before 4 leaves the marker: the old files byte
for byte (killed in 2) or a mix of whole old and whole new files (killed in 3), either way refused by the loaders,
never loaded as partial weights. The stage folder is removed when the save raises; one a kill left is removed by
preflab.checkpoint.clean_interrupted_saves at the next start. A rerun with resume_from_checkpoint=true continues
from the last checkpoint and saves the final model again, which removes the marker. A reader that loads while a save
runs (another process, not preflab's own run) may see step 3's mix: the marker is the one sign, read before loading.

save_pretrained removes the stale shards of a previous save in the folder it writes; it writes into the empty
stage now, so publish does that in output_dir: beside each weights file it publishes (`S.safetensors`, its index
`S.safetensors.index.json` or a shard `S-00001-of-00003.safetensors`), the files of the same family S it did not
publish are removed (a sharded save over a single-file one, and the other way round, leaves no mix).
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from preflab.atomic_file import fsync_file, fsync_folder, write_json_file
from preflab.errors import PreflabError

STAGE_PREFIX = ".tmp-final-model-"
INCOMPLETE_MARKER = ".preflab-final-incomplete"  # in output_dir while its final model is being replaced
_WEIGHTS_FAMILY = re.compile(r"(?P<stem>.+?)(?:-\d{5}-of-\d{5}\.safetensors|\.safetensors\.index\.json|\.safetensors)")


@contextmanager
def staged_final_save(output_dir: str | Path) -> Iterator[Path]:
    """Yield an empty folder inside output_dir to save the final model into; published into output_dir when the
    block ends without error (publish_staged), removed in every case. output_dir is marked incomplete
    (INCOMPLETE_MARKER) from before the first byte is written until the last file is in place (the module docstring:
    a save that raises or is killed leaves the mark, and loaders refuse the folder). An OSError naming a file in the
    folder (a full disk while the tokenizer is written) is raised naming that file's place in output_dir, the name
    the user knows."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mark_incomplete(output_dir)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=output_dir))
    try:
        yield stage
        publish_staged(stage, output_dir)
        clear_incomplete(output_dir)
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


def mark_incomplete(output_dir: Path) -> None:
    """Write INCOMPLETE_MARKER into output_dir, fsynced with its folder (durable): a power loss after the first model
    byte is written cannot lose it."""
    write_json_file(Path(output_dir) / INCOMPLETE_MARKER, {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(), "what": "the final model is being saved into this folder; until the save ends, its "
                                    "model files are not one save's"}, durable=True, indent=1)


def clear_incomplete(output_dir: Path) -> None:
    """Remove INCOMPLETE_MARKER (the final save's commit point) and fsync output_dir, so the removal is on disk after
    every file it vouches for."""
    (Path(output_dir) / INCOMPLETE_MARKER).unlink(missing_ok=True)
    fsync_folder(output_dir)


def check_final_model_complete(folder: str | Path) -> None:
    """Refuse a folder whose final model save did not finish (INCOMPLETE_MARKER present): its model files are the
    previous save's or a mix of two saves, each file whole, and must not be loaded as the run's model. Every preflab
    loader of a local model folder calls it (preflab.models.load.check_weights_safe); a folder without the marker,
    or no folder, passes."""
    marker = Path(folder).expanduser() / INCOMPLETE_MARKER
    if not marker.is_file():
        return
    try:
        started = json.loads(marker.read_text()).get("started", "?")
    except (OSError, ValueError, AttributeError):
        started = "?"
    raise PreflabError(
        f"final model incomplete: the final save into {folder} (started {started}) did not finish (it was "
        f"interrupted, or is still being written), so its model files are the previous save's or a mix of two saves ({INCOMPLETE_MARKER} marks it; it is removed only when "
        "a final save finishes). Nothing was loaded. To finish the run, rerun with resume_from_checkpoint=true "
        "(`preflab train CONFIG resume_from_checkpoint=true`): it continues from its last checkpoint and saves the "
        "final model again; a run that saved no checkpoint must be trained again.")
