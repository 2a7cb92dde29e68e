"""DeepSpeed on CPU: one process through examples/accelerate/zero3.yaml (accelerate's own DeepSpeed path; 2 processes:
test_deepspeed_multiprocess.py). Needs the `deepspeed` extra."""
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["eval_fraction=0", "eval_steps=0", "save_steps=0", "logging_steps=1", "disable_tqdm=true", "max_steps=4",
          "per_device_train_batch_size=8"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="pip install preflab[deepspeed]")
def test_zero3_on_one_cpu_process_equals_the_plain_run_and_saves_a_transformers_model(tmp_path, accelerate_launch):
    """ZeRO-3 (DeepSpeed steps inside accelerator.backward, clipping at the config's gradient_clipping 1.0 =
    max_grad_norm) against preflab's own step, quickstart DPO, 4 steps, float32: losses and DeepSpeed's grad norms
    equal to 1e-6, final weights (gathered by DeepSpeed's 16-bit/consolidated save path) to 1e-6 (measured: 6e-8),
    and plain transformers loads them."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from preflab.cli import main

    zero, plain = tmp_path / "zero3", tmp_path / "plain"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    cmd = accelerate_launch("--config_file", str(ROOT / "examples/accelerate/zero3.yaml"), "--num_processes", "1",
                            shutil.which("preflab"), "train", str(ROOT / "examples/quickstart.yaml"),
                            f"output_dir={zero}", *COMMON)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((zero / "summary.json").read_text())["environment"]["distributed_type"] == "DEEPSPEED"
    assert main(["train", str(ROOT / "examples/quickstart.yaml"), f"output_dir={plain}", *COMMON]) == 0
    rows = [[r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
            for d in (zero, plain)]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in rows[0]] == pytest.approx([r[key] for r in rows[1]], abs=1e-6)
    a, b = load_file(zero / "model.safetensors"), load_file(plain / "model.safetensors")
    assert a.keys() == b.keys()
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    reloaded = AutoModelForCausalLM.from_pretrained(zero).state_dict()
    assert torch.equal(reloaded["model.norm.weight"], a["model.norm.weight"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="pip install preflab[deepspeed]")
def test_a_deepspeed_config_file_s_auto_clipping_is_the_run_config_s_max_grad_norm(tmp_path, accelerate_launch):
    """A deepspeed_config_file with "auto" gradient_clipping (and micro-batch, batch, accumulation), max_grad_norm
    0.05 below every step's gradient norm (~0.55): preflab fills "auto" from the run config, so ZeRO-2 on one CPU
    process ends at the plain run's weights to 1e-6 (measured 2.3e-8). Before, accelerate filled its own 1.0, which
    clipped nothing here: the weights were 8.3e-5 away from the plain run's."""
    from safetensors.torch import load_file

    from preflab.cli import main

    ds_json, accelerate_config = tmp_path / "ds.json", tmp_path / "accelerate.yaml"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": "auto",
                                   "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
                                   "gradient_accumulation_steps": "auto"}))
    accelerate_config.write_text(f"distributed_type: DEEPSPEED\nnum_processes: 1\nnum_machines: 1\nmachine_rank: 0\n"
                                 f"deepspeed_config:\n  deepspeed_config_file: {ds_json}\n  zero3_init_flag: false\n")
    zero, plain = tmp_path / "zero2", tmp_path / "plain"
    common = [*COMMON, "max_grad_norm=0.05"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    cmd = accelerate_launch("--config_file", str(accelerate_config), shutil.which("preflab"), "train",
                            str(ROOT / "examples/quickstart.yaml"), f"output_dir={zero}", *common)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert main(["train", str(ROOT / "examples/quickstart.yaml"), f"output_dir={plain}", *common]) == 0
    norms = [r["grad_norm"] for r in map(json.loads, (plain / "metrics.jsonl").read_text().splitlines())
             if "grad_norm" in r]
    assert min(norms) > 0.05 * 5  # every step clipped hard: a clipping at 1.0 would not have been
    a, b = load_file(zero / "model.safetensors"), load_file(plain / "model.safetensors")
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
