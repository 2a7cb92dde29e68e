"""User trial 5 (today's features used together): each test reproduces a finding and asserts the fixed value."""
from pathlib import Path


def test_a_gone_absolute_training_path_is_said_moved_not_a_hub_name(tmp_path, monkeypatch):
    """The overlap check's reason when the run's training data is gone: an absolute dataset_name (as written, or
    launch.json's record of a relative one) was moved or deleted, never 'a hub dataset name'; a relative name that
    is no path here keeps the hub / launch-directory reason."""
    from preflab.eval.run import run_training_rows

    def read(name, split):
        raise AssertionError("nothing is read for a path that does not exist")

    gone = run_training_rows({"dataset_name": str(tmp_path / "data/train.jsonl")}, read)
    assert gone.rows is None or not gone.rows
    assert gone.why == (f"the run's training data {tmp_path / 'data/train.jsonl'} (dataset_name, split train) is gone "
                        "(an absolute path: the file or folder was moved or deleted since the run), and eval downloads "
                        "no training data, so whether the eval rows were trained on was not checked")
    monkeypatch.chdir(tmp_path)
    hub = run_training_rows({"dataset_name": "org/pairs"}, read)
    assert "is no file or folder here (a hub dataset name" in hub.why and "moved or deleted" not in hub.why
    assert not Path("org/pairs").exists()
