#!/usr/bin/env python
"""torch_compile on and off, alternately, on the same fixture, machine and moment (issue 17).

Each repeat runs benchmarks/dpo_throughput.py twice, without and with --torch-compile (which goes first swaps every
repeat); all other arguments are passed to both runs unchanged. The compile happens in step 1 (the reference's
graph and the policy's), so throughput is `steady_tokens_per_s` (steps 2..N; with --warmup-steps W, steps W+1..N:
`tokens_per_s`) and the compile time is estimated as first_step_s(compiled) - first_step_s(eager) of the same
repeat. Prints every run, then the ratio compiled / eager of the medians with the per-repeat min / median / max,
the compile seconds, the graphs compiled and the largest difference between the two loss curves.

  python benchmarks/compile_compare.py --repeats 2 -- --fixture /tmp/prefbench-fixture --steps 8 --threads 1 \
      --pad-to-multiple-of 64
  python benchmarks/compile_compare.py --repeats 2 -- --device cuda --bf16 --model /tmp/qwen2-0.5b --steps 25 \
      --warmup-steps 5 --batch-size 8 --pad-to-multiple-of 64
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNNER = Path(__file__).resolve().parent / "dpo_throughput.py"


def run_one(args, compiled):
    cmd = [sys.executable, str(RUNNER), *args, *(["--torch-compile"] if compiled else [])]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"dpo_throughput.py failed ({proc.returncode}): {' '.join(cmd)}")
    res = json.loads(lines[-1])
    res["speed"] = res["tokens_per_s"] if res.get("warmup_steps") else res["steady_tokens_per_s"]
    print(f"  {'compiled' if compiled else 'eager':8s} {res['speed']:9.1f} tok/s (steady)  first step "
          f"{res['first_step_s']:7.2f} s  graphs {(res.get('torch_compile') or {}).get('graphs', '-')}  "
          f"final loss {res['final_loss']:.6f}  other_cpu {res['other_cpu_frac']:.3f}  "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="append every JSON result line here")
    ap.add_argument("runner_args", nargs=argparse.REMAINDER, help="after --: dpo_throughput.py arguments")
    args = ap.parse_args()
    runner_args = [a for a in args.runner_args if a != "--"]
    eager, compiled = [], []
    for i in range(args.repeats):
        print(f"repeat {i + 1}/{args.repeats}", flush=True)
        for c in ((False, True) if i % 2 == 0 else (True, False)):
            (compiled if c else eager).append(run_one(runner_args, c))
    if args.out:
        with open(args.out, "a") as f:
            for res in eager + compiled:
                f.write(json.dumps(res) + "\n")
    per_repeat = [c["speed"] / e["speed"] for c, e in zip(compiled, eager)]
    median_ratio = statistics.median(r["speed"] for r in compiled) / statistics.median(r["speed"] for r in eager)
    compile_s = [c["first_step_s"] - e["first_step_s"] for c, e in zip(compiled, eager)]
    curve_diff = max(abs(a - b) for c, e in zip(compiled, eager) for a, b in zip(c["loss_curve"], e["loss_curve"]))
    print(f"eager    tok/s median {statistics.median(r['speed'] for r in eager):.1f}")
    print(f"compiled tok/s median {statistics.median(r['speed'] for r in compiled):.1f}")
    print(f"compiled / eager: {median_ratio:.3f}x (per repeat min / median / max {min(per_repeat):.3f} / "
          f"{statistics.median(per_repeat):.3f} / {max(per_repeat):.3f})")
    print(f"compile time (first step, compiled - eager): {', '.join(f'{s:.1f}' for s in compile_s)} s; graphs "
          f"{sorted({json.dumps(c.get('torch_compile')) for c in compiled})}")
    print(f"max |loss curve difference|: {curve_diff:.2e}")


if __name__ == "__main__":
    main()
