"""Sequence log-prob sums for evaluation, through the trainer's own path: `padded` layout -> LogProbScorer.

    scores = score_pairs(policy, pairs, pad_id, ref=reference)     # PairScores over all pairs, float64 on CPU
    sums, lengths = score_responses(policy, [(prompt_ids, response_ids), ...], pad_id)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from preflab.data.layout import pair_sequences, padded
from preflab.eval.metrics import PairScores
from preflab.scoring.lm import LogProbScorer, split_pairs


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_pairs(model: nn.Module, pairs, pad_id: int, ref: nn.Module | None = None, batch_size: int = 8,
                chunk_tokens: int | None = None) -> PairScores:
    """Summed response log-probs and lengths of chosen and rejected under `model` (and `ref`) for tokenized
    pairs (objects with prompt_ids, chosen_ids, rejected_ids), `batch_size` pairs per forward."""
    scorer = LogProbScorer(model, chunk_tokens)
    ref_scorer = LogProbScorer(ref, chunk_tokens) if ref is not None else None
    parts = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        layout = padded(pair_sequences(chunk), pad_id)
        policy_scores = scorer(layout.to(_device(model)))
        ref_scores = ref_scorer(layout.to(_device(ref))) if ref_scorer is not None else None
        parts.append(PairScores.from_batch(split_pairs(policy_scores, ref_scores)))
    return PairScores.cat(parts)


@torch.no_grad()
def score_responses(model: nn.Module, sequences: list[tuple[list[int], list[int]]], pad_id: int,
                    batch_size: int = 16, chunk_tokens: int | None = None) -> tuple[Tensor, Tensor]:
    """(sums [N], lengths [N]) float64 of each (prompt_ids, response_ids) sequence's response log-prob."""
    scorer = LogProbScorer(model, chunk_tokens)
    sums, lengths = [], []
    for start in range(0, len(sequences), batch_size):
        scores = scorer(padded(sequences[start:start + batch_size], pad_id).to(_device(model)))
        sums.append(scores.token_logps.double().sum(-1).cpu())
        lengths.append(scores.mask.sum(-1).double().cpu())
    if not sums:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.cat(sums), torch.cat(lengths)
