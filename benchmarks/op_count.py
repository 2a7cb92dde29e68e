#!/usr/bin/env python
"""Host-side cost of one DPO optimizer step, preflab against TRL 1.16: aten ops, host syncs, host <-> device copies.

On a GPU both libraries' steps are host-bound (issue 17): the host spends its time dispatching many small ops, one
kernel launch each, and waiting at syncs. Those numbers do not need a GPU: a TorchDispatchMode sees every aten op the
step dispatches (forward, the autograd engine's backward, clipping, the optimizer), on CPU exactly as on a GPU, so
they are counted here on CPU. Every count is a deterministic number for a given model, batch and library version.

Per optimizer step (the optimizer's step post-hook is the boundary, as in tests/test_step_syncs.py; step 1 is left
out: it carries first-call work):
  ops          aten ops dispatched with at least one device tensor among their inputs (factories included), i.e.
               what runs on the device. `kernels` leaves out the view/alias ops (`func.is_view`: no launch on a GPU)
  host ops     ops whose inputs are all host tensors: the batch as collated (preflab's Trainer.micro_batches, TRL's
               DataCollatorForPreference: both run with counting paused and their outputs marked host), the cached
               reference log-probs, tensors from Python data (`aten.lift_fresh`: torch.tensor), and what is computed
               from those alone; on a GPU machine these run on the CPU, no launch, no sync
  syncs        device -> host reads: the op set of tests/test_step_syncs.py (`.item()`/`float()`, `nonzero`,
               boolean-mask indexing, ...), plus `.tolist()`, `.cpu()` and `.numpy()` of device tensors
  h2d          host -> device copies: `.to(device)` of a host tensor, plus host tensors of one or more dimensions fed
               straight into a device op (as torch.tensor(..., device=cuda) would be); each also counts as one
               `_to_copy` op (a 0-dim host tensor is a scalar kernel argument: no copy)

TRL on a GPU folds each LM-head tile in one Triton kernel and scores only the completion positions (boolean-mask
indexing); on CPU it folds the tiles with torch ops and scores every position. By default this script counts TRL
as on a GPU: its compact path is taken (trl.trainer.utils._use_triton -> True) and each tile's fold, forward and
backward, counts as one op (`triton_forward_kernel`, `triton_backward_kernel`); --trl-cpu-head counts TRL's CPU path
as it runs. preflab has no device-dependent branch at this size (one LM-head chunk on CPU and GPU).

  python benchmarks/op_count.py                         # fixture model, batch 4, both settings, both libraries
  python benchmarks/op_count.py --library preflab --settings precomputed --top 30
  python benchmarks/op_count.py --json /tmp/op_count.json

The data: the first steps x batch pairs of the shared fixture's train.jsonl, in file order, with TRL's token ids
(dpo_throughput.tokenized_pairs); the model: the fixture's (or --model DIR), fp32; sigmoid DPO, beta 0.1, fused
AdamW, clipping at 1.0, no gradient checkpointing, fp32 (--bf16: bf16 autocast in both), logging off (TRL:
logging_strategy "no"; preflab: no logging step inside the counted steps).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402
from torch.utils._python_dispatch import _disable_current_modes  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402


def _sync_rules():
    """tests/test_step_syncs.py, whose is_sync is the one definition of what a sync is and whose HostTracking (the
    host-tensor tracking) OpCounter builds on."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_step_syncs", HERE.parent / "tests" / "test_step_syncs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_rules = _sync_rules()
is_sync = _rules.is_sync

# host tensors made from Python data: torch.tensor / torch.as_tensor, and the 0-dim CPU tensor that wraps a Python
# scalar operand (torch.where(mask, x, 0.0)); a 0-dim host tensor is passed to a GPU kernel as an argument, no copy
HOST_SOURCES = {"lift_fresh", "lift_fresh_copy", "scalar_tensor"}


