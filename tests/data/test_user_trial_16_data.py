"""User trial 16 (changes/trial-16.md): an ML engineer points preflab at datasets on local disk in the shapes
Hugging Face hub datasets come in. Each test plants the user's folder or rows and asserts the exact rows read (as
datasets.load_dataset reads the same folder) or the text of the error."""
import json

import pytest

from preflab.data.rows import load_rows
from preflab.data.sources import eval_default_reader
from preflab.errors import DataError, SplitMissing


def _pairs(tag: str, n: int) -> list[dict]:
    return [{"prompt": f"{tag} q{i}:", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(n)]


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _prompts(examples) -> list[str]:
    return [e.prompt for e in examples]


def _datasets_split(folder, split: str, **kwargs) -> list[str]:
    import datasets

    return list(datasets.load_dataset(str(folder), **kwargs)[split]["prompt"])


@pytest.mark.parametrize("train_name, test_name", [("my_train", "my_eval"), ("data_train", "data_test"),
                                                    ("hh-train", "hh-test"), ("pairs.train", "pairs.test"),
                                                    ("training", "testing"), ("x_training", "evaluation")])
def test_a_split_named_inside_a_file_name_is_that_split_only(tmp_path, train_name, test_name):
    """A folder of `my_train.jsonl` + `my_eval.jsonl` (or data_train / data_test, training / testing, ...): datasets
    gives the first file to 'train' and the second to 'test' (its keyword patterns '*[-._ 0-9]train[-._ 0-9]*', 'eval'
    and 'testing' being keywords of 'test'). preflab's split 'train' read every file, the eval rows too, without a
    word (5 rows trained, 1 of them the eval row), and had no split 'test'. Now both splits hold exactly datasets'
    rows, so the eval set a run takes by default (split 'test') is the eval file."""
    _write(tmp_path / f"{train_name}.jsonl", _pairs("train", 4))
    _write(tmp_path / f"{test_name}.jsonl", _pairs("held", 1))
    examples, report = load_rows(tmp_path, split="train")
    assert _prompts(examples) == [f"train q{i}:" for i in range(4)] == _datasets_split(tmp_path, "train")
    assert (report.total, report.kept) == (4, 4)
    held, _ = load_rows(tmp_path, split="test")
    assert _prompts(held) == ["held q0:"] == _datasets_split(tmp_path, "test")
    reader = eval_default_reader(tmp_path)  # preflab eval without --split, a run's default eval_split
    assert reader.split == "test" and _prompts(load_rows(reader)[0]) == ["held q0:"]


def test_dev_and_valid_files_are_the_validation_split(tmp_path):
    """dev.jsonl (and valid / val) is datasets' 'validation'; a split named as the file is ('dev') reads it too."""
    _write(tmp_path / "train.jsonl", _pairs("train", 2))
    _write(tmp_path / "dev.jsonl", _pairs("dev", 1))
    for split in ("validation", "dev"):
        assert _prompts(load_rows(tmp_path, split=split)[0]) == ["dev q0:"] == _datasets_split(tmp_path,
                                                                                                 "validation")
    with pytest.raises(SplitMissing, match=r"holds files of the split\(s\) \['train', 'validation'\] and none of "
                                           r"split 'test'"):
        load_rows(tmp_path, split="test")


def test_a_folder_whose_files_name_no_split_is_still_read_whole(tmp_path):
    """Files that name no split (rows_a, rows_b; 'pretrain' holds 'train' without a separator) stay the split
    'train', read whole, as datasets reads them."""
    _write(tmp_path / "rows_a.jsonl", _pairs("a", 2))
    _write(tmp_path / "pretrain.jsonl", _pairs("p", 1))
    examples, _ = load_rows(tmp_path, split="train")
    assert sorted(_prompts(examples)) == sorted(_datasets_split(tmp_path, "train")) == ["a q0:", "a q1:", "p q0:"]


def _card(folder, configs: str) -> None:
    (folder / "README.md").write_text(f"---\nconfigs:\n{configs}---\n# a dataset card\n")


def _two_configs(tmp_path, default_a: str = "  default: true\n", default_b: str = ""):
    import pandas as pd

    for name, rows in (("a", _pairs("a", 3)), ("b", _pairs("b", 2))):
        (tmp_path / name).mkdir()
        pd.DataFrame(rows).to_parquet(tmp_path / name / "train-00000-of-00001.parquet")
    _card(tmp_path, f"- config_name: a\n{default_a}  data_files:\n  - split: train\n    path: a/train-*\n"
                    f"- config_name: b\n{default_b}  data_files:\n  - split: train\n    path: b/train-*\n")
    return tmp_path


def test_the_configuration_a_card_marks_default_is_read_and_named(tmp_path):
    """A local copy of a hub dataset whose card declares configurations 'a' (`default: true`) and 'b':
    datasets.load_dataset(folder) reads 'a'; preflab refused the folder saying datasets asks for a config name, which
    it does not here. Now 'a' is read (its 3 rows, datasets' rows) and the data report names it as the default."""
    folder = _two_configs(tmp_path)
    examples, report = load_rows(folder)
    assert _prompts(examples) == ["a q0:", "a q1:", "a q2:"] == _datasets_split(folder, "train")
    assert report.source == f"{folder} (config a: its README.md's default)"
    assert report.summary().startswith(f"{folder} (config a: its README.md's default) (pairwise): 3 rows, 3 kept")


@pytest.mark.parametrize("default_b", ["", "  default: true\n"])
def test_several_configurations_without_one_default_are_still_refused(tmp_path, default_b):
    """None marked default, or two: no configuration is the one to read; refused naming them."""
    folder = _two_configs(tmp_path, default_a="  default: true\n" if default_b else "", default_b=default_b)
    with pytest.raises(DataError, match=r"declares 2 configurations \('a'.*'b'.*\) and marks not exactly one "
                                        r"`default: true`.*Set dataset_config"):
        load_rows(folder)


def test_a_saved_datasetdict_without_test_or_train_names_both_and_the_options(tmp_path):
    """UltraFeedback-binarized saved with save_to_disk (splits train_prefs / test_prefs), given to `preflab eval
    --data` without --split: the error said "has no split 'train' ... Set split to one of them": not the split
    eval reads first ('test') and an option no command has. Now it names both and the options."""
    import datasets

    rows = _pairs("uf", 3)
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows[:2]),
                          "test_prefs": datasets.Dataset.from_list(rows[2:])}).save_to_disk(str(tmp_path / "uf"))
    with pytest.raises(SplitMissing) as err:
        eval_default_reader(tmp_path / "uf")
    assert str(err.value) == (
        f"{tmp_path / 'uf'} has no split 'test' nor 'train' (read where there is no 'test'); it has ['test_prefs', "
        "'train_prefs']. Set the split (dataset_split / eval_split, TRL's dataset_train_split / dataset_test_split; "
        "preflab eval's --split) to one of them.")
    with pytest.raises(SplitMissing, match=r"has no split 'train'; it has \['test_prefs', 'train_prefs'\]\. Set the "
                                           r"split \(dataset_split"):
        load_rows(tmp_path / "uf")
    assert _prompts(load_rows(tmp_path / "uf", split="test_prefs")[0]) == ["uf q2:"]


