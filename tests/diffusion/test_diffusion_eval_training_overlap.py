"""`preflab eval --task diffusion` counts the evaluated image pairs the run trained on (eval.json
overlap_with_training): a shared prompt is the same caption; a training pair is the same captions and the same two
images by pixels, in order (diffusion.data.image_pair_key, the rule of the run's repeated-pair count: a copy of an
image under another file name is the same image, the pair's images swapped is another pair). The run folder is
written directly (the tiny pipeline saved with config.yaml, as a finished run holds them): no step is trained."""
import json
import shutil
from pathlib import Path

import pytest
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

pytest.importorskip("diffusers")

DATA = Path("examples/diffusion/data")
ROWS = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()]


def _row(row: dict, folder: Path | None = None, **changes) -> dict:
    """`row` with absolute image paths (copied into `folder` under new names when given) and `changes`."""
    out = dict(row)
    for side in ("chosen_image", "rejected_image"):
        source = (DATA / row[side]).resolve()
        if folder is not None:
            shutil.copy(source, folder / f"copy-{source.name}")
            source = folder / f"copy-{source.name}"
        out[side] = str(source)
    return {**out, **changes}


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    """A task: diffusion run folder trained on ROWS[:4] (the tiny starting pipeline saved as the final one)."""
    from preflab.config import load_config
    from preflab.diffusion.pipeline import load_pipeline

    root = tmp_path_factory.mktemp("diffusion_overlap")
    train = write_jsonl(root / "train.jsonl", [_row(r) for r in ROWS[:4]])
    run = root / "run"
    cfg = load_config("examples/diffusion/diffusion_dpo.yaml", [f"output_dir={run}", f"dataset_name={train}",
                                                                "eval_dataset_name=null"])
    load_pipeline(cfg.model_name_or_path, seed=cfg.seed).save_pretrained(run, safe_serialization=True)
    cfg.save(run / "config.yaml")
    return run, train


def test_planted_training_pairs_are_counted_by_caption_and_pixels(diffusion_run, tmp_path):
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    run, train = diffusion_run
    swapped = _row(ROWS[2], chosen_image=_row(ROWS[2])["rejected_image"], rejected_image=_row(ROWS[2])["chosen_image"],
                   chosen_score=ROWS[2]["rejected_score"], rejected_score=ROWS[2]["chosen_score"])
    evals = write_jsonl(tmp_path / "eval.jsonl", [
        _row(ROWS[0]),                                   # a training pair
        _row(ROWS[1], tmp_path),                         # a training pair, its images copied under other names
        swapped,                                         # a training caption, its images the other way round
        _row(ROWS[3], prompt="a purple square"),         # the training images under another caption
        _row(ROWS[4]), _row(ROWS[14])])                  # captions and images the run did not train on
    result = evaluate_diffusion_run(str(run), evals)
    assert result["num_pairs"] == 6
    assert result["overlap_with_training"] == {"prompts": 3, "pairs": 2, "rows": 6, "checked_against": train,
                                               "split": "train", "training_pairs": 4}
    said = [n for n in result["notes"] if "trained on" in n]
    assert len(said) == 1 and said[0].startswith(
        "3 of 6 eval pairs (50.0%) have a caption the run trained on, and 2 (33.3%) are training pairs (same "
        "captions and the two images' pixels)")
    assert result["missing"] == {}

    disjoint = evaluate_diffusion_run(str(run), write_jsonl(tmp_path / "new.jsonl", [_row(ROWS[4]), _row(ROWS[14])]))
    assert (disjoint["overlap_with_training"]["prompts"], disjoint["overlap_with_training"]["pairs"]) == (0, 0)
    assert not any("trained on" in n for n in disjoint["notes"])


def test_an_empty_split_of_the_eval_data_is_named_by_data_as_the_text_eval_names_it(diffusion_run, tmp_path, capsys):
    """It said "FOLDER is empty: ... Fill that file, or point to data with rows.", naming no option; now the text
    eval's message (tests/data/test_empty_split_names.py), word for word, naming --data."""
    from preflab.cli import main

    run, _ = diffusion_run
    folder = tmp_path / "pairs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [_row(r) for r in ROWS[:2]])
    (folder / "test.jsonl").write_text("\n")  # read by default: the folder has a split 'test'
    assert main(["eval", str(run), "--task", "diffusion", "--data", str(folder), "--out",
                 str(tmp_path / "e.json")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"preflab: error: --data {folder} is empty: its split 'test' (file {folder / 'test.jsonl'}) holds no rows "
        "(1 blank lines). Fill that file, or give --data a source with rows (or --split another split of it).")


def test_an_empty_training_or_eval_split_of_a_diffusion_run_names_its_option(tmp_path, capsys):
    """A diffusion run's empty dataset_name / eval_dataset_name said "FOLDER is empty: ... point to data with
    rows." (no option); now named as the text runs name them (tests/data/test_empty_split_names.py)."""
    from preflab.cli import main

    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "train.jsonl").write_text("")
    (folder / "test.jsonl").write_text("")
    for option, split, fix in (("dataset_name", "train", "or point dataset_name at data with rows."),
                               ("eval_dataset_name", "test", "point eval_dataset_name at data with rows, or set "
                                                             "eval_strategy: no (no evaluation).")):
        if split == "test":
            write_jsonl(folder / "train.jsonl", [_row(r) for r in ROWS[:2]])
        rc = main(["train", "examples/diffusion/diffusion_dpo.yaml", f"dataset_name={folder}",
                   f"eval_dataset_name={folder if split == 'test' else 'null'}", "max_steps=1", "sample_steps=0",
                   f"output_dir={tmp_path / 'out'}"])
        assert rc == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"preflab: error: {option}='{folder}' ({folder}) is empty: its split '{split}' (file "
            f"{folder / (split + '.jsonl')}) holds no rows. Fill that file, {fix}")
