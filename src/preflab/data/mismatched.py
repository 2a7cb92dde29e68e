"""KTO's mismatched completions fixed per example, as TRL 1.16 fixes them (`KL_completion_ids`).

KTO's reference point z0 (Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 7) is estimated from mismatched pairs
(x_i, y'_i), y' a completion of another prompt. By default preflab forms them inside each micro-batch at collate
time (preflab.loops.kinds.UnpairedKind.collate); with precompute_ref_log_probs the reference log-probs of these pairs
are computed once per example, so the pair must be a property of the example. TRL's KTOTrainer._prepare_dataset
(`add_kl_completion_ids`) fixes it by rotating completions by one inside consecutive chunks of
per_device_train_batch_size examples, in the order of its unpaired dataset:

    chunk (x_1, y_1), ..., (x_n, y_n)  ->  y'_1 = y_n, y'_2 = y_1, ..., y'_n = y_{n-1}

    examples = fix_mismatched(examples, chunk=4, order=trl_unpaired_order(examples))

TRL's unpaired order differs from preflab's for pairwise rows: TRL's `unpair_preference_dataset` maps batches of
1000 rows to [chosen of each row..., rejected of each row...]; preflab keeps a row's two examples next to each other
(chosen, rejected). Rotating in preflab's order would give each rejected example its own prompt's chosen
completion, a matched pair; `trl_unpaired_order` gives the positions in TRL's order.
"""
from __future__ import annotations

import copy
import hashlib

from preflab.data.tokenize import uncut_completion
from preflab.errors import DataError

TRL_UNPAIR_ROWS = 1000  # rows per batch of TRL's unpair_preference_dataset (datasets.Dataset.map's default)


def trl_unpaired_order(examples, rows_per_batch: int = TRL_UNPAIR_ROWS) -> list[int]:
    """Positions of `examples` in TRL's unpaired dataset order. KTO rows (one example per row_id) keep their order;
    when rows were pairs split in two (examples sharing a row_id, next to each other), each batch of
    `rows_per_batch` consecutive source rows lists its desirable examples first, then its undesirable ones, as
    TRL's unpairing map emits them."""
    rows: list[list[int]] = []
    for position, example in enumerate(examples):
        if rows and examples[rows[-1][0]].row_id == example.row_id:
            rows[-1].append(position)
        else:
            rows.append([position])
    if all(len(row) == 1 for row in rows):
        return list(range(len(examples)))
    order = []
    for start in range(0, len(rows), rows_per_batch):
        block = [p for row in rows[start:start + rows_per_batch] for p in row]
        order += [p for p in block if examples[p].label] + [p for p in block if not examples[p].label]
    return order


def rotation_order(examples, chunk: int) -> list[int]:
    """Positions of `examples` in the order the default rotation uses inside each consecutive chunk of `chunk`
    examples (the batches evaluate() forms): TRL's unpaired order within each chunk (trl_unpaired_order), so a pair
    split in two is not rotated onto its own prompt. fix_mismatched(examples, chunk, rotation_order(examples, chunk))
    is then the pairing the default collate forms on those chunks."""
    return [start + p for start in range(0, len(examples), chunk)
            for p in trl_unpaired_order(examples[start:start + chunk])]


def fix_mismatched(examples, chunk: int, order: list[int] | None = None) -> list:
    """Copies of `examples` (TokenizedUnpaired) with `mismatched_completion_ids` set: in each consecutive chunk of
    `chunk` positions of `order` (default: the examples' own order), each example takes the completion of the one
    before it, the first the chunk's last (a chunk of one keeps its own completion, as in TRL). Examples that all
    carry a pairing already (given from Python) are returned as they are."""
    given = [getattr(x, "mismatched_completion_ids", None) is not None for x in examples]
    if all(given):
        return list(examples)
    if any(given):
        row = examples[given.index(False)].row_id
        raise DataError(f"row {row}: some examples carry mismatched_completion_ids (KTO's fixed mismatched "
                        "completion) and this one does not; give it for every example or for none.")
    if chunk < 1:
        raise DataError(f"fix_mismatched: chunk must be >= 1, got {chunk}.")
    order = list(range(len(examples))) if order is None else order
    if sorted(order) != list(range(len(examples))):
        raise DataError("fix_mismatched: order must list every example position once.")
    out = list(examples)
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        for k, position in enumerate(part):
            source = examples[part[k - 1]]  # k = 0: the chunk's last
            out[position] = copy.copy(examples[position])  # a shallow copy: the given examples stay as they were
            out[position].mismatched_completion_ids = list(uncut_completion(source))  # TRL: cut at collate
    return out


def unpaired_fingerprint(examples) -> str:
    """sha256 over (prompt_ids, completion_ids, mismatched_completion_ids, kl_cut when set) of every example, in
    dataset order: the reference cache's key of unpaired examples (the reference scores both pairs of each
    example)."""
    h = hashlib.sha256(b"unpaired")
    for x in examples:
        cut = getattr(x, "kl_cut", None)  # how the mismatched sequence is cut (max_length, truncation_mode)
        h.update(repr((x.prompt_ids, x.completion_ids, getattr(x, "mismatched_completion_ids", None),
                       *([] if cut is None else [tuple(cut)]))).encode())
    return h.hexdigest()