def test_rows_without_chosen_and_rejected_say_to_build_the_columns(tmp_path):
    """Stanford SHP's columns (history, human_ref_A, human_ref_B, labels): the error named the row's columns and
    said "Fix the row or set on_bad_row: skip", which would skip every row. Now it names the option that reads
    columns named otherwise (dataset_columns) and how to build computed ones; a row missing only 'rejected' keeps the
    short message."""
    shp = tmp_path / "shp.jsonl"
    _write(shp, [{"history": "post", "human_ref_A": "A", "human_ref_B": "B", "labels": 1}])
    with pytest.raises(DataError) as err:
        load_rows(shp)
    assert str(err.value).startswith(
        f"{shp} row 0 (line 1), field 'chosen': missing (the row's columns: 'history', 'human_ref_A', 'human_ref_B', "
        "'labels'). A pairwise row needs 'chosen' and 'rejected'. The row has neither column: if the data names them "
        "otherwise, say which column is which with the option dataset_columns (preflab field: your column), e.g. "
        "dataset_columns: {chosen: good, rejected: bad} (preflab eval: --data-columns chosen=good,rejected=bad); "
        "columns that must be computed (SHP's human_ref_A / human_ref_B / labels) need ds.map before training.")
    half = tmp_path / "half.jsonl"
    _write(half, [{"prompt": "q", "chosen": " a"}])
    with pytest.raises(DataError) as err:
        load_rows(half)
    assert "neither column" not in str(err.value) and "field 'rejected': missing" in str(err.value)
    only_chosen_key = tmp_path / "null.jsonl"
    _write(only_chosen_key, [{"prompt": "q", "chosen": None}])
    with pytest.raises(DataError) as err:
        load_rows(only_chosen_key)
    assert "neither column" not in str(err.value) and "field 'chosen': missing (null)" in str(err.value)


