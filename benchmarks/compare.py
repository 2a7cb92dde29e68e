#!/usr/bin/env python
"""Side-by-side DPO benchmark: TRL's runner and preflab's, alternately, on the same fixture, machine and moment.

For each repeat and setting (reference forward every step; reference log-probs precomputed) it runs
trl_dpo.py (from the shared bench folder, with the interpreter of a separate TRL venv) and
benchmarks/dpo_throughput.py (this repo's venv) one after the other, swapping which goes first on every repeat,
each after waiting for idle CPUs (--wait-idle of common.py). Every JSON line goes to --out. Then it prints, per
setting, the ratios preflab / TRL of tokens/s and of peak RSS: the ratio of medians, and min / median / max of
the per-repeat ratios (run i of preflab against run i of TRL, taken minutes apart), plus the largest difference
between the two libraries' per-step loss curves. Runs where other processes took more than --max-other of the
CPUs are flagged (other_cpu_frac, from common.py).

  python benchmarks/compare.py --repeats 3 --steps 20 --trl-python /tmp/trlvenv/bin/python
  python benchmarks/compare.py --fixture /tmp/prefbench-v128k --settings precompute --repeats 3   # a variant

On a GPU (the options of common.py, passed to both runners): peak GPU memory and MFU (model FLOPs of the timed
steps over the runner's measured bf16 matmul rate, benchmarks/mfu.py) join the tables.

  python benchmarks/compare.py --device cuda --bf16 --model /tmp/qwen2-0.5b --warmup-steps 5 --steps 25 \
      --batch-size 8 --repeats 2 --wait-idle 0 --extra --pad-to-multiple-of 64
  python benchmarks/compare.py --report runs.jsonl     # the tables of runs already made (gpu_compare.sh)
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
BENCH = Path(os.environ.get("PREFBENCH_DIR") or HERE.parents[1] / "shared" / "bench")
SETTINGS = {"reference": [], "precompute": ["--precompute-ref"], "grad_ckpt": ["--grad-ckpt"]}


sys.path.insert(0, str(HERE))
from mfu import mfu  # noqa: E402


def run_one(label, python, script, args, out_file, log):
    cmd = [python, str(script), *args, "--out", str(out_file)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        log.write(proc.stderr[-4000:])
        raise SystemExit(f"{Path(script).name} failed ({proc.returncode}); see the log. Command: {' '.join(cmd)}")
    res = json.loads(lines[-1])
    gpu = f"  GPU peak {res['peak_gpu_mib']:9.1f} MiB" if res.get("peak_gpu_mib") else ""
    print(f"  {res['library']:8s} {label:11s} {res['tokens_per_s']:8.1f} tok/s  "
          f"peak {res['peak_rss_mib']:7.1f} MiB{gpu}  loss {res['final_loss']:.6f}  "
          f"other_cpu {res['other_cpu_frac']:.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    return res


def ratios(ours, theirs, key):
    pairs = [a[key] / b[key] for a, b in zip(ours, theirs)]
    med = statistics.median(r[key] for r in ours) / statistics.median(r[key] for r in theirs)
    return med, min(pairs), statistics.median(pairs), max(pairs)


def _mfu(run):
    fixture = run["fixture"]
    model = run["model"] if run.get("model") not in (None, "fixture") else os.path.join(fixture, "model")
    return mfu(run, fixture, model)


def report(results, max_other):
    gpu = any(r.get("peak_gpu_mib") for by_lib in results.values() for runs in by_lib.values() for r in runs)
    extra = " peak GPU MiB min / median | MFU median |" if gpu else ""
    print("\n| setting | library | runs | tokens/s min / median / max | peak RSS MiB min / median |" + extra +
          " final loss | disturbed runs |")
    print("|---|---|---|---|---|---|---|" + ("---|---|" if gpu else ""))
    for setting, by_lib in results.items():
        for lib, runs in by_lib.items():
            if not runs:
                continue
            tps = [r["tokens_per_s"] for r in runs]
            rss = [r["peak_rss_mib"] for r in runs]
            bad = sum(r["other_cpu_frac"] > max_other for r in runs)
            cells = ""
            if gpu:
                mem = [r.get("peak_gpu_mib") or 0.0 for r in runs]
                mfus = [m for m in map(_mfu, runs) if m is not None]
                cells = (f" {min(mem):.0f} / {statistics.median(mem):.0f} | "
                         f"{100 * statistics.median(mfus):.1f}% |" if mfus else f" {min(mem):.0f} | - |")
            print(f"| {setting} | {lib} | {len(runs)} | {min(tps):.0f} / {statistics.median(tps):.0f} / {max(tps):.0f}"
                  f" | {min(rss):.0f} / {statistics.median(rss):.0f} |{cells} {runs[-1]['final_loss']:.6f} | {bad} |")
    memory = "peak GPU memory" if gpu else "peak RSS"
    print("\n| setting | tokens/s ratio preflab/TRL: of medians (per-repeat min / median / max) | "
          f"{memory} ratio: of medians (per-repeat min / median / max) | max abs loss-curve diff |")
    print("|---|---|---|---|")
    for setting, by_lib in results.items():
        ours, theirs = by_lib.get("preflab", []), by_lib.get("trl", [])
        if not ours or not theirs:
            continue
        s = ratios(ours, theirs, "tokens_per_s")
        m = ratios(ours, theirs, "peak_gpu_mib" if gpu else "peak_rss_mib")
        diff = max(abs(a - b) for o in ours for t in theirs for a, b in zip(o["loss_curve"], t["loss_curve"]))
        print(f"| {setting} | {s[0]:.2f}x ({s[1]:.2f} / {s[2]:.2f} / {s[3]:.2f}) | "
              f"{m[0]:.2f}x ({m[1]:.2f} / {m[2]:.2f} / {m[3]:.2f}) | {diff:.1e} |")


def group_lines(lines) -> dict:
    """{setting label: {"trl": [...], "preflab": [...]}} of result lines, one setting per model, batch size,
    reference handling, gradient checkpointing and preflab's row rounding (TRL's line counts for every rounding)."""
    groups: dict = {}
    for r in lines:
        model = "fixture" if r.get("model") in (None, "fixture") else Path(r["model"]).name
        ref = "precomputed" if r["precompute_ref"] else "reference"
        label = f"{model} b{r['batch_size']} {ref}" + (" ckpt" if r["grad_ckpt"] else "")
        if r.get("attention", "auto") != "auto":  # gpu_compare.sh's segment / dense attention runs: their own rows
            label += f" attention {r['attention']}"
        groups.setdefault(label, {"trl": [], "preflab": []})[r["library"]].append(r)
    return groups


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", default=os.path.join(tempfile.gettempdir(), "prefbench-fixture"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--settings", nargs="+", default=["reference", "precompute"], choices=list(SETTINGS))
    ap.add_argument("--trl-python", default=os.environ.get("TRL_PYTHON", "/tmp/trlvenv/bin/python"),
                    help="interpreter of the separate venv that has trl installed")
    ap.add_argument("--python", default=sys.executable, help="interpreter with preflab installed")
    ap.add_argument("--wait-idle", type=float, default=300)
    ap.add_argument("--max-other", type=float, default=0.02, help="flag runs with more foreign CPU load")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further args for preflab's runner only")
    ap.add_argument("--out", default=None, help="JSONL of all runs (default: a new file in the temp folder)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--model", default=None, help="model folder (make_model.py) instead of the fixture's")
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--report", nargs="+", metavar="JSONL", help="only print the tables of these result files "
                    "(runs grouped by model, batch size and setting)")
    args = ap.parse_args()
    if args.report:
        report(group_lines([json.loads(line) for path in args.report for line in open(path) if line.strip()]),
               args.max_other)
        return
    out = Path(args.out or tempfile.mkstemp(prefix="prefbench-compare-", suffix=".jsonl")[1])
    log = open(out.with_suffix(".log"), "a")
    if not (Path(args.fixture) / "fixture_info.json").exists():
        subprocess.run([args.python, str(BENCH / "make_fixture.py"), args.fixture], check=True)
    runners = {"trl": (args.trl_python, BENCH / "trl_dpo.py"), "preflab": (args.python, HERE / "dpo_throughput.py")}
    common = ["--fixture", args.fixture, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
              "--wait-idle", str(args.wait_idle), "--device", args.device, "--warmup-steps", str(args.warmup_steps)]
    common += (["--bf16"] if args.bf16 else []) + (["--model", args.model] if args.model else [])
    print(f"results -> {out}; warm-up runs (2 steps, discarded)", flush=True)
    for lib, (python, script) in runners.items():
        subprocess.run([python, str(script), "--fixture", args.fixture, "--steps", "2", "--device", args.device],
                       capture_output=True)
    results = {s: {"trl": [], "preflab": []} for s in args.settings}
    for i in range(args.repeats):
        print(f"repeat {i + 1}/{args.repeats}", flush=True)
        for setting in args.settings:
            order = ["trl", "preflab"] if i % 2 == 0 else ["preflab", "trl"]
            for lib in order:
                python, script = runners[lib]
                extra = args.extra if lib == "preflab" else []
                cmd = common + extra + SETTINGS[setting]
                results[setting][lib].append(run_one(setting, python, script, cmd, out, log))
    report(results, args.max_other)
    print(f"\nAll lines: {out}. MFU: python {BENCH / 'flops_limit.py'} --fixture {args.fixture} --results {out}")


if __name__ == "__main__":
    main()
