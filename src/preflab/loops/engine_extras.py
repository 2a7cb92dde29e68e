"""Parameters trained outside the policy (an extras producer's module, e.g. spo_degree's degree head; an objective
with parameters of its own) inside the module a sharding engine wraps.

FSDP2 and DeepSpeed build their sharded optimizer around the parameters of the module they wrap: an optimizer
parameter that is not the module's fails there (accelerate's KeyError switching the optimizer to FSDP2's sharded
parameters; DeepSpeed's KeyError in Stage1And2ZeroOptimizer._create_param_mapping). Under those engines the run's
scorer is therefore wrapped in ScorerWithExtras, whose submodules are the scorer and the extra modules:

    ScorerWithExtras
      scorer            the run's scorer (its forward is this module's forward: same layout in, same Scores out)
      extras.producer   the extras producer's module (ExtrasProducer.module())
      extras.objective  the objective, when it is an nn.Module with parameters

The engine then owns the extra parameters like the policy's: sharded, their gradients reduced with the policy's
(FSDP2 reduce-scatter, ZeRO's reduction), their optimizer state sharded and saved in the engine's checkpoint
(preflab.sharded_checkpoint: the wrapper's state dict; DeepSpeed: the engine's), clipped with the policy's. The extra
modules are still called where they were (after the scorer's forward): FSDP2 keeps the root's parameters unsharded
from the root's forward until its post-backward (torch's FSDPState._lazy_init: the root does not reshard after
forward), which is when the head runs; under DeepSpeed ZeRO-3 the engine's module hooks gather a submodule's
parameters when it is called, wherever the call is. Proven by real 2-process runs
(tests/loops/test_deepspeed_multiprocess.py: spo_degree under FSDP2 / ZeRO-2 / ZeRO-3 equal to one process with the
doubled batch, sparsepo under ZeRO-2 / ZeRO-3 equal to DDP; resume bit for bit);
preflab.loops.extras_producer.refuse_sharded_engine refuses the rest. One
process and DDP do not use the wrapper: their numbers stay those of the unwrapped scorer (the extra parameters'
gradients are all-reduced by preflab.step.optimizer_step there).
"""
from __future__ import annotations

from torch import nn


class ScorerWithExtras(nn.Module):
    """The scorer plus the run's extra modules, as one module for accelerate.prepare (see the module docstring)."""

    def __init__(self, scorer: nn.Module, extras: dict[str, nn.Module]):
        super().__init__()
        self.scorer = scorer
        self.extras = nn.ModuleDict(extras)

    @property
    def _no_split_modules(self):
        """The scorer's (the policy's decoder layers): accelerate's FSDP auto-wrap shards one unit per layer."""
        return getattr(self.scorer, "_no_split_modules", None)

    def forward(self, *args, **kwargs):
        return self.scorer(*args, **kwargs)


def extra_modules(objective, producer) -> dict[str, nn.Module]:
    """{"objective": the objective when it is a module with parameters, "producer": the producer's module}: what
    the engine must own besides the scorer ({} when the run trains nothing outside the policy)."""
    modules = {}
    if isinstance(objective, nn.Module) and list(objective.parameters()):
        modules["objective"] = objective
    module = producer.module() if producer is not None else None
    if module is not None and list(module.parameters()):
        modules["producer"] = module
    return modules
