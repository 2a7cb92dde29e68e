"""Relative paths in a run's saved config, read from another directory (preflab.launch_paths): a run trained in
directory A with `model_name_or_path: models/base` and `dataset_name: data/train.jsonl` is evaluated and resumed
from directory B. Before, `preflab eval A/outputs/run` from B stopped with "the reference model_name_or_path
'models/base' is not a directory here", skipped the overlap check ("no file or folder here"), and a resume naming
the same files from B (`../A/data/train.jsonl`) was refused as a change of model and data."""
import json
import shutil

import pytest
import torch
import yaml

from preflab.cli import main
from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.launch_paths import launch_record, resolve_saved_paths, same_path
from preflab.loops.offline import Trainer
from preflab.models.run_config import run_config
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest
from launch_dirs import assert_resumed_equals_the_run, trained_in_a

TRAIN = [{"prompt": f"question {i} ?", "chosen": f" answer {i}", "rejected": f" wrong {i}"} for i in range(8)]
HELD = TRAIN[:2] + [{"prompt": "new question ?", "chosen": " new answer", "rejected": " no"}]


def _options(output_dir, **kw):
    return {"model_name_or_path": "models/base", "dataset_name": "data/train.jsonl", "output_dir": output_dir,
            "max_steps": 2, "save_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
            "max_length": 64, "disable_tqdm": True, "use_cpu": True, "seed": 3, "report_to": "none", **kw}


def _train(options):
    torch.set_num_threads(1)
    return Trainer(config_from_dict(options)).train()


@pytest.fixture(scope="module")
def started_in_a(tmp_path_factory):
    """(A, B): a two-step DPO run trained with relative paths from A (a checkpoint at step 1), and another
    directory B beside it."""
    def write_files(a, tok):
        write_jsonl(a / "data" / "train.jsonl", TRAIN)
        write_jsonl(a / "data" / "heldout.jsonl", HELD)

    return trained_in_a(tmp_path_factory.mktemp("launch"), write_files, lambda: _train(_options("outputs/run")))


def test_the_saved_config_keeps_the_users_values_and_launch_json_their_absolute_paths(started_in_a, monkeypatch):
    a, b = started_in_a
    run = a / "outputs" / "run"
    text = (run / "config.yaml").read_text()
    assert text.startswith(f"# started in {a}: relative paths below are relative to it")
    saved = yaml.safe_load(text)
    assert (saved["model_name_or_path"], saved["dataset_name"]) == ("models/base", "data/train.jsonl")
    assert json.loads((run / "launch.json").read_text()) == {"launch_dir": str(a), "local_paths": {
        "model_name_or_path": {"value": "models/base", "path": str(a / "models" / "base")},
        "dataset_name": {"value": "data/train.jsonl", "path": str(a / "data" / "train.jsonl")}}}
    monkeypatch.chdir(b)
    for folder in (run, run / "checkpoint-1"):  # a checkpoint reads its run's config.yaml
        cfg = run_config(folder)
        assert (cfg["model_name_or_path"], cfg["dataset_name"]) == (str(a / "models/base"),
                                                                     str(a / "data/train.jsonl"))
    moved = b / "moved-checkpoint"  # out of its run: the copy in trainer_state.json, with its launch record
    shutil.copytree(run / "checkpoint-1", moved)
    assert run_config(moved)["dataset_name"] == str(a / "data/train.jsonl")


def test_preflab_eval_from_another_directory_equals_eval_from_where_the_run_started(started_in_a, monkeypatch,
                                                                                   capsys):
    """From B: the reference is the run's model_name_or_path (A/models/base), the overlap check reads its training
    rows; eval.json's metrics, reference and overlap equal those of the same eval run from A."""
    a, b = started_in_a
    results = {}
    for where, run, data in ((a, "outputs/run", "data/heldout.jsonl"),
                             (b, "../A/outputs/run", "../A/data/heldout.jsonl")):
        monkeypatch.chdir(where)
        out = where / "eval.json"
        assert main(["eval", run, "--data", data, "--out", str(out)]) == 0, capsys.readouterr().err
        results[where] = json.loads(out.read_text())
    from_a, from_b = results[a], results[b]
    assert from_b["reference"] == str(a / "models" / "base") and from_a["reference"] == str(a / "models" / "base")
    assert from_b["metrics"] == from_a["metrics"] and "reference_ranking_accuracy" in from_b["metrics"]
    assert from_b["overlap_with_training"] == from_a["overlap_with_training"]
    assert from_b["overlap_with_training"]["pairs"] == 2 and "overlap_with_training" not in from_b["missing"]