@dataclasses.dataclass
class StepOps:
    """What one optimizer step dispatched (see the module docstring)."""

    ops: Counter = dataclasses.field(default_factory=Counter)  # device op name -> calls
    views: int = 0  # of the ops, view/alias ops (no kernel launch)
    host_ops: int = 0
    collate_ops: int = 0  # ops of the batch collation (counting paused), for information
    syncs: Counter = dataclasses.field(default_factory=Counter)
    h2d: int = 0

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def kernels(self) -> int:
        return self.total - self.views

    @property
    def sync_count(self) -> int:
        return sum(self.syncs.values())

    def row(self) -> dict:
        return {"ops": self.total, "kernels": self.kernels, "views": self.views, "host_ops": self.host_ops,
                "syncs": self.sync_count, "h2d": self.h2d, "collate_ops": self.collate_ops}


def _names_a_device(args, kwargs) -> bool:
    """Does a Tensor.to call name a device (a str, a torch.device, or another tensor)?"""
    return any(isinstance(a, (str, torch.device, torch.Tensor)) for a in (*args, kwargs.get("device")))


def _short(path: str) -> str:
    return path.split('site-packages/')[-1].split('/src/')[-1]


def _call_site(where: tuple[str, ...]) -> str:
    """file:line of the innermost Python frame whose path contains one of `where` (e.g. "preflab/"). An op of the
    backward pass (run by the autograd engine) is attributed to the forward line that recorded its autograd node,
    marked "(backward)", when that node kept its traceback (anomaly mode, see --backward-origin)."""
    node = torch._C._current_autograd_node()
    stack = node.metadata.get("traceback_") if node is not None else None
    if stack:
        for entry in reversed(stack):  # traceback.format_stack() lines: '  File "path", line N, in f\n    code\n'
            head = entry.strip().split("\n")[0]
            if head.startswith('File "') and any(w in head.split('"')[1] for w in where):
                path, line = head.split('"')[1], head.split(", line ")[1].split(",")[0]
                return f"{_short(path)}:{line} (backward)"
        return "? (backward)"
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if any(w in path for w in where):
            return f"{_short(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


class OpCounter(_rules.HostTracking):
    """Counts per optimizer step into `steps[-1]` (a new StepOps at each `next_step`). Host tensors (HostTracking of
    tests/test_step_syncs.py): marked ones, tensors from Python data, and outputs of ops on host tensors alone."""

    def __init__(self, where: tuple[str, ...] = ()):
        super().__init__()
        self.where = where  # path parts: attribute each device op to its innermost calling line in such a file
        self.sites = [Counter()]  # per step: "file:line op" -> calls (only with `where`)
        self.steps = [StepOps()]
        self._moved = set()  # ids of host tensors already counted as implicitly copied in this step

    def next_step(self, *args, **kwargs) -> None:
        self.steps.append(StepOps())
        self.sites.append(Counter())
        self._moved.clear()

    # ------------------------------------------------------------------ the mode
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        step = self.steps[-1]
        if self.paused:
            step.collate_ops += 1
            return out
        tensors = self.tensor_inputs(args, kwargs)
        name = func.overloadpacket.__name__
        if name in HOST_SOURCES or self.all_host(tensors):
            step.host_ops += 1
            self.mark_host(tree_flatten(out)[0])
            return out
        step.ops[name] += 1
        step.views += bool(func.is_view)
        if self.where:
            self.sites[-1][f"{_call_site(self.where)} {name}{' (view)' if func.is_view else ''}"] += 1
        for t in tensors:
            if t.dim() > 0 and self.is_host(t) and id(t) not in self._moved:
                self._moved.add(id(t))
                self.copied_to_device()
        if is_sync(func, args, kwargs):
            step.syncs[name] += 1
        return out

    # ------------------------------------------------------------------ Python-level reads and copies
    def copied_to_device(self) -> None:
        step = self.steps[-1]
        step.h2d += 1
        step.ops["_to_copy"] += 1
        if self.where:
            self.sites[-1][f"{_call_site(self.where)} _to_copy (host -> device)"] += 1

    def read_on_host(self, what: str, t) -> None:
        if not self.paused and not self.is_host(t):
            self.steps[-1].syncs[what] += 1


