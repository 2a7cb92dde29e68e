"""load_rows over every source: JSONL, JSON, Parquet, CSV, save_to_disk dirs, data-file dirs, memory, hub."""
import json

import datasets
import pytest

from preflab.data.examples import PairExample, UnpairedExample
from preflab.data.rows import load_rows
from preflab.errors import DataError

ROWS = [{"prompt": f"q{i}", "chosen": f" yes {i}", "rejected": f" no {i}", "margin": float(i)} for i in range(4)]
EXPECTED = [PairExample(i, f"q{i}", f" yes {i}", f" no {i}", {"margin": float(i)}) for i in range(4)]
CONV = [{"prompt": [{"role": "user", "content": "hi"}],
         "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "bye"}]}]


def test_jsonl_with_bom_and_blank_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(json.dumps(r).encode() for r in ROWS) + b"\n\n  \n")
    examples, report = load_rows(path)
    assert examples == EXPECTED and report.source == str(path) and report.blank_lines == 2


def test_blank_lines_are_said_in_the_data_line(tmp_path):
    """Blank lines were counted in summary.json only; the console's data line said nothing of them (a blank line in
    the middle of a file may be a row lost in an edit)."""
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    assert load_rows(path)[1].summary() == f"{path} (pairwise): 2 rows, 2 kept, 0 skipped; forms: standard 2; " \
                                           "1 blank line(s) ignored"


@pytest.mark.parametrize("layout", ["array", "wrapped", "lines"])
def test_json_files(tmp_path, layout):
    path = tmp_path / "train.json"
    text = {"array": json.dumps(ROWS), "wrapped": json.dumps({"data": ROWS}),
            "lines": "\n".join(json.dumps(r) for r in ROWS)}[layout]
    path.write_text(text, encoding="utf-8")
    assert load_rows(path)[0] == EXPECTED


def test_json_array_broken_is_a_file_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(ROWS)[:-5], encoding="utf-8")
    with pytest.raises(DataError, match="bad.json: not valid JSON at line 1"):
        load_rows(path, on_bad_row="skip")


def test_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    assert load_rows(path)[0] == EXPECTED


def test_parquet_conversational_arrow_fills_none(tmp_path):
    rows = CONV + [{"prompt": [{"role": "user", "content": "hi", "name": "bob"}],
                    "chosen": [{"role": "assistant", "content": "hello"}],
                    "rejected": [{"role": "assistant", "content": "bye"}]}]
    path = tmp_path / "conv.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    examples, report = load_rows(path)
    assert examples[0].prompt == [{"role": "user", "content": "hi"}]  # Arrow's name=None dropped
    assert examples[1].prompt == [{"role": "user", "content": "hi", "name": "bob"}]
    assert report.forms == {"conversational": 2}


def test_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('prompt,chosen,rejected,margin\nq0," yes 0"," no 0",0.0\n"multi\nline"," a, b"," c",1\n',
                    encoding="utf-8")
    examples, _ = load_rows(path)
    assert examples == [PairExample(0, "q0", " yes 0", " no 0", {"margin": "0.0"}),
                        PairExample(1, "multi\nline", " a, b", " c", {"margin": "1"})]


def test_csv_unpaired_labels_and_bad_cells(tmp_path):
    path = tmp_path / "kto.csv"
    path.write_bytes(b"prompt,completion,label\np,c,true\np,\xff\xfe,false\np,c\np,d,False\n")
    with pytest.raises(DataError, match=r"kto.csv row 1 \(line 3\), field 'completion'"):
        load_rows(path, kind="unpaired")
    examples, report = load_rows(path, kind="unpaired", on_bad_row="skip")
    assert examples == [UnpairedExample(0, "p", "c", True, {}), UnpairedExample(3, "p", "d", False, {})]
    assert report.skipped == {"invalid_unicode": 1, "invalid_csv": 1}


