"""How many response positions go through the LM head at once: a logits budget in bytes, sized by the device.

The scorer (preflab.scoring.lm) runs the head + log-softmax over chunks of C positions; a chunk holds C x V float32
logits (twice that with the "token_kl" need: the reference's logits too), so

    C = max(16, budget // (4 * V * factor))

On CPU the budget is CHUNK_BYTES (64 MiB: larger chunks did not run faster on the benchmark fixture). On an
accelerator with memory to spare, fewer, larger chunks mean fewer kernel launches per step, so the budget is
GPU_FREE_FRACTION of the memory free when the first batch is scored, clamped to [CHUNK_BYTES, GPU_MAX_BYTES]. It is
read once per device and kept, so the chunk length (and every kernel shape that depends on it) stays the same from
step to step. A measurement on an H200 (issue 17) found a 4 GiB budget no faster than 64 MiB at 0.5B-1B shapes and
7 GiB more memory, hence the cap. `chunk_tokens` in the config overrides all of this.
"""
from __future__ import annotations

import torch

CHUNK_BYTES = 64 * 2**20  # float32 logits budget per chunk on CPU (and the floor everywhere)
GPU_FREE_FRACTION = 1 / 32
GPU_MAX_BYTES = 1 * 2**30
_budgets: dict[str, int] = {}


def chunk_budget_bytes(device_type: str, free_bytes: int | None) -> int:
    """The logits budget for a device of type `device_type` with `free_bytes` free (None: unknown)."""
    if device_type == "cpu" or free_bytes is None:
        return CHUNK_BYTES
    return int(min(GPU_MAX_BYTES, max(CHUNK_BYTES, free_bytes * GPU_FREE_FRACTION)))


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    backend = getattr(torch, device.type, None)
    mem_get_info = getattr(backend, "mem_get_info", None)
    try:
        return mem_get_info(device)[0] if mem_get_info is not None else None
    except (RuntimeError, TypeError):
        return None


def head_chunk_budget(device: torch.device) -> int:
    """chunk_budget_bytes for `device`, from its free memory the first time it is asked, then the same value."""
    key = str(device)
    if key not in _budgets:
        _budgets[key] = chunk_budget_bytes(device.type, None if device.type == "cpu" else _free_bytes(device))
    return _budgets[key]


def chunk_for_budget(budget_bytes: int, vocab_size: int, factor: int = 1) -> int:
    """Positions per chunk: `factor` float32 [C, vocab_size] logits tensors within budget_bytes (at least 16)."""
    return max(16, budget_bytes // (4 * vocab_size * factor))
