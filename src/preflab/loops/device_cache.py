"""torch_empty_cache_steps (transformers' TrainingArguments option, TRL's configs carry it): give the device
allocator's cached, unused blocks back to the driver every N optimizer steps, as transformers' Trainer does.

Where transformers empties it (Trainer.training_step, 5.x): after each micro-batch's forward and loss, before its
backward, in every micro-batch of an optimizer step whose count of finished steps (state.global_step) is a multiple
of N, so the first step's micro-batches (global_step 0), then those of steps N + 1, 2N + 1, ... (1-based). Here the
same: the training forward is wrapped (emptying_forward) and reads the run's finished steps (TrainingRun.step).
accelerate's clear_device_cache calls torch.<accelerator>.empty_cache() (no gc.collect, as transformers calls it).

It changes no value a run computes, only how much memory the allocator keeps cached between steps, at a cost in
speed (transformers' docs: about 10%). On the CPU no allocator caches device blocks: the call does nothing, and the
run says so once (as activation_offloading does on the CPU), rather than refuse a config written for a GPU machine.
"""
from __future__ import annotations

from collections.abc import Callable


def empty_device_cache() -> None:
    """torch.<accelerator>.empty_cache() through accelerate (nothing without an accelerator)."""
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache()


def cpu_note(every: int) -> str:
    return (f"preflab: note: torch_empty_cache_steps: {every} on the CPU: there is no device cache to empty (the "
            "call does nothing here); on a GPU it gives the allocator's cached blocks back every "
            f"{every} steps.")


def emptying_forward(forward: Callable, every: int | None, finished_steps: Callable[[], int]) -> Callable:
    """`forward`, followed by empty_device_cache() whenever finished_steps() (the optimizer steps done before this
    micro-batch's step) is a multiple of `every`; `forward` itself when `every` is None (the option unset)."""
    if not every:
        return forward

    def forward_then_empty(mb):
        out = forward(mb)
        if finished_steps() % every == 0:
            empty_device_cache()
        return out

    return forward_then_empty
