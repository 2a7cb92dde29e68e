#!/usr/bin/env python
"""Where the time of one DPO step goes, for preflab or TRL, on the benchmark fixture (CPU, fp32).

Runs `--steps` optimizer steps of the library's trainer (same settings as the runners in this folder) under
torch.profiler, keeps the last `--measure` steps, and sorts the self CPU time of every aten op into:

  attention   the fused attention kernel (sdpa, forward and backward), q/k/v/o projections, RoPE, repeat_kv
  mlp         gate/up/down projections and the SiLU-gated product
  lm_head     matmuls with the vocabulary dimension, log-softmax / logsumexp / gather over it, TRL's tile folding
  optimizer   AdamW and gradient clipping (foreach / fused kernels)
  other       embeddings, RMSNorm, residual adds, masks, loss, copies, framework overhead
(an op is put in a class by its name and the shapes of its inputs: vocabulary, intermediate or head dimension).
The reference forward is inside these classes (it runs the same ops); with --precompute-ref there is none.

  python benchmarks/profile_step.py --library preflab
  /tmp/trlvenv/bin/python benchmarks/profile_step.py --library trl
"""
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dpo_throughput import BENCH, common  # noqa: E402  (common.py of the shared bench folder)

CLASSES = ("attention", "mlp", "lm_head", "optimizer", "other")


def classify(name, shapes, info):
    cfg = info["model_config"]
    vocab, inter, head_dim = cfg["vocab_size"], cfg["intermediate_size"], cfg["head_dim"]
    dims = {d for s in shapes for d in (s or [])}
    if "adam" in name or "foreach" in name or "clip" in name or "_fused" in name:
        return "optimizer"
    if "scaled_dot_product" in name or "flash" in name:
        return "attention"
    if vocab in dims:
        return "lm_head"
    if inter in dims or "silu" in name:
        return "mlp"
    if head_dim in dims and any(len(s or []) == 4 for s in shapes):
        return "attention"  # RoPE, repeat_kv, head transposes on [B, heads, T, head_dim]
    if name in ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::bmm"):
        return "attention"  # the remaining matmuls are the q/k/v/o projections (hidden x hidden or kv width)
    return "other"


def matmul_flops(name, shapes):
    """2*m*k*n of a matmul op from its input shapes (0 for other ops)."""
    if name in ("aten::mm", "aten::addmm", "aten::addmm_") and len(shapes) >= 2:
        a, b = (shapes[1], shapes[2]) if name != "aten::mm" and len(shapes) >= 3 else (shapes[0], shapes[1])
        if len(a) == 2 and len(b) == 2:
            return 2 * a[0] * a[1] * b[1]
    return 0


def breakdown(events, info, measured_steps):
    """({class: s/step}, {class: {op name: s/step}})."""
    totals, ops = defaultdict(float), defaultdict(lambda: defaultdict(float))
    for evt in events:
        if evt.device_type.name != "CPU" or not evt.name.startswith("aten::"):
            continue
        part = classify(evt.name, evt.input_shapes or [], info)
        totals[part] += evt.self_cpu_time_total / 1e6 / measured_steps
        ops[part][evt.name] += evt.self_cpu_time_total / 1e6 / measured_steps
        flops = matmul_flops(evt.name, evt.input_shapes or [])
        if flops:
            ops[part]["GFLOP"] += flops / 1e9 / measured_steps
    return {k: totals[k] for k in CLASSES}, ops


