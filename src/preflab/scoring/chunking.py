"""How many response positions go through the LM head at once: a logits budget in bytes, sized by the device.

The scorer (preflab.scoring.lm) runs the head + log-softmax over chunks of C positions; a chunk holds C x V float32
logits (twice that with the "token_kl" need: the reference's logits too), so

    C = max(16, budget // (4 * V * factor))

On CPU the budget is CHUNK_BYTES (64 MiB: larger chunks did not run faster on the benchmark fixture). On an
accelerator with memory to spare, fewer, larger chunks mean fewer kernel launches per step, so the budget is
GPU_FREE_FRACTION of the memory free when the first batch is scored, clamped to [CHUNK_BYTES, GPU_MAX_BYTES]. It is
read once per device and kept (on each model's LM head too: chunk_budget_of), so the chunk length (and every kernel shape that depends on it) stays the same from
step to step. A measurement on an H200 (issue 17) found a 4 GiB budget no faster than 64 MiB at 0.5B-1B shapes and
7 GiB more memory, hence the cap. `chunk_tokens` in the config overrides all of this.
"""
from __future__ import annotations

import torch

CHUNK_BYTES = 64 * 2**20  # float32 logits budget per chunk on CPU (and the floor everywhere)
GPU_FREE_FRACTION = 1 / 32
GPU_MAX_BYTES = 1 * 2**30
_budgets: dict[str, int] = {}  # device -> budget, read eagerly (chunk_budget_of keeps a copy on each LM head)
_BUDGET_ATTR = "_preflab_head_chunk_budget"  # on an LM head's projection module: (device, budget in bytes)


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


def chunk_budget_of(head) -> int:
    """The chunk budget of an LM head (an LMHead, or the projection module itself): its device's
    (head_chunk_budget), kept on the projection module with the device it was read for. The compiled scorer reads
    it there, per model, as models.attention keeps the right-padding probe's verdict: read from the module-level
    `_budgets`, the graph's guards would depend on that dict (its keys and values), shared by every model of the
    process. before_compiled_call fills it in eagerly, outside the graph."""
    projection = getattr(head, "projection", head)
    device = str(projection.weight.device)
    kept = getattr(projection, _BUDGET_ATTR, None)
    if kept is None or kept[0] != device:
        kept = (device, head_chunk_budget(projection.weight.device))
        setattr(projection, _BUDGET_ATTR, kept)
    return kept[1]


def chunk_for_budget(budget_bytes: int, vocab_size: int, factor: int = 1) -> int:
    """Positions per chunk: `factor` float32 [C, vocab_size] logits tensors within budget_bytes (at least 16)."""
    return max(16, budget_bytes // (4 * vocab_size * factor))
