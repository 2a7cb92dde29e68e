"""Checkpoints and exact resume under DeepSpeed ZeRO-2 / ZeRO-3 (preflab.deepspeed_checkpoint): each rank's ZeRO
partition as safetensors + JSON (no pickle), sealed like every preflab checkpoint; resumes that cannot be exact are
refused. The run here: ZeRO-3 with the optimizer offloaded on one CPU process (tests/loops/deepspeed_run.py); ZeRO-2 /
ZeRO-3 stopped and resumed on one and on 2 CPU processes: test_deepspeed_multiprocess.py.
"""
import enum
import importlib.util
import json
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from preflab.deepspeed_checkpoint import (check_checkpointable, check_deepspeed_resume, join_zero_state,
                                          split_zero_state)
from preflab.errors import ConfigError, PreflabError

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUN = ["max_steps=4", "lr_scheduler_type=cosine", "warmup_steps=1", "tiny_arch=gpt2"]  # gpt2: dropout draws RNG


class DynamicLossScaler:  # the attributes of deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler that change
    def __init__(self, cur_scale=65536.0, cur_iter=0):
        self.cur_scale, self.cur_iter, self.last_overflow_iter, self.cur_hysteresis = cur_scale, cur_iter, -1, 2
        self.dynamic, self.dtype = True, torch.float16


class Stage(enum.IntEnum):
    gradients = 2


def _zero2_state():
    """A ZeRO-2 state_dict as DeepSpeed 0.19 returns it (stage_1_and_2.py state_dict), over a real AdamW."""
    flat = torch.arange(12, dtype=torch.float32) / 7
    adam = torch.optim.AdamW([torch.nn.Parameter(flat[:10].clone())], lr=1e-3, betas=(0.9, 0.99))
    adam.param_groups[0]["params"][0].grad = torch.ones(10)
    adam.step()
    fragment = namedtuple("fragment_address", "numel start")
    return {"loss_scaler": DynamicLossScaler(1024.0, 37), "dynamic_loss_scale": True, "overflow": False,
            "clip_grad": 1.0, "base_optimizer_state": adam.state_dict(),
            "single_partition_of_fp32_groups": [flat[:10]],  # a view into a larger flat buffer, as DeepSpeed's
            "zero_stage": Stage.gradients, "group_paddings": [0], "param_alignment_paddings": [[0, 0]],
            "partition_count": [1], "ds_version": "0.19.8",
            "param_slice_mappings": [{"w": fragment(10, 0)}]}, adam


def test_zero_state_round_trips_through_safetensors_and_json(tmp_path):
    """Tensors (the fp32 master, Adam's moments and step) come back bit for bit, plain values as they were, the
    loss scaler's values land on the running scaler (its dtype kept), the enum as its value; DeepSpeed's
    param_slice_mappings (rebuilt by the engine) is not written; the base optimizer state loads into a fresh AdamW."""
    sd, adam = _zero2_state()
    tensors, meta = split_zero_state(sd)
    assert set(tensors) == {"single_partition_of_fp32_groups.0", "base_optimizer_state.0.step",
                            "base_optimizer_state.0.exp_avg", "base_optimizer_state.0.exp_avg_sq"}
    save_file(tensors, tmp_path / "rank0.safetensors")  # the master is a view: written as a copy
    (tmp_path / "rank0.json").write_text(json.dumps(meta))
    live = DynamicLossScaler()
    back = join_zero_state(load_file(tmp_path / "rank0.safetensors"),
                           json.loads((tmp_path / "rank0.json").read_text()), live)
    assert "param_slice_mappings" not in back
    assert torch.equal(back["single_partition_of_fp32_groups"][0], sd["single_partition_of_fp32_groups"][0])
    for key, value in sd["base_optimizer_state"]["state"][0].items():
        assert torch.equal(back["base_optimizer_state"]["state"][0][key], value), key
    assert back["base_optimizer_state"]["param_groups"][0]["betas"] == [0.9, 0.99]
    assert back["loss_scaler"] is live and (live.cur_scale, live.cur_iter, live.dtype) == (1024.0, 37, torch.float16)
    assert (back["zero_stage"], back["param_alignment_paddings"], back["ds_version"]) == (2, [[0, 0]], "0.19.8")
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(10))], lr=5.0)
    fresh.load_state_dict(back["base_optimizer_state"])
    assert fresh.param_groups[0]["lr"] == 1e-3
    assert torch.equal(fresh.state[fresh.param_groups[0]["params"][0]]["exp_avg_sq"],
                       adam.state[adam.param_groups[0]["params"][0]]["exp_avg_sq"])


