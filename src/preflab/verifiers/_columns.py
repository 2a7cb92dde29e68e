"""Plumbing shared by the reward functions: completion text and per-completion dataset columns.

TRL 1.16 GRPO calls each reward function as f(prompts=..., completions=..., completion_ids=..., trainer_state=...,
**dataset_columns) and expects one float per completion. Completions are strings (standard datasets) or lists of
messages [{"role": "assistant", "content": ...}] (conversational). Dataset columns arrive as lists, one entry per
completion (each prompt's row repeated num_generations times).
"""
from __future__ import annotations

import json
from typing import Any, Callable

from preflab.errors import DataError, MissingExtraError

RewardFn = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the concatenated content of a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list):
        parts = []
        for message in completion:
            content = message.get("content", "") if isinstance(message, dict) else message
            if isinstance(content, list):  # multimodal content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(content if isinstance(content, str) else "")
        return "".join(parts)
    raise DataError(f"a completion must be a string or a list of messages, not {type(completion).__name__}.")


def column(kwargs: dict, name: str, n: int, *, required: bool = True, reward: str = "") -> list | None:
    """Dataset column `name` as a list of n entries (one per completion); None when absent and not required."""
    value = kwargs.get(name)
    if value is None:
        if required:
            raise MissingExtraError(f"{reward} needs the dataset column {name!r} (one entry per completion); "
                                    f"add it to the dataset or pass {name}=[...].")
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        value = [value] * n
    if len(value) != n:
        raise DataError(f"{reward}: column {name!r} has {len(value)} entries for {n} completions.")
    missing = [i for i, v in enumerate(value) if v is None] if required else []
    if missing:  # a row without the column (or with null) among rows that have it: TRL and preflab pass None
        raise DataError(f"{reward}: column {name!r} is None for completion {missing[0]} of the {n} in this call "
                        f"({len(missing)} in all): its prompt row lacks {name!r} or has null there (an online run's "
                        "data line names the rows without it, summary.json data.prompt_rows.column_gaps). Give every "
                        f"row its {name!r}, or leave such rows out.")
    return list(value)


def maybe_json(value: Any) -> Any:
    """Parse `value` if it is a JSON string (dataset columns often store lists/dicts as JSON), else return it."""
    return json.loads(value) if isinstance(value, str) else value


def named(fn: RewardFn, name: str) -> RewardFn:
    """Give a configured reward function the `__name__` TRL logs it under (rewards/<name>/mean)."""
    fn.__name__ = fn.__qualname__ = name
    return fn
