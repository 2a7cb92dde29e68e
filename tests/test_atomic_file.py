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