def _ultrafeedback_rows(n: int) -> list[dict]:
    def conversation(i: int, answer: str) -> list[dict]:
        return [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": answer}]

    return [{"prompt": f"question {i}?", "chosen": conversation(i, f"good {i}"),
             "rejected": conversation(i, f"bad {i}"), "messages": conversation(i, f"good {i}"), "score_chosen": 8.0,
             "score_rejected": 3.5} for i in range(n)]


def test_ultrafeedback_written_with_to_csv_is_refused_not_trained_as_text(tmp_path):
    """UltraFeedback-binarized loaded into pandas (its message columns are numpy arrays of dicts) and saved with
    df.to_csv: each cell is the Python text "[{'role': 'user', ...}\\n {...}]". preflab read the 3 rows as text pairs
    (form standard) and trained on the quotes and braces. Now each such cell is a bad row naming the file, row, line
    and field and saying how to write the file; skipped, all 3 are counted under wrong_type. The same rows written as
    JSON lines read as conversations."""
    import datasets

    frame = datasets.Dataset.from_list(_ultrafeedback_rows(3)).to_pandas()
    frame.to_csv(tmp_path / "uf.csv", index=False)
    with pytest.raises(DataError) as err:
        load_rows(tmp_path / "uf.csv")
    assert str(err.value).startswith(
        f"{tmp_path / 'uf.csv'} row 0 (line 2), field 'chosen': is the Python text of a list of messages ([{{'role': "
        "...}]: how pandas' to_csv writes a list column), which would train as plain text, brackets and all. Write "
        "the file with its list columns kept: JSON lines or Parquet")
    kept, report = load_rows(tmp_path / "uf.csv", on_bad_row="skip")
    assert (kept, report.total, report.skipped) == ([], 3, {"wrong_type": 3})
    frame.to_json(tmp_path / "uf.jsonl", orient="records", lines=True)
    examples, report = load_rows(tmp_path / "uf.jsonl")
    assert report.forms == {"conversational_implicit_text_prompt": 3}
    assert examples[1].chosen == [{"role": "assistant", "content": "good 1"}]


def test_a_prompt_or_messages_cell_of_python_text_is_refused(tmp_path):
    """Online prompt rows and SFT `messages` rows written by to_csv: the prompt trained as the text of a list (online)
    or was "expected a list of messages, got str" (SFT); both now say what the cell is and how to write the file."""
    import pandas as pd

    from preflab.data.report import RowProblem
    from preflab.data.validate import check_messages

    turns = [{"role": "user", "content": "hi"}]
    pd.DataFrame([{"prompt": turns}]).to_csv(tmp_path / "prompts.csv", index=False)
    with pytest.raises(DataError, match=r"prompts.csv row 0 \(line 2\), field 'prompt': is the Python text of a list "
                                        r"of messages"):
        load_rows(tmp_path / "prompts.csv", kind="prompt")
    with pytest.raises(RowProblem) as err:
        check_messages(str(turns), "messages")
    assert (err.value.reason, err.value.field) == ("wrong_type", "messages")
    assert err.value.detail.endswith("how pandas' to_csv writes a list column), not a list")
    assert err.value.fix.startswith("Write the file with its list columns kept")
    assert load_rows([{"prompt": "[{role}] is a JSON-like answer format"}], kind="prompt")[1].kept == 1


def test_a_default_configuration_by_data_dir_reads_its_folder_only(tmp_path):
    """Configurations given by data_dir (no data_files), 'a' marked default with a train file only, 'b' with train and
    test: the folder reads a's rows (datasets' rows), and it has no split 'test' (b's test file is not a's), so a run
    is not handed b's test rows as its eval set."""
    from preflab.data.sources import directory_has_split

    for name, splits in (("a", ("train",)), ("b", ("train", "test"))):
        (tmp_path / name).mkdir()
        for split in splits:
            _write(tmp_path / name / f"{split}.jsonl", _pairs(f"{name}-{split}", 2))
    _card(tmp_path, "- config_name: a\n  default: true\n  data_dir: a\n- config_name: b\n  data_dir: b\n")
    examples, report = load_rows(tmp_path)
    assert _prompts(examples) == ["a-train q0:", "a-train q1:"] == _datasets_split(tmp_path, "train")
    assert report.source.endswith("(config a: its README.md's default)")
    assert (directory_has_split(tmp_path, "train"), directory_has_split(tmp_path, "test")) == (True, False)
    assert directory_has_split(tmp_path, "test", "b") is True
