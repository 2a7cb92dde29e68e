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
from preflab.loops import launch

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
COMMON = ["eval_fraction=0", "eval_steps=0", "save_steps=0", "logging_steps=1", "disable_tqdm=true", "max_steps=3"]


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_readme_multi_process_command_on_cpu_trains_one_run_with_two_ranks(tmp_path, accelerate_launch):
    """2 processes x batch 8 equal 1 process x batch 16 (the trainer's exactness guarantee), each metrics row once,
    world_size 2 in summary.json, the data line and the final metrics printed once."""
    assert "accelerate launch --multi_gpu --num_processes 2 $(which preflab) train" in README
    preflab = shutil.which("preflab")
    assert preflab, "the preflab console script is installed"
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    cmd = accelerate_launch("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                            "--dynamo_backend", "no", preflab, "train", str(ROOT / "examples/quickstart.yaml"),
                            f"output_dir={two}", *COMMON)
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
        launch.make_accelerator(cfg)


def test_a_launch_that_forms_no_process_group_is_an_error(tmp_path, monkeypatch):
    """WORLD_SIZE=2 but accelerate sees a single process (here: a device is pretended, so accelerate does not
    choose gloo, and no LOCAL_RANK is set): refused instead of training alone."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(launch, "_has_accelerator_device", lambda: True)
    cfg = config_from_dict({"output_dir": str(tmp_path), "model_name_or_path": "builtin:tiny-llama",
                            "dataset_name": "examples/data/loud_echo_pairs.jsonl"})
    with pytest.raises(ConfigError, match="started 2 processes .* formed no process group"):
        launch.make_accelerator(cfg)


@pytest.mark.slow
def test_a_refused_resume_stops_every_rank_with_the_same_error(tmp_path, free_port):
    """Resuming with a changed meaning-changing option (beta) on 2 processes: every rank runs the early resume check
    and stops with the ConfigError. Before, only the main rank checked; rank 1 went on to load the model and wait for
    rank 0 in a collective (relying on a launcher to kill it). The ranks are started by hand (not through a launcher,
    which would kill the other rank as soon as one fails), so each rank's exit and message are seen."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_run import run

    out = tmp_path / "out"
    run(out, max_steps=2, save_steps=2)  # checkpoint-2, written on one process with batch 4
    port = free_port()
    script = Path(__file__).parent / "tiny_run.py"
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": "2"}
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(out), "max_steps=4", "per_device_train_batch_size=2", "beta=0.5",
             "resume_from_checkpoint=true"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            results.append((proc.returncode, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (code, err) in enumerate(results):
        assert code != 0, f"rank {rank} did not stop"
        assert "ConfigError: resume_from_checkpoint: the config differs" in err and "beta (0.1 -> 0.5)" in err, \
            f"rank {rank}: {err[-2000:]}"
    assert not (out / "checkpoint-4").exists()
