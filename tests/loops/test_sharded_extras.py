"""An objective's own parameters (SparsePO's token masks) under FSDP2: refused before the models load
(preflab.loops.extras_producer.refuse_sharded_engine; under DeepSpeed they train inside the engine's module,
tests/loops/test_deepspeed_multiprocess.py). Before the refusal, sparsepo under real DeepSpeed on one CPU process
crashed while the engine was built: ZeRO-2 with KeyError in Stage1And2ZeroOptimizer._create_param_mapping, ZeRO-3 with
AttributeError 'Parameter' object has no attribute 'partition_numel'."""
import sys
from pathlib import Path

import pytest
from accelerate import Accelerator
from accelerate.utils import DistributedType

from preflab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("engine", ["FSDP"])
def test_sparsepo_masks_are_refused_under_a_sharding_engine_before_the_models_load(tmp_path, monkeypatch, engine):
    """accelerate's distributed_type says the engine (no engine is built): the ConfigError names loss_type, the
    objective's parameters and the engine, before the objective's masks are built or anything trains; FSDP on CPU
    is version 2 in preflab, so it is named FSDP2. (DeepSpeed trains them inside its engine's module:
    tests/loops/test_deepspeed_multiprocess.py.)"""
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
