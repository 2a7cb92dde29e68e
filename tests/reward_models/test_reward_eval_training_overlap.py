"""`preflab eval --task reward` counts the scored pairs the reward run trained on (eval.json overlap_with_training),
by the policy eval's rule: same prompt; same prompt, chosen and rejected (a pair under another `context` is the same
pair). It said nothing: a reward model's accuracy on its own training pairs read as held-out."""
import json
import shutil

import yaml

from preflab.cli import main
from reward_synthetic import marker_rows
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

TRAIN = marker_rows(10, seed=0)
NEW = marker_rows(4, seed=5)


def _run(tiny_rm_dir, tmp_path, **config):
    run = tmp_path / "rm-run"
    shutil.copytree(tiny_rm_dir, run)
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "reward", "model_name_or_path": "builtin:tiny-llama",
                                                     **config}))
    return run


def _eval(run, data, out):
    assert main(["eval", str(run), "--task", "reward", "--data", str(data), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_planted_training_pairs_are_counted_exactly(tiny_rm_dir, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    run = _run(tiny_rm_dir, tmp_path, dataset_name=train, seed=0)
    planted = [TRAIN[1], {**TRAIN[4], "subset": "other", "context": "formal"}, TRAIN[7]]  # extras are no content
    prompt_only = {**TRAIN[2], "chosen": " good new answer"}                             # a training prompt only
    evals = write_jsonl(tmp_path / "eval.jsonl", planted + [prompt_only] + NEW)
    out = _eval(run, evals, tmp_path / "eval.json")
    assert out["num_pairs"] == 8
    assert out["overlap_with_training"] == {"prompts": 4, "pairs": 3, "rows": 8, "checked_against": train,
                                            "split": "train", "training_pairs": 10}
    said = [n for n in out["notes"] if "trained on" in n]
    assert len(said) == 1 and said[0].startswith("4 of 8 eval pairs (50.0%) have a prompt the run trained on, and 3 "
                                                 "(37.5%) are training pairs (same prompt, chosen and rejected)")
    assert "overlap_with_training" not in out["missing"]
    assert "note: 4 of 8 eval pairs (50.0%) have a prompt the run trained on" in capsys.readouterr().out

    disjoint = _eval(run, write_jsonl(tmp_path / "new.jsonl", NEW), tmp_path / "eval2.json")
    assert (disjoint["overlap_with_training"]["prompts"], disjoint["overlap_with_training"]["pairs"]) == (0, 0)
    assert not any("trained on" in n for n in disjoint["notes"])


def test_the_rows_eval_fraction_held_out_are_not_counted_as_trained(tiny_rm_dir, tmp_path):
    """eval_fraction=0.3 of 10 rows, seed 3: the 3 held-out pairs (data.holdout.split_eval_fraction, as the reward
    run held them out) are evaluated and are no training pairs; the 7 others are."""
    from preflab.data.holdout import split_eval_fraction

    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    run = _run(tiny_rm_dir, tmp_path, dataset_name=train, eval_fraction=0.3, seed=3)
    kept, held = split_eval_fraction(TRAIN, 0.3, 3)
    assert len(held) == 3
    out = _eval(run, write_jsonl(tmp_path / "held.jsonl", held + kept[:2]), tmp_path / "eval.json")
    overlap = out["overlap_with_training"]
    assert (overlap["pairs"], overlap["rows"], overlap["training_pairs"]) == (2, 5, 7)


def test_a_hub_training_set_is_said_not_checked(tiny_rm_dir, tmp_path, capsys):
    run = _run(tiny_rm_dir, tmp_path, dataset_name="someone/prefs")
    out = _eval(run, write_jsonl(tmp_path / "eval.jsonl", NEW), tmp_path / "eval.json")
    assert "overlap_with_training" not in out
    why = out["missing"]["overlap_with_training"]
    assert why.startswith("the run's training data someone/prefs (dataset_name, split train) is no file or folder "
                          "here (a hub dataset name") and why.endswith("was not checked")
    assert f"skipped overlap_with_training: {why}" in capsys.readouterr().out
