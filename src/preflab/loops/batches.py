"""Which rows form each step's micro-batches, and how tokenized pairs become a LayoutBatch.

Order: epoch e uses the permutation randperm(n) seeded with seed + e. Global step s reads the global batch
perm[i*G:(i+1)*G] (G = per_device_batch * world_size * grad_accum, i = s mod steps_per_epoch); micro-batch m of
rank r holds its slice [(m*world + r)*b, (m*world + r + 1)*b). The order depends only on (seed, step), so a resumed
run reads exactly the rows the uninterrupted run would, and 2 ranks x b read the same global batch as 1 rank x 2b.
Rows of a last incomplete global batch are not used in that epoch; their count is reported.
The seed of the order is data_seed when the config sets it, else seed (transformers' data_seed: the sampler's seed
alone; initialisation, dropout and sampling keep seed), see order_seed.

group_by_length (transformers' LengthGroupedSampler, `get_length_grouped_indices`): the epoch's permutation, the same
randperm as above, is cut into mega-batches of k * G rows (G the global batch, k = min(n // (4 G), 50), at least 1),
each sorted longest first (a stable sort: equal lengths keep their drawn order), and the row that is the longest of
all is swapped with the first row of the first mega-batch, so the largest batch comes first (an out-of-memory error
shows at the first step). The global batches, ranks and micro-batches are then cut from that order exactly as from
the permutation. On one process G = per_device x grad_accum, transformers' group size, and the order is
transformers' for the same generator. On several, transformers groups by per_device x grad_accum on each process
(mega-batches `world` times smaller); preflab groups by the global batch, so the order does not depend on how the
global batch is split (2 processes x b read what 1 process x 2b reads, and a resume on another number of processes
with the same global batch keeps it). The order depends only on (seed, epoch, lengths), so a resume replays it to
the step (transformers' Trainer draws its permutation from the global RNG, which a resume does not restore to the
epoch's start).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from preflab.data.extras import TokenExtra, pad_token_extras, stack_extras  # noqa: F401  (re-exported)
from preflab.data.layout import LayoutBatch, pair_sequences, padded
from preflab.data.tokenize import is_intra_row, rejected_prompt_of
from preflab.errors import DataError, PreflabError
from preflab.runlog import is_main_process


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
    return sum(len(p.prompt_ids) + len(rejected_prompt_of(p)) + len(p.chosen_ids) + len(p.rejected_ids)
               for p in pairs)


def order_seed(cfg) -> int:
    """The seed of the training data's order: data_seed when set (transformers' TrainingArguments.data_seed), else
    seed."""
    data_seed = getattr(cfg, "data_seed", None)
    return cfg.seed if data_seed is None else int(data_seed)


def length_grouped_order(lengths: list[int], group_size: int, generator: torch.Generator) -> list[int]:
    """transformers' get_length_grouped_indices(lengths, group_size, generator=generator) (module docstring): the
    permutation randperm(n) in mega-batches of k * group_size, each sorted by length, longest first, and the longest
    row of all moved to the front."""
    n = len(lengths)
    mult = max(min(n // (group_size * 4), 50), 1)
    perm = torch.randperm(n, generator=generator).tolist()
    size = mult * group_size
    megas = [sorted(perm[i:i + size], key=lambda k: -lengths[k]) for i in range(0, n, size)]
    heads = [lengths[m[0]] for m in megas]
    top = heads.index(max(heads))  # the first mega-batch holding the longest row (torch.argmax's first maximum)
    megas[0][0], megas[top][0] = megas[top][0], megas[0][0]
    return [i for m in megas for i in m]


@dataclass
class BatchPlan:
    num_rows: int
    per_device: int
    world: int
    grad_accum: int
    seed: int
    lengths: list[int] | None = None  # group_by_length: each row's token count (None: the plain permutation)

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
        window = self.order(epoch)[i * self.global_batch:(i + 1) * self.global_batch]
        b = self.per_device
        return [window[(m * self.world + rank) * b:(m * self.world + rank + 1) * b] for m in range(self.grad_accum)]

    def order(self, epoch: int) -> list[int]:
        """Every row's position in epoch `epoch`'s order: randperm(n) seeded with seed + epoch, length-grouped when
        `lengths` is set (the last epoch's order is kept: each step of an epoch reads the same list)."""
        cached = getattr(self, "_order", None)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if self.lengths is None:
            order = torch.randperm(self.num_rows, generator=generator).tolist()
        else:
            order = length_grouped_order(self.lengths, self.global_batch, generator)
        self._order = (epoch, order)
        return order


INTRA_ROW = "intra_row"  # batch extra: bool [B], True for a MAPL intra row (two prompts); set when the batch has one


def collate_pairs(pairs, pad_id: int, layout: str = "padded") -> LayoutBatch:
    """Tokenized pairs -> a LayoutBatch of [chosen_1..B, rejected_1..B] sequences with stacked extras."""
    row_ids = [p.row_id for p in pairs]
    extras = stack_extras(pairs, responses={"chosen": [p.chosen_ids for p in pairs],
                                            "rejected": [p.rejected_ids for p in pairs]})
    intra = [is_intra_row(p) for p in pairs]
    if any(intra):  # MAPL intra rows in the batch: which examples they are (rc_dpo's intra_weight reads it)
        extras[INTRA_ROW] = torch.tensor(intra)
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


def make_plan(cfg, num_rows: int, world: int, lengths: list[int] | None = None) -> tuple[BatchPlan, int]:
    """(the deterministic batch order, the number of optimizer steps). lengths: each row's token count, for
    group_by_length (length_grouped_order)."""
    if num_rows == 0:  # every row was skipped or too long: a smaller batch would not help
        raise DataError(f"no training rows are left in {cfg.dataset_name}: every row was skipped (see the "
                        "`preflab: data:` line and summary.json data); fix the rows, max_length / max_prompt_length, "
                        "or the columns.")
    if lengths is not None and len(lengths) != num_rows:
        raise PreflabError(f"group_by_length: {len(lengths)} lengths for {num_rows} training rows.")
    plan = BatchPlan(num_rows, cfg.per_device_train_batch_size, world, cfg.gradient_accumulation_steps,
                     order_seed(cfg), lengths)
    if plan.steps_per_epoch == 0:
        raise PreflabError(
            f"{num_rows} training rows are fewer than one global batch ({plan.global_batch} = "
            "per_device_train_batch_size x processes x gradient_accumulation_steps); lower the batch size.")
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * plan.steps_per_epoch)
    if plan.unused_rows_per_epoch and total >= plan.steps_per_epoch and is_main_process():
        print(f"preflab: note: data: {num_rows} training examples make {plan.steps_per_epoch} steps of "
              f"{plan.global_batch} per epoch; the {plan.unused_rows_per_epoch} left over in each epoch's shuffled "
              "order are not trained on in that epoch (every step takes a full global batch; TRL trains a smaller "
              "last one). Counted as unused_rows_per_epoch in summary.json.")
    return plan, total
