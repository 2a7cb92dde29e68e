"""`preflab eval` says, in one note and without refusing, when a run's saved config holds keys this preflab does not
know (another preflab version wrote it, or a hand edit) and when the preflab version the run recorded is not this
one (preflab.eval.run_files.saved_run_note / note_saved_run); an unchanged run folder gets no such note."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from preflab import __version__
from preflab.cli import main
from preflab.eval.run_files import recorded_version, saved_run_note

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loops"))
from test_best_model import _rows  # noqa: E402

OTHER = "0.0.1-other"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny DPO run (final folder + checkpoint-1) and held-out pairs as a file."""
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    root = tmp_path_factory.mktemp("saved_note")
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows",
                            "output_dir": str(root / "run"), "max_steps": 1, "per_device_train_batch_size": 2,
                            "max_length": 64, "disable_tqdm": True, "save_steps": 1, "report_to": []})
    Trainer(cfg, train_data=_rows(4)).train()
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(2)))
    return root / "run", data


def _edited(run, tmp_path):
    """A copy of the run with one option this preflab has no field for and another preflab version recorded."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text() + "future_option: 3\n")
    summary = json.loads((copy / "summary.json").read_text())
    summary["environment"]["preflab"] = OTHER
    (copy / "summary.json").write_text(json.dumps(summary))
    state = copy / "checkpoint-1" / "trainer_state.json"
    kept = json.loads(state.read_text())
    state.write_text(json.dumps({**kept, "preflab_version": OTHER}))
    return copy


def test_an_unchanged_run_gets_no_note(run):
    folder, _ = run
    assert recorded_version(folder) == (__version__, folder / "summary.json")
    assert recorded_version(folder / "checkpoint-1") == (__version__, folder / "checkpoint-1" / "trainer_state.json")
    assert saved_run_note(folder) is None
    assert saved_run_note(folder / "checkpoint-1") is None


def test_unknown_key_and_other_version_are_named(run, tmp_path):
    copy = _edited(run[0], tmp_path)
    note = saved_run_note(copy)
    assert f"{copy / 'config.yaml'} has option(s) this preflab {__version__} does not know" in note
    assert "future_option" in note and "does not read them: future_option (" in note
    assert f"trained with preflab {OTHER} (recorded in {copy / 'summary.json'}); this is preflab {__version__}" in note
    checkpoint_note = saved_run_note(copy / "checkpoint-1")  # its run's config.yaml, its own trainer_state.json
    assert "future_option" in checkpoint_note
    assert f"preflab {OTHER} (recorded in {copy / 'checkpoint-1' / 'trainer_state.json'})" in checkpoint_note
    yaml.safe_load((copy / "config.yaml").read_text())  # still a config the eval reads


def test_preflab_eval_prints_the_note_once_and_still_evaluates(run, tmp_path, capsys):
    folder, data = run
    assert main(["eval", str(folder), "--data", str(data), "--no-reference", "--out", str(tmp_path / "a.json")]) == 0
    assert "does not know" not in capsys.readouterr().err
    copy = _edited(folder, tmp_path)
    assert main(["eval", str(copy), "--data", str(data), "--no-reference", "--out", str(tmp_path / "b.json")]) == 0
    err = capsys.readouterr().err
    assert err.count(f"preflab: note: {saved_run_note(copy)}") == 1
    first, second = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert first["metrics"] == second["metrics"]  # a note, not a change of what is evaluated
    assert first["per_pair"] == second["per_pair"]
