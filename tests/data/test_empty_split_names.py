"""An empty split is refused naming the split and the file(s) read, and what to do (user trial 16: a folder whose
test.jsonl was empty gave "eval_dataset_name='.../emptysplit' (...) is empty: it holds no rows", naming the folder
only). preflab.data.report.refuse_empty / empty_error with RowReader.read_from (preflab.data.sources)."""
import json

import pytest

from preflab.cli import main
from preflab.data.report import refuse_empty
from preflab.data.rows import load_rows
from preflab.errors import DataError

ROWS = [{"prompt": f"question {i}", "chosen": f" answer {i}", "rejected": f" reply {i} dog"} for i in range(4)]
TRAIN = ["model_name_or_path=builtin:tiny-gpt2", "max_steps=1", "use_cpu=true", "disable_tqdm=true"]


def _folder(tmp_path, train: str, test: str):
    folder = tmp_path / "emptysplit"
    folder.mkdir()
    (folder / "train.jsonl").write_text(train)
    (folder / "test.jsonl").write_text(test)
    return folder


def _lines(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_an_empty_eval_split_names_the_split_its_file_and_eval_strategy_no(tmp_path, capsys):
    folder = _folder(tmp_path, _lines(ROWS), "")
    rc = main(["train", *TRAIN, f"dataset_name={folder}", f"eval_dataset_name={folder}", "eval_strategy=steps",
               "eval_steps=1", f"output_dir={tmp_path / 'out'}"])
    assert rc == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"preflab: error: eval_dataset_name='{folder}' ({folder}) is empty: its split 'test' (file "
        f"{folder / 'test.jsonl'}) holds no rows. Fill that file, point eval_dataset_name at data with rows, or set "
        "eval_strategy: no (no evaluation).")


def test_an_empty_training_split_names_the_split_and_its_file_with_its_blank_lines(tmp_path, capsys):
    folder = _folder(tmp_path, "\n\n", _lines(ROWS))
    rc = main(["train", *TRAIN, f"dataset_name={folder}", f"output_dir={tmp_path / 'out'}"])
    assert rc == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"preflab: error: dataset_name='{folder}' ({folder}) is empty: its split 'train' (file "
        f"{folder / 'train.jsonl'}) holds no rows (2 blank lines). Fill that file, or point dataset_name at data "
        "with rows.")


def test_a_split_of_several_empty_files_names_four_then_a_count(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    names = [f"train-0000{i}-of-00005.jsonl" for i in range(5)]
    for name in names:
        (folder / name).write_text("")
    rows, report = load_rows(str(folder))
    assert (rows, report.total) == ([], 0)
    with pytest.raises(DataError) as err:
        refuse_empty(report, "dataset_name", str(folder))
    shown = ", ".join(str(folder / n) for n in names[:4])
    assert str(err.value) == (f"dataset_name='{folder}' ({folder}) is empty: its split 'train' (files {shown} and 1 "
                              "more) holds no rows. Fill those files, or point dataset_name at data with rows.")


def test_a_json_object_files_empty_split_is_named_but_not_the_file_again(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": ROWS, "test": []}))
    rows, report = load_rows(str(path), split="test")
    with pytest.raises(DataError) as err:
        refuse_empty(report, "eval_dataset_name", str(path))
    assert str(err.value) == (f"eval_dataset_name='{path}' ({path}) is empty: its split 'test' holds no rows. Fill "
                              "it, point eval_dataset_name at data with rows, or set eval_strategy: no (no "
                              "evaluation).")


@pytest.fixture(scope="module")
def tiny():
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    return tok, tiny_causal_lm(tok, seed=1).eval(), tiny_causal_lm(tok, seed=2).eval()


def test_preflab_eval_of_a_folder_with_an_empty_test_split_names_it_not_the_columns(tiny, tmp_path):
    # before: "no usable pairs in FOLDER: FOLDER (pairwise): 0 rows ... Check the columns and --max-length."
    from preflab.eval.run import evaluate_models

    tok, policy, ref = tiny
    folder = _folder(tmp_path, _lines(ROWS), "\n")
    with pytest.raises(DataError) as err:
        evaluate_models(policy, tok, str(folder), ref=ref)
    assert str(err.value) == (f"--data {folder} is empty: its split 'test' (file {folder / 'test.jsonl'}) holds no "
                              "rows (1 blank lines). Fill that file, or give --data a source with rows (or --split "
                              "another split of it).")


def test_a_reward_eval_of_an_empty_split_names_it_not_no_pair_left(tmp_path):
    # before: "FOLDER: no pair left to score (0 rows; skipped: none). ... fix the rows or point --data at other rows."
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.heads import build_reward_model
    from preflab.data.sources import RowReader

    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-gpt2", 1, tok, seed=1).eval()
    folder = _folder(tmp_path, _lines(ROWS), "")
    with pytest.raises(DataError) as err:
        evaluate_reward_model(model, RowReader(str(folder), split="test"), tokenizer=tok)
    assert str(err.value) == (f"--data {folder} is empty: its split 'test' (file {folder / 'test.jsonl'}) holds no "
                              "rows. Fill that file, or give --data a source with rows (or --split another split of "
                              "it).")


def test_an_attribute_reward_eval_of_an_empty_split_names_it(tmp_path):
    from preflab.data.sources import RowReader
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.attribute_eval import evaluate_attribute_model
    from tests.reward_models.test_attribute_eval import CountingRewardModel

    tok = tiny_tokenizer()
    folder = _folder(tmp_path, _lines(ROWS), "")
    with pytest.raises(DataError) as err:
        evaluate_attribute_model(CountingRewardModel(tok), RowReader(str(folder), split="test"), tok)
    assert str(err.value) == (f"--data {folder} is empty: its split 'test' (file {folder / 'test.jsonl'}) holds no "
                              "rows. Fill that file, or give --data a source with rows (or --split another split of "
                              "it).")


LISTS = [{"prompt": "echo: sun\n", "completions": ["SUN", "sun", "Sun"], "scores": [1.0, 0.0, 0.5]}] * 4
MESSAGES = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"yo {i}"}]}
            for i in range(4)]


