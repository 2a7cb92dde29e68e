"""KTO's unpaired `label` given as numbers (TRL 1.16's KTOTrainer reads the column with
torch.as_tensor(label, dtype=torch.bool) and counts desirable rows as sum(label)): 1 / 0 and 1.0 / 0.0 (JSON, a
pandas float column in Parquet, their CSV text) load as the same examples as true / false, and any other value is a
bad row naming the file, row, line and field."""
import csv
import json
import math

import pytest
import torch

from preflab.data.rows import load_rows
from preflab.errors import DataError
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

PROMPTS = [("p0", " good", True), ("p1", " bad", False), ("p2", " fine", True), ("p3", " wrong", False)]


def _rows(label_of):
    return [{"prompt": p, "completion": c, "label": label_of(y)} for p, c, y in PROMPTS]


def _csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "completion", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("label_of, writer", [
    (int, write_jsonl), (float, write_jsonl), (int, _csv), (float, _csv),  # CSV: "1" / "0", "1.0" / "0.0" (pandas' float column)
    (lambda y: str(y), _csv),  # pandas writes a bool column as "True" / "False"
])
def test_numeric_labels_load_as_the_boolean_rows(tmp_path, label_of, writer):
    """The examples read from 1 / 0 (or 1.0 / 0.0, or their text) equal those read from true / false, row for row,
    and each label is the bool TRL's as_tensor(..., dtype=torch.bool) makes of the number."""
    reference, _ = load_rows(write_jsonl(tmp_path / "bool.jsonl", _rows(bool)), kind="unpaired")
    suffix = ".csv" if writer is _csv else ".jsonl"
    examples, report = load_rows(writer(tmp_path / f"numbers{suffix}", _rows(label_of)), kind="unpaired")
    assert examples == reference and report.kept == len(PROMPTS)
    assert [e.label for e in examples] == [True, False, True, False]
    numbers = [label_of(y) for _, _, y in PROMPTS]
    if not isinstance(numbers[0], str):
        assert torch.as_tensor(numbers, dtype=torch.bool).tolist() == [e.label for e in examples]


def test_parquet_float_labels(tmp_path):
    """A pandas DataFrame whose label column became float (1.0 / 0.0) saved as Parquet reads as the bools."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = _rows(float)
    path = tmp_path / "kto.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    examples, _ = load_rows(path, kind="unpaired")
    reference, _ = load_rows(_rows(bool), kind="unpaired")
    assert [(e.prompt, e.completion, e.label) for e in examples] == [(e.prompt, e.completion, e.label)
                                                                     for e in reference]


@pytest.mark.parametrize("value, reason, detail", [
    (2, "invalid_label", "got 2"), (0.5, "invalid_label", "got 0.5"), (-1, "invalid_label", "got -1"),
    ("yes", "invalid_label", "got 'yes'"), (None, "missing_field", "missing"),
    (float("nan"), "missing_field", "NaN"),
])
def test_other_labels_are_bad_rows_naming_file_row_and_field(tmp_path, value, reason, detail):
    """2, 0.5, -1 (TRL: desirable, and counted as that number in its class balance), "yes", null and NaN: an error
    naming the file, row, line and field; with on_bad_row: skip the row is counted under its reason."""
    rows = _rows(bool)
    rows[2]["label"] = value
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # NaN: JSON's NaN token
    with pytest.raises(DataError) as info:
        load_rows(path, kind="unpaired")
    message = str(info.value)
    assert message.startswith(f"{path} row 2 (line 3), field 'label': ")
    assert detail in message
    assert (info.value.row_id, info.value.field, info.value.reason) == (2, "label", reason)
    examples, report = load_rows(path, kind="unpaired", on_bad_row="skip")
    assert [e.row_id for e in examples] == [0, 1, 3] and report.skipped == {reason: 1}
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        assert bool(torch.as_tensor([value], dtype=torch.bool)[0])  # what TRL would have trained it as
