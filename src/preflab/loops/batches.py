"""Which rows form each step's micro-batches, and how tokenized pairs become a LayoutBatch.

Order: epoch e uses the permutation randperm(n) seeded with seed + e. Global step s reads the global batch
perm[i*G:(i+1)*G] (G = per_device_batch * world_size * grad_accum, i = s mod steps_per_epoch); micro-batch m of
rank r holds its slice [(m*world + r)*b, (m*world + r + 1)*b). The order depends only on (seed, step), so a resumed
run reads exactly the rows the uninterrupted run would, and 2 ranks x b read the same global batch as 1 rank x 2b.
Rows of a last incomplete global batch are not used in that epoch; their count is reported.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from preflab.data.layout import LayoutBatch, pair_sequences, padded
from preflab.errors import DataError


@dataclass
class MicroBatch:
    layout: LayoutBatch
    row_ids: list[int]
    index: list[int]  # positions in the tokenized dataset
    tokens: int | None = None  # see sequence_tokens

    @property
    def num_tokens(self) -> int:
        return self.layout.num_tokens if self.tokens is None else self.tokens


def sequence_tokens(pairs) -> int:
    """Tokens of the sequences scored, (prompt + chosen) + (prompt + rejected) per pair, as TRL counts them: a
    property of the data, the same for every layout (prefix sharing computes the prompt once but reports it twice;
    padding is never counted), so tokens/s compare across layouts and libraries."""
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


@dataclass
class BatchPlan:
    num_rows: int
    per_device: int
    world: int
    grad_accum: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.world * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return self.num_rows // self.global_batch

    @property
    def unused_rows_per_epoch(self) -> int:
        return self.num_rows - self.steps_per_epoch * self.global_batch

    def indices(self, step: int, rank: int) -> list[list[int]]:
        """Dataset positions of this rank's micro-batches at global step `step`."""
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        window = perm[i * self.global_batch:(i + 1) * self.global_batch]
        b = self.per_device
        return [window[(m * self.world + rank) * b:(m * self.world + rank + 1) * b] for m in range(self.grad_accum)]


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
        except (TypeError, ValueError):
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
    return all(isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                    for x in v) for v in values)


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


def collate_pairs(pairs, pad_id: int, layout: str = "padded") -> LayoutBatch:
    """Tokenized pairs -> a LayoutBatch of [chosen_1..B, rejected_1..B] sequences with stacked extras."""
    row_ids = [p.row_id for p in pairs]
    extras = stack_extras(pairs, responses={"chosen": [p.chosen_ids for p in pairs],
                                            "rejected": [p.rejected_ids for p in pairs]})
    if layout == "prefix_shared":
        from preflab.data.prefix import prefix_shared

        return pad_token_extras(prefix_shared(pairs, pad_id=pad_id, row_ids=row_ids, extras=extras))
    if layout in ("packed", "prefix_packed"):
        from preflab.data.packing import packed_pairs

        return pad_token_extras(packed_pairs(pairs, pad_id=pad_id, share_prefix=layout == "prefix_packed",
                                             row_ids=row_ids, extras=extras))
    return pad_token_extras(padded(pair_sequences(pairs), pad_id=pad_id, row_ids=row_ids, extras=extras))


def micro_batches(dataset, plan: BatchPlan, step: int, rank: int, pad_id: int, layout: str) -> list[MicroBatch]:
    out = []
    for index in plan.indices(step, rank):
        pairs = [dataset[i] for i in index]
        out.append(MicroBatch(collate_pairs(pairs, pad_id, layout), [p.row_id for p in pairs], index,
                              sequence_tokens(pairs)))
    return out
