"""Sequence log-prob sums for evaluation, through the trainer's own path: `padded` layout -> LogProbScorer.

    scores = score_pairs(policy, pairs, pad_id, ref=reference)     # PairScores over all pairs, float64 on CPU
    rewards = score_token_rewards(policy, reference, pairs[:3], pad_id, beta)   # per-token implicit rewards
    sums, lengths = score_responses(policy, [(prompt_ids, response_ids), ...], pad_id)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from preflab.data.layout import pair_sequences, padded
from preflab.eval.metrics import PairScores, token_implicit_rewards
from preflab.scoring.lm import LogProbScorer, split_pairs


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pair_batches(model: nn.Module, pairs, pad_id: int, ref: nn.Module | None, batch_size: int,
                  chunk_tokens: int | None):
    """(the pairs of each chunk, their PairBatch of per-token log-probs) for `batch_size` pairs per forward."""
    scorer = LogProbScorer(model, chunk_tokens)
    ref_scorer = LogProbScorer(ref, chunk_tokens) if ref is not None else None
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        layout = padded(pair_sequences(chunk), pad_id)
        policy_scores = scorer(layout.to(_device(model)))
        ref_scores = ref_scorer(layout.to(_device(ref))) if ref_scorer is not None else None
        yield chunk, split_pairs(policy_scores, ref_scores)


@torch.no_grad()
def score_pairs(model: nn.Module, pairs, pad_id: int, ref: nn.Module | None = None, batch_size: int = 8,
                chunk_tokens: int | None = None) -> PairScores:
    """Summed response log-probs and lengths of chosen and rejected under `model` (and `ref`) for tokenized
    pairs (objects with prompt_ids, chosen_ids, rejected_ids), `batch_size` pairs per forward."""
    return PairScores.cat([PairScores.from_batch(batch)
                           for _, batch in _pair_batches(model, pairs, pad_id, ref, batch_size, chunk_tokens)])


@torch.no_grad()
def score_token_rewards(model: nn.Module, ref: nn.Module, pairs, pad_id: int, beta: float, batch_size: int = 8,
                        chunk_tokens: int | None = None) -> list[dict]:
    """Per pair, the per-token implicit reward r_t = beta (lp_theta[t] - lp_ref[t]) of each response token
    (metrics.token_implicit_rewards, Wang et al. 2025, methods/objectives.md §C #10), through the same scoring
    path as score_pairs: {"row_id", "chosen": {"token_ids", "rewards", "sum"}, "rejected": {...}}, response tokens
    only (no prompt or padding position), in order; each side's rewards sum to its sequence reward beta h(y)."""
    out = []
    for chunk, batch in _pair_batches(model, pairs, pad_id, ref, batch_size, chunk_tokens):
        entries = [{"row_id": pair.row_id} for pair in chunk]
        for side in ("chosen", "rejected"):
            policy = getattr(batch, f"policy_{side}")
            rewards = token_implicit_rewards(policy, getattr(batch, f"ref_{side}"), beta).double().cpu()
            mask = policy.mask.cpu()
            for i, (pair, entry) in enumerate(zip(chunk, entries)):
                values = rewards[i][mask[i]]
                entry[side] = {"token_ids": list(getattr(pair, f"{side}_ids")), "rewards": values.tolist(),
                               "sum": float(values.sum())}
        out += entries
    return out


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
