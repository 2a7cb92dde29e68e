"""Parameters trained outside the model (an objective's own, e.g. SparsePO's token masks; an extras producer's, e.g.
spo_degree's degree head) under FSDP / DeepSpeed: refused before the models load
(preflab.loops.extras_producer.refuse_sharded_engine), because the engines build their sharded optimizer around the
model's parameters only. Before the refusal, sparsepo under real DeepSpeed on one CPU process crashed while the engine
was built: ZeRO-2 with KeyError in Stage1And2ZeroOptimizer._create_param_mapping, ZeRO-3 with AttributeError
'Parameter' object has no attribute 'partition_numel'."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate import Accelerator
from accelerate.utils import DistributedType

from preflab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("engine", ["DEEPSPEED", "FSDP"])
def test_sparsepo_masks_are_refused_under_a_sharding_engine_before_the_models_load(tmp_path, monkeypatch, engine):
    """accelerate's distributed_type says the engine (no engine is built): the ConfigError names loss_type, the
    objective's parameters and the engine, before the objective's masks are built or anything trains; FSDP on CPU
    is version 2 in preflab, so it is named FSDP2."""
    sys.path.insert(0, str(HERE))
    from tiny_run import run

    from preflab.objectives.sparsepo import SparsePO

    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType[engine]))
    monkeypatch.setattr(Accelerator, "is_fsdp2", property(lambda self: engine == "FSDP"))
    built = []
    monkeypatch.setattr(SparsePO, "forward", lambda self, *a, **k: built.append(1))
    name = "DEEPSPEED" if engine == "DEEPSPEED" else "FSDP2"
    with pytest.raises(ConfigError, match=rf"^loss_type sparsepo trains parameters outside the model with the policy "
                                          rf"\(the objective SparsePO's own parameters\), which preflab does not "
                                          rf"train under {name}: .* Train it with examples/accelerate/ddp.yaml"):
        run(tmp_path / "out", loss_type="sparsepo", max_steps=2)
    assert not built and not (tmp_path / "out" / "metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="pip install preflab[deepspeed]")
@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_sparsepo_under_real_deepspeed_on_one_cpu_process_is_refused_not_crashed(tmp_path, accelerate_launch, config):
    """The real launch (examples/accelerate/zero2.yaml / zero3.yaml, one CPU process, accelerate's own DeepSpeed
    path): preflab's ConfigError, not DeepSpeed's KeyError / AttributeError, and no step runs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    out = tmp_path / "out"
    cmd = accelerate_launch("--config_file", str(ROOT / "examples/accelerate" / config), "--num_processes", "1",
                            str(HERE / "tiny_run.py"), str(out), "loss_type=sparsepo", "max_steps=2", "use_cpu=false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert proc.returncode != 0
    assert ("ConfigError: loss_type sparsepo trains parameters outside the model with the policy (the objective "
            "SparsePO's own parameters), which preflab does not train under DEEPSPEED") in proc.stderr, \
        proc.stderr[-4000:]
    assert "KeyError" not in proc.stderr and "partition_numel" not in proc.stderr
    assert not (out / "metrics.jsonl").exists()