def test_state_preflab_cannot_write_or_match_is_refused_not_dropped():
    sd, _ = _zero2_state()
    with pytest.raises(PreflabError, match=r"'partition_hook' of type object.*save_steps: 0"):
        split_zero_state({**sd, "partition_hook": object()})
    tensors, meta = split_zero_state(sd)

    class LossScaler:  # a static scaler (this run without fp16's dynamic one)
        cur_scale = 1.0

    with pytest.raises(PreflabError, match=r"loss scaler is a DynamicLossScaler, this run's a LossScaler"):
        join_zero_state(tensors, meta, LossScaler())


def test_resumes_that_zero_partitions_cannot_give_exactly_are_refused():
    ds = {"checkpoint_format": "deepspeed", "zero_stage": 3, "world_size": 2, "engine": "DEEPSPEED"}
    check_deepspeed_resume(ds, "ck", "DEEPSPEED", 3, 2)  # same stage, same world size: resumed
    check_deepspeed_resume({"world_size": 1, "engine": "NO"}, "ck", "NO", None, 1)  # neither side DeepSpeed
    with pytest.raises(ConfigError, match=r"ZeRO-3 on 2 process\(es\); this run is ZeRO-3 on 1\..*--num_processes"):
        check_deepspeed_resume(ds, "ck", "DEEPSPEED", 3, 1)
    with pytest.raises(ConfigError, match=r"ZeRO-3 on 2 process\(es\); this run is ZeRO-2 on 2\..*universal"):
        check_deepspeed_resume(ds, "ck", "DEEPSPEED", 2, 2)
    with pytest.raises(ConfigError, match=r"under DeepSpeed ZeRO-3.*not DeepSpeed \(FSDP2 on 2 process"):
        check_deepspeed_resume(ds, "ck", "FSDP2", None, 2)
    with pytest.raises(ConfigError, match=r"without DeepSpeed \(FSDP2 on 2 process\(es\), sharded\)"):
        check_deepspeed_resume({"checkpoint_format": "sharded", "world_size": 2, "engine": "FSDP2"}, "ck",
                               "DEEPSPEED", 3, 2)


def _engine(stage=2, optimizer_device="none", param_device="none", elastic=False, moe=False):
    offload = lambda device: None if device == "none" else SimpleNamespace(device=device)  # noqa: E731
    return SimpleNamespace(zero_optimization_stage=lambda: stage, zero_elastic_checkpoint=lambda: elastic,
                           zero_offload_optimizer=lambda: offload(optimizer_device),
                           zero_offload_param=lambda: offload(param_device), has_moe_layers=moe)


def test_deepspeed_settings_whose_state_a_checkpoint_cannot_hold_are_refused():
    check_checkpointable(_engine(2))
    check_checkpointable(_engine(3, optimizer_device="cpu", param_device="cpu"))
    for engine, match in ((_engine(0), r"ZeRO stage 0"), (_engine(3, param_device="nvme"), r"offload_param_device: "
                                                                                          r"nvme"),
                          (_engine(2, optimizer_device="nvme"), r"offload_optimizer_device: nvme"),
                          (_engine(2, elastic=True), r"elastic_checkpoint: true"),
                          (_engine(2, moe=True), r"mixture-of-experts")):
        with pytest.raises(ConfigError, match=match):
            check_checkpointable(engine)


def _launch(launch, config, base, *refuse):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    cmd = launch("--config_file", str(config), "--num_processes", "1", str(HERE / "deepspeed_run.py"), str(base), "2",
                 *map(str, refuse), "--", *RUN)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _steps(out):
    return {r["step"]: (r["loss"], r["grad_norm"])
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def _assert_straight_saved_and_resumed_equal(base):
    """Losses, grad norms and final weights of BASE/straight, BASE/saved and BASE/resumed (from step 2) bit for
    bit."""
    straight, saved, resumed = _steps(base / "straight"), _steps(base / "saved"), _steps(base / "resumed")
    assert sorted(resumed) == [3, 4] and saved == straight
    assert all(resumed[s] == straight[s] for s in (3, 4))
    weights = [load_file(base / d / "model.safetensors") for d in ("straight", "saved", "resumed")]
    assert all(w.keys() == weights[0].keys() for w in weights)
    assert all(torch.equal(w[k], weights[0][k]) for w in weights[1:] for k in w)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="pip install preflab[deepspeed]")
