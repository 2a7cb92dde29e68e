"""The peak memory a training run used, as summary.json's `peak_memory` records it (preflab.loops.driver reads it
once, after the last step and the final evaluation, and takes the maximum over ranks in the end-of-run agreement it
already holds: preflab.rank_agreement.ranks_agree's values).

Two measures, by where the run's tensors live:
- an accelerator (cuda, xpu: torch.<device>.max_memory_allocated / max_memory_reserved): the peak bytes of tensors
  the caching allocator held on this process's device since the process started (or since a caller reset the
  counters), and the peak it reserved from the driver (the allocated peak plus cached, unused blocks). Tensors only:
  the CUDA context and other libraries' buffers are not in it. `preflab plan`'s per-rank `total` estimates the
  allocated peak. Reading the allocator's counters is a host-side read, no device sync.
- the CPU: the whole process's peak resident set size (getrusage's ru_maxrss): the tensors, and Python, torch and
  every library loaded, the tokenizer, the data. Linux reports it in KiB, macOS in bytes (rss_peak_bytes converts).

Both counters are reset when a run's train() starts (reset_process_peak: the allocator's reset_peak_memory_stats;
on Linux, writing 5 to /proc/self/clear_refs, which resets the process's high-water mark, and with it ru_maxrss, to
its current resident set), so a notebook's second run reports its own peak, not an earlier run's. Memory still held
when the run starts (its models, an earlier run's objects not yet freed) counts. Where the reset is not possible
(macOS, a /proc that refuses the write) the record says `since: process_start`.

Values are GiB (2**30 bytes), the unit `preflab plan` prints its estimate in.
"""
from __future__ import annotations

import resource
import sys

GiB = 1024 ** 3

# what each measure is, as summary.json's peak_memory["measure"] and the report name it
MEASURES = {
    "device_allocated": "torch.{device}.max_memory_allocated: the peak of tensors on the device (preflab plan's "
                        "per-rank total estimates it); reserved_gib: the allocator's peak reservation",
    "process_rss": "the whole process's peak resident set (getrusage ru_maxrss): tensors, Python, torch and every "
                   "library loaded, the data",
}


def rss_peak_bytes(platform: str | None = None) -> int:
    """This process's peak resident set size in bytes: getrusage(RUSAGE_SELF).ru_maxrss, which Linux (and the
    other Unixes but macOS) gives in KiB and macOS (`darwin`) in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if (platform or sys.platform) == "darwin" else int(peak) * 1024


def _allocator(device):
    """torch.cuda / torch.xpu for a device of that type whose allocator counts its peak; None on the CPU (and a
    device whose module has no such counter, e.g. mps: measured as the process's RSS)."""
    import torch

    if device is None or getattr(device, "type", "cpu") == "cpu":
        return None
    module = getattr(torch, device.type, None)
    counted = module is not None and callable(getattr(module, "max_memory_allocated", None))
    return module if counted else None


def reset_process_peak(device, clear_refs: str = "/proc/self/clear_refs") -> str:
    """Reset this process's peak counters for `device` (see the module docstring); returns what the next
    process_peak measures from: `run_start`, or `process_start` when the counter could not be reset."""
    module = _allocator(device)
    if module is not None:
        module.reset_peak_memory_stats(device)
        return "run_start"
    try:
        with open(clear_refs, "w") as handle:  # Linux >= 4.0: "5" resets the peak RSS (VmHWM, ru_maxrss)
            handle.write("5")
    except OSError:
        return "process_start"
    return "run_start"


def process_peak(device) -> tuple[str, float, float | None]:
    """(measure, peak GiB, reserved GiB or None) of this process on `device` (the accelerator's device): the
    allocator's counters on an accelerator, the process's peak RSS on the CPU (see the module docstring)."""
    module = _allocator(device)
    if module is None:
        return "process_rss", rss_peak_bytes() / GiB, None
    return ("device_allocated", module.max_memory_allocated(device) / GiB,
            module.max_memory_reserved(device) / GiB)


def peak_memory_record(measure: str, device_type: str, per_rank: list[tuple[float, float | None]],
                       since: str = "run_start") -> dict:
    """summary.json's peak_memory from every rank's (peak GiB, reserved GiB or None), in rank order: the maximum
    over ranks (`gib`, `reserved_gib`), what was measured, since when (reset_process_peak's answer) and with
    several processes each rank's values."""
    record = {"gib": max(peak for peak, _ in per_rank),
              "measure": measure, "what": MEASURES[measure].format(device=device_type), "since": since}
    reserved = [r for _, r in per_rank if r is not None]
    if reserved:
        record["reserved_gib"] = max(reserved)
    if len(per_rank) > 1:
        record["per_rank_gib"] = [peak for peak, _ in per_rank]
        if reserved:
            record["per_rank_reserved_gib"] = reserved
    return record


def peak_memory_text(record) -> str | None:
    """`2.31 GiB (device allocated, max over 2 ranks; reserved 2.50 GiB)` from a summary's peak_memory; None when
    the summary has none (a run from before this was recorded, a recipe)."""
    if not isinstance(record, dict) or not isinstance(record.get("gib"), (int, float)):
        return None
    ranks = record.get("per_rank_gib")
    where = "device allocated" if record.get("measure") == "device_allocated" else "process RSS"
    over = f", max over {len(ranks)} ranks" if isinstance(ranks, list) and len(ranks) > 1 else ""
    reserved = record.get("reserved_gib")
    more = f"; reserved {reserved:.3g} GiB" if isinstance(reserved, (int, float)) else ""
    return f"{record['gib']:.3g} GiB ({where}{over}{more})"
