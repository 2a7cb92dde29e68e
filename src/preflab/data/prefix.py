"""Prefix-shared layout: `[prompt | chosen | rejected]` in one row, so the prompt is computed once.

Wang & Hegde (2024), "Accelerating Direct Preference Optimization with Prefix Sharing", arXiv:2410.20305, Sec. 3:
the responses of one prompt follow it in a single sequence, and the attention mask keeps each response from
seeing the others, so every response token is scored exactly as in its own `[prompt | response]` sequence:

    allowed(query i, key j) = j <= i  and  seg(j) in {seg(i), root(i)}  and neither i nor j is padding
    position(prompt token k) = k;   position(token l of any response) = P + l      (restart after the prompt)

seg(t) is the segment (a prompt or one response) holding position t and root(t) the prompt segment of its block;
for a prompt token seg = root. Restarted positions matter for RoPE (Llama, Qwen2: only relative offsets enter,
but they must match) and for absolute position embeddings (GPT-2: they enter directly). The first token of every
response is predicted from the last prompt position, which all responses of the block share.

The same builder does packing (preflab.data.packing): several blocks per row, each with its own segments and
positions from 0, which makes the mask block-diagonal.

Attention cost. Besides the dense 4-D mask, block_rows records where every segment sits (LayoutBatch.segments, a
preflab.models.segment_attention.SegmentPlan), and for the model families that support it (Llama, Mistral, Qwen2,
Qwen3, GPT-2 with sdpa or eager attention; option `attention: auto`, the default) the scorer attends segment by
segment: each prompt causally over itself (sdpa's fused causal kernel), each response over its prompt's keys and
causally over its own, batched over the micro-batch's blocks and responses (responses cut into up to 3 query
pieces, each piece over its prompt's keys and its own keys so far). That computes the allowed (query, key) pairs up
to the padding of the batched calls and a staircase under each response's causal triangle (instead of R T^2), and
never the other response, other blocks or padding. Elsewhere (`attention: dense`, other families, gradient checkpointing, torch.compile) the dense mask is
handed to transformers' sdpa or eager attention (bool here, converted per attention implementation by
`model_mask`), and attention cost stays quadratic in the row length, as in the padded layout. A model loaded with
attn_implementation="flex_attention" (opt-in; GPU: FlexAttention has no backward on CPU) gets the paper's form: the
same mask as a BlockMask (models.attention.flex_block_mask), whose all-masked blocks are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from preflab.data.layout import LayoutBatch
from preflab.errors import DataError
# model-side mask helpers, importable from here as before 0.2
from preflab.models.attention import effective_layout, model_mask, supports_custom_mask  # noqa: F401
from preflab.models.segment_attention import SegmentPlan

# attention implementations that apply a custom 4-D mask as given (transformers 5.x: create_causal_mask returns a
# 4-D tensor unchanged; sdpa takes it as a bool mask, eager adds it as a float mask, flex_attention a BlockMask made
# from it); flash_attention_2 drops it.


@dataclass
class Block:
    """One prompt followed by its responses; `sequence_ids[k]` is response k's index n in the batch's order."""

    prompt_ids: list[int]
    responses: list[list[int]]
    sequence_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + sum(len(r) for r in self.responses)


def block_rows(rows: list[list[Block]], num_sequences: int, pad_id: int, row_ids=None, extras=None,
               pad_to_multiple_of: int = 1) -> LayoutBatch:
    """LayoutBatch with the blocks of rows[r] placed one after another in row r (right-padded to the longest row).

    attention_mask is [R, 1, T, T] bool (True = may attend); pad positions attend to nothing and nothing attends
    to them (sdpa returns zeros for such rows, eager's additive mask keeps them finite, and they are never read).
    The mask is filled block by block (a prompt: causal over itself; a response: its prompt, and causal over itself),
    which is the module docstring's allowed(i, j) without comparing every query's segment with every key's (those
    [R, T, T] comparisons took about 80% of a collation: 2.8 of 3.4 ms for 4 fixture pairs of 400-570 positions).
    """
    width = max((sum(b.length for b in row) for row in rows), default=1)
    width = -(-max(width, 1) // pad_to_multiple_of) * pad_to_multiple_of
    n_rows = len(rows)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    attend = torch.zeros((n_rows, width, width), dtype=torch.bool)
    counts = torch.zeros((n_rows, width), dtype=torch.float32)  # LayoutBatch.token_multiplicity
    longest = max((len(r) for row in rows for b in row for r in b.responses), default=1)
    pred = torch.zeros((num_sequences, max(longest, 1)), dtype=torch.long)
    target = torch.zeros_like(pred)
    mask = torch.zeros(pred.shape, dtype=torch.bool)
    seen = set()
    spans: list = [None] * num_sequences  # (row, col, length) of each sequence's prompt
    prompt_segments, response_segments = [], []  # SegmentPlan.of's (flat start, length[, block])
    for r, row in enumerate(rows):
        col, base = 0, r * width
        for block in row:
            p = len(block.prompt_ids)
            if p == 0:
                raise DataError("every prompt needs at least one token (e.g. BOS) before its responses; "
                                "tokenize with a BOS token or a chat template.")
            ids[r, col:col + p] = torch.tensor(block.prompt_ids, dtype=torch.long)
            pos[r, col:col + p] = torch.arange(p)
            attend[r, col:col + p, col:col + p] = causal[:p, :p]
            prompt_cols = slice(col, col + p)
            counts[r, col:col + p] = len(block.responses)  # in every one of its [prompt | response] sequences
            last_prompt = base + col + p - 1
            prompt_at = (r, col, p)
            prompt_segments.append((base + col, p))
            col += p
            for resp, n in zip(block.responses, block.sequence_ids, strict=True):
                if n in seen or not 0 <= n < num_sequences:
                    raise DataError(f"sequence index {n} is repeated or outside 0..{num_sequences - 1}.")
                seen.add(n)
                spans[n] = prompt_at
                k = len(resp)
                response_segments.append((base + col, k, len(prompt_segments) - 1))
                ids[r, col:col + k] = torch.tensor(resp, dtype=torch.long)
                pos[r, col:col + k] = p + torch.arange(k)
                attend[r, col:col + k, prompt_cols] = True
                attend[r, col:col + k, col:col + k] = causal[:k, :k]
                counts[r, col:col + k] = 1
                if k:
                    pred[n, 0] = last_prompt
                    pred[n, 1:k] = base + col + torch.arange(k - 1)
                    target[n, :k] = torch.tensor(resp, dtype=torch.long)
                    mask[n, :k] = True
                col += k
    if len(seen) != num_sequences:
        raise DataError(f"the blocks hold {len(seen)} responses but the batch has {num_sequences} sequences.")
    return LayoutBatch(ids, attend.unsqueeze(1), pos, pred, target, mask, list(row_ids or []), dict(extras or {}),
                       prompt_spans=spans, token_multiplicity=counts,
                       segments=SegmentPlan.of(prompt_segments, response_segments, n_rows, width))


def pair_units(pairs) -> list[list[Block]]:
    """The blocks of each pair, responses [chosen_i, rejected_i] at sequence indices [i, B + i]: one block
    `[prompt | chosen | rejected]`, or for a MAPL intra row (two prompts, no shared prefix) two blocks
    `[x_w | y]` `[x_l | y]`, which share nothing and sit side by side in the row (block-diagonal mask, as packing)."""
    b = len(pairs)
    units = []
    for i, p in enumerate(pairs):
        own = getattr(p, "rejected_prompt_ids", None)
        if own is None:
            units.append([Block(p.prompt_ids, [p.chosen_ids, p.rejected_ids], [i, b + i])])
        else:
            units.append([Block(p.prompt_ids, [p.chosen_ids], [i]), Block(own, [p.rejected_ids], [b + i])])
    return units


def pair_blocks(pairs) -> list[Block]:
    """`pair_units` flattened: the blocks of all pairs in order."""
    return [blk for unit in pair_units(pairs) for blk in unit]


def prefix_shared(pairs, pad_id: int, row_ids=None, extras=None, pad_to_multiple_of: int = 1) -> LayoutBatch:
    """One row `[prompt | chosen | rejected]` per pair (a MAPL intra row: `[x_w | y][x_l | y]`, see `pair_units`);
    sequences ordered [chosen_1..B, rejected_1..B] as in `layout.padded`, so the scorer and `split_pairs` work
    unchanged."""
    return block_rows(pair_units(pairs), 2 * len(pairs), pad_id, row_ids, extras, pad_to_multiple_of)
