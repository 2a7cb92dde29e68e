"""Fourth new-user trial (user-trial-4): each finding's symptom, pinned by the message or value a user sees."""
import pytest

from preflab.data.rows import load_rows
from preflab.errors import DataError
from tests.jsonl_files import write_jsonl


def _weighted_pairs(n: int, odd_row: int, odd_weight) -> list[dict]:
    rows = [{"prompt": f"echo: w{i}", "chosen": f"W{i}!", "rejected": f"w{i}", "weight": 0.5 + i / 10}
            for i in range(n)]
    rows[odd_row]["weight"] = odd_weight
    return rows


def test_an_extra_that_is_a_list_in_one_row_and_a_number_in_the_others_is_a_bad_row_at_load(tmp_path):
    """Before: the row passed the load check, the column was left out of the batch that held it (stack_extras), and
    after some training steps the objective stopped with "needs batch.extras['weight'], which this batch does not
    carry ... Add a 'weight' column", though every row had one."""
    path = write_jsonl(tmp_path / "w.jsonl", _weighted_pairs(6, 4, [1, 2]))
    with pytest.raises(DataError) as err:
        load_rows(path, required_extras={"weight": (0.0, None)})
    msg = str(err.value)
    assert "row 4 (line 5), field 'weight'" in msg
    assert "a list ([1, 2]) where row 0 holds a number (0.5)" in msg
    examples, report = load_rows(path, required_extras={"weight": (0.0, None)}, on_bad_row="skip")
    assert [ex.row_id for ex in examples] == [0, 1, 2, 3, 5]
    assert report.skipped == {"invalid_extra": 1}
    # lists in every row (one nesting) are one kind: all kept
    rows = [dict(r, weight=[r["weight"], 1.0]) for r in _weighted_pairs(4, 0, 0.5)]
    assert len(load_rows(write_jsonl(tmp_path / "l.jsonl", rows), required_extras=["weight"])[0]) == 4
