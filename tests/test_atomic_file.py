"""preflab.atomic_file.write_atomically: the file is the old one or the whole new one, and no temp file is left."""
import json

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