def test_zero3_with_the_optimizer_offloaded_to_cpu_resumes_bit_for_bit(tmp_path, accelerate_launch):
    """offload_optimizer_device: cpu (accelerate swaps in DeepSpeedCPUAdam, built on the param groups preflab's
    scheduler steps): the resumed run equals the straight one bit for bit. Fails without keeping those param-group
    dicts at load (the schedule stops reaching the optimizer: the final weights differ) and without replaying the
    kernel's step count (its beta powers round differently: the step-4 loss differs by 1e-7)."""
    config = tmp_path / "zero3_offload.yaml"
    text = (ROOT / "examples/accelerate/zero3.yaml").read_text()
    config.write_text(text.replace("offload_optimizer_device: none", "offload_optimizer_device: cpu"))
    assert config.read_text() != text
    _launch(accelerate_launch, config, tmp_path / "offload")
    _assert_straight_saved_and_resumed_equal(tmp_path / "offload")
    partition = json.loads((tmp_path / "offload/saved/checkpoint-2/zero/rank0.json").read_text())
    assert partition["zero"]["optimizer_state_dict"]["optimizer_state"]["state"]["0"]["step"] == 2  # CPUAdam's int


def test_an_objective_with_its_own_parameters_is_refused_before_the_first_step_when_sharded(tmp_path, monkeypatch):
    """The driver's own guard (any TrainingRun with checkpoint extras): sharded checkpoints (FSDP2, DeepSpeed) hold the
    model and its optimizer state only, so extras are refused when save_steps is set, before any step runs. Only the
    driver's is_sharded is faked here: a real engine refuses sparsepo earlier, before the models load, whether it
    saves or not (refuse_sharded_engine; real ZeRO-2/3 launches: test_sharded_extras.py)."""
    sys.path.insert(0, str(HERE))
    from tiny_run import run

    from preflab.loops import driver

    monkeypatch.setattr(driver, "is_sharded", lambda accelerator: True)
    monkeypatch.setattr(driver, "sharding_engine", lambda accelerator: "DEEPSPEED")
    with pytest.raises(ConfigError, match=r"'sparsepo' has parameters of its own.*resume_from_checkpoint under "
                                          r"DEEPSPEED"):
        run(tmp_path, loss_type="sparsepo", max_steps=4, save_steps=3)
    assert not (tmp_path / "metrics.jsonl").exists() or "loss" not in (tmp_path / "metrics.jsonl").read_text()


def test_cpu_adam_kernel_replays_every_step_of_the_checkpoint():
    """replay_cpu_adam_steps calls DeepSpeedCPUAdam's kernel once for each step 1..t the partitions were at (on
    empty tensors, with the group's lr, betas, eps, weight decay), so its running beta products are those of the
    uninterrupted run; partitions at different steps are refused; any other optimizer is left alone."""
    from preflab.deepspeed_checkpoint import replay_cpu_adam_steps

    calls = []

    class Kernel:
        def adam_update(self, opt_id, step, lr, beta1, beta2, eps, weight_decay, bias_correction, *tensors):
            calls.append((opt_id, step, lr, beta1, beta2, eps, weight_decay, bias_correction,
                          [t.numel() for t in tensors]))

    group = {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1, "bias_correction": True}
    p, q = torch.zeros(2), torch.zeros(3)
    adam = SimpleNamespace(ds_opt_adam=Kernel(), opt_id=5, param_groups=[group],
                           state={p: {"step": torch.tensor(3.0)}, q: {"step": torch.tensor(3.0)}})
    replay_cpu_adam_steps(adam)
    assert calls == [(5, s, 1e-3, 0.9, 0.99, 1e-8, 0.1, True, [0, 0, 0, 0]) for s in (1, 2, 3)]
    adam.state[q]["step"] = torch.tensor(2.0)
    with pytest.raises(PreflabError, match=r"partitions are at different steps \[2, 3\]"):
        replay_cpu_adam_steps(adam)
    replay_cpu_adam_steps(SimpleNamespace(param_groups=[group], state={}))  # no kernel: nothing to replay
    assert len(calls) == 3
