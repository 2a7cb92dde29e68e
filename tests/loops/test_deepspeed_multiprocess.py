"""DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU processes (gloo), through examples/accelerate/zero2.yaml / zero3.yaml:
accelerate 1.16 forms no DeepSpeed run there by itself, so preflab switches its state to DeepSpeed after the gloo group
forms (launch.enable_deepspeed_on_cpu) and the rest is accelerate's and DeepSpeed's code. The runs:
tests/loops/deepspeed_run.py (several runs per launch). Needs the `deepspeed` extra."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCHEDULE = {"max_steps": 4, "lr_scheduler_type": "cosine", "warmup_steps": 1}
RUN = [f"{k}={v}" for k, v in SCHEDULE.items()] + ["tiny_arch=gpt2"]  # gpt2: dropout draws each rank's RNG


def _launch(launch, config, processes, script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    cmd = launch("--config_file", str(config), "--num_processes", str(processes), str(HERE / script), *map(str, args))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500, cwd=ROOT, check=False)


def _steps(out):
    return {r["step"]: (r["loss"], r["grad_norm"])
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="pip install preflab[deepspeed]")
def test_zero2_and_zero3_on_two_cpu_processes_equal_one_process_and_resume_bit_for_bit(tmp_path, accelerate_launch):
    """Tiny DPO, 4 steps, cosine schedule with warmup, float32; ZeRO-2 launched with use_cpu: true, ZeRO-3 without
    (2 processes on a machine without a device take the same CPU path):
    - both run as DeepSpeed on 2 gloo ranks, each rank holding half of the fp32 master weights and Adam moments;
    - tiny llama (no dropout), 2 processes x batch 4 against 1 plain process x batch 8: losses and DeepSpeed's grad
      norms equal to 1e-6 (measured 3e-8), final weights to 2e-6 (measured 6.5e-8 under ZeRO-2, which equals 2-process
      DDP bit for bit, and 4.9e-7 under ZeRO-3): float32 sums of two half-batch gradients instead of one full-batch
      sum, in another order (ZeRO-3 reduce-scatters flat partitions), which AdamW's division by sqrt(v) enlarges
      where a gradient is near zero; a wrong reduction (a missing average over ranks, one rank's gradient) moves
      weights by about the learning rate, 1e-3;
    - tiny GPT-2 (dropout on, each rank its own RNG stream): the run that writes checkpoint-2 and the run resumed
      from it on 2 processes give the straight run's losses, grad norms and final weights bit for bit;
    - the 2-process ZeRO-3 checkpoint resumed on 1 process is refused before anything trains, naming both world
      sizes."""
    sys.path.insert(0, str(HERE))
    from test_deepspeed_checkpoint import _assert_straight_saved_and_resumed_equal
    from tiny_run import run

    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    z2, z3 = tmp_path / "z2", tmp_path / "z3"
    for config, base, how in (("zero2.yaml", z2, "use_cpu=true"), ("zero3.yaml", z3, "use_cpu=false")):
        proc = _launch(accelerate_launch, ROOT / "examples/accelerate" / config, 2, "deepspeed_run.py", base, 2, "--",
                       *RUN, how, f"equal_into={base / 'llama'}")
        assert proc.returncode == 0, proc.stderr[-4000:]
    one = tmp_path / "one"
    run(one, per_device_train_batch_size=8, **SCHEDULE)

    from preflab.loops.optimizer import weight_decay_groups

    model = tiny_causal_lm(tiny_tokenizer(), arch="gpt2")
    groups, _ = weight_decay_groups(list(model.parameters()), [model], 0.0)  # the weights, then biases and norms
    sizes = [sum(p.numel() for p in group["params"]) for group in groups]  # lm_head tied: counted once
    expected = _steps(one)
    weights = load_file(one / "model.safetensors")
    for stage, base in ((2, z2), (3, z3)):
        env = json.loads((base / "straight/summary.json").read_text())["environment"]
        assert (env["world_size"], env["distributed_type"], env["backend"]) == (2, "DEEPSPEED", "gloo")

        got = _steps(base / "llama")
        assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
        for s in expected:
            assert got[s] == pytest.approx(expected[s], abs=1e-6)
        final = load_file(base / "llama/model.safetensors")
        assert final.keys() == weights.keys()
        for key in weights:
            torch.testing.assert_close(final[key], weights[key], rtol=0, atol=2e-6)

        _assert_straight_saved_and_resumed_equal(base)
        ckpt = base / "saved/checkpoint-2"
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert (state["checkpoint_format"], state["zero_stage"], state["world_size"], state["engine"]) == (
            "deepspeed", stage, 2, "DEEPSPEED")
        master = "single_partition_of_fp32_groups." if stage == 2 else "fp32_flat_groups."
        adam = "base_optimizer_state" if stage == 2 else "optimizer_state_dict"
        parts = [load_file(ckpt / f"zero/rank{r}.safetensors") for r in (0, 1)]
        for g, size in enumerate(sizes):  # each weight-decay group split in halves (both sizes are even)
            assert all(p[f"{master}{g}"].numel() == p[f"{adam}.{g}.exp_avg"].numel() == size // 2 for p in parts)
        assert not torch.equal(parts[0][f"{master}0"], parts[1][f"{master}0"])  # two halves, not one copy
        assert (ckpt / "rng-rank1.safetensors").is_file()

    refused = tmp_path / "refused"
    proc = _launch(accelerate_launch, ROOT / "examples/accelerate/zero3.yaml", 1, "tiny_run.py", refused, *RUN,
                   f"resume_from_checkpoint={z3 / 'saved/checkpoint-2'}")
    assert proc.returncode != 0
    assert (f"resume_from_checkpoint: {z3 / 'saved/checkpoint-2'} was written under DeepSpeed ZeRO-3 on 2 "
            "process(es); this run is ZeRO-3 on 1.") in " ".join(proc.stderr.split())
    assert not (refused / "metrics.jsonl").exists()
