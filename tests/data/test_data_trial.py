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
    with pytest.raises(DataError, match=r"row 0, field 'prompt': the text contains '<\|im_start\|>'.*Give the "
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