@pytest.mark.parametrize("run, rows, option", [
    # listwise said "dataset_name=... holds no rows." and, for its eval set, "the eval set (...) has no usable
    # examples"; SFT said "'FOLDER' (FOLDER) is empty: it holds no rows.", its eval set with no option's fix
    (["loss_type=rrhf", "model_name_or_path=builtin:tiny-llama", "max_length=64", "eval_fraction=0"], LISTS,
     "dataset_name"),
    (["loss_type=rrhf", "model_name_or_path=builtin:tiny-llama", "max_length=64"], LISTS, "eval_dataset_name"),
    (["task=sft", "model_name_or_path=builtin:tiny-gpt2"], MESSAGES, "dataset_name"),
    (["task=sft", "model_name_or_path=builtin:tiny-gpt2"], MESSAGES, "eval_dataset_name"),
    (["task=sft", "model_name_or_path=builtin:tiny-gpt2", "streaming=true"], MESSAGES, "eval_dataset_name"),
])
def test_every_loader_names_the_empty_split_and_its_file(tmp_path, capsys, run, rows, option):
    empty = "train" if option == "dataset_name" else "test"
    folder = _folder(tmp_path, "" if empty == "train" else _lines(rows), _lines(rows) if empty == "train" else "")
    given = [f"dataset_name={folder}"] + ([f"eval_dataset_name={folder}", "eval_steps=1"]
                                          if option == "eval_dataset_name" else [])
    rc = main(["train", *run, *given, "max_steps=1", "use_cpu=true", "disable_tqdm=true",
               f"output_dir={tmp_path / 'out'}"])
    assert rc == 2
    fix = ("point eval_dataset_name at data with rows, or set eval_strategy: no (no evaluation)."
           if option == "eval_dataset_name" else "or point dataset_name at data with rows.")
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"preflab: error: {option}='{folder}' ({folder}) is empty: its split '{empty}' (file "
        f"{folder / (empty + '.jsonl')}) holds no rows. Fill that file, {fix}")


def test_a_streamed_empty_training_split_names_it(tmp_path, capsys):
    # stream.py said "FOLDER is empty: it holds no rows."
    folder = _folder(tmp_path, "", _lines(ROWS))
    rc = main(["train", *TRAIN, "streaming=true", f"dataset_name={folder}", f"output_dir={tmp_path / 'out'}"])
    assert rc == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"preflab: error: {folder} is empty: its split 'train' (file {folder / 'train.jsonl'}) holds no rows. Fill "
        "that file, or point dataset_name at data with rows.")


def test_a_diffusion_pairs_folder_with_an_empty_split_names_it(tmp_path):
    # load_image_pairs said "FOLDER is empty: it holds no rows." (its reader's split and file were not kept)
    from preflab.diffusion.data import load_image_pairs

    folder = _folder(tmp_path, "\n", "")
    with pytest.raises(DataError) as err:
        load_image_pairs(str(folder), resolution=8)
    assert str(err.value) == (f"{folder} is empty: its split 'train' (file {folder / 'train.jsonl'}) holds no rows "
                              "(1 blank lines). Fill that file, or point to data with rows.")


def test_rows_given_in_memory_name_no_split():
    rows, report = load_rows([])
    with pytest.raises(DataError) as err:
        refuse_empty(report, "dataset_name", "<rows>")
    assert str(err.value) == ("dataset_name='<rows>' (<rows>) is empty: it holds no rows. Fill it, or point "
                              "dataset_name at data with rows.")
