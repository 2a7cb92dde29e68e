"""The one optimizer step every loop shares (DESIGN.md principle 4).

One call = one optimizer step over this rank's micro-batches of a gradient-accumulation window:

    denom = number of examples in the whole window on all ranks (known before any forward)
    for each micro-batch: out = forward(mb); backward(sum(out.losses) * world_size / denom)
    fp16 (a GradScaler on the accelerator): unscale the gradients first, so clipping and grad_norm see true values
    grad_norm = clip(params, max_grad_norm); non-finite loss or norm -> skip the update (every rank agrees)
    optimizer.step(); scheduler.step(); zero_grad
    an update that made a weight non-finite is rolled back and skipped too (preflab.weight_guard)

Under a GradScaler a finite loss with non-finite gradients is an fp16 overflow, not a non-finite step: the scaler
skips the update and lowers its scale (Micikevicius et al., 2018, "Mixed Precision Training", Sec. 3.2: dynamic
loss scaling), the scheduler does not advance, and the step is reported as `overflow` (StepResult.skipped is then
False: it does not count toward max_nonfinite_steps).

Host syncs: one per optimizer step. The loss and metric sums of every micro-batch stay on the device; after clipping
they travel with the weight-guard bound and the gradient norm in one tensor that the host reads once (the skip
decision needs it: a non-finite loss sum or gradient norm skips the update). A GPU can so run ahead of the host
through all micro-batches of a step (tests/test_step_syncs.py counts the syncs; benchmarks/op_count.py counts every
op a step dispatches, tests/perf/test_op_budget.py bounds them). On several processes the window's example count
and the union of the ranks' metric names are exchanged too (the all-reduce of that one tensor needs the same names on
every rank).

Dividing by the global example count (not by the micro-batch size, not by the accumulation count) makes
2 processes x batch b equal 1 process x batch 2b, and accumulation of 2 x b equal one batch of 2b. DDP averages
gradients over ranks, hence the world_size factor. Metrics are averaged with the same example weights.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from preflab import weight_guard
from preflab.errors import PreflabError


@dataclass
class StepResult:
    loss: float
    metrics: dict[str, float]
    grad_norm: float
    skipped: bool
    num_examples: int
    row_ids: list[int] = field(default_factory=list)
    nonfinite_weights: bool = False  # skipped because the update would have made a weight inf/NaN
    overflow: bool = False  # fp16: the GradScaler found inf/nan gradients, skipped the update and lowered its scale


def _reduce_sum(accelerator, values: torch.Tensor) -> torch.Tensor:
    if accelerator is None or accelerator.num_processes == 1:
        return values
    return accelerator.reduce(values, reduction="sum")


def optimizer_step(micro_batches: list, forward: Callable, params: list[torch.Tensor], optimizer, scheduler=None,
                   accelerator=None, max_grad_norm: float | None = 1.0, sync_module=None,
                   extra_params: list[torch.Tensor] = ()) -> StepResult:
    """Run one update. `forward(mb)` returns an ObjectiveOutput; each micro-batch has `row_ids` (its examples), and
    out.losses has one entry per row id (checked: PreflabError otherwise).

    sync_module: the DDP-wrapped module (gradient sync is skipped on all but the last micro-batch).
    extra_params: trainable tensors outside that module (e.g. an objective's own parameters); their gradients are
    all-reduced here.
    """
    world = accelerator.num_processes if accelerator is not None else 1
    local_count = sum(len(mb.row_ids) for mb in micro_batches)
    if world == 1:  # known on the host: no device round trip
        denom = float(local_count)
    else:
        denom = float(_reduce_sum(accelerator, torch.tensor([float(local_count)]).to(_device(accelerator))).item())
    # the loss sum and the metric sums stay on the device until the step's one host read below; a non-finite loss
    # shows there as a non-finite sum (float64: a sum of finite float32 losses cannot overflow)
    loss_sum, metric_sums, host_metrics = None, {}, {}
    for i, mb in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        ctx = accelerator.no_sync(sync_module) if (sync_module is not None and not last and world > 1) else \
            contextlib.nullcontext()
        with ctx:
            out = forward(mb)
            if out.losses.dim() != 1 or out.losses.shape[0] != len(mb.row_ids):
                raise PreflabError(
                    f"micro-batch {i}: forward returned per-example losses of shape {tuple(out.losses.shape)} for "
                    f"{len(mb.row_ids)} examples (row_ids); the step weights by example count, so the objective must "
                    "return one loss per example listed in row_ids.")
            # a non-finite loss still goes through backward so that every rank takes part in the gradient
            # all-reduce; the update is then skipped on all ranks together
            total = out.losses.sum()
            scaled = total / denom if world == 1 else total * world / denom
            if accelerator is not None:
                accelerator.backward(scaled)
            else:
                scaled.backward()
        n = out.losses.shape[0]
        piece = total.detach().to(_wide(total.device))
        loss_sum = piece if loss_sum is None else loss_sum + piece
        _add_metrics(metric_sums, host_metrics, out.metrics, n, piece)
    for p in extra_params:
        if world > 1 and p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world
    all_params = list(params) + list(extra_params)
    scaler = getattr(accelerator, "scaler", None) if accelerator is not None else None
    if scaler is not None:  # the gradients carry the loss scale: clip and report the true ones
        scaler.unscale_(getattr(optimizer, "optimizer", optimizer))
    engine = getattr(accelerator, "deepspeed_engine_wrapped", None) if accelerator is not None else None
    if engine is not None:  # DeepSpeed stepped (clipped, updated, zeroed) inside accelerator.backward
        norm = engine.get_global_grad_norm()
        grad_norm = torch.tensor(float(norm) if norm is not None else 0.0, device=_device(accelerator))
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(all_params, max_grad_norm if max_grad_norm else math.inf)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2 (DTensor gradients): the norm is a replicated DTensor
        grad_norm = grad_norm.full_tensor()
    # The one host read of the step: [bound of max |weight|, grad norm, loss sum, metric sums...] (sums over ranks
    # bound the first and the second). A non-finite loss sum or grad norm skips the update; under a GradScaler
    # non-finite gradients of a finite loss are its business (fp16 overflow).
    here = grad_norm.device  # where the values are: put together there, moved (if at all) as one tensor
    wide = _wide(here)
    bound = weight_guard.max_abs_bound(all_params).to(here)
    if loss_sum is None:
        loss_sum = torch.zeros((), device=here, dtype=wide)
    if world > 1 and host_metrics:  # Python-number metrics: summed over ranks with the rest (one host -> device copy)
        metric_sums[tuple(host_metrics)] = torch.tensor(list(host_metrics.values()), dtype=wide).to(here)
        host_metrics = {}
    if world > 1:  # every rank the same sets of names (a rank without one adds zeros)
        for key in _metric_groups_of_all_ranks(metric_sums):
            if key not in metric_sums:
                metric_sums[key] = torch.zeros(len(key), device=here, dtype=wide)
    # ((names...), [k] sums) per set of metric names, in the same order on every rank
    groups = sorted(metric_sums.items(), key=lambda item: item[0])
    flags = torch.cat([torch.stack([bound, grad_norm.detach()]).to(wide), loss_sum.to(here).reshape(1),
                       *(sums.to(here) for _, sums in groups)])
    if world > 1:
        flags = _reduce_sum(accelerator, flags.to(_device(accelerator)))
    flags = flags.tolist()
    norm_total, loss_total = flags[1], flags[2]
    metric_totals, at = dict(host_metrics), 3
    for keys, _ in groups:
        for key, value in zip(keys, flags[at:at + len(keys)], strict=True):
            metric_totals[key] = metric_totals[key] + value if key in metric_totals else value
        at += len(keys)
    skipped = not math.isfinite(loss_total) or (scaler is None and not math.isfinite(norm_total))
    weights_bad, overflow = False, False
    if skipped:
        if scaler is not None:
            scaler.update()  # close this iteration's unscale_ (inf/nan gradients: the scale is lowered too)
    else:
        # DeepSpeed has already updated the weights inside backward: nothing to guard or roll back here
        risky = engine is None and weight_guard.update_could_overflow(optimizer, flags[0], norm_total)
        snapshot = weight_guard.Snapshot(all_params, optimizer) if risky else None
        overflow = _update(optimizer, scaler)
        if snapshot is not None and not overflow and _reduce_sum(
                accelerator, (~weight_guard.all_finite(all_params)).float().reshape(1).to(_device(accelerator))
        ).item() > 0:
            snapshot.restore()
            skipped = weights_bad = True
        elif scheduler is not None and not overflow:
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    row_ids = [r for mb in micro_batches for r in mb.row_ids]
    # grad_norm: the mean of the ranks' norms (clip_grad_norm_ sees the all-reduced gradients: equal on every rank)
    local_norm = norm_total / world if world > 1 else norm_total
    return StepResult(loss=loss_total / denom, metrics={k: metric_totals[k] / denom for k in sorted(metric_totals)},
                      grad_norm=local_norm, skipped=skipped, num_examples=int(denom), row_ids=row_ids,
                      nonfinite_weights=weights_bad, overflow=overflow)


def _wide(device: torch.device) -> torch.dtype:
    """The dtype of the step's sums: float64 (exact sums), float32 where the device has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _add_metrics(sums: dict, host_sums: dict, metrics: dict, n: int, like: torch.Tensor) -> None:
    """Add one micro-batch's metrics, weighted by its example count n, to the running sums: the tensors on the
    loss's device as one [k] vector per set of names (sums[(names...)]: one stack, one cast, one multiply, one add
    per micro-batch instead of as many per metric); Python numbers on the host (host_sums). Exact: each value is
    widened before the multiply, as one float64 tensor per metric would be."""
    names, values = [], []
    with torch.no_grad():  # no detach needed
        for key, value in metrics.items():
            if not isinstance(value, torch.Tensor):
                host_sums[key] = host_sums.get(key, 0.0) + float(value) * n
                continue
            value = value.to(like.device)
            names.append(key)
            values.append(value if value.dim() == 0 else value.reshape(()))
        if not names:
            return
        if len({v.dtype for v in values}) > 1:  # mixed dtypes: widen each (stack could promote to a narrower type)
            values = [v.to(like.dtype) for v in values]
        vector = torch.stack(values).to(like.dtype) * n
    key = tuple(names)
    sums[key] = sums[key] + vector if key in sums else vector


def _metric_groups_of_all_ranks(metric_sums: dict) -> list[tuple]:
    """The union of the ranks' sets of metric names (one small collective). An objective reports some metrics only
    when its batch holds the rows they average, so ranks can hold different names, and the all-reduce of the step's
    values needs one layout on every rank: gloo stops on the size mismatch, NCCL would add different metrics
    together. A rank without a metric adds 0, as a micro-batch without it does on one process (2 processes x b then
    equal 1 process x b with 2 accumulation micro-batches)."""
    from accelerate.utils import gather_object

    return sorted(set().union(*(map(tuple, keys) for keys in gather_object([sorted(metric_sums)]))))


def _update(optimizer, scaler) -> bool:
    """optimizer.step(); with a GradScaler: through the scaler (it skips the update on inf/nan gradients and lowers
    its scale). Returns True when the scaler skipped the update."""
    if scaler is None:
        optimizer.step()
        return False
    if hasattr(optimizer, "step_was_skipped"):  # accelerate's AcceleratedOptimizer: scaler.step + update inside
        optimizer.step()
        return bool(optimizer.step_was_skipped)
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() < before


def _device(accelerator):
    return accelerator.device if accelerator is not None else torch.device("cpu")
