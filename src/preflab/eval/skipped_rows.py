"""The bad rows of `preflab eval --data`, skipped and counted, for the evals that read --data through a run's own
reader (`--task vlm`: preflab.loops.vlm.prepare_vision_data; `--task diffusion`: preflab.loops.diffusion.DiffusionRun).

The policy eval has always read --data with on_bad_row: skip, said how many rows it left out and why in a note, and
listed them under eval.json's `data_report`. The vlm and diffusion evals read --data with the run's saved
on_bad_row (`error` unless the run set `skip`), so one bad row stopped the eval with "Fix the row or set on_bad_row:
skip", an option `preflab eval` does not take. They now skip as the policy eval does, and this module words the note
and picks the report parts from the run's data report ({"train_rows": RowReport.to_dict(), "train_tokenize": ...,
"skipped": {reason: count}}: preflab.data.report.training_skipped's form).
"""
from __future__ import annotations

from preflab.data.report import first_skipped_note
from preflab.errors import DataError

EVAL_ON_BAD_ROW = "on_bad_row=skip"  # the override the vlm and diffusion evals read --data with


def first_skipped(data_report: dict) -> str:
    """' First skipped: line L, field 'F': REASON (DETAIL).' of the first bad row the report kept an example of."""
    return first_skipped_note(data_report.get("train_rows"), data_report.get("train_tokenize"))


def skipped_rows_note(data_report: dict, kept: int, source: str, unit: str = "pairs") -> tuple[str | None, dict]:
    """(the note, eval.json's data_report) for the rows of --data `source` the eval skipped: (None, {}) when none
    was. `kept`: the pairs evaluated. Every row skipped is a DataError naming the reasons and the first bad row (a
    metric over no pairs is no measurement)."""
    skipped = {reason: int(n) for reason, n in (data_report.get("skipped") or {}).items() if n}
    if not skipped:
        return None, {}
    count = sum(skipped.values())
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
    if kept == 0:
        raise DataError(f"no usable {unit} in --data {source}: every row was skipped as bad ({reasons})."
                        f"{first_skipped(data_report)} Fix the rows.")
    note = (f"data: {count} bad row(s) of --data {source} skipped ({reasons}).{first_skipped(data_report)} The rows "
            f"are listed under data_report in eval.json; the metrics cover the {kept} {unit} kept")
    parts = {name: data_report[part] for name, part in (("rows", "train_rows"), ("tokenize", "train_tokenize"))
             if part in data_report}
    return note, parts
