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

Host syncs: one per optimizer step, on one process and on several. The loss and metric sums of every micro-batch
stay on the device; after clipping they travel with the weight-guard bound and the gradient norm in one tensor that
the host reads once (the skip decision needs it: a non-finite loss sum or gradient norm skips the update). A GPU can
so run ahead of the host through all micro-batches of a step (tests/test_step_syncs.py counts the syncs;
benchmarks/op_count.py counts every op a step dispatches, tests/perf/test_op_budget.py bounds them). On several
processes the window's example count is all-reduced on the device before the first backward (the loss scale divides
by it there), and the one tensor of sums (with the example and token counts: StepResult.num_examples, num_tokens) is
all-reduced before that read (collectives, not host reads on NCCL; tests/test_step_metrics.py counts the reads of
a 2-process step).

Dividing by the global example count (not by the micro-batch size, not by the accumulation count) makes
2 processes x batch b equal 1 process x batch 2b, and accumulation of 2 x b equal one batch of 2b. DDP averages
gradients over ranks, hence the world_size factor.

Metrics: each is a sum of value x count and a count over the micro-batches and ranks, divided once after the read,
so a logged value is the exact mean over everything it averages in the step. The count is the micro-batch's example
count, or the one the objective gives (ObjectiveOutput.metric_counts: KTO's desirable examples, response tokens);
a metric whose count is 0 in the whole step is left out of StepResult.metrics, and StepResult.metric_counts carries
the counts on, so a logging window averages exactly too (preflab.runlog.average_results). A micro-batch
without a metric adds a zero sum with a zero count. The set of metric names must be the same on every rank (the
all-reduce adds the sums position by position): objectives report the same names for every batch. It is checked
without a per-step exchange of names: the first step of each accelerator gathers the ranks' names once (a clear
error naming the difference), and every step all-reduces a 16-bit hash h of this rank's layout as h and h^2 in the
same tensor; the ranks agree iff world x sum(h^2) = sum(h)^2 (Cauchy-Schwarz), else every rank raises the same
PreflabError.