@contextlib.contextmanager
def counting(counter: OpCounter):
    """Run `counter` over everything inside: the dispatch mode, the optimizer step boundary (a global post-hook),
    and patches of the Tensor methods that move or read data without an aten op on CPU."""
    original_to, original_tolist = torch.Tensor.to, torch.Tensor.tolist
    original_cpu, original_numpy = torch.Tensor.cpu, torch.Tensor.numpy

    def to(self, *args, **kwargs):
        if counter.paused or not counter.is_host(self) or not _names_a_device(args, kwargs):
            return original_to(self, *args, **kwargs)
        counter.copied_to_device()
        with _disable_current_modes():  # what .to(cuda) gives: a new tensor, on the device (not a host tensor)
            moved = original_to(self, *args, **kwargs)
            return moved.clone() if moved is self else moved

    def reader(original, what):
        def read(self, *args, **kwargs):
            counter.read_on_host(what, self)
            return original(self, *args, **kwargs)
        return read

    handle = register_optimizer_step_post_hook(counter.next_step)
    torch.Tensor.to, torch.Tensor.tolist = to, reader(original_tolist, "Tensor.tolist")
    torch.Tensor.cpu, torch.Tensor.numpy = reader(original_cpu, "Tensor.cpu"), reader(original_numpy, "Tensor.numpy")
    try:
        with counter:
            yield counter
    finally:
        handle.remove()
        torch.Tensor.to, torch.Tensor.tolist = original_to, original_tolist
        torch.Tensor.cpu, torch.Tensor.numpy = original_cpu, original_numpy


def counted_steps(counter: OpCounter, steps: int) -> list[StepOps]:
    """Steps 2..steps-1: steps[0] is setup + step 1 (first-call work), the last step is a logging step in preflab
    (logging_steps does not stop the final log), and what follows the last post-hook is the run's end."""
    got = counter.steps[1:steps - 1]
    if len(counter.steps) != steps + 1:
        raise SystemExit(f"expected {steps} optimizer steps, the post-hook saw {len(counter.steps) - 1}")
    return got


# ---------------------------------------------------------------------- the two libraries
def counted_trainer(trainer_cls, counter: OpCounter):
    """`trainer_cls` (preflab.loops.offline.Trainer or a subclass) whose batch collation is host work (counting
    paused, the layouts marked host, as on a GPU machine where they are built in host memory and then moved) and
    whose cached reference log-probs are host tensors (they live in host memory)."""

    class Counted(trainer_cls):
        def micro_batches(self, step):
            with counter.host_region():
                mbs = super().micro_batches(step)
            counter.mark_host([mb.layout for mb in mbs])
            return mbs

        def before_train(self):
            super().before_train()
            counter.mark_host(list(self.ref_logps.values()))

    return Counted