def test_a_csv_row_spanning_lines_is_named_by_the_line_it_starts_on(tmp_path):
    """A quoted cell over two lines made every error name the row's last line: row 0 of a file whose first row is on
    line 2 was '(line 3)'."""
    path = tmp_path / "train.csv"
    path.write_text('prompt,chosen\n"echo: a\n",A\n"echo: b\n",B\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"^\S*train.csv row 0 \(line 2\), field 'rejected': missing"):
        load_rows(path)
    _, report = load_rows(path, on_bad_row="skip")
    assert [(e["row_id"], e["line"]) for e in report.skipped_examples] == [(0, 2), (1, 4)]


def test_a_messages_column_of_json_text_is_named_as_such(tmp_path):
    """A CSV `messages` cell (JSON text) was 'expected a list of messages, got str', without saying why or what to do;
    a text field of the same JSON text already said it."""
    from preflab.data.report import RowProblem
    from preflab.data.validate import check_messages

    cell = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    with pytest.raises(RowProblem, match=r"is the JSON text of a list of messages \(a CSV cell, or a list column "
                                         r"written as a string\), not a list") as err:
        check_messages(cell, "messages")
    assert err.value.field == "messages" and "json.loads the column" in err.value.fix

def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert load_rows(tmp_path / "ds")[0] == EXPECTED
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                               "test": datasets.Dataset.from_list(CONV)})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_rows(tmp_path / "dd", split="train")[0] == EXPECTED
    (ex,), report = load_rows(tmp_path / "dd", split="test")
    assert ex.chosen == CONV[0]["chosen"] and report.forms == {"conversational": 1}
    with pytest.raises(DataError, match="has no split 'validation'; it has \\['test', 'train'\\]"):
        load_rows(tmp_path / "dd", split="validation")


def test_directory_of_files_by_split_and_row_ids_across_files(tmp_path):
    (tmp_path / "data").mkdir()
    path_a, path_b = tmp_path / "data" / "train-00000-of-00002.jsonl", tmp_path / "data" / "train-00001-of-00002.jsonl"
    path_a.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]), encoding="utf-8")
    path_b.write_text(json.dumps(ROWS[2]) + "\n" + json.dumps({"prompt": "q", "chosen": "", "rejected": "r"}) + "\n",
                      encoding="utf-8")
    (tmp_path / "data" / "test.jsonl").write_text(json.dumps(ROWS[3]) + "\n", encoding="utf-8")
    examples, report = load_rows(tmp_path, on_bad_row="skip")
    assert examples == EXPECTED[:3] and report.total == 4
    with pytest.raises(DataError, match=r"train-00001-of-00002.jsonl row 3 \(line 2\), field 'chosen'"):
        load_rows(tmp_path)
    (ex,), _ = load_rows(tmp_path, split="test")
    assert ex.prompt == "q3" and ex.row_id == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        load_rows(empty)