def run_preflab(args, info, schedule_step):
    import torch

    import preflab.loops.driver as driver
    import preflab.loops.offline as offline
    from dpo_throughput import tokenized_pairs
    from preflab.config import config_from_dict
    from preflab.models.load import frozen_copy, load_causal_lm, load_tokenizer

    model_dir = os.path.join(args.fixture, "model")
    tokenizer = load_tokenizer(model_dir)
    pairs, _ = tokenized_pairs(args.fixture, tokenizer)
    cfg = config_from_dict(dict(
        model_name_or_path=model_dir, dataset_name="fixture", output_dir=tempfile.mkdtemp(), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, loss_type=args.loss_type,
        beta=args.beta, max_length=None, precompute_ref_log_probs=args.precompute_ref, layout=args.layout,
        gradient_checkpointing=args.grad_ckpt, use_cpu=True, logging_steps=args.steps, disable_tqdm=True))
    os.environ["PREFLAB_CACHE_DIR"] = tempfile.mkdtemp()
    policy = load_causal_lm(model_dir, dtype="float32")
    trainer = offline.Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tokenizer, train_data=pairs)
    original = driver.optimizer_step

    def stepped(*a, **kw):
        out = original(*a, **kw)
        schedule_step()
        return out

    driver.optimizer_step = stepped
    trainer.train()
    return torch


def run_trl(args, info, schedule_step):
    import datasets
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    class Step(TrainerCallback):
        def on_step_end(self, *a, **kw):
            schedule_step()

    model_dir = os.path.join(args.fixture, "model")
    config = DPOConfig(output_dir=tempfile.mkdtemp(), max_steps=args.steps,
                       per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                       lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                       loss_type=[args.loss_type], beta=args.beta, max_length=None,
                       precompute_ref_log_probs=args.precompute_ref, gradient_checkpointing=args.grad_ckpt,
                       use_cpu=True, model_init_kwargs={"dtype": "float32"}, train_sampling_strategy="sequential",
                       logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True)
    trainer = DPOTrainer(model=model_dir, args=config, processing_class=AutoTokenizer.from_pretrained(model_dir),
                         train_dataset=datasets.Dataset.from_list(common.load_pairs(args.fixture)),
                         callbacks=[Step()])
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.train()
    return torch


def main():
    ap = common.make_parser(__doc__)
    ap.add_argument("--library", choices=["preflab", "trl"], default="preflab")
    ap.add_argument("--layout", default="prefix_shared")
    ap.add_argument("--measure", type=int, default=2, help="profiled steps (after the warm-up steps)")
    ap.add_argument("--top", type=int, default=0, help="also list the N costliest ops of each part")
    args = ap.parse_args()
    args.steps = max(args.steps if args.steps != 20 else 4, args.measure + 1)
    common.setup_env(args.threads)
    if args.wait_idle:
        common.wait_idle(args.wait_idle)
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    torch.set_num_threads(args.threads)
    info = common.fixture_info(args.fixture)
    warm = args.steps - args.measure
    traces = []
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                   schedule=schedule(wait=0, warmup=warm - 1 if warm > 1 else 0, active=args.measure, skip_first=1,
                                     repeat=1), on_trace_ready=lambda p: traces.append(list(p.events())))
    marks = []
    prof.start()
    {"preflab": run_preflab, "trl": run_trl}[args.library](
        args, info, lambda: (marks.append(time.perf_counter()), prof.step()))
    prof.stop()
    wall = (marks[-1] - marks[-1 - args.measure]) / args.measure
    parts, ops = breakdown(traces[-1], info, args.measure)
    total = sum(parts.values())
    print(f"{args.library} ({'precomputed reference' if args.precompute_ref else 'reference forward every step'}"
          f"{', layout ' + args.layout if args.library == 'preflab' else ''}): step {wall:.2f} s wall "
          f"(profiled, includes profiler overhead); aten self time per step {total:.2f} s")
    print("| part | s/step | share |\n|---|---|---|")
    for k in CLASSES:
        print(f"| {k} | {parts[k]:.2f} | {100 * parts[k] / total:.0f}% |")
    for k in CLASSES if args.top else ():
        top = sorted(ops[k].items(), key=lambda kv: -kv[1])[:args.top]
        print(f"{k}: " + ", ".join(f"{name.removeprefix('aten::')} {sec:.3f}" for name, sec in top))


if __name__ == "__main__":
    main()
