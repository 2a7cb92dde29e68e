"""The eval split held out of the training rows by `eval_fraction`: the same rows for a given seed in every run kind.

    positions = held_out_positions(len(rows), 0.1, seed)      # max(1, round(0.1 n)) positions of a seeded permutation
    train, evals = split_eval_fraction(rows, 0.1, seed)        # the rows at those positions, order kept on both sides
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


def held_out_positions(n: int, fraction: float, seed: int) -> set[int]:
    """The first max(1, round(fraction * n)) positions of torch.randperm(n) under manual_seed(seed)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return set(perm[:max(1, int(round(fraction * n)))])


def split_eval_fraction(items: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(kept, held out) of `items` by `held_out_positions`, each in the items' order."""
    held = held_out_positions(len(items), fraction, seed)
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]