def test_a_directory_without_files_of_the_requested_split_refuses_to_mix_the_others(tmp_path):
    """dataset_split: validation on a folder of train.jsonl + test.jsonl read both files (the test set trained on),
    and an eval_split the folder lacks evaluated on its training file; a folder of unnamed files is still read
    whole."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    (tmp_path / "data" / "test.jsonl").write_text(json.dumps(ROWS[3]) + "\n")
    with pytest.raises(DataError, match=r"holds files of the split\(s\) \['test', 'train'\] and none of split "
                                        r"'validation'"):
        load_rows(tmp_path / "data", split="validation")
    (tmp_path / "data" / "test.jsonl").unlink()
    with pytest.raises(DataError, match=r"split\(s\) \['train'\] and none of split 'test'"):
        load_rows(tmp_path / "data", split="test")
    (tmp_path / "data" / "train.jsonl").rename(tmp_path / "data" / "pairs.jsonl")
    assert len(load_rows(tmp_path / "data", split="train")[0]) == len(load_rows(tmp_path / "data", split=None)[0]) == 2


def test_a_source_without_splits_refuses_an_explicit_other_split(tmp_path):
    """A save_to_disk Dataset (no DatasetDict) and a folder of unnamed data files are the split 'train', as a
    single file is: split 'test' read them whole, so `eval_split: test` (or TRL's dataset_test_split) evaluated on
    the training rows. split None (an eval set without eval_split) still reads them whole."""
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"one dataset saved with save_to_disk \(the split 'train', no DatasetDict\), "
                                        r"so it has no split 'test'"):
        load_rows(tmp_path / "ds", split="test")
    assert load_rows(tmp_path / "ds", split="train")[0] == load_rows(tmp_path / "ds", split=None)[0] == EXPECTED
    saved_test = datasets.Dataset.from_list(ROWS, split="test")  # load_dataset(..., split="test").save_to_disk
    saved_test.save_to_disk(str(tmp_path / "ds_test"))
    assert load_rows(tmp_path / "ds_test", split="test")[0] == EXPECTED
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with pytest.raises(DataError, match=r"none of which is named after a split, so it is the split 'train' .*no "
                                        r"split 'validation'"):
        load_rows(tmp_path / "files", split="validation")


def test_in_memory_dataset_and_list_and_limit():
    assert load_rows(datasets.Dataset.from_list(ROWS))[0] == EXPECTED
    assert load_rows(datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}))[0] == EXPECTED
    examples, report = load_rows(ROWS, limit=2)
    assert examples == EXPECTED[:2] and report.total == 2
    examples, report = load_rows(["not a row", ROWS[0]], on_bad_row="skip")
    assert report.skipped == {"not_an_object": 1}


def test_hub_path_calls_load_dataset_without_remote_code(monkeypatch):
    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples, report = load_rows("someone/prefs", split="train_prefs")
    assert examples == EXPECTED and report.source == "hub:someone/prefs[train_prefs]"
    assert calls == [("someone/prefs", {"split": "train_prefs"})]


def test_hub_failure_and_missing_paths_are_clear(monkeypatch):
    def offline(name, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"'someone/prefs' was taken as a hub dataset name \(it is no local file or "
                                        r"folder: tried .*/someone/prefs\), and it could not be loaded \(split "
                                        r"'train'\): ConnectionError: offline\."):
        load_rows("someone/prefs")
    for missing in ("./nope.jsonl", "/no/such/dir", "train.parquet"):
        with pytest.raises(DataError, match="does not exist"):
            load_rows(missing)


# ---------------------------------------------------------------- structure refused rather than guessed (#18)


def _deep(levels: int):
    value = "leaf"
    for _ in range(levels):
        value = {"x": [value]}
    return value


@pytest.mark.parametrize("layout", ["jsonl", "json", "memory"])
def test_deeply_nested_extra_column_is_a_bad_row_not_a_recursion_error(tmp_path, layout):
    rows = [dict(ROWS[0]), {**ROWS[1], "meta": _deep(250)}, dict(ROWS[2])]   # 500 levels of objects and lists
    if layout == "memory":
        source = rows
    else:
        source = tmp_path / f"train.{layout}"
        source.write_text("\n".join(json.dumps(r) for r in rows) if layout == "jsonl" else json.dumps(rows))
    with pytest.raises(DataError, match=r"row 1.*field 'meta': the row is nested more than 64 levels deep") as err:
        load_rows(source)
    assert err.value.reason == "nested_too_deeply"
    examples, report = load_rows(source, on_bad_row="skip")
    assert [e.row_id for e in examples] == [0, 2] and report.skipped == {"nested_too_deeply": 1}
    from preflab.data.cache import examples_fingerprint
    assert len(examples_fingerprint(examples)) == 64


def test_duplicate_json_keys_are_bad_rows(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "q", "chosen": " a", "rejected": " b"}\n'
                    '{"prompt": "q", "chosen": " a", "chosen": " c", "rejected": " b"}\n'
                    '{"prompt": [{"role": "user", "content": "x", "content": "y"}], '
                    '"chosen": " a", "rejected": " b"}\n')
    with pytest.raises(DataError, match=r"row 1 \(line 2\), field 'chosen': the object has the key\(s\) \['chosen'\]"):
        load_rows(path)
    examples, report = load_rows(path, on_bad_row="skip")
    assert [e.row_id for e in examples] == [0] and report.skipped == {"duplicate_key": 2}
    assert report.skipped_examples[1]["field"] == "prompt"
    array = tmp_path / "train.json"
    array.write_text('[{"prompt": "q", "chosen": " a", "rejected": " b", "rejected": " c"}]')
    with pytest.raises(DataError, match=r"row 0, field 'rejected'.*more than once"):
        load_rows(array)


def test_duplicate_csv_columns_are_a_file_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("prompt,chosen,rejected,chosen\nq, a, b, c\n")
    with pytest.raises(DataError, match=r"train.csv: the CSV header names the column\(s\) \['chosen'\] more than once"):
        load_rows(path, on_bad_row="skip")


def test_json_object_of_splits_takes_the_requested_split(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"train": ROWS[:3], "test": ROWS[3:]}))
    assert load_rows(path)[0] == EXPECTED[:3]
    test_rows = load_rows(path, split="test")[0]
    assert [(e.prompt, e.row_id) for e in test_rows] == [("q3", 0)]
    with pytest.raises(DataError, match=r"holds the splits \['test', 'train'\] and no split 'validation'"):
        load_rows(path, split="validation")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_a_single_data_file_is_the_train_split_and_refuses_any_other(tmp_path, suffix):
    """A single file is the split 'train' (datasets' load_dataset(data_files=file)): split 'test' was ignored and the
    training rows were read as the test set. split None (an eval set without eval_split) reads the file whole."""
    path = tmp_path / f"rows{suffix}"
    datasets.Dataset.from_list(ROWS).to_pandas().pipe(
        {".jsonl": lambda df: df.to_json(path, orient="records", lines=True),
         ".json": lambda df: df.to_json(path, orient="records"),
         ".csv": lambda df: df.to_csv(path, index=False),
         ".parquet": lambda df: df.to_parquet(path)}[suffix])
    assert len(load_rows(path, split="train")[0]) == len(load_rows(path, split=None)[0]) == 4
    with pytest.raises(DataError, match=rf"rows{suffix} holds the split \['train'\] and no split 'test' .*Set the "
                                        r"split \(dataset_split / eval_split\) to 'train' or leave it out"):
        load_rows(path, split="test")


def test_a_json_object_of_arrays_holds_its_arrays_as_splits(tmp_path):
    """{"data": [...]} is the split 'train' (or 'data'); {"train", "test"} read without a split gives 'test'."""
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS}))
    assert load_rows(wrapped, split="data")[0] == load_rows(wrapped)[0] == EXPECTED
    with pytest.raises(DataError, match=r"holds the splits \['data', 'train'\] and no split 'test'"):
        load_rows(wrapped, split="test")
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"train": ROWS[:3], "test": ROWS[3:]}))
    assert [e.prompt for e in load_rows(both, split=None)[0]] == ["q3"]


def test_a_hub_dataset_folder_with_several_configs_is_refused_not_mixed(tmp_path):
    """A local copy of a hub dataset whose card declares configurations (en/, fr/) was read whole, training on every
    configuration at once (datasets.load_dataset refuses it: "Config name is missing", unless the card marks one
    `default: true`, which it then reads, as preflab does now); one config's folder reads."""
    for name, rows in (("en", ROWS[:2]), ("fr", ROWS[2:])):
        (tmp_path / "ds" / name).mkdir(parents=True)
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "ds" / name / "train-00000-of-00001.parquet"))
    (tmp_path / "ds" / "README.md").write_text(
        "---\nconfigs:\n- config_name: en\n  default: true\n  data_files:\n  - split: train\n    path: en/train-*\n"
        "- config_name: fr\n  data_files: fr/*.parquet\n---\n# card\n")
    # 'en' is marked default: datasets.load_dataset(folder) reads it, and so does preflab (changes/trial-16.md)
    assert load_rows(tmp_path / "ds")[0] == load_rows(tmp_path / "ds" / "en")[0] == EXPECTED[:2]
    card = tmp_path / "ds" / "README.md"
    card.write_text(card.read_text().replace("  default: true\n", ""))
    with pytest.raises(DataError, match=r"declares 2 configurations \('en': en/train-\*; 'fr': "
                                        r"fr/\*.parquet\) and marks not exactly one `default: true`; reading the "
                                        r"whole folder would mix them"):
        load_rows(tmp_path / "ds")


