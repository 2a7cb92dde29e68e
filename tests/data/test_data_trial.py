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
