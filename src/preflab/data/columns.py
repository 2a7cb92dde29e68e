"""Read a dataset whose columns are named differently (`dataset_columns`: preflab field <- dataset column).

    source = with_columns("train.jsonl", {"prompt": "question", "chosen": "good", "rejected": "bad"})
    RowReader(source)  # every row as {"prompt": row["question"], "chosen": row["good"], "rejected": row["bad"], ...}

The renaming happens once, in the reader (preflab.data.sources.RowReader), before any reader of a data kind sees the
row, so every kind that reads named columns (pairs, KTO, SFT, reward pairs, ranked lists, online prompts, VLM
images, diffusion pairs, rated rows) reads the renamed row the same way. All renames apply at once, so a swap
({chosen: rejected, rejected: chosen}) is well defined.

Refused, never guessed (a DataError naming the file, the row, the option and the row's columns):
- a mapped column that a row does not have (a typo, or the mapping of another dataset);
- a field that is also a column of the row and is not itself renamed away ({prompt: question} on rows that hold
  `prompt` too): which of the two is the prompt is ambiguous.
A renamed-away column is not kept under its old name, so no reader sees it twice (it is not an extra, and the
"a 'question' column looks like an unread prompt" check does not fire on it).
"""
from __future__ import annotations

from dataclasses import dataclass

from preflab.data.report import RowProblem, row_error
from preflab.dataset_columns_options import DIRECTION, OPTION
from preflab.errors import ConfigError


@dataclass(frozen=True)
class MappedColumns:
    """`source` (anything a RowReader reads) read with `columns` ((field, column) pairs); `option` is the setting
    that gave them (dataset_columns, or preflab eval's --data-columns), for messages."""

    source: object
    columns: tuple[tuple[str, str], ...]
    option: str = OPTION

    def __str__(self) -> str:
        return str(self.source)


def with_columns(source, columns: dict | None, option: str = OPTION):
    """`source` as given when `columns` is empty, else MappedColumns(source, columns, option); a source already
    mapped is mapped once (the outer mapping is refused: two mappings of one source would compose silently)."""
    if not columns:
        return source
    if isinstance(source, MappedColumns):
        if dict(source.columns) == dict(columns):
            return source
        raise ConfigError(f"{source.source} is already read with {source.option}={dict(source.columns)}; give one "
                          f"mapping, not also {option}={dict(columns)}.")
    return MappedColumns(source, tuple(dict(columns).items()), option)


def unmapped(source):
    """The source under a mapping (the name, ConfiguredSource or rows given), or `source` itself."""
    return source.source if isinstance(source, MappedColumns) else source


def columns_of(source) -> dict[str, str]:
    """{field: column} of a mapped source; {} otherwise."""
    return dict(source.columns) if isinstance(source, MappedColumns) else {}


def renamed_row(data: dict, columns: dict[str, str], option: str, file: str, row_id: int,
                line: int | None = None) -> dict:
    """`data` with each mapped column under its field's name (the column itself dropped); a DataError naming `file`,
    the row, `option` and the row's columns for a mapped column the row lacks or a field that is also a column."""
    shown = ", ".join(repr(str(k)) for k in list(data)[:12]) + (", ..." if len(data) > 12 else "")
    said = f"{option}={columns} ({DIRECTION})"
    for field, column in columns.items():
        if column not in data:
            raise _error(RowProblem(
                "missing_mapped_column", column, f"missing: {said} reads the field {field!r} from the column "
                f"{column!r}, which this row does not have (its columns: {shown})",
                f"Name a column the data has in {option}, or remove {field!r} from it."), file, row_id, line)
    sources = set(columns.values())
    for field in columns:
        if field in data and field not in sources:
            raise _error(RowProblem(
                "ambiguous_mapped_column", field, f"is a column of this row, and {said} also reads the field "
                f"{field!r} from the column {columns[field]!r}: which is the {field} is ambiguous (the row's columns: "
                f"{shown})", f"Remove {field!r} from {option}, or drop or rename the {field!r} column in the data."),
                file, row_id, line)
    out = {k: v for k, v in data.items() if k not in sources}
    out.update((field, data[column]) for field, column in columns.items())
    return out


def _error(problem: RowProblem, file: str, row_id: int, line: int | None):
    """A mapping that does not fit the data is a setting to fix, not a row to skip: on_bad_row: skip would drop
    every row for a typo in the option."""
    return row_error(problem, file, row_id, line, skippable=False)
