#!/usr/bin/env python
"""Per-step CPU time of two preflab source trees on the benchmark fixture, run alternately (A/B of a change).

Each run is its own process with PYTHONPATH set to one tree's src/: the fixture's Trainer with dpo_throughput.py's
settings (batch 4, fp32, sigmoid DPO, fused AdamW, lr 1e-6 linear), `--steps` optimizer steps, and for each step the
thread CPU time and wall time of `optimizer_step` (collation excluded) and the loss. On a shared machine the thread
CPU time is the usable number (a preempted process's wall time grows, its CPU time much less); steps differ in
their batches, so the summary compares step by step: the sum over steps 2..N of each step's minimum (and median)
over the repeats, after / before. Losses are printed per run (they should be identical for an exact change).

  git archive <commit> src | tar -x -C /tmp/before
  python benchmarks/step_ab.py --before-src /tmp/before/src --repeats 4 --steps 8 --precompute-ref
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args):
    sys.path.insert(0, str(HERE))
    import torch

    torch.set_num_threads(1)
    import preflab.loops.driver as driver
    import preflab.loops.offline as offline
    from dpo_throughput import tokenized_pairs
    from preflab.config import config_from_dict
    from preflab.models.load import frozen_copy, load_causal_lm, load_tokenizer

    model_dir = os.path.join(args.fixture, "model")
    tokenizer = load_tokenizer(model_dir)
    pairs, _ = tokenized_pairs(args.fixture, tokenizer)
    os.environ["PREFLAB_CACHE_DIR"] = args.cache_dir  # shared by the runs: the reference is scored once
    cfg = config_from_dict(dict(
        model_name_or_path=model_dir, dataset_name="fixture", output_dir=tempfile.mkdtemp(), max_steps=args.steps,
        per_device_train_batch_size=4, learning_rate=1e-6, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, loss_type="sigmoid", beta=0.1, max_length=None,
        precompute_ref_log_probs=args.precompute_ref, layout=args.layout, use_cpu=True, logging_steps=args.steps,
        disable_tqdm=True, report_to="none"))
    policy = load_causal_lm(model_dir, dtype="float32")
    trainer = offline.Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tokenizer, train_data=pairs)
    original, steps = driver.optimizer_step, []

    def timed(*a, **kw):
        wall, cpu = time.perf_counter(), time.thread_time()
        out = original(*a, **kw)
        steps.append({"cpu": time.thread_time() - cpu, "wall": time.perf_counter() - wall, "loss": out.loss})
        return out

    driver.optimizer_step = timed
    trainer.train()
    print("STEPS " + json.dumps(steps), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before-src", required=True, help="src/ folder of the tree to compare against")
    ap.add_argument("--after-src", default=str(HERE.parent / "src"), help="default: this checkout's src/")
    ap.add_argument("--fixture", default="/tmp/prefbench-fixture")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--precompute-ref", action="store_true")
    ap.add_argument("--layout", default="prefix_shared")
    ap.add_argument("--cache-dir", default=None, help="reference cache folder (default: a temporary one)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="step-ab-cache-")
    runs = {"before": [], "after": []}
    for r in range(args.repeats):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            src = args.before_src if name == "before" else args.after_src
            cmd = [sys.executable, __file__, "--worker", "--before-src", args.before_src, "--fixture", args.fixture,
                   "--steps", str(args.steps), "--layout", args.layout, "--cache-dir", args.cache_dir,
                   *(["--precompute-ref"] if args.precompute_ref else [])]
            env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            steps = json.loads(next(line for line in out.splitlines() if line.startswith("STEPS "))[6:])[1:]
            runs[name].append(steps)
            cpu = [s["cpu"] for s in steps]
            print(f"{name} repeat {r + 1}: median step cpu {statistics.median(cpu):.3f} s, wall "
                  f"{statistics.median(s['wall'] for s in steps):.3f} s; losses {[s['loss'] for s in steps]}",
                  flush=True)
    n = args.steps - 1
    for stat in (min, statistics.median):
        total = {k: sum(stat(run[i]["cpu"] for run in v) for i in range(n)) for k, v in runs.items()}
        print(f"sum over steps 2..{args.steps} of the per-step {stat.__name__} CPU s: before {total['before']:.3f}, "
              f"after {total['after']:.3f}, after / before {total['after'] / total['before']:.4f}")
    same = all(json.dumps([s["loss"] for s in run]) == json.dumps([s["loss"] for s in runs["before"][0]])
               for v in runs.values() for run in v)
    print(f"losses identical in every run: {same}")


if __name__ == "__main__":
    main()