def run_preflab(args, pairs, tokenizer, counter: OpCounter, precompute: bool) -> None:
    import transformers

    import preflab.loops.offline as offline
    from preflab.config import config_from_dict
    from preflab.loops.batches import BatchPlan
    from preflab.models.load import frozen_copy, load_causal_lm

    transformers.logging.set_verbosity_error()

    class FileOrder(BatchPlan):
        def indices(self, step, rank):
            b = self.per_device
            return [[(step * b + k) % self.num_rows for k in range(b)]]

    Counted = counted_trainer(offline.Trainer, counter)
    model_dir = args.model or os.path.join(args.fixture, "model")
    os.environ["PREFLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="op-count-cache-")
    cfg = config_from_dict(dict(
        model_name_or_path=model_dir, dataset_name="fixture", output_dir=tempfile.mkdtemp(prefix="op-count-"),
        max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=1e-6,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, loss_type="sigmoid",
        beta=0.1, precompute_ref_log_probs=precompute, layout=args.layout, use_cpu=True, bf16=args.bf16,
        logging_steps=10 ** 6,
        save_strategy="no", disable_tqdm=True, report_to="none"))
    policy = load_causal_lm(model_dir, dtype="float32")
    trainer = Counted(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tokenizer, train_data=pairs)
    trainer.plan = FileOrder(len(pairs), args.batch_size, 1, 1, 0)
    with counting(counter):
        trainer.train()


def run_trl(args, rows, counter: OpCounter, precompute: bool) -> None:
    import datasets
    import transformers
    import trl.kernels.chunked_logprob as chunked
    import trl.trainer.utils as trl_utils
    from transformers import AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    model_dir = args.model or os.path.join(args.fixture, "model")
    config = DPOConfig(output_dir=tempfile.mkdtemp(prefix="op-count-trl-"), max_steps=args.steps,
                       per_device_train_batch_size=args.batch_size, learning_rate=1e-6, lr_scheduler_type="linear",
                       warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, loss_type=["sigmoid"], beta=0.1,
                       max_length=None, precompute_ref_log_probs=precompute, gradient_checkpointing=False,
                       use_cpu=True, bf16=args.bf16, fp16=False, model_init_kwargs={"dtype": "float32"}, seed=0,
                       data_seed=0,
                       train_sampling_strategy="sequential", dataloader_num_workers=0, dataloader_pin_memory=False,
                       logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
                       disable_tqdm=True)
    trainer = DPOTrainer(model=model_dir, args=config, processing_class=AutoTokenizer.from_pretrained(model_dir),
                         train_dataset=datasets.Dataset.from_list(rows))
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    collate = DataCollatorForPreference.torch_call

    def host_collate(self, examples):
        with counter.host_region():
            batch = collate(self, examples)
        counter.mark_host(batch)
        return batch

    patches = [(DataCollatorForPreference, "torch_call", host_collate)]
    if not args.trl_cpu_head:  # TRL's GPU path: compact positions, one Triton launch per tile fold
        def one_launch(name, fold):
            def launch(*a, **kw):
                with counter.host_region():
                    fold(*a, **kw)
                counter.steps[-1].ops[name] += 1
            return launch

        patches += [(trl_utils, "_use_triton", lambda device: True),
                    (chunked, "_forward_tile", one_launch("triton_forward_kernel", chunked._forward_tile)),
                    (chunked, "_backward_tile", one_launch("triton_backward_kernel", chunked._backward_tile))]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        with counting(counter):
            trainer.train()
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


# ---------------------------------------------------------------------- report
def summarize(steps: list[StepOps]) -> dict:
    """Per-step numbers (checked equal over the counted steps, else the list is reported) and the op table."""
    rows = [s.row() for s in steps]
    out = {k: (rows[0][k] if all(r[k] == rows[0][k] for r in rows) else [r[k] for r in rows]) for k in rows[0]}
    out["ops_by_name"] = dict(steps[-1].ops.most_common())
    out["syncs_by_name"] = dict(steps[-1].syncs)
    out["deterministic"] = all(r == rows[0] for r in rows) and all(s.ops == steps[0].ops for s in steps)
    return out


def table(results: dict, top: int) -> str:
    lines = []
    for setting in ("reference", "precomputed"):
        libs = {lib: results[(lib, setting)] for lib in ("preflab", "trl") if (lib, setting) in results}
        if not libs:
            continue
        lines.append(f"\n## {setting}: per optimizer step")
        keys = ("ops", "kernels", "views", "syncs", "h2d", "host_ops")
        lines.append("| library | " + " | ".join(keys) + " | same every step |")
        lines.append("|---|" + "---|" * (len(keys) + 1))
        for lib, r in libs.items():
            lines.append(f"| {lib} | " + " | ".join(str(r[k]) for k in keys) + f" | {r['deterministic']} |")
        if len(libs) == 2 and isinstance(libs["trl"]["ops"], int) and isinstance(libs["preflab"]["ops"], int):
            lines.append(f"\npreflab / TRL ops: {libs['preflab']['ops'] / libs['trl']['ops']:.2f}, kernels: "
                         f"{libs['preflab']['kernels'] / libs['trl']['kernels']:.2f}")
        names = Counter()
        for r in libs.values():
            names.update(r["ops_by_name"])
        lines.append(f"\n| op (top {top} by the sum over libraries) | " + " | ".join(libs) + " |")
        lines.append("|---|" + "---|" * len(libs))
        for name, _ in names.most_common(top):
            lines.append(f"| {name} | " + " | ".join(str(r["ops_by_name"].get(name, 0)) for r in libs.values()) + " |")
        for lib, r in libs.items():
            lines.append(f"\n{lib} syncs: {r['syncs_by_name'] or 'none'}")
    return "\n".join(lines)


def main():
    sys.path.insert(0, str(HERE))
    from dpo_throughput import BENCH, common, tokenized_pairs  # noqa: F401

    ap = common.make_parser(__doc__)
    ap.set_defaults(steps=5, threads=1)
    ap.add_argument("--library", choices=["preflab", "trl", "both"], default="both")
    ap.add_argument("--settings", choices=["reference", "precomputed", "both"], default="both")
    ap.add_argument("--layout", default="prefix_shared")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--trl-cpu-head", action="store_true", help="count TRL's CPU LM-head path as it runs")
    ap.add_argument("--where", nargs="*", default=None, metavar="PATH_PART",
                    help="also list the call sites of the ops (innermost frame in a file whose path contains one of "
                         "these, default: preflab/ trl/ torch/optim/ transformers/)")
    ap.add_argument("--backward-origin", action="store_true",
                    help="with --where: attribute each backward op to the forward line whose autograd node runs it "
                         "(autograd anomaly mode records the forward tracebacks; check_nan off, the counts unchanged)")
    ap.add_argument("--by-file", action="store_true", help="with --where: also sum the call sites per file")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.steps < 3:
        raise SystemExit("--steps must be >= 3 (the first and the last step are not counted)")
    common.setup_env(args.threads)
    torch.set_num_threads(args.threads)
    from preflab.models.load import load_tokenizer

    rows = common.load_pairs(args.fixture)[:args.steps * args.batch_size]
    tokenizer = load_tokenizer(args.model or os.path.join(args.fixture, "model"))
    pairs = tokenized_pairs(args.fixture, tokenizer)[0][:len(rows)]
    results = {}
    for setting in (["reference", "precomputed"] if args.settings == "both" else [args.settings]):
        for lib in (["preflab", "trl"] if args.library == "both" else [args.library]):
            where = tuple(args.where or ("preflab/", "trl/", "torch/optim/", "transformers/")) \
                if args.where is not None else ()
            counter = OpCounter(where)
            origin = torch.autograd.set_detect_anomaly(True, check_nan=False) if where and args.backward_origin \
                else contextlib.nullcontext()
            with origin:
                if lib == "preflab":
                    run_preflab(args, pairs, tokenizer, counter, setting == "precomputed")
                else:
                    run_trl(args, rows, counter, setting == "precomputed")
            results[(lib, setting)] = summarize(counted_steps(counter, args.steps))
            if where:
                print(f"\n# {lib} {setting}: call sites of the ops of step 2")
                for site, n in counter.sites[1].most_common():
                    print(f"{n:6d}  {site}")
                if args.by_file:
                    files, launches = Counter(), Counter()
                    for site, n in counter.sites[1].items():
                        name = site.split(":")[0] + (" (backward)" if "(backward)" in site else "")
                        files[name] += n
                        launches[name] += 0 if site.endswith("(view)") else n
                    print(f"\n# {lib} {setting}: ops and kernels of step 2 per file")
                    for name, n in files.most_common():
                        print(f"{n:6d} {launches[name]:6d}  {name}")
            print(f"{lib} {setting}: {json.dumps({k: v for k, v in results[(lib, setting)].items() if k not in ('ops_by_name', 'syncs_by_name')})}",  # noqa: E501
                  file=sys.stderr)
    print(f"# op_count.py: {args.steps - 2} counted steps (2..{args.steps - 1}), batch {args.batch_size}, "
          f"fixture {args.fixture}, model {args.model or 'fixture'}, bf16 {args.bf16}, torch {torch.__version__}")
    print(table(results, args.top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{lib}/{setting}": r for (lib, setting), r in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
