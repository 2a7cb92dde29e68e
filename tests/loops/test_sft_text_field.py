"""TRL SFTConfig's dataset_text_field: a language-modeling row's text read from the named column (task: sft); the
same token ids as the row under 'text'; ambiguous rows are bad rows naming both columns; other tasks refuse it."""
import json

import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError, DataError
from preflab.loops.sft import prepare_sft
from preflab.models.tiny import tiny_tokenizer


def _cfg(**kw):
    return config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "max_length": 64, **kw})


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_named_column_gives_the_token_ids_of_a_text_column(tmp_path):
    tok = tiny_tokenizer()
    texts = ["echo: hat\nHAT", "echo: dog\nDOG"]
    theirs = _write(tmp_path / "content.jsonl", [{"content": t, "source": "web"} for t in texts])
    ours = _write(tmp_path / "text.jsonl", [{"text": t, "source": "web"} for t in texts])
    named, _, _ = prepare_sft(_cfg(dataset_name=theirs, dataset_text_field="content"), tok)
    plain, _, _ = prepare_sft(_cfg(dataset_name=ours), tok)
    assert [(x.prompt_ids, x.completion_ids, x.extras) for x in named] == \
        [(x.prompt_ids, x.completion_ids, x.extras) for x in plain]
    assert len(named) == 2 and named[0].completion_ids  # something was read


def test_messages_rows_are_read_as_they_are_with_a_text_field_set(tmp_path):
    tok = tiny_tokenizer()
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI"}]}]
    a, _, _ = prepare_sft(_cfg(dataset_name=_write(tmp_path / "m.jsonl", rows), dataset_text_field="content"), tok)
    b, _, _ = prepare_sft(_cfg(dataset_name=_write(tmp_path / "n.jsonl", rows)), tok)
    assert [(x.prompt_ids, x.completion_ids) for x in a] == [(x.prompt_ids, x.completion_ids) for x in b]


@pytest.mark.parametrize("row, said", [
    ({"content": "a", "text": "b"}, r"row 0 \(line 1\), field 'text': the row has both the dataset_text_field column "
                                    r"'content' and a 'text' column\. Drop the 'text' column"),
    ({"text": "b"}, r"row 0 \(line 1\), field 'content': missing: dataset_text_field is 'content', and the row has a "
                    r"'text' column instead\. Rename the column"),
    ({"content": ""}, r"row 0 \(line 1\), field 'content'"),  # the text's own checks name the user's column
])
def test_an_ambiguous_or_missing_text_column_is_a_bad_row_naming_it(tmp_path, row, said):
    with pytest.raises(DataError, match=said):
        prepare_sft(_cfg(dataset_name=_write(tmp_path / "d.jsonl", [row]), dataset_text_field="content"),
                    tiny_tokenizer())


def test_other_tasks_refuse_it():
    with pytest.raises(ConfigError, match="dataset_text_field.*task: sft"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                          "dataset_text_field": "content"})
