"""Per-example extras (scores, weights, per-token columns such as RRPO's phrase ids) -> batch tensors.

`stack_extras` turns the extras of a batch's examples into tensors; `pad_token_extras` aligns per-token columns
with a layout's response mask. Used by the text, vision and reward-model collators (preflab.loops.batches re-exports
them).
"""
from __future__ import annotations

import torch

from preflab.data.layout import LayoutBatch
from preflab.errors import DataError
from preflab.option_types import is_number


def stack_extras(examples, keys=None, responses: dict | None = None) -> dict:
    """Per-example numeric extras -> tensors [B, ...]; keys present in every example only.

    Lists of equal length stack to [B, k]. `responses` ({side: [response token ids of each example]}, e.g. chosen
    and rejected) marks per-token columns: a list-valued column named `<side>_<name>` (RRPO's `chosen_phrase_ids`)
    holds one value per response token of that side; it must have exactly that many values (after tokenization
    and truncation) and is returned as a list of per-example tensors for `pad_token_extras` to align with the
    response mask. Any other list column of unequal lengths is a DataError naming it: it has no place in a batch,
    and dropping it would leave the objective without its input (or with a different one).
    Text columns stay out of the tensor extras.
    """
    if not examples:
        return {}
    common = set(examples[0].extras)
    for ex in examples[1:]:
        common &= set(ex.extras)
    out = {}
    for key in sorted(common if keys is None else common & set(keys)):
        values = [ex.extras[key] for ex in examples]
        side = _token_side(key, values, responses)
        if side is not None:
            out[key] = _token_values(key, side, values, examples, responses[side])
            continue
        try:
            out[key] = torch.tensor(values, dtype=torch.float32 if _is_float(values) else torch.long)
        except (TypeError, ValueError, RuntimeError):  # RuntimeError: torch cannot infer a dtype (lists of objects)
            if _numeric_lists(values):
                lengths = sorted({len(v) for v in values})
                raise DataError(
                    f"extra column {key!r} holds lists of different lengths {lengths} (rows "
                    f"{[ex.row_id for ex in examples]}), which cannot form a batch. A per-token column is named "
                    f"after its response side ({', '.join(f'{s}_<name>' for s in (responses or {'chosen': 0}))}) "
                    "and has one value per response token; otherwise give every row a list of the same length, "
                    "or drop the column.") from None
            continue  # text columns stay out of the tensor extras
    return out


def _numeric_lists(values) -> bool:
    return all(isinstance(v, (list, tuple)) and all(is_number(x) for x in v) for v in values)


def _token_side(key: str, values, responses) -> str | None:
    for side in responses or {}:
        if key.startswith(f"{side}_") and _numeric_lists(values):
            return side
    return None


def _token_values(key, side, values, examples, token_ids) -> "TokenExtra":
    for ex, v, ids in zip(examples, values, token_ids):
        if len(v) != len(ids):
            raise DataError(
                f"row {ex.row_id}: per-token column {key!r} has {len(v)} values but the {side} response has "
                f"{len(ids)} tokens after tokenization and truncation; give one value per {side} response token "
                "(tokenized with the run's tokenizer), or raise max_length if the response was truncated.")
    dtype = torch.float32 if any(isinstance(x, float) for v in values for x in v) else torch.long
    return TokenExtra([torch.tensor(v, dtype=dtype) for v in values])


class TokenExtra(list):
    """Per-example 1-D tensors of a per-token extra, before padding to the batch's response width."""


def pad_token_extras(layout: LayoutBatch) -> LayoutBatch:
    """Per-token extras -> [B, L] tensors aligned with the layout's response mask (width L, response token t of
    each sequence at column t, as every layout's gather plan places it); padding is 0 and masked out."""
    width = layout.response_mask.shape[-1]
    for key, value in list(layout.extras.items()):
        if isinstance(value, TokenExtra):
            padded_values = torch.zeros(len(value), width, dtype=value[0].dtype if value else torch.long)
            for i, v in enumerate(value):
                padded_values[i, :len(v)] = v
            layout.extras[key] = padded_values
    return layout


def _is_float(values) -> bool:
    flat = torch.tensor(values)
    return flat.is_floating_point()
