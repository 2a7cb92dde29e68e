"""`preflab eval`'s refusals of a bad alpha or extra_responses value name the row as the data report does: its row
and, for a data file, the file's 1-based line (blank lines counted), not a bare 0-based "row"; alphas given to the
ranking functions from Python (preflab.eval.ranking, as the lab uses them) are named by their index."""
import json
import re

import pytest

from preflab.errors import DataError
from preflab.eval.ranking import idealized_ranking_accuracy
from preflab.eval.run import evaluate_models
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

ROWS = [{"prompt": "what is two plus three ?", "chosen": " five", "rejected": " the cat sat"},
        {"prompt": "hello world ,", "chosen": " preference optimization", "rejected": " the dog ran"}]


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer("bytelevel")
    return tok, tiny_causal_lm(tok, seed=1).eval(), tiny_causal_lm(tok, seed=2).eval()


def _file(tmp_path, second: dict):
    """ROWS[0] on line 2 and `second` on line 4 (a blank line before each): rows 0 and 1."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n" + json.dumps(dict(ROWS[0], alpha=0.5)) + "\n\n" + json.dumps(second) + "\n")
    return path


def test_a_bad_alpha_in_a_data_file_names_its_line(tiny, tmp_path):
    # before: "<file>, row 1, field 'alpha'", where the data report names the same row "row 1 (line 4)"
    tok, policy, ref = tiny
    path = _file(tmp_path, dict(ROWS[1], alpha=75))
    with pytest.raises(DataError) as err:
        evaluate_models(policy, tok, str(path), ref=ref)
    assert str(err.value) == (f"{path} row 1 (line 4), field 'alpha': 75 is not a rater proportion in [0, 1] "
                              "(P(chosen preferred over rejected); e.g. 0.75, not 75). Fix the column, or pass "
                              "--alpha-column with the right one.")


def test_a_bad_alpha_in_rows_given_from_python_names_the_row(tiny):
    tok, policy, ref = tiny
    with pytest.raises(DataError, match=r"^<rows> row 1, field 'alpha': 75 is not a rater proportion"):
        evaluate_models(policy, tok, [dict(ROWS[0], alpha=0.5), dict(ROWS[1], alpha=75)], ref=ref)


def test_bad_extra_responses_in_a_data_file_name_their_line(tiny, tmp_path):
    tok, policy, ref = tiny
    path = _file(tmp_path, dict(ROWS[1], extra_responses=" six"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))} row 1 \(line 4\), field 'extra_responses': a list"):
        evaluate_models(policy, tok, str(path), ref=ref)
    path = _file(tmp_path, dict(ROWS[1], extra_responses=[{"text": " six"}]))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))} row 1 \(line 4\), field 'extra_responses': each"):
        evaluate_models(policy, tok, str(path), ref=ref)


def test_alphas_given_from_python_are_named_by_index():
    with pytest.raises(ValueError, match=re.escape("a probability in [0, 1]; got 75.0 (at index 1). Pass 1 for")):
        idealized_ranking_accuracy([-1.0, -2.0], [-2.0, -1.0], [0.5, 75.0], 0.1)
