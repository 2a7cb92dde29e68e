"""Parameters trained outside the policy inside the module a sharding engine wraps (preflab.loops.engine_extras):
which engines an extras producer or an objective with parameters of its own may train under
(extras_producer.refuse_sharded_engine), and the module that holds them beside the scorer. The real 2-process CPU
runs that proved those engines (spo_degree's degree head under FSDP2, DeepSpeed ZeRO-2 and ZeRO-3, sparsepo's token
masks under ZeRO-2 and ZeRO-3, each against one process or DDP and resumed) share the launches of the plain ZeRO tests
in tests/loops/test_deepspeed_multiprocess.py."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.degree_head import DegreeExtras
from preflab.loops.engine_extras import ScorerWithExtras, extra_modules
from preflab.loops.extras_producer import ExtrasProducer, refuse_sharded_engine

ROOT = Path(__file__).resolve().parents[2]


def test_extra_parameters_train_under_the_proven_engines_only(tmp_path):
    """The check on accelerate's distributed_type: the degree head (a producer naming its module) trains under FSDP2
    and DeepSpeed, and is refused under FSDP version 1; SparsePO's masks (an nn.Module objective) train under
    DeepSpeed and are refused under FSDP2; a producer with parameters but no module() is refused under every
    sharding engine."""
    from preflab.objectives.sparsepo import SparsePO

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(ROOT / "examples/data/"
                                "loud_echo_pairs.jsonl"), use_cpu=True, output_dir=str(tmp_path),
                                loss_type="spo_degree", objective_params={"degrees": 2}))
    producer = DegreeExtras(cfg.objective(), cfg)
    fsdp2 = SimpleNamespace(distributed_type="DistributedType.FSDP", is_fsdp2=True)
    fsdp1 = SimpleNamespace(distributed_type="DistributedType.FSDP", is_fsdp2=False)
    deepspeed = SimpleNamespace(distributed_type="DistributedType.DEEPSPEED", is_fsdp2=False)
    refuse_sharded_engine(producer, cfg, fsdp2)
    refuse_sharded_engine(producer, cfg, deepspeed)
    refuse_sharded_engine(None, cfg, deepspeed, SparsePO())
    said = (r"which preflab does not train under {}: it trains them inside the engine's module only where a real "
            r"run proved it \(an extras producer's module under FSDP2 and DEEPSPEED, an objective's own parameters "
            r"under DEEPSPEED\)\. Train it with examples/accelerate/ddp.yaml or one process\.$")
    with pytest.raises(ConfigError, match=r"^loss_type spo_degree trains parameters outside the model with the "
                                          r"policy \(its extras producer DegreeExtras\), " + said.format("FSDP")):
        refuse_sharded_engine(producer, cfg, fsdp1)
    with pytest.raises(ConfigError, match=r"\(the objective SparsePO's own parameters\), " + said.format("FSDP2")):
        refuse_sharded_engine(None, cfg, fsdp2, SparsePO())

    class NoModule(ExtrasProducer):
        def parameters(self):
            return [torch.zeros(1, requires_grad=True)]

    for acc, name in ((fsdp2, "FSDP2"), (deepspeed, "DEEPSPEED")):
        with pytest.raises(ConfigError, match=r"\(its extras producer NoModule\), " + said.format(name)):
            refuse_sharded_engine(NoModule(cfg.objective(), cfg), cfg, acc)


def test_scorer_with_extras_forwards_to_the_scorer_and_holds_the_extra_modules():
    """The wrapper's forward is the scorer's (same output object), its parameters are the scorer's then the extra
    modules' (what the engine shards and the optimizer holds), and accelerate's auto-wrap sees the scorer's layer
    classes."""
    class Scorer(torch.nn.Module):
        _no_split_modules = ["Layer"]

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

        def forward(self, x, scale=1.0):
            return self.w(x) * scale

    scorer, head = Scorer(), torch.nn.Linear(2, 3)
    producer = SimpleNamespace(module=lambda: head)
    extras = extra_modules(object(), producer)
    assert list(extras) == ["producer"] and extras["producer"] is head
    wrapped = ScorerWithExtras(scorer, extras)
    x = torch.randn(4, 2)
    assert torch.equal(wrapped(x, scale=2.0), scorer(x, scale=2.0))
    assert [id(p) for p in wrapped.parameters()] == [id(p) for p in [*scorer.parameters(), *head.parameters()]]
    assert wrapped._no_split_modules == ["Layer"]
    assert extra_modules(object(), SimpleNamespace(module=lambda: torch.nn.ReLU())) == {}  # no parameters: nothing
