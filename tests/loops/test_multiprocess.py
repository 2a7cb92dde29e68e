"""A multi-process launch is truly distributed or an error (issue 11, item 1): README's `accelerate launch --multi_gpu
--num_processes 2 $(which preflab) train ...` on a CPU machine ran two independent trainings into one output_dir."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from preflab.cli import main
from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops import driver

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
COMMON = ["eval_fraction=0", "eval_steps=0", "save_steps=0", "logging_steps=1", "disable_tqdm=true", "max_steps=3"]


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_readme_multi_process_command_on_cpu_trains_one_run_with_two_ranks(tmp_path):
    """2 processes x batch 8 equal 1 process x batch 16 (the trainer's exactness guarantee), each metrics row once,
    world_size 2 in summary.json, the data line and the final metrics printed once."""
    assert "accelerate launch --multi_gpu --num_processes 2 $(which preflab) train" in README
    preflab = shutil.which("preflab")
    assert preflab, "the preflab console script is installed"
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", preflab, "train",
           str(ROOT / "examples/quickstart.yaml"), f"output_dir={two}", *COMMON]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("preflab: data:") == 1 and proc.stdout.count('"output_dir"') == 1, proc.stdout
    summary = json.loads((two / "summary.json").read_text())
    assert summary["environment"]["world_size"] == 2 and summary["environment"]["backend"] == "gloo"
    assert summary["train_examples_seen"] == 3 * 16
    assert main(["train", str(ROOT / "examples/quickstart.yaml"), f"output_dir={one}",
                 "per_device_train_batch_size=16", *COMMON]) == 0
    got, want = rows(two), rows(one)
    assert [r["step"] for r in got] == [1, 2, 3]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-5)
    assert json.loads((one / "summary.json").read_text())["environment"]["world_size"] == 1


def test_fsdp_on_cpu_is_a_clear_error_pointing_to_ddp(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.delenv("FSDP_VERSION", raising=False)
    cfg = config_from_dict({"output_dir": str(tmp_path), "use_cpu": True, "model_name_or_path": "builtin:tiny-llama",
                            "dataset_name": "examples/data/loud_echo_pairs.jsonl"})
    with pytest.raises(ConfigError, match="asks for FSDP.*fsdp_version: 1.*on CPU.*ddp.yaml"):
        driver.make_accelerator(cfg)


def test_a_launch_that_forms_no_process_group_is_an_error(tmp_path, monkeypatch):
    """WORLD_SIZE=2 but accelerate sees a single process (here: a device is pretended, so accelerate does not
    choose gloo, and no LOCAL_RANK is set): refused instead of training alone."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(driver, "_has_accelerator_device", lambda: True)
    cfg = config_from_dict({"output_dir": str(tmp_path), "model_name_or_path": "builtin:tiny-llama",
                            "dataset_name": "examples/data/loud_echo_pairs.jsonl"})
    with pytest.raises(ConfigError, match="started 2 processes .* formed no process group"):
        driver.make_accelerator(cfg)
