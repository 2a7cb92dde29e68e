"""The eval split held out of the training rows by `eval_fraction`: the same rows for a given seed in every run kind.

    positions = held_out_positions(len(rows), 0.1, seed)      # max(1, round(0.1 n)) positions of a seeded permutation
    train, evals = split_eval_fraction(rows, 0.1, seed)        # the rows at those positions, order kept on both sides
    group, by_parent = holdout_groups(rows)                    # the unit held out: the source row, or its parent_id
    kept, held, (units_held, units, by_parent) = hold_out_rows(rows, 0.1, seed)   # eval_fraction on loaded rows
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch

from preflab.option_types import is_number

T = TypeVar("T")


def held_out_positions(n: int, fraction: float, seed: int) -> set[int]:
    """The first max(1, round(fraction * n)) positions of torch.randperm(n) under manual_seed(seed)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return set(perm[:max(1, int(round(fraction * n)))])


def split_eval_fraction(items: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(kept, held out) of `items` by `held_out_positions`, each in the items' order; when every item has a numeric
    parent_id (parent_ids), whole parent_id groups are held out instead of single items."""
    parents = parent_ids(items)
    if parents is None:
        held = held_out_positions(len(items), fraction, seed)
        return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]
    ids = sorted(set(parents))
    held = {ids[i] for i in held_out_positions(len(ids), fraction, seed)}
    return [x for x, p in zip(items, parents) if p not in held], [x for x, p in zip(items, parents) if p in held]



def parent_ids(items) -> list | None:
    """Each item's numeric `parent_id` column (extras), or None unless every item has one: rows derived from one
    base row (preflab.data.mapl writes the original pair, its intra rows and its inter rows with the base row's
    parent_id) are held out together, so no eval row shares its response with a training row."""
    parents = [getattr(x, "extras", {}).get("parent_id") for x in items]
    if items and all(is_number(p) for p in parents):
        return parents
    return None


def holdout_groups(rows) -> tuple[dict, bool]:
    """({row_id: the unit eval_fraction holds out}, whether that unit is parent_id): the source row (row_id: a pair
    split into two unpaired examples stays on one side), or its parent when every row has one (parent_ids)."""
    parents = parent_ids(rows)
    if parents is None:
        return {r.row_id: r.row_id for r in rows}, False
    return {r.row_id: p for r, p in zip(rows, parents)}, True


def hold_out_rows(rows, fraction: float, seed: int) -> tuple[list, list, tuple[int, int, bool]]:
    """(rows kept for training, rows held out, (units held out, units, whether a unit is a parent_id group)): what
    eval_fraction holds out of a run's loaded rows (preflab.loops.prepare), and what `preflab eval` leaves out of the
    run's training rows when it counts the overlap with them (preflab.eval.run.training_overlap). The unit is the
    source row (holdout_groups: a pair split into two unpaired examples stays on one side), or its parent_id group;
    units are held out by held_out_positions over their sorted ids."""
    group, by_parent = holdout_groups(rows)
    ids = sorted(set(group.values()))
    held = {ids[i] for i in held_out_positions(len(ids), fraction, seed)}
    return ([r for r in rows if group[r.row_id] not in held], [r for r in rows if group[r.row_id] in held],
            (len(held), len(ids), by_parent))
