"""Tokenized sequences -> model inputs plus the gather plan that turns hidden states into response log-probs.

A layout places N (prompt_ids, response_ids) sequences into R rows of length T and records, for each
sequence, which flat positions (row * T + col) predict its response tokens. The scorer (preflab.scoring.lm) runs
the backbone once on the rows, gathers the hidden states at those positions only and applies the LM head and
log-softmax in chunks, so every layout gives the same per-token log-probs:

    padded         one sequence per row, right-padded (the baseline)
    prefix_shared  [prompt | response_1 | response_2 ...] in one row per prompt; each response attends to the
                   prompt and itself only (4-D mask) and its positions restart after the prompt
                   (see preflab.data.prefix, added by the performance work)

Sequences of a pair batch are ordered [chosen_1..chosen_B, rejected_1..rejected_B].

Every layout also records where each sequence's prompt sits (`prompt_spans`), so that the prompt tokens' own
log-probs can be scored when an objective asks for them (the "prompt_logps" token need: TRL's ORPOTrainer takes its
NLL over prompt + response); their gather plan (`prompt_plan`) is built only then.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor


def to_device(t: Tensor, device) -> Tensor:
    """t on `device`; a copy from host memory to an accelerator does not wait for the device (non_blocking: the
    source is staged before the call returns, so the host tensor may be freed or changed afterwards)."""
    asynchronous = t.device.type == "cpu" and torch.device(device).type != "cpu"
    return t.to(device, non_blocking=asynchronous)


class GatherPlan(NamedTuple):
    """The response positions as flat index lists, computed on the host where the layout is built, so that the
    scorer gathers and scatters by index on the device without a data-dependent (host-syncing) boolean mask:
    pred [M] = pred_index[response_mask], target [M] = target_ids[response_mask], slot [M] = the flat position
    n * L + l of each in the [N, L] response grid (row-major, the order of response_mask.nonzero())."""

    pred: Tensor
    target: Tensor
    slot: Tensor

    @classmethod
    def of(cls, pred_index: Tensor, target_ids: Tensor, response_mask: Tensor) -> "GatherPlan":
        slot = response_mask.reshape(-1).nonzero().squeeze(-1)
        return cls(pred_index.reshape(-1)[slot], target_ids.reshape(-1)[slot], slot)

    def to(self, device) -> "GatherPlan":
        return GatherPlan(*(to_device(t, device) for t in self))


class PromptPlan(NamedTuple):
    """The prompt tokens 1..P-1 of the first `count` sequences, each predicted from the position before it (token 0,
    e.g. BOS, has no prediction), as flat index lists built on the host like GatherPlan: pred [M'] the predicting
    positions (row * T + col), target [M'] the prompt tokens, slot [M'] the flat position n * W + k of each in the
    [count, W] grid, mask [count, W] (True on prompt tokens; W = the longest prompt minus 1, at least 1)."""

    pred: Tensor
    target: Tensor
    slot: Tensor
    mask: Tensor

    @property
    def count(self) -> int:
        return self.mask.shape[0]

    @classmethod
    def of(cls, spans, count: int, input_ids: Tensor) -> "PromptPlan":
        """From (row, col, length) prompt spans and the layout's input_ids [R, T]: the index lists are made on the
        host and copied to input_ids' device, the targets read there (no device-to-host sync)."""
        width = input_ids.shape[1]
        heads = spans[:count]
        cols = max(1, max((length - 1 for _, _, length in heads), default=1))
        mask = torch.zeros(count, cols, dtype=torch.bool)
        pred, slot = [], []
        for n, (row, col, length) in enumerate(heads):
            if length > 1:
                mask[n, :length - 1] = True
                pred.extend(range(row * width + col, row * width + col + length - 1))
                slot.extend(range(n * cols, n * cols + length - 1))
        device = input_ids.device
        pred_t = to_device(torch.tensor(pred, dtype=torch.long), device)
        return cls(pred_t, input_ids.reshape(-1).index_select(0, pred_t + 1),
                   to_device(torch.tensor(slot, dtype=torch.long), device), to_device(mask, device))

    def to(self, device) -> "PromptPlan":
        return PromptPlan(*(to_device(t, device) for t in self))


@dataclass
class LayoutBatch:
    """Model inputs and the gather plan.

    input_ids [R, T]; attention_mask [R, T] (2-D, 1 = real token) or [R, 1, T, T] (4-D bool, True = may attend);
    position_ids [R, T] or None (default positions); pred_index [N, L] flat index into R*T of the position whose
    output predicts response token l of sequence n; target_ids [N, L]; response_mask [N, L] bool.
    row_ids: dataset row of each example (not of each sequence); extras: per-example tensors for the objective.
    gather: the GatherPlan of (pred_index, target_ids, response_mask), computed at construction when those are
    host tensors and carried by `to(device)` (a layout built directly on an accelerator has none: the scorer then
    derives it there, at the cost of a host sync). Build a new LayoutBatch rather than editing those three fields.
    causal_only: every row is one sequence followed by right padding only, so plain causal attention (no mask) gives
    the sequence's tokens exactly the outputs the padding mask would (a real token never sees a later pad); the
    scorer then passes no mask, which keeps attention on the fused causal kernels and spares the model's checks
    of the mask on the host (`mask.all()`: a device-to-host sync each).
    prompt_spans: (row, col, length) of each sequence's prompt in input_ids, host ints (None: not recorded);
    prompt_gather: the PromptPlan that `prompt_plan(count)` built on the host, carried by `to(device)`.
    token_multiplicity: [R, T] float32, how many of the batch's [prompt | response] sequences hold each position's
    token (0 on padding; a prompt shared by k responses: k), so that a loss averaged over the tokens of the padded
    layout (the MoE router's load-balancing loss, preflab.scoring.router_loss) is the same in every layout; a batch
    kind sets it to 0 on sequences that TRL scores in a forward of its own (KTO's mismatched completions).
    None: `multiplicity()` derives it from a 2-D attention mask.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor | None
    pred_index: Tensor
    target_ids: Tensor
    response_mask: Tensor
    row_ids: list[int] = field(default_factory=list)
    extras: dict = field(default_factory=dict)
    gather: GatherPlan | None = None
    causal_only: bool = False
    prompt_spans: list[tuple[int, int, int]] | None = None
    prompt_gather: PromptPlan | None = None
    token_multiplicity: Tensor | None = None
    # where each prompt and response sits (preflab.models.segment_attention.SegmentPlan), for attention over the
    # allowed (query, key) pairs only; set by preflab.data.prefix.block_rows (None: the scorer uses the mask)
    segments: object | None = None
    # the attention mask as scorers hand it to their models, {key: mask}, made once per layout and shared by every
    # model that scores it (the policy and the reference of a step: preflab.scoring.lm.layout_scorer_mask)
    scorer_masks: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.gather is None and self.response_mask.device.type == "cpu":
            self.gather = GatherPlan.of(self.pred_index, self.target_ids, self.response_mask)

    def gather_plan(self) -> GatherPlan:
        """The GatherPlan on this layout's device (derived here when the layout was built on an accelerator)."""
        if self.gather is None:
            self.gather = GatherPlan.of(self.pred_index, self.target_ids, self.response_mask)
        return self.gather

    def prompt_plan(self, count: int) -> PromptPlan:
        """The PromptPlan of sequences 0..count-1, built once and kept (`to(device)` carries it). The trainers build it
        on the host layout, as the gather plan is, so that no index list is made inside a compiled scorer."""
        plan = self.prompt_gather
        if plan is None or plan.count != count:
            if self.prompt_spans is None or len(self.prompt_spans) < count:
                from preflab.errors import PreflabError

                raise PreflabError(
                    f"this layout records no prompt positions for {count} sequences (prompt_spans: "
                    f"{'none' if self.prompt_spans is None else len(self.prompt_spans)}), so their prompt tokens "
                    "cannot be scored; build it with preflab.data.layout.padded or preflab.data.prefix.block_rows.")
            self.prompt_gather = plan = PromptPlan.of(self.prompt_spans, count, self.input_ids)
        return plan

    def multiplicity(self) -> Tensor:
        """token_multiplicity, or the 2-D attention mask (one sequence per row); PreflabError for a 4-D mask without
        it (a row of several sequences: which prompt tokens stand for how many sequences is not recorded)."""
        if self.token_multiplicity is not None:
            return self.token_multiplicity
        if self.attention_mask.dim() == 2:
            return self.attention_mask.float()
        from preflab.errors import PreflabError

        raise PreflabError("this layout has a 4-D attention mask and no token_multiplicity, so the tokens of its rows "
                           "cannot be counted as the padded layout counts them; build it with "
                           "preflab.data.prefix.block_rows or preflab.data.layout.padded.")

    @property
    def num_sequences(self) -> int:
        return self.pred_index.shape[0]

    @property
    def num_tokens(self) -> int:
        """Real (non-pad) tokens the model processes: the honest count for tokens/s."""
        if self.attention_mask.dim() == 2:
            return int(self.attention_mask.sum())
        return int(self.attention_mask.any(-1).sum())

    def to(self, device) -> "LayoutBatch":
        """The layout on `device`. Host -> accelerator copies are asynchronous (non_blocking): a blocking copy
        synchronizes the stream, i.e. waits for all queued GPU work, once per tensor."""
        move = lambda t: to_device(t, device) if isinstance(t, Tensor) else t  # noqa: E731
        return LayoutBatch(move(self.input_ids), move(self.attention_mask), move(self.position_ids),
                           move(self.pred_index), move(self.target_ids), move(self.response_mask), self.row_ids,
                           {k: move(v) for k, v in self.extras.items()},
                           self.gather.to(device) if self.gather is not None else None, self.causal_only,
                           self.prompt_spans,
                           self.prompt_gather.to(device) if self.prompt_gather is not None else None,
                           self.token_multiplicity,  # stays on the host: moved only by a scorer that reads it
                           segments=self.segments.to(device) if self.segments is not None else None)


def bucket(layout: LayoutBatch, multiple: int | None, pad_id: int) -> LayoutBatch:
    """`layout` with its rows right-padded to a multiple of `multiple` positions (TRL's pad_to_multiple_of), so the
    batch shapes repeat and GPU kernels and attention plans made for one length are reused. Exact for every layout:
    the added positions are padding (2-D mask 0; 4-D mask: they attend to nothing and nothing attends to them;
    position 0) and the gather plan is re-indexed from row * T + col to row * T' + col."""
    rows, width = layout.input_ids.shape
    new = -(-width // multiple) * multiple if multiple and multiple > 1 else width
    if new == width:
        return layout
    extra = new - width
    mask = layout.attention_mask
    mask = torch.nn.functional.pad(mask, (0, extra) if mask.dim() == 2 else (0, extra, 0, extra), value=0)
    positions = None if layout.position_ids is None else torch.nn.functional.pad(layout.position_ids, (0, extra))
    pred = layout.pred_index // width * new + layout.pred_index % width
    counts = None if layout.token_multiplicity is None else \
        torch.nn.functional.pad(layout.token_multiplicity, (0, extra))
    return LayoutBatch(torch.nn.functional.pad(layout.input_ids, (0, extra), value=pad_id), mask, positions, pred,
                       layout.target_ids, layout.response_mask, layout.row_ids, layout.extras,
                       causal_only=layout.causal_only, prompt_spans=layout.prompt_spans, token_multiplicity=counts,
                       segments=layout.segments.widened(new) if layout.segments is not None else None)


def response_plan(starts: list[int], responses: list[list[int]], row_offsets: list[int]):
    """Gather plan for N responses: response n's token l sits at row_offsets[n] + starts[n] + l, so it is predicted
    by the position one before. Returns pred_index [N, L], target_ids [N, L], response_mask [N, L]."""
    n, width = len(responses), max((len(r) for r in responses), default=0)
    pred = torch.zeros(n, max(width, 1), dtype=torch.long)
    target = torch.zeros_like(pred)
    mask = torch.zeros(n, max(width, 1), dtype=torch.bool)
    for i, (start, resp, offset) in enumerate(zip(starts, responses, row_offsets)):
        k = len(resp)
        pred[i, :k] = offset + start - 1 + torch.arange(k)
        target[i, :k] = torch.tensor(resp, dtype=torch.long)
        mask[i, :k] = True
    return pred, target, mask


def padded(sequences: list[tuple[list[int], list[int]]], pad_id: int, row_ids=None, extras=None,
           pad_to_multiple_of: int = 1) -> LayoutBatch:
    """One row per (prompt_ids, response_ids) sequence, right-padded with pad_id. Prompts must be non-empty
    (the first response token is predicted from the last prompt position)."""
    lengths = [len(p) + len(r) for p, r in sequences]
    width = max(lengths)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (p, r) in enumerate(sequences):
        if not p:
            raise ValueError("every sequence needs at least one prompt token (e.g. BOS) before its response")
        ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attn[i, : len(p) + len(r)] = 1
    pred, target, mask = response_plan([len(p) for p, _ in sequences], [r for _, r in sequences],
                                       [i * width for i in range(len(sequences))])
    return LayoutBatch(ids, attn, None, pred, target, mask, list(row_ids or []), dict(extras or {}),
                       causal_only=True, prompt_spans=[(i, 0, len(p)) for i, (p, _) in enumerate(sequences)],
                       token_multiplicity=attn.float())


def pair_sequences(pairs) -> list[tuple[list[int], list[int]]]:
    """[chosen_1..chosen_B, rejected_1..rejected_B] from objects with prompt_ids, chosen_ids, rejected_ids; the
    rejected side of a MAPL intra row follows its own prompt (x_l: `tokenize.rejected_prompt_of`)."""
    from preflab.data.tokenize import rejected_prompt_of

    return [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(rejected_prompt_of(p), p.rejected_ids) for p in pairs]
