"""SFTConfig's packing_strategy (task: sft with packing: true): how TRL 1.16's `pack_dataset` cuts the tokenized
rows before batching, on preflab's tokenized examples.

    bfd        each row keeps its first max_length tokens (the row's truncation, preflab.loops.sft_rows); the packed
               rows of a micro-batch are binned first-fit-decreasing (preflab.data.packing). Nothing is done here.
    bfd_split  a row longer than max_length is cut into fragments of max_length tokens (the last one shorter), each
               a sequence of its own: its positions restart at 0 and its first token is not predicted (TRL's
               collator sets the label where position_ids == 0 to -100), so with L = max_length fragment k is
               tokens [kL, (k+1)L) with loss on its tokens 1.. that carried loss in the row.
    wrapped    the rows are concatenated in dataset order, in groups of 1000 rows (datasets' `map` batch size, each
               group packed alone), and cut every max_length tokens; a chunk is ONE sequence: positions 0..L-1, every
               token attends to all before it in the chunk (rows too), and a token carries loss where its row's label
               does, the first token of a row included when TRL labels it (text rows, conversations without
               assistant_only_loss, prompt-completion rows with completion_only_loss: false), predicted from the end
               of the row before it. The first token of a chunk is not predicted.

A row's TRL labels (`trl_labels`): token t carries loss where TRL 1.16's `labels[t] != -100`. Token 0 is never
predicted in a sequence of its own, so preflab's TokenizedSFT records whether TRL labels it
(`TokenizedSFT.first_is_label`); it matters only when wrapping puts a row after another.

A fragment or chunk becomes a TokenizedSFT whose prompt is its tokens before its first loss token (>= 1 token) and
whose completion is the rest, loss_mask marking the loss tokens; one with no loss token after its first token
(all prompt, or a 1-token remainder) trains nothing and is left out, counted in the data line. Its row_id is its
first row's. per_device_train_batch_size then counts fragments / chunks, as TRL's counts its packed rows for wrapped
(one chunk per packed row); for bfd_split TRL's packed row holds several fragments, preflab's batch counts fragments
(then bins them into rows of max_length).
"""
from __future__ import annotations

from dataclasses import replace

PACKING_STRATEGIES = ("bfd", "bfd_split", "wrapped")  # TRL 1.16's pack_dataset
WRAP_GROUP = 1000  # rows per group: datasets' Dataset.map(batched=True) default batch_size, TRL's pack_dataset's


def trl_labels(item) -> tuple[list[int], list[bool]]:
    """(token ids, for each token whether TRL 1.16's labels keep it) of one tokenized row."""
    ids = item.prompt_ids + item.completion_ids
    completion = item.loss_mask if item.loss_mask is not None else [True] * len(item.completion_ids)
    prompt = [item.first_is_label] + [False] * (len(item.prompt_ids) - 1)
    return ids, prompt + list(completion)


def sequence_example(like, row_id: int, ids: list[int], labelled: list[bool], extras: dict):
    """One sequence of its own (positions from 0, token 0 not predicted) as a TokenizedSFT (a copy of `like` with
    these tokens); None when no token after the first carries loss."""
    first = next((t for t in range(1, len(ids)) if labelled[t]), None)
    if first is None:
        return None
    loss = labelled[first:]
    return replace(like, row_id=row_id, prompt_ids=ids[:first], completion_ids=ids[first:],
                   loss_mask=None if all(loss) else list(loss), first_is_label=False, extras=extras)


def split_fragments(items: list, max_length: int) -> tuple[list, int]:
    """bfd_split: (the fragments of every row, in row order, the count of fragments left out: no loss token)."""
    out, empty = [], 0
    for item in items:
        ids, labelled = trl_labels(item)
        for start in range(0, len(ids), max_length):
            piece = sequence_example(item, item.row_id, ids[start:start + max_length],
                                     labelled[start:start + max_length], item.extras)
            if piece is None:
                empty += 1
            else:
                out.append(piece)
    return out, empty


def wrap_chunks(items: list, max_length: int, group: int = WRAP_GROUP) -> tuple[list, int]:
    """wrapped: (the chunks of max_length tokens of each group of `group` rows concatenated in order, the count of
    chunks left out: no loss token)."""
    out, empty = [], 0
    for g in range(0, len(items), group):
        ids, labelled, owner = [], [], []
        for item in items[g:g + group]:
            row_ids, row_labels = trl_labels(item)
            ids += row_ids
            labelled += row_labels
            owner += [item.row_id] * len(row_ids)
        for start in range(0, len(ids), max_length):
            piece = sequence_example(items[g], owner[start], ids[start:start + max_length],
                                     labelled[start:start + max_length], {})
            if piece is None:
                empty += 1
            else:
                out.append(piece)
    return out, empty


def pack_examples(items: list, strategy: str, max_length: int) -> tuple[list, int]:
    """The examples a packing_strategy trains on (module docstring) and the count of pieces left out."""
    if strategy == "bfd_split":
        return split_fragments(items, max_length)
    if strategy == "wrapped":
        return wrap_chunks(items, max_length)
    return items, 0
