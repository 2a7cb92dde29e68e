"""preflab.atomic_file.write_atomically: the file is the old one or the whole new one, and no temp file is left."""
import json
from pathlib import Path

import pytest

from preflab.atomic_file import write_atomically


def test_a_write_replaces_the_file_whole_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "cache.json"
    write_atomically(path, lambda tmp: open(tmp, "w").write(json.dumps({"a": 1})))
    assert json.loads(path.read_text()) == {"a": 1}
    write_atomically(path, lambda tmp: open(tmp, "w").write(json.dumps({"a": 2})))
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["cache.json"]


def test_a_write_that_fails_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text("old")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt  # a kill mid-write: BaseException, not only Exception

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.json"]


def test_the_temp_file_is_a_new_file_beside_the_target(tmp_path):
    """Beside `path` (the same folder, so the same filesystem: os.replace is an atomic rename there, and never a copy
    across filesystems), named after it, empty when write() gets it."""
    path = tmp_path / "sub" / "cache.json"
    seen = []

    def write(tmp):
        seen.append((Path(tmp), Path(tmp).read_text()))
        Path(tmp).write_text("new")

    write_atomically(path, write)
    (tmp, before), = seen
    assert tmp.parent == path.parent and tmp.name.startswith("cache.json") and tmp.name.endswith(".tmp")
    assert before == "" and path.read_text() == "new" and not tmp.exists()


class _Interrupting:
    """A summary value whose str() (json's default=str) raises KeyboardInterrupt: a Ctrl-C part way through the
    write, after the keys before it reached the file."""

    def __str__(self):
        raise KeyboardInterrupt


def test_a_failed_summary_write_keeps_the_old_summary_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """runlog.write_summary wrote a fixed summary.json.tmp and left it behind when the write or the rename failed;
    it now writes through write_atomically: the old summary.json's text stays and no temp file is left, whether the
    write is interrupted part way or the rename fails (a disk error)."""
    import os

    from preflab import runlog

    old = runlog.write_summary(tmp_path, {"step": 1}).read_text()
    assert json.loads(old) == {"step": 1}
    with pytest.raises(KeyboardInterrupt):
        runlog.write_summary(tmp_path, {"step": 2, "later": _Interrupting()})
    assert (tmp_path / "summary.json").read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]

    def disk_error(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", disk_error)
    with pytest.raises(OSError, match="Input/output error"):
        runlog.write_summary(tmp_path, {"step": 3})
    monkeypatch.undo()
    assert (tmp_path / "summary.json").read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    runlog.write_summary(tmp_path, {"step": 4, "path": Path("x")})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"step": 4, "path": "x"}  # default=str, as before


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_a_summary_has_a_plain_files_mode_under_the_umask_not_mkstemps_0600(tmp_path, umask):
    """mkstemp makes its file 0600; summary.json was made by a plain open() (0o666 & ~umask, e.g. 0644), which others
    reading the run folder rely on: a new summary.json, one rewritten over an old one, and eval.json have a plain
    file's mode."""
    import os
    import stat

    from preflab import runlog
    from preflab.atomic_file import current_umask
    from preflab.eval.run import write_json

    before = os.umask(umask)
    try:
        assert current_umask() == umask
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        run = tmp_path / "run"
        run.mkdir()
        first = stat.S_IMODE(runlog.write_summary(run, {"step": 1}).stat().st_mode)
        second = stat.S_IMODE(runlog.write_summary(run, {"step": 2}).stat().st_mode)
        evaluated = stat.S_IMODE(write_json(tmp_path / "ev" / "eval.json", {"a": 1}).stat().st_mode)
    finally:
        os.umask(before)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == 0o666 & ~umask
    assert first == second == evaluated == plain


def test_a_failed_eval_json_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """eval.json (eval.run.write_json) had the same fixed eval.json.tmp, left behind by a failed rename."""
    import os

    from preflab.eval.run import write_json

    path = write_json(tmp_path / "eval.json", {"a": 1})
    old = path.read_text()
    assert json.loads(old) == {"a": 1} and old == json.dumps({"a": 1}, indent=1)   # the format it always had

    def disk_error(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_error)
    from preflab.errors import PreflabError

    with pytest.raises(PreflabError, match=f"could not write {path}: No space left"):  # named (trial 15)
        write_json(path, {"a": 2})
    monkeypatch.undo()
    assert path.read_text() == old and sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
