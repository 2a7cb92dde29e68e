"""`preflab eval --task vlm` counts the evaluated vision pairs the run trained on (eval.json overlap_with_training):
a shared prompt is the same prompt text with the same images, compared by pixels (data.vision.vision_prompt_key: a
copy of an image under another file name is the same image; the same text over another image is another prompt); a
training pair is that plus the same chosen and rejected (vision_row_key). The run folder is written directly (the
tiny policy saved with its processor and config.yaml, as a finished run holds them): no step is trained."""
import json
import shutil
from pathlib import Path

import pytest

from preflab.config import load_config
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

DATA = Path("examples/vlm/data")
ROWS = [json.loads(line) for line in (DATA / "pairs.jsonl").read_text().splitlines()]


def _rows(rows, folder: Path, rename: dict | None = None) -> list[dict]:
    """`rows` with their images copied into `folder` (under `rename`'s names where given)."""
    out = []
    for row in rows:
        images = []
        for name in row["images"]:
            target = folder / (rename or {}).get(name, name)
            shutil.copy(DATA / name, target)
            images.append(target.name)
        out.append({**row, "images": images})
    return out


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    """A task: vlm run folder trained on ROWS[:4] (its starting tiny policy saved as the final weights)."""
    from preflab.models.vlm import load_vlm

    root = tmp_path_factory.mktemp("vlm_overlap")
    (root / "train").mkdir()
    train = write_jsonl(root / "train" / "train.jsonl", _rows(ROWS[:4], root / "train"))
    run = root / "run"
    cfg = load_config("examples/vlm/dpo.yaml", [f"output_dir={run}", f"dataset_name={train}"])
    policy, _, processor = load_vlm(cfg)
    policy.save_pretrained(run, safe_serialization=True)
    processor.save_pretrained(run)
    cfg.save(run / "config.yaml")
    return run, train


def test_planted_training_pairs_are_counted_by_prompt_text_and_image_pixels(vlm_run, tmp_path, capsys):
    from preflab.loops.vlm_eval import eval_task
    from preflab.cli import build_parser

    run, train = vlm_run
    planted = [ROWS[0],                                                        # a training pair
               ROWS[2],                                                        # under another file name below
               {**ROWS[1], "chosen": "The shape is a red circle."},            # a training prompt, another answer
               {**ROWS[3], "images": ["blue_circle.png"]}]                     # the training text, another image
    evals = write_jsonl(tmp_path / "eval.jsonl", _rows(planted, tmp_path, {"green_square.png": "copy.png"}) +
                   _rows(ROWS[4:6], tmp_path))
    out = tmp_path / "eval.json"
    args = build_parser().parse_args(["eval", str(run), "--task", "vlm", "--data", evals, "--out", str(out)])
    assert eval_task(args) == 0
    result = json.loads(out.read_text())
    assert result["num_pairs"] == 6
    assert result["overlap_with_training"] == {"prompts": 3, "pairs": 2, "rows": 6, "checked_against": train,
                                               "split": "train", "training_pairs": 4}
    said = [n for n in result["notes"] if "trained on" in n]
    assert len(said) == 1 and said[0].startswith(
        "3 of 6 eval pairs (50.0%) have a prompt (text and image pixels) the run trained on, and 2 (33.3%) are "
        "training pairs (same prompt text, image pixels, chosen and rejected)")
    assert result["missing"] == {}
    assert "note: 3 of 6 eval pairs (50.0%)" in capsys.readouterr().out


def test_disjoint_pairs_count_zero_and_an_unreadable_training_set_says_why(vlm_run, tmp_path):
    from preflab.loops.vlm_eval import evaluate_vlm_run

    run, train = vlm_run
    evals = write_jsonl(tmp_path / "eval.jsonl", _rows(ROWS[4:], tmp_path))
    result = evaluate_vlm_run(str(run), evals)
    assert result["overlap_with_training"] == {"prompts": 0, "pairs": 0, "rows": 4, "checked_against": train,
                                               "split": "train", "training_pairs": 4}
    assert not any("trained on" in n for n in result["notes"]) and result["missing"] == {}

    moved = tmp_path / "moved-run"
    shutil.copytree(run, moved)
    config = (moved / "config.yaml").read_text().replace(train, str(tmp_path / "gone.jsonl"))
    (moved / "config.yaml").write_text(config)
    result = evaluate_vlm_run(str(moved), evals)
    assert "overlap_with_training" not in result
    assert result["missing"]["overlap_with_training"].startswith(
        f"the run's training data {tmp_path / 'gone.jsonl'} (dataset_name, split train) is gone (an absolute path: the file or "
        "folder was moved or deleted since the run)")


def test_data_config_reads_that_configuration(vlm_run, tmp_path):
    """`--task vlm --data FOLDER --data-config NAME` (a folder whose README.md declares configurations): the pairs
    scored are that configuration's: 'b' holds two training pairs, 'a' two held-out ones."""
    from preflab.cli import build_parser
    from preflab.loops.vlm_eval import eval_task

    run, _ = vlm_run
    folder = tmp_path / "prefs"
    for config, rows in (("a", ROWS[4:6]), ("b", ROWS[:2])):
        (folder / config).mkdir(parents=True)
        write_jsonl(folder / config / "test.jsonl", _rows(rows, folder / config))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: a\n  data_files:\n  - split: test\n    path: "
                                      "a/test.jsonl\n- config_name: b\n  data_files:\n  - split: test\n    path: "
                                      "b/test.jsonl\n---\n")
    for config, shared in (("a", 0), ("b", 2)):
        out = tmp_path / f"{config}.json"
        args = build_parser().parse_args(["eval", str(run), "--task", "vlm", "--data", str(folder), "--data-config",
                                          config, "--out", str(out)])
        assert eval_task(args) == 0
        result = json.loads(out.read_text())
        assert (result["data"], result["data_config"], result["split"]) == (str(folder), config, "test")
        assert result["num_pairs"] == 2 and result["overlap_with_training"]["pairs"] == shared


def test_an_empty_split_of_the_eval_data_is_named_by_data_as_the_text_eval_names_it(vlm_run, tmp_path, capsys):
    """It said "dataset_name='FOLDER' (FOLDER) is empty: it holds no rows. Fill it, or point dataset_name at data
    with rows.": the option of the run config the eval builds, not the --data the user gave, and neither the split
    nor its file. Now the text eval's message (tests/data/test_empty_split_names.py), word for word."""
    from preflab.cli import main

    run, _ = vlm_run
    folder = tmp_path / "prefs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", _rows(ROWS[:2], folder))
    (folder / "test.jsonl").write_text("\n")  # read by default: the folder has a split 'test'
    assert main(["eval", str(run), "--task", "vlm", "--data", str(folder), "--out", str(tmp_path / "e.json")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"preflab: error: --data {folder} is empty: its split 'test' (file {folder / 'test.jsonl'}) holds no rows "
        "(1 blank lines). Fill that file, or give --data a source with rows (or --split another split of it).")
