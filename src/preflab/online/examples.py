"""One generation round's training examples (pairs or groups) and how a micro-batch of them is laid out.

Everything a step needs that does not move with the policy is computed once, when the round is generated, and
kept with the example: the judge's scores, the reference's token log-probs (`ref`) and the round-start policy's
token log-probs (`prev`: pi_t of SPPO / GPO / INPO, GRPO's old policy), and for tool rollouts (tool_rollout.py) a
per-token `loss_mask` that leaves the tool observations out of the loss. A round is plain JSON (ints and floats,
which JSON round-trips exactly), so a checkpoint taken mid-round resumes on the very same examples.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from preflab.data.layout import LayoutBatch, padded
from preflab.data.prefix import Block, block_rows
from preflab.objectives.base import SequenceLogps


@dataclass
class Example:
    row_id: int
    prompt_ids: list[int]
    completions: list[list[int]]          # pairs: [chosen, rejected]; groups: the G completions in sample order
    extras: dict = field(default_factory=dict)   # numbers (or lists of numbers) the objective reads
    online: list[list[int]] = field(default_factory=list)  # hypo: fresh samples of the prompt (on-policy KL term)
    ref: list[list[float]] | None = None    # reference token log-probs of completions + online
    prev: list[list[float]] | None = None   # round-start policy token log-probs of completions + online
    weight: float = 1.0                      # game task: population weight of the pair (pi_t(y) pi_t(y'))
    loss_mask: list[list[int]] | None = None  # per completion token: 1 trained, 0 conditioned on only (tool results)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> "Example":
        return cls(**row)

    def sequences(self) -> list[list[int]]:
        return list(self.completions) + list(self.online)

    def trained_tokens(self, k: int) -> int:
        """Tokens of completion k that the loss reads (all of them unless a loss_mask leaves some out)."""
        return len(self.completions[k]) if self.loss_mask is None else sum(self.loss_mask[k])


def token_matrix(values: list[list[float]], mask: torch.Tensor) -> torch.Tensor:
    """[N, L] tensor with values[n] written at the response positions of row n (mask [N, L])."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    width = out.shape[-1] if out.dim() == 2 else -1
    if values and len(values) <= out.shape[0] and all(isinstance(r, list) and len(r) <= width for r in values):
        # one host tensor for all rows (zero-padded to the width) instead of one per row
        out[:len(values)] = torch.tensor([r + [0.0] * (width - len(r)) for r in values], dtype=torch.float32)
        return out.to(mask.device)
    for n, row in enumerate(values):
        out[n, :len(row)] = torch.tensor(row, dtype=torch.float32)
    return out.to(mask.device)


def pair_layout(examples: list[Example], pad_id: int) -> LayoutBatch:
    """[chosen_1..B, rejected_1..B] (the order split_pairs reads)."""
    seqs = [(e.prompt_ids, e.completions[0]) for e in examples] + [(e.prompt_ids, e.completions[1]) for e in examples]
    return padded(seqs, pad_id, row_ids=[e.row_id for e in examples])


def pair_side_values(examples: list[Example], attr: str) -> list[list[float]]:
    """Stored token log-probs in pair_layout's order (chosen_1..B, rejected_1..B)."""
    return [getattr(e, attr)[0] for e in examples] + [getattr(e, attr)[1] for e in examples]


def group_layout(examples: list[Example], pad_id: int) -> LayoutBatch:
    """All completions of B groups, group-major (B * G sequences)."""
    seqs = [(e.prompt_ids, c) for e in examples for c in e.completions]
    return padded(seqs, pad_id, row_ids=[e.row_id for e in examples])


def shared_prompt_layout(examples: list[Example], pad_id: int, sequences=Example.sequences) -> LayoutBatch:
    """`[prompt | sequence_1 | ... | sequence_k]` in one row per example (prefix sharing, preflab.data.prefix: each
    sequence attends to the prompt and itself, positions restart after the prompt), so the prompt is computed once
    per example instead of once per sequence. Sequences are numbered example-major, the order of group_layout (and
    of `padded` over the flattened sequences): scores and their response mask have the same [N, L] shape."""
    blocks, n = [], 0
    for e in examples:
        seqs = [list(c) for c in sequences(e)]
        blocks.append([Block(e.prompt_ids, seqs, list(range(n, n + len(seqs))))])
        n += len(seqs)
    return block_rows(blocks, n, pad_id, row_ids=[e.row_id for e in examples])


def shared_pair_layout(examples: list[Example], pad_id: int) -> LayoutBatch:
    """pair_layout's sequences ([chosen_1..B, rejected_1..B]) as `[prompt | chosen | rejected]` rows."""
    b = len(examples)
    return block_rows([[Block(e.prompt_ids, [e.completions[0], e.completions[1]], [i, b + i])]
                       for i, e in enumerate(examples)], 2 * b, pad_id, row_ids=[e.row_id for e in examples])


def online_layout(examples: list[Example], pad_id: int) -> LayoutBatch:
    seqs = [(e.prompt_ids, c) for e in examples for c in e.online]
    return padded(seqs, pad_id)


def sequence_logps(values: list[list[float]], mask: torch.Tensor) -> SequenceLogps:
    return SequenceLogps(token_matrix(values, mask), mask)


# a generation round (its examples and each optimizer step's slice of them) and one micro-batch of it: what the
# online run and its per-recipe rounds (preflab.online.game, preflab.online.mcts) build and checkpoint
@dataclass
class Round:
    index: int
    examples: list[Example]
    slices: list[list[int]]
    metrics: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"index": self.index, "examples": [e.to_json() for e in self.examples], "slices": self.slices,
                "metrics": self.metrics}

    @classmethod
    def from_json(cls, row: dict) -> "Round":
        return cls(row["index"], [Example.from_json(e) for e in row["examples"]], row["slices"], row["metrics"])


@dataclass
class OnlineMicroBatch:
    examples: list[Example]
    row_ids: list[int]
    tokens: int
    tokens_per_prompt: float = 0.0
    zero: bool = False  # an empty share of the step: scored, contributes no example and no gradient

    @property
    def num_tokens(self) -> int:
        return self.tokens
