"""The row reader's limits at their boundaries (preflab.data.sources): the deepest row that reads and the first that
is refused, a row of exactly max_row_bytes, and the limit on rows read. Planted bugs (benchmarks/mutation.py,
mutation-data round) that moved a limit by one survived the tests of far-off values (250 levels, 5000 bytes)."""
import json

import pytest

from preflab.data.rows import load_rows
from preflab.data.sources import MAX_NESTING_DEPTH, RowReader
from preflab.errors import DataError


def _nested(lists: int) -> dict:
    """A row whose column 'meta' holds `lists` nested lists: its innermost list is `lists` levels below the row."""
    value = "leaf"
    for _ in range(lists):
        value = [value]
    return {"prompt": "q", "chosen": " a", "rejected": " b", "meta": value}


def test_the_deepest_row_that_reads_and_the_first_that_is_refused(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [_nested(MAX_NESTING_DEPTH - 1), _nested(MAX_NESTING_DEPTH)]  # the row itself is the first level
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = list(RowReader(path))
    assert first.problem is None and first.data == rows[0]
    assert second.data is None and second.problem.reason == "nested_too_deeply"
    assert second.problem.field == "meta"
    memory = list(RowReader(rows))  # in-memory rows are walked the same way
    assert [r.problem is None for r in memory] == [True, False]


def test_a_row_of_exactly_max_row_bytes_reads_and_one_byte_more_is_refused(tmp_path):
    line = (json.dumps({"prompt": "q", "chosen": " a", "rejected": " b"}) + "\n").encode()
    path = tmp_path / "train.jsonl"
    path.write_bytes(line + line.replace(b'" b"', b'" bb"'))
    fits, over = list(RowReader(path, max_row_bytes=len(line)))
    assert fits.problem is None and fits.data["rejected"] == " b"
    assert over.problem.reason == "row_too_large" and f"{len(line) + 1} bytes" in over.problem.detail


def test_limit_reads_exactly_that_many_rows_across_files(tmp_path):
    for name, ids in (("a.jsonl", range(3)), ("b.jsonl", range(3, 6))):
        (tmp_path / name).write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in ids))
    read = list(RowReader(str(tmp_path / "*.jsonl"), limit=4))
    assert [(r.row_id, r.data["prompt"]) for r in read] == [(0, "q0"), (1, "q1"), (2, "q2"), (3, "q3")]
    assert [r.file for r in read] == [str(tmp_path / "a.jsonl")] * 3 + [str(tmp_path / "b.jsonl")]


def test_a_split_name_is_the_whole_file_name_or_its_prefix_before_a_separator(tmp_path):
    """split 'val' is not validation.jsonl (datasets refuses it too): reading that file would evaluate on a split
    that was not asked for. A planted bug matching any name that starts with the split survived the split tests."""
    rows = {"train": [{"prompt": "t", "chosen": " a", "rejected": " b"}],
            "validation": [{"prompt": "v", "chosen": " a", "rejected": " b"}],
            "val_extra-1": [{"prompt": "x", "chosen": " a", "rejected": " b"}]}
    (tmp_path / "d").mkdir()
    for name in ("train", "validation"):
        (tmp_path / "d" / f"{name}.jsonl").write_text(json.dumps(rows[name][0]) + "\n")
    with pytest.raises(DataError, match=r"split\(s\) \['train', 'validation'\] and none of split 'val'"):
        load_rows(str(tmp_path / "d"), split="val")
    assert [e.prompt for e in load_rows(str(tmp_path / "d"), split="validation")[0]] == ["v"]
    (tmp_path / "d" / "val_extra-1.jsonl").write_text(json.dumps(rows["val_extra-1"][0]) + "\n")  # val_*: split val
    assert [e.prompt for e in load_rows(str(tmp_path / "d"), split="val")[0]] == ["x"]


def test_a_blank_csv_line_is_a_counted_blank_line_not_a_row(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("prompt,chosen,rejected\nq0, a, b\n\nq1, c, d\n")
    read = list(RowReader(path))
    assert [(r.row_id, r.line, r.data["prompt"]) for r in read] == [(0, 2, "q0"), (1, 4, "q1")]
    examples, report = load_rows(path)
    assert [e.prompt for e in examples] == ["q0", "q1"] and report.blank_lines == 1 and report.total == 2
