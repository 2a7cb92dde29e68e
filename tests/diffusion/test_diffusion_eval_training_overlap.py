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
