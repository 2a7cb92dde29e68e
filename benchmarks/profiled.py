#!/usr/bin/env python
"""Run a benchmark runner (trl_dpo.py, dpo_throughput.py) under torch.profiler and write its op tables to a file.

  python benchmarks/profiled.py --table /tmp/prof_trl.txt -- /work/shared/bench/trl_dpo.py --device cuda ...

The training steps are recorded (from the first step's begin to the runner's matmul calibration after training,
through common.StepTimer; CPU ops, and CUDA kernels when a GPU is there); the file gets the ops sorted by self
device time (GPU) or self CPU time, then the host-sync counters: `aten::_local_scalar_dense` (.item(), float(t)),
`aten::nonzero` (boolean-mask indexing), `cudaStreamSynchronize` / `cudaDeviceSynchronize` and `cudaMemcpy*` calls.
Keep the run short (a few steps): the profiler holds every event in memory. The runner's JSON line still goes to
stdout (pass no --out, so profiled runs stay out of the timing results).
"""
import argparse
import os
import runpy
import sys
from pathlib import Path

SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select", "cudaStreamSynchronize",
            "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaMemcpy")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", required=True, help="text file for the tables")
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("script")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    bench = os.environ.get("PREFBENCH_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "bench")
    sys.path.insert(0, bench)
    import common  # the runner imports this same module: its StepTimer brackets the training steps

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    prof = profile(activities=activities)
    state = {"on": False, "done": False}
    begin, calibrate = common.StepTimer.begin_step, common.StepTimer.calibrate

    def begin_step(self):
        if not state["on"] and not state["done"]:
            prof.start()
            state["on"] = True
        begin(self)

    def calibrate_after(self, *args, **kwargs):
        if state["on"]:
            self.sync()
            prof.stop()
            state["on"], state["done"] = False, True
        return calibrate(self, *args, **kwargs)

    common.StepTimer.begin_step, common.StepTimer.calibrate = begin_step, calibrate_after
    sys.argv = [a.script, *[x for x in a.args if x != "--"]]
    runpy.run_path(a.script, run_name="__main__")
    if not state["done"]:
        raise SystemExit("the runner never started a timed step (common.StepTimer.begin_step): nothing profiled")
    events = prof.key_averages()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    with open(a.table, "w") as f:
        f.write(f"# {' '.join(sys.argv)}\n# sorted by {sort}\n")
        f.write(events.table(sort_by=sort, row_limit=a.rows))
        f.write("\n# host syncs and copies (calls over the training steps)\n")
        for e in events:
            if e.key in SYNC_OPS:
                f.write(f"{e.key:32s} calls {e.count:8d}  self CPU {e.self_cpu_time_total / 1e3:10.1f} ms\n")


if __name__ == "__main__":
    main()
