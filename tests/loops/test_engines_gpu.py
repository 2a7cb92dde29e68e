"""GPU only: DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2 through the shipped accelerate configs equal one plain GPU process
with the same global batch, and the gathered final model reloads in plain transformers.

On CPU, DeepSpeed is tested on 1 and 2 processes (test_deepspeed_cpu.py, test_deepspeed_checkpoint.py,
test_deepspeed_multiprocess.py); the GPU path (NCCL, CUDA kernels) only here. The ready command on a GPU machine:
    pip install deepspeed && python -m pytest -q -p no:cacheprovider tests/loops/test_engines_gpu.py
"""
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["eval_fraction=0", "eval_steps=0", "save_steps=0", "logging_steps=1", "disable_tqdm=true", "max_steps=4",
          "lr_scheduler_type=constant", "warmup_steps=0", "use_cpu=false"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (DeepSpeed / FSDP on GPU)")]


def _launch(launch, config: str, processes: int, *args: str) -> list[str]:
    """accelerate launch with `config` over `processes` processes of `python -m preflab.cli *args`: the GPU machine
    runs preflab from src/ on PYTHONPATH, with no `preflab` console script (shutil.which("preflab") is None there)."""
    return launch("--config_file", str(ROOT / f"examples/accelerate/{config}.yaml"), "--num_processes", str(processes),
                  "--module", "preflab.cli", *args)


def _losses(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("config", ["zero2", "zero3", "fsdp2"])
def test_sharded_engine_on_gpus_equals_one_gpu_process(tmp_path, config, accelerate_launch):
    """2 GPUs (1 when only one is present) x batch 8/n against 1 plain GPU process x batch 8, float32: losses and
    final weights equal to 1e-4 (GPU reductions in another order); the final model is one save_pretrained folder."""
    if config.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("pip install deepspeed")
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    n = min(2, torch.cuda.device_count())
    sharded, plain = tmp_path / "sharded", tmp_path / "plain"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("WORLD_SIZE", None)
    cmd = _launch(accelerate_launch, config, n, "train", str(ROOT / "examples/quickstart.yaml"),
                  f"output_dir={sharded}", f"per_device_train_batch_size={8 // n}", *COMMON)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from preflab.cli import main

    assert main(["train", str(ROOT / "examples/quickstart.yaml"), f"output_dir={plain}",
                 "per_device_train_batch_size=8", *COMMON]) == 0
    assert _losses(sharded) == pytest.approx(_losses(plain), abs=1e-4)
    a, b = load_file(sharded / "model.safetensors"), load_file(plain / "model.safetensors")
    assert a.keys() == b.keys()
    for key in b:
        torch.testing.assert_close(a[key].float(), b[key], rtol=0, atol=1e-4)
    reloaded = AutoModelForCausalLM.from_pretrained(sharded).state_dict()
    torch.testing.assert_close(reloaded["model.norm.weight"].float(), b["model.norm.weight"], rtol=0, atol=1e-4)
