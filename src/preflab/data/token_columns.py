"""Per-token data columns (RRPO's `chosen_phrase_ids`, any `<side>_<name>` list of numbers) cut with their response.

    spans = kept_spans(uncut_lengths, kept_responses, settings)     # {side: (start, end)} in the uncut response
    extras = cut_token_columns(extras, spans)                        # each per-token column keeps those tokens

A per-token column holds one value per token of its side's tokenized response (eos included), as
`preflab.data.extras.stack_extras` reads it at batching. Truncation keeps a contiguous slice of each response:
max_completion_length keeps its start, then max_length keeps its start (truncation_mode keep_start or unset) or its
end (keep_end, `tokenize._keep_end`), so the kept tokens are response[start:end] with

    m = min(len(uncut), max_completion_length);  keep_end: end = m, start = m - kept;  else start = 0, end = kept.

The column keeps values[start:end], the same tokens (the vision path cuts its phrase ids the same way,
data.vision.tokenize_vision_pair). A column whose length differs from the uncut response's token count cannot be
aligned: `check_token_columns` raises a `RowProblem` marked fatal (`ColumnMismatch`), an error naming file, row and
column whatever on_bad_row says, as the batching check did (it was made with the wrong tokenizer; skipping would
drop every row).
"""
from __future__ import annotations

from preflab.data.report import RowProblem
from preflab.option_types import is_number


class ColumnMismatch(RowProblem):
    """A per-token column of the wrong length: an error even under on_bad_row: skip (the data's tokenizer is not the
    run's, so every row would be dropped)."""


def _numbers(value) -> bool:
    return isinstance(value, (list, tuple)) and all(is_number(x) for x in value)


def token_columns(extras: dict, side: str) -> list[str]:
    """The per-token columns of `side`: list-of-number columns named `<side>_<name>` (stack_extras's rule)."""
    return sorted(k for k, v in extras.items() if k.startswith(f"{side}_") and _numbers(v))


def check_token_columns(extras: dict, lengths: dict[str, int]) -> None:
    """Every per-token column of each side has one value per token of that side's uncut response ({side: tokens})."""
    for side, n in lengths.items():
        for key in token_columns(extras, side):
            if len(extras[key]) != n:
                raise ColumnMismatch(
                    "token_column_length", key, f"per-token column {key!r} has {len(extras[key])} values but the "
                    f"{side} response has {n} tokens (before truncation, eos included)",
                    f"Give one value per {side} response token, tokenized with the run's tokenizer.")


def kept_span(uncut: int, kept: int, settings) -> tuple[int, int]:
    """(start, end) of the kept response tokens in the uncut response (module docstring)."""
    if getattr(settings, "truncation_mode", None) == "keep_end":
        limit = settings.max_completion_length
        end = uncut if limit is None else min(uncut, limit)
        return end - kept, end
    return 0, kept


def cut_token_columns(extras: dict, spans: dict[str, tuple[int, int]]) -> dict:
    """A copy of `extras` whose per-token columns of each side keep values[start:end] ({side: (start, end)})."""
    out = dict(extras)
    for side, (start, end) in spans.items():
        for key in token_columns(extras, side):
            out[key] = list(extras[key][start:end])
    return out