def test_a_resume_from_another_directory_naming_the_same_files_is_no_config_change(started_in_a, monkeypatch,
                                                                                  tmp_path):
    """From B, resuming A's checkpoint-1 with the model and data named from B (../A/...) passes the config check
    and continues to the weights of the uninterrupted run; a different data file is still a meaning change."""
    a, b = started_in_a
    monkeypatch.chdir(b)
    other = write_jsonl(b / "other.jsonl", TRAIN[::-1])
    resumed = _options(str(tmp_path / "resumed"), model_name_or_path="../A/models/base",
                       dataset_name="../A/data/train.jsonl",
                       resume_from_checkpoint=str(a / "outputs/run/checkpoint-1"))
    _train(resumed)
    assert_resumed_equals_the_run(a, tmp_path / "resumed")
    with pytest.raises(ConfigError, match=r"dataset_name \('data/train.jsonl' -> '.*other.jsonl'\)"):
        _train({**resumed, "dataset_name": other, "output_dir": str(tmp_path / "other")})


def test_a_hub_name_is_never_recorded_or_rewritten(tmp_path, monkeypatch):
    """A value that names no existing path where the run starts (a hub name) is not recorded: read back it stays
    the hub name, even where a folder of that name exists in the reading directory."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text("")
    options = {"model_name_or_path": "org/model", "dataset_name": "data/x.jsonl",
               "ref_model_name_or_path": "builtin:tiny-llama", "eval_dataset_name": str(tmp_path / "data/x.jsonl")}
    record = launch_record(options, str(tmp_path))
    assert record["local_paths"] == {"dataset_name": {"value": "data/x.jsonl", "path": str(tmp_path / "data/x.jsonl")}}
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    got = resolve_saved_paths(options, record, note=pytest.fail)
    assert got == {**options, "dataset_name": str(tmp_path / "data/x.jsonl")}
    assert resolve_saved_paths(options, None) is options  # a run without launch.json: as written


def test_a_recorded_path_that_is_gone_is_said_naming_the_option(tmp_path, monkeypatch):
    """The run's file is gone: the file of that name under the current directory is read, said; neither there nor
    here: the recorded absolute path (never a hub lookup), said, naming the option."""
    start, here = tmp_path / "start", tmp_path / "here"
    (start / "data").mkdir(parents=True)
    (start / "data" / "t.jsonl").write_text("")
    record = launch_record({"dataset_name": "data/t.jsonl"}, str(start))
    (start / "data" / "t.jsonl").unlink()
    (here / "data").mkdir(parents=True)
    monkeypatch.chdir(here)
    notes = []
    got = resolve_saved_paths({"dataset_name": "data/t.jsonl"}, record, "RUN/config.yaml", notes.append)
    assert got["dataset_name"] == str(start / "data/t.jsonl")
    assert notes == [f"RUN/config.yaml: dataset_name='data/t.jsonl' exists neither where the run was started "
                     f"({start / 'data/t.jsonl'}) nor relative to the current directory ({here / 'data/t.jsonl'}); "
                     f"it is read as {start / 'data/t.jsonl'} (a moved or deleted file), not looked up on the hub"]
    (here / "data" / "t.jsonl").write_text("")
    notes.clear()
    got = resolve_saved_paths({"dataset_name": "data/t.jsonl"}, record, "RUN/config.yaml", notes.append)
    assert got["dataset_name"] == str(here / "data/t.jsonl")
    assert len(notes) == 1 and notes[0].startswith("RUN/config.yaml: dataset_name='data/t.jsonl' was ") \
        and f"read {here / 'data/t.jsonl'} (relative to the current directory) instead" in notes[0]


def test_same_path_compares_where_each_side_points(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.jsonl").write_text("")
    record = launch_record({"dataset_name": "data/t.jsonl"}, str(tmp_path))
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    assert same_path("dataset_name", "data/t.jsonl", "../data/t.jsonl", record)
    assert same_path("dataset_name", "data/t.jsonl", str(tmp_path / "data/t.jsonl"), record)
    assert not same_path("dataset_name", "data/t.jsonl", "data/t.jsonl", record)  # B has no data/t.jsonl
    assert not same_path("dataset_name", "data/t.jsonl", "../data/t.jsonl", None)  # no record: text compared
    assert not same_path("output_dir", "data/t.jsonl", "../data/t.jsonl", record)  # not a path option read back
