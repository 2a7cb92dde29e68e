"""Data-loading findings of the data and evaluation user trial (changes/trial-data.md)."""
import json
import sys
from pathlib import Path

import pytest

from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.errors import DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "families"))
from families import family_tokenizer  # noqa: E402


def test_pretemplated_text_rows_are_told_to_use_messages(tmp_path):
    """A TRL dataset whose text prompts hold a chat template's render (<|im_start|>user ...) is refused as control
    tokens in text; the advice was only "write it differently (e.g. with a space inside)", which would train on
    broken turn markers. It now names the conversational form that applies the template once."""
    tok = family_tokenizer("chatml")
    row = {"prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "chosen": "HELLO", "rejected": "hi"}
    path = tmp_path / "templated.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"row 0 \(line 1\), field 'prompt': the text contains '<\|im_start\|>'.*Give the "
                                        r"conversation as messages instead"):
        tokenize_pairs(load_rows(str(path))[0], tok, source=str(path))
    conv = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "HELLO"}],
            "rejected": [{"role": "assistant", "content": "hi"}]}
    (pair,), _ = tokenize_pairs(load_rows([conv])[0], tok)
    assert tok.decode(pair.prompt_ids).endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_eval_split_without_eval_dataset_name_says_how_to_evaluate_that_split(tmp_path, capsys):
    """eval_split: test (or TRL's dataset_test_split) with eval_steps but no eval_dataset_name runs no evaluation;
    the note said only "no eval set", not that eval_split names a split of eval_dataset_name, nor how to get
    dataset_name's test split."""
    from preflab.config import config_from_dict
    from preflab.data.eval_set import note_eval_steps_without_eval_set

    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "data/prefs",
                            "output_dir": str(tmp_path / "out"), "eval_split": "test", "eval_steps": 5})
    capsys.readouterr()
    note_eval_steps_without_eval_set(cfg)
    assert ("eval_split='test' names a split of eval_dataset_name, not of dataset_name: to evaluate on data/prefs's "
            "'test' split, set eval_dataset_name: data/prefs.") in capsys.readouterr().out


H4_ROW = {"prompt": "What color is the sky?", "prompt_id": "p1",
          "chosen": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What color is the sky?"},
                     {"role": "assistant", "content": "Blue."}],
          "rejected": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "What color is the sky?"},
                       {"role": "assistant", "content": "Green."}],
          "messages": [{"role": "user", "content": "What color is the sky?"}], "score_chosen": 8.0,
          "score_rejected": 3.0}


def test_text_prompt_beside_whole_conversations_reads_as_trl(tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized's rows (a text prompt, chosen / rejected holding the whole
    conversation) were refused as mixed forms; TRL 1.16 takes the conversations' shared turns as the prompt
    (maybe_extract_prompt). The same split now, checked against TRL's own function; a text prompt that is not the
    conversations' last shared user turn is still refused, naming both."""
    from trl.data_utils import maybe_extract_prompt

    for suffix in (".jsonl", ".parquet"):
        path = tmp_path / f"h4{suffix}"
        if suffix == ".jsonl":
            path.write_text(json.dumps(H4_ROW) + "\n")
        else:
            import datasets
            datasets.Dataset.from_list([H4_ROW]).to_parquet(str(path))
        (ex,), report = load_rows(str(path))
        trl = maybe_extract_prompt(dict(H4_ROW))
        assert (ex.prompt, ex.chosen, ex.rejected) == (trl["prompt"], trl["chosen"], trl["rejected"])
        assert report.forms == {"conversational_implicit_text_prompt": 1}
        assert ex.extras["score_chosen"] == 8.0
    other = dict(H4_ROW, prompt="What color is grass?")
    with pytest.raises(DataError, match=r"field 'prompt': is text \('What color is grass\?'\) but 'chosen' and "
                                        r"'rejected' are whole conversations whose last shared user turn is 'What "
                                        r"color is the sky\?'"):
        load_rows([other])
    tok = family_tokenizer("chatml")
    (pair,), _ = tokenize_pairs(load_rows([H4_ROW])[0], tok)
    assert tok.decode(pair.chosen_ids) == "Blue.<|im_end|>\n"


def test_a_json_table_stored_by_columns_is_named_as_such(tmp_path):
    """{"prompt": [...], "chosen": [...], "rejected": [...]} was refused as "the file holds the splits ['chosen',
    'prompt', 'rejected']", and pandas' default to_json ({"prompt": {"0": ...}}) as one row whose fields are dicts;
    both now say the table is stored by columns and how to write rows. A one-row file of conversations (lists of
    message objects) still reads as that row."""
    by_lists = tmp_path / "cols.json"
    by_lists.write_text(json.dumps({"prompt": ["a", "b"], "chosen": ["A", "B"], "rejected": ["x", "y"]}))
    by_index = tmp_path / "pandas.json"
    by_index.write_text(json.dumps({"prompt": {"0": "a"}, "chosen": {"0": "A"}, "rejected": {"0": "x"}}))
    for path in (by_lists, by_index):
        with pytest.raises(DataError, match=r"one array \(or index->value object\) per column \(chosen, prompt, "
                                            r"rejected\): a table stored by columns, not rows"):
            load_rows(str(path))
    conv = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "HI"}],
            "rejected": [{"role": "assistant", "content": "hi"}]}
    one = tmp_path / "one.json"
    one.write_text(json.dumps(conv))
    (ex,), _ = load_rows(str(one))
    assert ex.chosen == conv["chosen"]
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": [{"prompt": "p", "chosen": "a", "rejected": "b"}], "test": []}))
    assert len(load_rows(str(splits), split="train")[0]) == 1


