"""Validated examples: what `load_rows` returns and `tokenize_*` consumes.

A prompt or response is either text (`str`, TRL's standard form) or a list of chat messages
(`[{"role": ..., "content": ...}, ...]`, TRL's conversational form). For conversational pairs the prompt holds
the conversation so far and `chosen` / `rejected` hold the assistant turn(s) that follow it. `row_id` is the
0-based index of the row in its source; `extras` keeps the row's other columns (`margin`, `weight`, `id`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

Messages = list[dict]
Text = Union[str, Messages]


def is_conversational(value: Text) -> bool:
    """True for a list of messages, False for plain text."""
    return isinstance(value, list)


@dataclass
class PairExample:
    """One preference pair: `prompt`, the preferred `chosen` and the dispreferred `rejected` response.

    `rejected_prompt`: None for an ordinary pair (both responses answer `prompt`). A MAPL intra-sample row
    {prompt_chosen, prompt_rejected, completion} (preflab.data.mapl) has two prompts and one response: `prompt` is
    x_w, `rejected_prompt` is x_l, and `chosen` == `rejected` == y, so the "chosen" side scores y | x_w and the
    "rejected" side y | x_l."""

    row_id: int
    prompt: Text
    chosen: Text
    rejected: Text
    extras: dict = field(default_factory=dict)
    rejected_prompt: Text | None = None


@dataclass
class UnpairedExample:
    """One KTO-style example: a `completion` to `prompt`, desirable (`label=True`) or not."""

    row_id: int
    prompt: Text
    completion: Text
    label: bool
    extras: dict = field(default_factory=dict)


@dataclass
class PromptExample:
    """One prompt for online loops (generation happens later)."""

    row_id: int
    prompt: Text
    extras: dict = field(default_factory=dict)


Example = Union[PairExample, UnpairedExample, PromptExample]
