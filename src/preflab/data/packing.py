"""Packed layouts: several examples per row, block-diagonal attention, positions restarted per example.

Krell et al. (2021), "Efficient Sequence Packing without Cross-contamination", arXiv:2107.02027: concatenating
sequences in one row is exact when each token attends only within its own sequence and position ids restart,

    allowed(i, j) = j <= i  and  example(i) == example(j)

Kundu et al. (2024), arXiv:2407.09105, measure the gain of padding-free packing for training. Packing composes with
prefix sharing (preflab.data.prefix): the packed unit is then a block `[prompt | chosen | rejected]`, and inside a
block the prefix-sharing mask applies. `max_row_tokens=None` puts every unit of the micro-batch in one row (no pad
tokens at all); an integer bins units first-fit-decreasing into rows of at most that many tokens (a unit longer than
the budget gets a row of its own), which bounds the quadratic attention cost of long rows.
"""
from __future__ import annotations

from preflab.data.layout import LayoutBatch
from preflab.data.prefix import Block, block_rows, pair_blocks
from preflab.data.tokenize import rejected_prompt_of


def first_fit_decreasing(lengths: list[int], max_row_tokens: int | None) -> list[list[int]]:
    """Indices of `lengths` grouped into rows whose sums stay <= max_row_tokens (None: one row). Deterministic:
    longest first, ties by index; each row lists its units in index order."""
    if max_row_tokens is None:
        return [list(range(len(lengths)))] if lengths else []
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_row_tokens - lengths[i])
    return [sorted(row) for row in rows]


def sequence_blocks(pairs) -> list[Block]:
    """Without prefix sharing: one block per sequence, [chosen_1..B, rejected_1..B] (the padded layout's order)."""
    b = len(pairs)
    chosen = [Block(p.prompt_ids, [p.chosen_ids], [i]) for i, p in enumerate(pairs)]
    rejected = [Block(rejected_prompt_of(p), [p.rejected_ids], [b + i]) for i, p in enumerate(pairs)]
    return chosen + rejected


def packed_pairs(pairs, pad_id: int, share_prefix: bool = True, max_row_tokens: int | None = None, row_ids=None,
                 extras=None) -> LayoutBatch:
    """Pairs packed into rows; `share_prefix` packs `[prompt | chosen | rejected]` blocks, else single sequences.
    Sequence order is [chosen_1..B, rejected_1..B] whatever the packing, so log-probs equal `layout.padded`'s."""
    blocks = pair_blocks(pairs) if share_prefix else sequence_blocks(pairs)
    groups = first_fit_decreasing([blk.length for blk in blocks], max_row_tokens)
    return block_rows([[blocks[i] for i in group] for group in groups], 2 * len(pairs), pad_id, row_ids, extras)