def test_hub_shards_with_a_fingerprint_keep_their_split(tmp_path):
    """Hub shards written by datasets 2.x push_to_hub carry a fingerprint (train_prefs-00000-of-00001-<hash>.parquet,
    HuggingFaceH4/ultrafeedback_binarized's layout). They were not recognised as shards, so split 'train' matched
    train_prefs and train_sft by prefix and read both, mixing the SFT split into the preference data (datasets
    refuses split 'train' there); the shard name now gives its split exactly."""
    import datasets

    rows = [{"prompt": f"q{i}", "chosen": f"A{i}", "rejected": f"b{i}"} for i in range(8)]
    (tmp_path / "data").mkdir()
    for j, name in enumerate(("train_prefs", "train_sft", "test_prefs", "test_sft")):
        datasets.Dataset.from_list(rows[2 * j:2 * j + 2]).to_parquet(
            str(tmp_path / "data" / f"{name}-00000-of-00001-{j}a09b74b3ef9c3b5.parquet"))
    assert [e.prompt for e in load_rows(str(tmp_path), split="train_prefs")[0]] == ["q0", "q1"]
    assert [e.prompt for e in load_rows(str(tmp_path), split="test_sft")[0]] == ["q6", "q7"]
    for split in ("train", "test"):
        with pytest.raises(DataError, match=rf"split\(s\) \['test_prefs', 'test_sft', 'train_prefs', 'train_sft'\] "
                                            rf"and none of split '{split}'"):
            load_rows(str(tmp_path), split=split)


def test_split_named_folders_are_never_read_as_another_split(tmp_path):
    """The hub's parquet conversion layout (default/train_prefs/0000.parquet, default/test_prefs/0000.parquet) has no
    file named after a split, so split 'train' read both folders: the test split trained on. Folders named after a
    split now count as that split."""
    import datasets

    rows = [{"prompt": f"q{i}", "chosen": f"A{i}", "rejected": f"b{i}"} for i in range(4)]
    for j, name in enumerate(("train_prefs", "test_prefs")):
        (tmp_path / "default" / name).mkdir(parents=True)
        datasets.Dataset.from_list(rows[2 * j:2 * j + 2]).to_parquet(str(tmp_path / "default" / name / "0000.parquet"))
    with pytest.raises(DataError, match=r"split\(s\) \['test_prefs', 'train_prefs'\] and none of split 'train'"):
        load_rows(str(tmp_path), split="train")
    assert [e.prompt for e in load_rows(str(tmp_path), split="test_prefs")[0]] == ["q2", "q3"]


def test_a_folder_of_compressed_data_files_is_read_and_one_it_cannot_read_is_refused(tmp_path):
    """Anthropic/hh-rlhf's layout (helpful-base/train.jsonl.gz, ...): beside an uncompressed file its compressed files
    were dropped without a word (only the .jsonl trained); gzip, bz2 and xz files are now read (local-paths trial),
    and a folder holding a compression preflab does not read (zstd, zip, ...) is refused, naming the files."""
    import gzip

    row = json.dumps({"prompt": "q", "chosen": "A", "rejected": "b"}) + "\n"
    (tmp_path / "helpful-base").mkdir()
    with gzip.open(tmp_path / "helpful-base" / "train.jsonl.gz", "wt") as fh:
        fh.write(row * 3)
    (tmp_path / "harmless-base").mkdir()
    (tmp_path / "harmless-base" / "train.jsonl").write_text(row.replace('"q"', '"q2"'))
    examples, report = load_rows(str(tmp_path))
    assert [e.prompt for e in examples] == ["q2", "q", "q", "q"] and report.total == 4
    (tmp_path / "helpful-base" / "test.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(DataError, match=r"compressed data files preflab does not read \(helpful-base/test.jsonl.zst; "
                                        r"it reads .*\.jsonl, \.json, \.csv compressed as \.gz, \.bz2, \.xz\)"):
        load_rows(str(tmp_path))


def test_chat_template_kwargs_as_json_text_reach_the_template(tmp_path):
    """A chat_template_kwargs column read from CSV is JSON text; it failed as "the chat template failed: ValueError:
    dictionary update sequence ..." (tools as text were already parsed). It is now parsed the same way, and a value
    that is no object is a bad row naming the column."""
    tok = family_tokenizer("qwen3")
    conv = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "HI"}],
            "rejected": [{"role": "assistant", "content": "hi"}]}
    (as_text,), _ = tokenize_pairs(load_rows([dict(conv, chat_template_kwargs='{"enable_thinking": false}')])[0], tok)
    (as_dict,), _ = tokenize_pairs(load_rows([dict(conv, chat_template_kwargs={"enable_thinking": False})])[0], tok)
    (plain,), _ = tokenize_pairs(load_rows([conv])[0], tok)
    assert as_text.prompt_ids == as_dict.prompt_ids != plain.prompt_ids  # the kwarg reached the template
    with pytest.raises(DataError, match=r"field 'chat_template_kwargs': expected an object of chat template "
                                        r"arguments"):
        tokenize_pairs(load_rows([dict(conv, chat_template_kwargs="[1, 2]")])[0], tok)
