"""launch.json's rule (preflab.launch_paths.resolve_saved_paths) where two readings compete (mutation-mx round): the
run's own file wins over a file of the same name in the reading directory, and a record is read only for the value it
recorded."""
import pytest

from preflab.launch_paths import launch_record, resolve_saved_paths


def _tree(root, *files):
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("")


def test_the_runs_own_file_wins_over_one_of_that_name_here(tmp_path, monkeypatch):
    start, here = tmp_path / "start", tmp_path / "here"
    _tree(start, "data/t.jsonl")
    _tree(here, "data/t.jsonl")
    record = launch_record({"dataset_name": "data/t.jsonl"}, str(start))
    monkeypatch.chdir(here)
    got = resolve_saved_paths({"dataset_name": "data/t.jsonl"}, record, note=pytest.fail)  # no note: nothing moved
    assert got["dataset_name"] == str(start / "data/t.jsonl")


def test_a_value_changed_since_the_record_is_read_as_written(tmp_path, monkeypatch):
    """The record holds data/t.jsonl; a config that now says data/u.jsonl reads data/u.jsonl, not the recorded file."""
    start = tmp_path / "start"
    _tree(start, "data/t.jsonl", "data/u.jsonl")
    record = launch_record({"dataset_name": "data/t.jsonl"}, str(start))
    monkeypatch.chdir(start)
    got = resolve_saved_paths({"dataset_name": "data/u.jsonl"}, record, note=pytest.fail)
    assert got["dataset_name"] == "data/u.jsonl"