Min / max metrics (ObjectiveOutput.metric_extrema: GRPO's clip_ratio/low_min and high_max) are not sums: each
micro-batch's value rides in the same all-reduce in a [world x micro-batches x names] block where each rank fills
only its own slice (a sum of disjoint slices is an all-gather); after the read the host takes each micro-batch's
min / max over the ranks and the mean over the micro-batches, as TRL's nanmin(gather(...)) per compute_loss call
averaged by its log(). Every rank must so run the same number of micro-batches (the online loop pads with empty
ones), checked with the names.
"""
from __future__ import annotations

import contextlib
import functools
import math
import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from preflab import weight_guard
from preflab.data.layout import to_device
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
    # what each metric of `metrics` averages in this step, on all ranks (examples, or the objective's own count): a
    # logging window weights the steps' values by these (preflab.runlog.average_results)
    metric_counts: dict[str, float] = field(default_factory=dict)
    # {name: (a, b)}: metrics defined as a - b (ObjectiveOutput.metric_differences), recomputed after averaging
    metric_differences: dict[str, tuple[str, str]] = field(default_factory=dict)
    # the micro-batches' num_tokens summed over all ranks (carried in the step's one all-reduce; None without them)
    num_tokens: int | None = None


def window_to_json(results) -> list[dict]:
    """A logging window's steps so far (StepResults) as JSON rows, for a checkpoint saved between two logged steps:
    the resumed run continues the window with them, so its next metrics row averages the same steps as the
    uninterrupted run's (transformers' Trainer starts a new window at the resumed step instead: its first row after
    a resume averages only the steps run after it, and differs from the uninterrupted run's row of that step)."""
    return [{"loss": r.loss, "metrics": dict(r.metrics), "grad_norm": r.grad_norm, "skipped": r.skipped,
             "num_examples": r.num_examples, "overflow": bool(r.overflow), "metric_counts": dict(r.metric_counts),
             "metric_differences": {k: list(v) for k, v in r.metric_differences.items()}}
            for r in results]


def window_from_json(rows) -> list:
    """The StepResults window_to_json wrote (a checkpoint without them, written before this was saved: none)."""
    return [StepResult(loss=row["loss"], metrics=dict(row["metrics"]), grad_norm=row["grad_norm"],
                       skipped=row["skipped"], num_examples=row["num_examples"], overflow=row.get("overflow", False),
                       metric_counts=dict(row.get("metric_counts") or {}),
                       metric_differences={k: tuple(v) for k, v in (row.get("metric_differences") or {}).items()})
            for row in rows or []]


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
    plain = _forwarded_to(optimizer, accelerator)
    plain_backward = accelerator is None or _backward_is_plain(accelerator)
    local_count = sum(len(mb.row_ids) for mb in micro_batches)
    if world == 1:  # known on the host: no device round trip
        denom = float(local_count)
    else:  # all-reduced on the device and used there (no host read); the host learns it with the step's one read
        # copied without blocking (to_device): a blocking host -> GPU copy would wait for the previous step's
        # optimizer kernels before this step's forward is launched
        count = to_device(torch.tensor([float(local_count)]), _device(accelerator))
        denom = _reduce_sum(accelerator, count).reshape(())
    # the loss sum and the metric sums stay on the device until the step's one host read below; a non-finite loss
    # shows there as a non-finite sum (float64: a sum of finite float32 losses cannot overflow)
    loss_sum, metric_sums, host_metrics, host_counts, differences = None, {}, {}, {}, {}
    extrema, extrema_rows = {}, []  # {name: "min" | "max"}; each micro-batch's {name: value} (ObjectiveOutput)
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
            scaled = total / denom if world == 1 else total * world / denom.to(total.device, total.dtype)
            if plain_backward:
                scaled.backward()
            else:
                accelerator.backward(scaled)
        n = out.losses.shape[0]
        piece = total.detach().to(_wide(total.device))
        loss_sum = piece if loss_sum is None else loss_sum + piece
        differences.update(getattr(out, "metric_differences", None) or {})
        kinds = getattr(out, "metric_extrema", None) or {}
        extrema.update(kinds)
        extrema_rows.append({k: v for k, v in out.metrics.items() if k in kinds} if n else {})  # n = 0: no value
        _add_metrics(metric_sums, host_metrics, host_counts, out.metrics, getattr(out, "metric_counts", None) or {},
                     {**differences, **kinds}, n, piece)
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
    groups = _one_layout(metric_sums)  # [((entry names...), [k] sums)]: one layout whatever the micro-batches held
    counts_here = {name + COUNT: host_counts[name] for name in sorted(host_counts)}
    host_metrics = dict(sorted(host_metrics.items()))
    tokens = [getattr(mb, "num_tokens", None) for mb in micro_batches]
    tokens = float(sum(tokens)) if tokens and all(isinstance(t, (int, float)) for t in tokens) else None
    extrema_names = sorted(extrema)
    extrema_block = _extrema_block(extrema_rows, extrema_names, accelerator, here, wide) if extrema_names else None
    if world > 1:  # host numbers summed over ranks with the rest (one host -> device copy), and the layout's hash
        layout = [name for key, _ in groups for name in key] + list(host_metrics) + list(counts_here)
        if extrema_names:  # the gathered block's shape: its names and micro-batch count
            layout += [f"{name}#{extrema[name]}" for name in extrema_names] + [f"#micro-batches {len(extrema_rows)}"]
        check = float(zlib.crc32("\n".join(layout).encode()) & 0xFFFF) + 1.0
        _check_layout_once(accelerator, layout)
        host_entries = {EXAMPLES: float(local_count), LAYOUT_HASH: check, LAYOUT_HASH_SQUARED: check * check,
                        **host_metrics, **counts_here,
                        **({TOKENS: tokens} if tokens is not None else {})}
        groups.append((tuple(host_entries), to_device(torch.tensor(list(host_entries.values()), dtype=wide), here)))
        host_metrics, counts_here = {}, {}
    flags = torch.cat([torch.stack([bound, grad_norm.detach()]).to(wide), loss_sum.to(here).reshape(1),
                       *(sums.to(here) for _, sums in groups),
                       *((extrema_block,) if extrema_block is not None else ())])
    if world > 1:
        flags = _reduce_sum(accelerator, flags.to(_device(accelerator)))
    flags = flags.tolist()
    norm_total, loss_total = flags[1], flags[2]
    totals, at = {**host_metrics, **counts_here}, 3
    for keys, _ in groups:
        for key, value in zip(keys, flags[at:at + len(keys)], strict=True):
            totals[key] = totals[key] + value if key in totals else value
        at += len(keys)
    if world > 1 and world * totals[LAYOUT_HASH_SQUARED] != totals[LAYOUT_HASH] ** 2:
        raise PreflabError(
            f"the processes reported different metric names in this optimizer step (this rank: {sorted(host_counts)}); "
            + SAME_NAMES_FIX)
    tokens = totals.get(TOKENS, tokens)
    if world > 1:
        denom = totals[EXAMPLES]
    metrics, metric_counts = {}, {}
    for name in sorted(host_counts):
        count = totals[name + COUNT]
        if count > 0:
            metrics[name], metric_counts[name] = totals.get(name, 0.0) / count, count
    for name, (a, b) in differences.items():
        if a in metrics and b in metrics:
            metrics[name] = metrics[a] - metrics[b]
    if extrema_names:  # the block is the last part of the read
        gathered = flags[len(flags) - extrema_block.numel():]
        for name, (value, count) in _extrema_means(gathered, extrema_names, extrema, len(extrema_rows),
                                                   world).items():
            metrics[name], metric_counts[name] = value, count
    skipped = not math.isfinite(loss_total) or (scaler is None and not math.isfinite(norm_total))
    weights_bad, overflow = False, False
    if skipped:
        if scaler is not None:
            scaler.update()  # close this iteration's unscale_ (inf/nan gradients: the scale is lowered too)
    else:
        # DeepSpeed has already updated the weights inside backward: nothing to guard or roll back here
        risky = engine is None and weight_guard.update_could_overflow(optimizer, flags[0], norm_total)
        snapshot = weight_guard.Snapshot(all_params, optimizer) if risky else None
        overflow = _update(plain or optimizer, scaler)
        if snapshot is not None and not overflow and _reduce_sum(
                accelerator, (~weight_guard.all_finite(all_params)).float().reshape(1).to(_device(accelerator))
        ).item() > 0:
            snapshot.restore()
            skipped = weights_bad = True
        elif scheduler is not None and not overflow:
            scheduler.step()
    (plain or optimizer).zero_grad(set_to_none=True)
    row_ids = [r for mb in micro_batches for r in mb.row_ids]
    # grad_norm: the mean of the ranks' norms (clip_grad_norm_ sees the all-reduced gradients: equal on every rank)
    local_norm = norm_total / world if world > 1 else norm_total
    return StepResult(loss=loss_total / denom, metrics=dict(sorted(metrics.items())), grad_norm=local_norm,
                      skipped=skipped, num_examples=int(denom), row_ids=row_ids, nonfinite_weights=weights_bad,
                      overflow=overflow, metric_counts=metric_counts, metric_differences=differences,
                      num_tokens=None if tokens is None else int(round(tokens)))


def _wide(device: torch.device) -> torch.dtype:
    """The dtype of the step's sums: float64 (exact sums), float32 where the device has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


COUNT = "#count"  # suffix of a metric's count among the step's sums (a metric name with this suffix is refused)
LAYOUT_HASH, LAYOUT_HASH_SQUARED = "#layout", "#layout^2"  # the per-step check of the ranks' layouts
TOKENS = "#tokens"  # the micro-batches' num_tokens, summed over ranks in the same all-reduce
EXAMPLES = "#examples"  # the window's example count on this rank (the host learns the global one from the read)


def _extrema_block(rows: list[dict], names: list[str], accelerator, device, dtype) -> torch.Tensor:
    """The micro-batches' min / max metrics (ObjectiveOutput.metric_extrema) as [world x micro-batches x names] for
    the step's sum all-reduce: this rank fills its own slice, the others add 0 there, so the sum is an all-gather
    (TRL gathers the per-sequence values, preflab each rank's extremum: the same min / max) within the step's one
    collective and one host read. NaN: the micro-batch has no value for the name (none of its sequences counts, an
    empty micro-batch)."""
    nan = torch.full((), math.nan, device=device, dtype=dtype)
    local = torch.stack([torch.stack([torch.as_tensor(row[k]).detach().reshape(()).to(device, dtype) if k in row
                                      else nan for k in names]) for row in rows])
    world = accelerator.num_processes if accelerator is not None else 1
    if world == 1:
        return local.reshape(-1)
    block = torch.zeros((world, *local.shape), device=device, dtype=dtype)
    block[accelerator.process_index] = local
    return block.reshape(-1)


def _extrema_means(gathered: list[float], names: list[str], kinds: dict, micro_batches: int,
                   world: int) -> dict[str, tuple[float, float]]:
    """{name: (mean over micro-batches of the min / max over ranks, number of micro-batches with a value)} from the
    read block (_extrema_block); a name no micro-batch has a value for is left out (TRL's log() drops NaN)."""
    out = {}
    for j, name in enumerate(names):
        pick = min if kinds[name] == "min" else max
        values = []
        for i in range(micro_batches):
            ranks = [gathered[(r * micro_batches + i) * len(names) + j] for r in range(world)]
            ranks = [v for v in ranks if not math.isnan(v)]
            if ranks:
                values.append(pick(ranks))
        if values:
            out[name] = (sum(values) / len(values), float(len(values)))
    return out


def _add_metrics(sums: dict, host_sums: dict, host_counts: dict, metrics: dict, counts: dict, differences: dict,
                 n: int, like: torch.Tensor) -> None:
    """Add one micro-batch's metrics to the running sums: value x count, and the count.

    The count is n (the micro-batch's examples) unless `counts` (ObjectiveOutput.metric_counts) names one; counts
    that are Python numbers stay on the host (host_counts), tensor counts join the sums on the device as
    `<name>#count`. The tensors go on the loss's device as one vector per set of names, sums[(example-weighted
    names, counted entries)] with each part sorted by name (for example-mean metrics one stack, one cast, one
    multiply, one add per micro-batch instead of as many per metric); Python-number metrics on the host
    (host_sums). Exact: each value is widened before the multiply, as one float64 tensor per metric would be. A
    micro-batch of no examples (n = 0: a weight-0 micro-batch of an online step) adds zero counts. Metrics named in
    `differences` are not summed: recomputed from their parts."""
    plain, counted = {}, {}
    with torch.no_grad():  # no detach needed
        for key, value in metrics.items():
            if key in differences:
                continue
            if key.endswith(COUNT) or key.startswith("#"):
                raise PreflabError(f"metric name {key!r}: names ending in {COUNT!r} or starting with '#' are the "
                                   "step's own; rename the metric.")
            count = counts.get(key, n)
            if not isinstance(value, torch.Tensor):
                count = float(count) if n else 0.0
                host_sums[key] = host_sums.get(key, 0.0) + float(value) * count
                host_counts[key] = host_counts.get(key, 0.0) + count
                continue
            value = value.to(like.device)
            value = value if value.dim() == 0 else value.reshape(())
            if key not in counts:  # weighted by the example count (a Python number)
                plain[key] = value
                host_counts[key] = host_counts.get(key, 0.0) + n
            elif isinstance(count, torch.Tensor):  # a count on the device: summed there (its host count stays 0)
                count = count.detach().to(like.device, like.dtype).reshape(())
                if not n:
                    count = count * 0.0
                counted[key], counted[key + COUNT] = value.to(like.dtype) * count, count
                host_counts.setdefault(key, 0.0)
            else:
                count = float(count) if n else 0.0
                counted[key] = value.to(like.dtype) * count
                host_counts[key] = host_counts.get(key, 0.0) + count
        if not plain and not counted:
            return
        pieces = []
        if plain:
            values = [plain[k] for k in sorted(plain)]
            if len({v.dtype for v in values}) > 1:  # mixed dtypes: widen each (stack could promote to a narrower one)
                values = [v.to(like.dtype) for v in values]
            pieces.append(torch.stack(values).to(like.dtype) * n)
        if counted:
            pieces.append(torch.stack([counted[k] for k in sorted(counted)]))
        vector = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    key = (tuple(sorted(plain)), tuple(sorted(counted)))
    sums[key] = sums[key] + vector if key in sums else vector


SAME_NAMES_FIX = ("the step sums every rank's metrics position by position, so each objective and loop must report "
                  "the same metric names for every batch (a mean over part of a batch: ObjectiveOutput.metric_counts, "
                  "with count 0 where the batch has none).")


def _one_layout(metric_sums: dict) -> list[tuple]:
    """The step's sums as one ((entry names...), vector) group, laid out as (example-weighted names, counted entries),
    each part sorted: the micro-batches' vectors as they are when all held the same names (the usual case: no op),
    else merged into the sorted unions (a name a micro-batch lacked adds 0 there). The layout so depends only on the
    names the rank saw in the step, not on which micro-batch held which."""
    groups = [(plain + counted, vector) for (plain, counted), vector in metric_sums.items()]
    if len(groups) <= 1:
        return groups
    names = (tuple(sorted(set().union(*(plain for plain, _ in metric_sums))))
             + tuple(sorted(set().union(*(counted for _, counted in metric_sums)))))
    parts: dict = {name: [] for name in names}
    for key, vector in groups:
        for i, name in enumerate(key):
            parts[name].append(vector[i])
    return [(names, torch.stack([sum(parts[name][1:], parts[name][0]) for name in names]))]


def _check_layout_once(accelerator, layout: list[str]) -> None:
    """At the first step of each accelerator (every rank alike): the ranks' metric layouts gathered once (a pickle
    collective, a host sync on NCCL), so that a loop or objective whose names differ between ranks stops with the
    names that differ. Later steps check the layout's hash inside the step's one all-reduce (module docstring)."""
    if getattr(accelerator, "_preflab_metric_layout_checked", False):
        return
    from accelerate.utils import gather_object

    layouts = gather_object([layout])
    accelerator._preflab_metric_layout_checked = True
    if any(other != layouts[0] for other in layouts):
        names = [sorted(x for x in other if not x.startswith("#") and not x.endswith(COUNT)) for other in layouts]
        raise PreflabError(
            "the processes report different metric names in the first optimizer step ("
            + "; ".join(f"rank {r}: {n}" for r, n in enumerate(names)) + "); " + SAME_NAMES_FIX)


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


def _forwarded_to(optimizer, accelerator):
    """The torch optimizer inside accelerate's AcceleratedOptimizer when the wrapper's step() and zero_grad() would
    only call it (no GradScaler, not on XLA, no LOMO optimizer, gradients synced this step), else None.

    Why: the wrapper's step() calls accelerate's is_lomo_available() twice (an importlib find_spec plus a package
    metadata read: file-system look-ups) and its zero_grad() calls inspect.signature, on every step: 2 x 0.04 ms and
    0.01 ms of host CPU a step, measured one thread on a loaded machine (a GPU step is host-bound, so this is step time
    there). Calling the inner optimizer runs the same update: the result is bit for bit the wrapper's
    (tests/test_step_host_overhead.py)."""
    if accelerator is None or getattr(accelerator, "scaler", None) is not None \
            or getattr(accelerator, "has_lomo_optimizer", True):
        return None
    _, wrapper, kinds = _accelerate_types()
    if type(optimizer) is not wrapper or not optimizer.gradient_state.sync_gradients \
            or optimizer.accelerator_state.distributed_type == kinds.XLA:
        return None
    return optimizer.optimizer


def _backward_is_plain(accelerator) -> bool:
    """Whether accelerator.backward(loss) is loss.backward() but for a division by gradient_accumulation_steps = 1
    (not DeepSpeed or Megatron-LM, no GradScaler): then the step calls loss.backward() itself, one division op and its
    backward node fewer per micro-batch (x / 1 is exact: the gradients are bit for bit the same)."""
    accelerator_type, _, kinds = _accelerate_types()
    return (isinstance(accelerator, accelerator_type) and accelerator.scaler is None
            and accelerator.gradient_accumulation_steps == 1
            and accelerator.distributed_type not in (kinds.DEEPSPEED, kinds.MEGATRON_LM))


@functools.cache
def _accelerate_types() -> tuple:
    """accelerate's Accelerator, AcceleratedOptimizer and DistributedType, imported at the first step that has an
    accelerator (once: an import statement in the step would cost a lookup every step)."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.utils import DistributedType

    return Accelerator, AcceleratedOptimizer, DistributedType


def _device(accelerator):
    return accelerator.device if accelerator is not None else torch.device("cpu")
