"""DeepSpeed ZeRO-2 / ZeRO-3 on CPU through examples/accelerate/zero2.yaml / zero3.yaml, on 2 processes (gloo) and on
one. On 2 CPU processes accelerate 1.16 forms no DeepSpeed run by itself, so preflab switches its state to DeepSpeed
after the gloo group forms (launch.enable_deepspeed_on_cpu); one process is accelerate's own DeepSpeed path; the rest
is accelerate's and DeepSpeed's code. The tests share the launches of the `zero_runs` fixture: one per accelerate
config and number of processes (a launch costs a launcher, the ranks' imports of torch, transformers and deepspeed,
and the process group), each running several runs in the same processes (tests/loops/deepspeed_run.py,
tests/loops/scale_matrix_run.py). The ZeRO-3 run with the optimizer offloaded: test_deepspeed_checkpoint.py; the
quickstart under ZeRO-3 on one process: test_deepspeed_cpu.py. Needs the `deepspeed` extra."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from preflab.errors import ConfigError, PreflabError

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_deepspeed_checkpoint import _assert_straight_saved_and_resumed_equal  # noqa: E402
from tiny_run import run  # noqa: E402

NEEDS_DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="pip install preflab[deepspeed]")
SCHEDULE = {"max_steps": 4, "lr_scheduler_type": "cosine", "warmup_steps": 1}
RUN = [f"{k}={v}" for k, v in SCHEDULE.items()] + ["tiny_arch=gpt2"]  # gpt2: dropout draws each rank's RNG


def _launch(launch, config, processes, script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    cmd = launch("--config_file", str(config), "--num_processes", str(processes), str(HERE / script), *map(str, args))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _one_process_runs(base, *refused):
    """scale_matrix_run.py's runs of a one-process launch: BASE/straight (no checkpoints), BASE/saved (checkpoint-2),
    BASE/resumed (from saved/checkpoint-2), as deepspeed_run.py runs them (use_cpu: false, accelerate's own DeepSpeed
    path on one CPU process), then one refused resume per (name, checkpoint) in `refused`, into BASE/refused-<name>."""
    tiny = [*RUN, "use_cpu=false"]
    runs = [["tiny", base / "straight", *tiny, "save_steps=0"], ["tiny", base / "saved", *tiny, "save_steps=2"],
            ["tiny", base / "resumed", *tiny, "save_steps=0",
             f"resume_from_checkpoint={base / 'saved' / 'checkpoint-2'}"]]
    runs += [["refused", base / f"refused-{name}", *tiny, "save_steps=0", f"resume_from_checkpoint={checkpoint}"]
             for name, checkpoint in refused]
    return runs


def _args(runs):
    return [a for r in runs for a in ["--", *r]][1:]


def _refusal(folder: Path) -> str:
    """The ConfigError message of a refused resume of scale_matrix_run.py (it must have been refused), and nothing
    trained."""
    message = json.loads((folder / "refusal.json").read_text())["message"]
    assert message is not None, f"{folder}: the resume was not refused"
    assert not (folder / "metrics.jsonl").exists()
    return message


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory, accelerate_launch):
    """The runs of the tests below, in 4 launches (in this order: a checkpoint a launch refuses is written first):
    - plain: tiny GPT-2 DPO (RUN) in this process, one process without DeepSpeed, checkpoint-2;
    - two[2], two[3]: ZeRO-2 (use_cpu: true) / ZeRO-3 (without) on 2 processes x batch 4, deepspeed_run.py's
      straight / saved (checkpoint-2) / resumed runs of RUN, then the tiny llama straight run into llama/;
    - one[2], one[3]: ZeRO-2 / ZeRO-3 on one process, the straight / saved / resumed runs of RUN, then refused
      resumes: plain's checkpoint (both stages), ZeRO-2's one-process and ZeRO-3's 2-process checkpoints (ZeRO-3).
    (The ZeRO-3 quickstart run of test_deepspeed_cpu.py keeps a launch of its own: the first run's train_batch_size
    stays in the DeepSpeed config of accelerate's state, so a run with another batch cannot follow in the same
    processes: DeepSpeed's batch check stopped it, "4 != 8 * 1 * 1".)"""
    root = tmp_path_factory.mktemp("zero")
    plain = root / "plain"
    run(plain, save_steps=2, **SCHEDULE, tiny_arch="gpt2")
    two = {2: root / "two-z2", 3: root / "two-z3"}
    one = {2: root / "one-z2", 3: root / "one-z3"}
    for stage, how in ((2, "use_cpu=true"), (3, "use_cpu=false")):
        _launch(accelerate_launch, ROOT / f"examples/accelerate/zero{stage}.yaml", 2, "deepspeed_run.py", two[stage],
                2, "--", *RUN, how, f"equal_into={two[stage] / 'llama'}")
    _launch(accelerate_launch, ROOT / "examples/accelerate/zero2.yaml", 1, "scale_matrix_run.py",
            *_args(_one_process_runs(one[2], ("plain", plain / "checkpoint-2"))))
    _launch(accelerate_launch, ROOT / "examples/accelerate/zero3.yaml", 1, "scale_matrix_run.py",
            *_args(_one_process_runs(one[3], ("plain", plain / "checkpoint-2"),
                                     ("zero2", one[2] / "saved/checkpoint-2"),
                                     ("two-processes", two[3] / "saved/checkpoint-2"))))
    return SimpleNamespace(plain=plain, two=two, one=one)


def _steps(out):
    return {r["step"]: (r["loss"], r["grad_norm"])
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


@pytest.mark.slow
@NEEDS_DEEPSPEED
def test_zero2_and_zero3_on_two_cpu_processes_equal_one_process_and_resume_bit_for_bit(tmp_path, zero_runs):
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
    from preflab.loops.optimizer import weight_decay_groups
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    z2, z3 = zero_runs.two[2], zero_runs.two[3]
    one = tmp_path / "one"
    run(one, per_device_train_batch_size=8, **SCHEDULE)

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

    # resumed by the one-process ZeRO-3 launch (zero_runs): refused before anything trained
    refused = _refusal(zero_runs.one[3] / "refused-two-processes")
    assert (f"resume_from_checkpoint: {z3 / 'saved/checkpoint-2'} was written under DeepSpeed ZeRO-3 on 2 "
            "process(es); this run is ZeRO-3 on 1.") in " ".join(refused.split())


@pytest.mark.slow
@NEEDS_DEEPSPEED
def test_zero2_and_zero3_stop_and_resume_equal_the_straight_run_bit_for_bit(tmp_path, zero_runs):
    """Tiny GPT-2 DPO (dropout on), 4 steps, cosine schedule with warmup, one CPU process, per stage: the run that
    writes checkpoint-2, and the run resumed from it (a fresh engine), give the straight run's losses, grad norms and
    final weights bit for bit. The checkpoint is safetensors + JSON only, sealed by COMPLETE; a damaged partition is
    named. Refused: a plain checkpoint under DeepSpeed, the ZeRO-2 checkpoint under ZeRO-3, a DeepSpeed checkpoint
    in a plain run. The resumed ZeRO-3 run's final model loads in plain transformers."""
    from transformers import AutoModelForCausalLM

    from preflab.checkpoint import verify_checkpoint
    from preflab.loops.optimizer import weight_decay_groups
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    same = dict(max_steps=4, lr_scheduler_type="cosine", warmup_steps=1, tiny_arch="gpt2")  # RUN
    model = tiny_causal_lm(tiny_tokenizer(), arch="gpt2")
    groups, _ = weight_decay_groups(list(model.parameters()), [model], 0.0)  # the weights, then biases and norms
    sizes = [sum(p.numel() for p in group["params"]) for group in groups]  # lm_head tied: counted once
    z2, z3 = zero_runs.one[2], zero_runs.one[3]
    for stage, base in ((2, z2), (3, z3)):
        _assert_straight_saved_and_resumed_equal(base)

        ckpt = base / "saved/checkpoint-2"
        verify_checkpoint(ckpt)
        files = json.loads((ckpt / "COMPLETE").read_text())["files"]
        assert {"zero/rank0.safetensors", "zero/rank0.json", "rng-rank0.safetensors", "trainer_state.json"} <= set(
            files) and all(name.endswith((".safetensors", ".json")) for name in files)
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert (state["checkpoint_format"], state["zero_stage"], state["world_size"], state["engine"]) == (
            "deepspeed", stage, 1, "DEEPSPEED")
        partition = load_file(ckpt / "zero/rank0.safetensors")
        master = "single_partition_of_fp32_groups." if stage == 2 else "fp32_flat_groups."
        adam = "base_optimizer_state" if stage == 2 else "optimizer_state_dict"
        for group, size in enumerate(sizes):  # every trainable weight, in its weight-decay group
            assert partition[f"{master}{group}"].numel() == partition[f"{adam}.{group}.exp_avg"].numel() == size
            assert partition[f"{adam}.{group}.step"].item() == 2
        assert json.loads((ckpt / "zero/rank0.json").read_text())["engine"]["global_steps"] == 2

        assert "written without DeepSpeed (one process on 1 process(es), full tensors)" in _refusal(
            base / "refused-plain")
    assert "written under DeepSpeed ZeRO-2 on 1 process(es); this run is ZeRO-3 on 1" in _refusal(
        z3 / "refused-zero2")

    with pytest.raises(ConfigError, match=r"under DeepSpeed ZeRO-2 on 1 process\(es\).*not DeepSpeed \(one process"):
        run(tmp_path / "plain_resume", **same, resume_from_checkpoint=str(z2 / "saved/checkpoint-2"))

    damaged = tmp_path / "damaged"
    shutil.copytree(z3 / "saved/checkpoint-2", damaged)
    with open(damaged / "zero/rank0.safetensors", "r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\0\1\2\3")
    with pytest.raises(PreflabError, match=r"damaged: the sha256 of .*zero/rank0.safetensors differs"):
        verify_checkpoint(damaged)

    reloaded = AutoModelForCausalLM.from_pretrained(z3 / "resumed").state_dict()
    final = load_file(z3 / "resumed/model.safetensors")
    assert all(torch.equal(reloaded[k], final[k]) for k in final)
