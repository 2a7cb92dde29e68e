"""Extras that an objective declares and the offline trainer computes at every step with modules of their own.

An objective names a producer class (`Objective.extras_producer = "module:Class"`) and the extras it computes
(`produced_extras`: not data columns). preflab.loops.offline.Trainer builds it and calls, without naming any
objective:

    producer = ExtrasProducer(objective_part, cfg)  # in Trainer.__init__ (refuse what it cannot do: ConfigError)
    producer.prepare(trainer) -> {report}     # data and models ready, before the optimizer (e.g. build variants,
                                              # size a head on the policy's hidden size); the report goes to
                                              # summary.json's data section
    producer.parameters() -> [tensors]        # trained with the policy: in the optimizer, clipped with it, saved
                                              # with every checkpoint (extra.safetensors) and restored on resume
    producer.module() -> nn.Module | None     # the module holding those parameters: under FSDP2 it goes inside
                                              # the module the engine wraps (preflab.loops.engine_extras)
    producer.extras(trainer, positions, train, scored) -> {name: tensor}   # in Trainer.score(), added to the batch
                                              # extras; scored = (the policy's Scores, the device LayoutBatch) of
                                              # the micro-batch's own forward (e.g. reuse its hidden states)
    producer.save(out_dir, state)             # beside the final model (state: module()'s full state_dict when a
                                              # sharding engine held it, else None)

At most one producer per run (a weighted sum may hold one part with a producer). A data row that carries a
produced extra is refused before `prepare` (`refuse_produced_columns`): the column would be silently replaced.
"""
from __future__ import annotations

import importlib

import torch

from preflab.errors import ConfigError
from preflab.objectives.base import objective_parts


class ExtrasProducer:
    """Base class (documents the hooks; every hook but extras has a do-nothing default)."""

    def __init__(self, objective, cfg):
        self.objective, self.cfg = objective, cfg

    def prepare(self, trainer) -> dict:
        return {}

    def parameters(self) -> list:
        return []

    def module(self):
        """The nn.Module that holds parameters() (None: the producer cannot be trained under a sharding engine)."""
        return None

    def extras(self, trainer, positions: list[int] | None, train: bool, scored=None) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self, out_dir, state: dict | None = None) -> None:
        return None


def produced_extras(objective) -> tuple:
    """The extras the objective's producer computes (every part of a weighted sum)."""
    return tuple(k for p in objective_parts(objective) for k in getattr(p, "produced_extras", ()))


def refuse_produced_columns(objective, cfg, splits) -> None:
    """ConfigError naming the dataset, split, row and column when an example carries an extra the producer computes."""
    refuse_computed_columns(cfg, splits, produced_extras(objective),
                            f"loss_type {cfg.loss_type} computes at every step (its extras producer, with gradient)")


def refuse_computed_columns(cfg, splits, names, computed_by: str) -> None:
    """A row (read from the dataset or given from Python) that carries one of the extras `names`, which the run
    computes with gradient (`computed_by` says how), is refused naming dataset, split, row and column: a data column
    would be a constant and the method's term would do nothing."""
    for split, examples in splits:
        for ex in examples:
            clash = [k for k in names if k in getattr(ex, "extras", {})]
            if clash:
                raise ConfigError(
                    f"dataset {cfg.dataset_name!r} ({split}), row {ex.row_id}: column {clash[0]!r} is what "
                    f"{computed_by}; data columns would be constants. Remove the column from the data.")


def make_producer(objective, cfg) -> ExtrasProducer | None:
    """The producer the objective (or one part of a weighted sum) declares, built; None when none does."""
    found = producer_class(objective)
    return found[0](found[1], cfg) if found else None


def producer_class(objective) -> tuple[type, object] | None:
    """(the ExtrasProducer class the objective, or one part of a weighted sum, declares; that part), not built;
    None when none does. Two parts that declare one: ConfigError."""
    parts = [p for p in objective_parts(objective) if getattr(p, "extras_producer", "")]
    if not parts:
        return None
    if len(parts) > 1:
        raise ConfigError(f"objectives {[type(p).__name__ for p in parts]} each compute extras with a producer of "
                          "their own; preflab runs one per training run. Combine at most one of them.")
    module, name = parts[0].extras_producer.split(":", 1)
    return getattr(importlib.import_module(module), name), parts[0]


# engines under which parameters outside the model train inside the engine's module (preflab.loops.engine_extras), each
# proven by a real 2-process run (tests/loops/test_deepspeed_multiprocess.py): an extras producer's module (spo_degree's
# degree head) and an objective that is an nn.Module (SparsePO's token masks; under FSDP2 it is refused anyway for its
# token-level KL through the reference's LM head, so it was not run there)
PRODUCER_ENGINES = ("FSDP2", "DEEPSPEED")
OBJECTIVE_ENGINES = ("DEEPSPEED",)


def refuse_sharded_engine(producer, cfg, accelerator, objective=None) -> None:
    """ConfigError naming the engine and loss_type when parameters outside the model would be trained under a
    sharding engine preflab has not proven them under (before the models load).

    An extras producer's module trains under PRODUCER_ENGINES, an nn.Module objective's parameters (built lazily, so
    the class decides) under OBJECTIVE_ENGINES, inside the module the engine wraps (preflab.loops.engine_extras:
    sharded, reduced, checkpointed with the policy). Refused: those owners under any other sharding engine (FSDP
    version 1; an nn.Module objective under FSDP2), and a producer that names no module (ExtrasProducer.module).
    Before the engines owned them they crashed there: FSDP2 in accelerate's fsdp2_switch_optimizer_parameters
    (KeyError: the optimizer's parameters must be the model's; 2 CPU processes); DeepSpeed building its ZeRO optimizer
    (sparsepo on one CPU process: ZeRO-2 KeyError in Stage1And2ZeroOptimizer._create_param_mapping, ZeRO-3
    AttributeError 'Parameter' object has no attribute 'partition_numel'). DDP and one process train them outside
    any wrapper (their gradients are all-reduced with the step: preflab.step.optimizer_step)."""
    from preflab.loops.launch import is_sharded, sharding_engine

    refusal = sharded_extras_problem(cfg, sharding_engine(accelerator) if is_sharded(accelerator) else None,
                                     None if producer is None else type(producer), objective)
    if refusal:
        raise ConfigError(refusal)


def sharded_extras_problem(cfg, engine: str | None, producer: type | None, objective=None) -> str | None:
    """refuse_sharded_engine's refusal as text, None where it lets the run go on: `engine` is
    launch.sharding_engine's name (None without sharding), `producer` the extras producer's class (producer_class),
    `objective` the objective. Asked by the run (refuse_sharded_engine) and `preflab plan`."""
    if engine is None:
        return None
    owners = []
    if producer is not None and (engine not in PRODUCER_ENGINES or producer.module is ExtrasProducer.module):
        owners.append(f"its extras producer {producer.__name__}")
    if isinstance(objective, torch.nn.Module) and engine not in OBJECTIVE_ENGINES:
        owners.append(f"the objective {type(objective).__name__}'s own parameters")
    if not owners:
        return None
    return (f"loss_type {cfg.loss_type} trains parameters outside the model with the policy "
            f"({' and '.join(owners)}), which preflab does not train under {engine}: it trains them "
            "inside the engine's module only where a real run proved it (an extras producer's module "
            f"under {' and '.join(PRODUCER_ENGINES)}, an objective's own parameters under "
            f"{' and '.join(OBJECTIVE_ENGINES)}). Train it with examples/accelerate/ddp.yaml or one "
            "process.")
