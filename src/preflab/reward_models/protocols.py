"""Shared pieces of `preflab.reward_models`: the interfaces it composes with and small tensor helpers.

Interfaces (structural Protocols, so any object with the method fits; `preflab.reward_models` models do):
    RewardModel.score(prompts, responses) -> Tensor [N]           r(x, y)
    PreferenceModel.prefer(prompts, a, b) -> Tensor [N]            P(a > b | x)

Feature-level code in this package takes `PairInputs`: a tensor whose first axis indexes examples, or a dict of
such tensors (e.g. {"input_ids": [N, T], "attention_mask": [N, T]} for an LM backbone). A scoring module is called
as `module(inputs)` and returns [N] (rewards) or [N, C] (class logits), so the same code runs on synthetic features
and on a transformer backbone with a head (`preflab.reward_models.backbone_head.PooledHead`).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Protocol, Union, runtime_checkable

import torch
from torch import Tensor, nn

from preflab.errors import PreflabError

PairInputs = Union[Tensor, dict[str, Tensor]]


@runtime_checkable
class RewardModel(Protocol):
    """A scalar reward model: one score per (prompt, response)."""

    def score(self, prompts: Sequence, responses: Sequence) -> Tensor: ...


@runtime_checkable
class PreferenceModel(Protocol):
    """A (possibly intransitive) preference model: P(a > b | prompt) per row."""

    def prefer(self, prompts: Sequence, a: Sequence, b: Sequence) -> Tensor: ...


def num_rows(inputs: PairInputs) -> int:
    """Number of examples (first-axis length) of a tensor or a dict of tensors that agree on it."""
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    if not isinstance(inputs, dict) or not inputs:
        raise PreflabError(f"inputs must be a tensor or a non-empty dict of tensors, got {type(inputs).__name__}.")
    sizes = {k: v.shape[0] for k, v in inputs.items()}
    if len(set(sizes.values())) != 1:
        raise PreflabError(f"inputs disagree on the number of rows: {sizes}; give every tensor the same first axis.")
    return next(iter(sizes.values()))


def take(inputs: PairInputs, index: Tensor) -> PairInputs:
    """The rows `index` of a tensor or of every tensor in a dict."""
    if isinstance(inputs, Tensor):
        return inputs[index]
    return {k: v[index] for k, v in inputs.items()}


def concat(first: PairInputs, second: PairInputs) -> PairInputs:
    """Stack two inputs along the example axis (one forward for both sides of a pair)."""
    if isinstance(first, Tensor):
        return torch.cat([first, second])
    if set(first) != set(second):
        raise PreflabError(f"the two sides have different keys: {sorted(first)} vs {sorted(second)}.")
    return {k: _cat_padded(first[k], second[k]) for k in first}


def _cat_padded(a: Tensor, b: Tensor) -> Tensor:
    """Concatenate [N, T1, ...] and [M, T2, ...], right-padding the shorter time axis with zeros."""
    if a.dim() >= 2 and a.shape[1] != b.shape[1]:
        width = max(a.shape[1], b.shape[1])
        pad = lambda t: torch.cat([t, t.new_zeros(t.shape[0], width - t.shape[1], *t.shape[2:])], 1)  # noqa: E731
        a, b = pad(a), pad(b)
    return torch.cat([a, b])


def pair_margins(model: nn.Module, chosen: PairInputs, rejected: PairInputs) -> Tensor:
    """[N] r(chosen) - r(rejected) with one forward over both sides; `model(inputs)` returns [N] or [N, 1]."""
    n = num_rows(chosen)
    rewards = model(concat(chosen, rejected))
    rewards = rewards.squeeze(-1) if rewards.dim() == 2 and rewards.shape[-1] == 1 else rewards
    if rewards.shape != (2 * n,):
        raise PreflabError(f"a reward model must return [N] or [N, 1] scores; got {tuple(rewards.shape)} "
                           f"for N={2 * n}.")
    return rewards[:n] - rewards[n:]


def index_users(user_ids: Iterable[Hashable]) -> tuple[list[Hashable], Tensor]:
    """(distinct users in order of first appearance, [N] long index of each row's user)."""
    users: dict[Hashable, int] = {}
    rows = [users.setdefault(u.item() if isinstance(u, Tensor) else u, len(users)) for u in user_ids]
    return list(users), torch.tensor(rows, dtype=torch.long)


def fit_full_batch(loss_fn: Callable[[], Tensor], params: Iterable[nn.Parameter], *, steps: int, lr: float,
                   weight_decay: float = 0.0) -> float:
    """Minimise `loss_fn()` with Adam for `steps` full-batch steps; returns the last loss.

    `weight_decay` is an L2 penalty added to the loss (weight_decay * sum ||p||^2), not AdamW's decoupled decay.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise PreflabError("nothing to train: the model has no parameters with requires_grad=True.")
    optimizer = torch.optim.Adam(params, lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        if weight_decay:
            loss = loss + weight_decay * sum((p * p).sum() for p in params)
        if not torch.isfinite(loss):
            raise PreflabError(f"the loss became {loss.item()}; lower lr (now {lr}) or check the inputs.")
        loss.backward()
        optimizer.step()
    return float(loss.detach())
