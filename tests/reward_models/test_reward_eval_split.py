"""`preflab eval --task reward` reads the split the policy eval reads (preflab.eval.run.open_eval_split): --split,
else 'test' where the data has one (as a run's eval_split, TRL's dataset_test_split), else 'train', with the same
note; eval.json's `split` says which. It read 'train' by default, so a folder with train/test files reported the
model's training accuracy as if it were held-out."""
import json

from preflab.cli import main
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest
from reward_synthetic import marker_rows


def _folder(tmp_path, test: bool):
    folder = tmp_path / "prefs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", marker_rows(8, seed=0))
    if test:
        write_jsonl(folder / "test.jsonl", marker_rows(3, seed=1))
    return folder


def _eval(rm, data, out, *extra):
    assert main(["eval", str(rm), "--task", "reward", "--data", str(data), "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_reward_eval_reads_the_test_split_by_default_as_the_policy_eval(tiny_rm_dir, tmp_path, capsys):
    """A folder with train.jsonl (8 pairs) and test.jsonl (3): the reward eval reads test (3 pairs; it read the 8
    training pairs), says so in the policy eval's own note, and eval.json's split is 'test'. A saved DatasetDict
    (save_to_disk) with train and test reads its test split too."""
    from datasets import Dataset, DatasetDict

    folder = _folder(tmp_path, test=True)
    out = _eval(tiny_rm_dir, folder, tmp_path / "eval.json")
    note = (f"read split 'test' of {folder}: no --split was given and it has a split 'test', read by default as a "
            "run's eval_split is; pass --split to read another")
    assert (out["num_pairs"], out["reward_eval"]["num_pairs"]) == (3, 3)  # the old code: 8, the training pairs
    assert out["split"] == "test"
    from preflab.eval.run import open_eval_split

    assert out["notes"][0] == note == open_eval_split(str(folder), None)[1]
    assert f"note: {note}" in capsys.readouterr().out
    saved = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list(marker_rows(8, seed=0)),
                 "test": Dataset.from_list(marker_rows(5, seed=2))}).save_to_disk(str(saved))
    out = _eval(tiny_rm_dir, saved, tmp_path / "eval_saved.json")
    assert out["num_pairs"] == 5 and out["split"] == "test"
    assert out["notes"][0].startswith(f"read split 'test' of {saved}: no --split was given")
    assert (_eval(tiny_rm_dir, saved, tmp_path / "eval_limit.json", "--limit", "2")["num_pairs"]) == 2


def test_reward_eval_of_data_without_a_test_split_reads_train_with_the_note(tiny_rm_dir, tmp_path, capsys):
    """A folder with only train.jsonl: the reward eval reads train (8 pairs) and says that it did and why, in the
    policy eval's words (the old code read it without a word)."""
    folder = _folder(tmp_path, test=False)
    out = _eval(tiny_rm_dir, folder, tmp_path / "eval.json")
    note = (f"read split 'train' of {folder}: no --split was given and it has no split 'test' (a single file or a "
            "folder without one reads as 'train'); pass --split to read another")
    assert out["notes"] == [note]
    assert (out["num_pairs"], out["split"]) == (8, "train")
    assert f"note: {note}" in capsys.readouterr().out


def test_reward_eval_split_train_overrides_the_test_default(tiny_rm_dir, tmp_path):
    """--split train on a folder with a test split reads the 8 training pairs, and eval.json says it was --split's
    choice; the accuracy is the one of evaluate_reward_model on the training file itself."""
    from preflab.reward_models.eval import evaluate_reward_model

    folder = _folder(tmp_path, test=True)
    out = _eval(tiny_rm_dir, folder, tmp_path / "eval.json", "--split", "train")
    assert out["notes"] == [f"read split 'train' of {folder} (--split)"]
    assert (out["num_pairs"], out["split"]) == (8, "train")
    direct = evaluate_reward_model(str(tiny_rm_dir), str(folder / "train.jsonl"), on_bad_row="skip")
    assert out["metrics"]["reward_model/accuracy"] == direct["accuracy"]


def test_standalone_eval_reward_reads_the_split_preflab_eval_reads(tiny_rm_dir, tmp_path, capsys):
    """The standalone `eval-reward` subcommand (register_reward_eval) defaulted to --split train: on a folder with
    train/test files it scored the 8 training pairs while `preflab eval --task reward` scores the 3 test pairs. Now
    both read the split through the same function: the same pairs, accuracy, split and note, recorded in its JSON
    (which had no split); --split train still reads the training pairs."""
    import argparse

    from preflab.reward_models.cli import register_reward_eval

    folder = _folder(tmp_path, test=True)
    parser = argparse.ArgumentParser()
    register_reward_eval(parser.add_subparsers())

    def standalone(*extra):
        args = parser.parse_args(["eval-reward", "--model", str(tiny_rm_dir), "--data", str(folder), *extra])
        assert args.func(args) == 0
        return json.loads(capsys.readouterr().out)

    got = standalone()
    want = _eval(tiny_rm_dir, folder, tmp_path / "eval.json")
    capsys.readouterr()
    assert (got["num_pairs"], got["split"]) == (want["num_pairs"], want["split"]) == (3, "test")  # old: 8, no split
    assert got["accuracy"] == want["reward_eval"]["accuracy"]
    assert got["notes"] == want["notes"] == [
        f"read split 'test' of {folder}: no --split was given and it has a split 'test', read by default as a run's "
        "eval_split is; pass --split to read another"]
    train = standalone("--split", "train")
    assert (train["num_pairs"], train["split"], train["notes"]) == (8, "train", [f"read split 'train' of {folder} "
                                                                                 "(--split)"])