def test_a_hub_dataset_card_with_one_config_reads_only_its_data_files(tmp_path):
    """A card with one configuration whose data_files name a subset of the folder: the whole folder was read (extra
    rows trained, silently); now each split reads the files the card names, as datasets.load_dataset does."""
    def write(rel, rows):
        (tmp_path / "ds" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / rel).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    write("clean/a.jsonl", ROWS[:2])
    write("raw/b.jsonl", ROWS[2:3])
    write("heldout/c.jsonl", ROWS[3:])
    card = tmp_path / "ds" / "README.md"
    card.write_text("---\nconfigs:\n- config_name: default\n  data_files: clean/*.jsonl\n---\n# card\n")
    assert load_rows(tmp_path / "ds")[0] == EXPECTED[:2]
    assert datasets.load_dataset(str(tmp_path / "ds"), split="train").num_rows == 2  # datasets reads the same
    with pytest.raises(DataError, match=r"names the split\(s\) \['train'\] in data_files and no split 'test'"):
        load_rows(tmp_path / "ds", split="test")
    card.write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: clean/*.jsonl\n"
                    "  - split: test\n    path: heldout/*\n---\n")
    assert load_rows(tmp_path / "ds", split="test")[0] == [PairExample(0, "q3", " yes 3", " no 3", {"margin": 3.0})]
    assert [e.prompt for e in load_rows(tmp_path / "ds")[0]] == ["q0", "q1"]
    with pytest.raises(DataError, match=r"\['test', 'train'\] in data_files and no split 'validation'"):
        load_rows(tmp_path / "ds", split="validation")
    card.write_text("---\nconfigs:\n- config_name: default\n  data_files: {train: gone/*.jsonl}\n---\n")
    with pytest.raises(DataError, match=r"data_files pattern 'gone/\*.jsonl' \(split 'train'\) matches no file"):
        load_rows(tmp_path / "ds")


def test_a_card_pattern_skips_hidden_files_as_datasets_does(tmp_path):
    """A card's data_files pattern that also matches hidden files (an editor's .swp copy, a .cache folder of the
    same suffix) reads only the visible ones, the rows datasets.load_dataset reads for the same card."""
    for rel, rows in (("clean/a.jsonl", ROWS[:2]), ("clean/.a.jsonl", ROWS[2:3]), ("clean/.cache/b.jsonl", ROWS[3:])):
        (tmp_path / "ds" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / rel).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "ds" / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: clean/**/*.jsonl\n---\n")
    assert load_rows(tmp_path / "ds")[0] == EXPECTED[:2]
    assert datasets.load_dataset(str(tmp_path / "ds"), split="train")["prompt"] == ["q0", "q1"]


def test_a_single_arrow_file_reads_as_datasets_reads_it(tmp_path):
    """A .arrow file (a datasets cache or save_to_disk shard) was refused as an unsupported file type; it now reads
    row by row, the same rows as datasets.Dataset.from_file, and so does an Arrow IPC file (feather v2)."""
    import shutil

    import pyarrow as pa
    import pyarrow.feather as feather

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    shard = next((tmp_path / "saved").glob("*.arrow"))
    shutil.copy(shard, tmp_path / "train.arrow")
    assert load_rows(tmp_path / "train.arrow")[0] == EXPECTED
    assert datasets.Dataset.from_file(str(tmp_path / "train.arrow")).to_list() == ROWS
    feather.write_feather(pa.Table.from_pylist(ROWS), str(tmp_path / "ipc.arrow"), compression="uncompressed")
    examples, report = load_rows(tmp_path / "ipc.arrow")
    assert examples == EXPECTED and report.source == str(tmp_path / "ipc.arrow")
    (tmp_path / "broken.arrow").write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError, match=r"broken.arrow: cannot read this Arrow file"):
        load_rows(tmp_path / "broken.arrow")
