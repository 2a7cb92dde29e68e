"""The options a sharding engine (DeepSpeed ZeRO, FSDP2, FSDP version 1) refuses that have no options module of
their own (activation_offloading, generate_during_eval, gradient_accumulation_steps under DeepSpeed, a token-level
KL objective under FSDP2, distillation), asked by the run where it checks them and by `preflab plan`
(preflab.plan.sharded_run_problem, which puts them in the run's order beside the other options modules' refusals),
so that the plan stops with the run's own message.

Each function takes the engine by launch.sharding_engine's name (DEEPSPEED, FSDP2, FSDP; None without sharding) and
returns the refusal's text, None where the run goes on; the run raises ConfigError with it where it checks. A module
of the config layer: it imports no loop.
"""
from __future__ import annotations


def deepspeed_accumulation_problem(cfg, engine: str | None) -> str | None:
    """gradient_accumulation_steps other than 1 under DeepSpeed: DeepSpeed steps the optimizer inside every backward
    (accelerate's DeepSpeedEngineWrapper), so preflab runs it with one micro-batch per optimizer step. Asked by
    preflab.loops.launch.check_deepspeed_settings and `preflab plan`."""
    if engine != "DEEPSPEED" or cfg.gradient_accumulation_steps == 1:
        return None
    return (f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} under DeepSpeed (`distributed_type: "
            "DEEPSPEED`): DeepSpeed steps the optimizer inside every backward through accelerate, so preflab runs it "
            "with one micro-batch per step. Set gradient_accumulation_steps: 1 and raise "
            "per_device_train_batch_size, or use examples/accelerate/fsdp2.yaml.")


def sharded_generation_problem(cfg, engine: str | None) -> str | None:
    """generate_during_eval under a sharding engine: the eval samples are generated on the main process from the
    unwrapped policy, whose weights are sharded. Asked by preflab.loops.launch.make_accelerator and `preflab plan`."""
    if not getattr(cfg, "generate_during_eval", False) or engine is None:  # the option read first, as before
        return None
    return (f"generate_during_eval: preflab generates eval samples on the main process from the unwrapped policy, "
            f"whose weights are sharded under {engine}; set generate_during_eval: false (or use "
            "examples/accelerate/ddp.yaml).")


def sharded_activation_offload_problem(cfg, engine: str | None) -> str | None:
    """activation_offloading under a sharding engine: its gathered parameters live in temporary storages the
    offload cannot tell from activations, so every gathered weight would be copied to the host whole. Asked by
    TrainingRun._training_forward and `preflab plan`."""
    if engine is None or not cfg.activation_offloading:
        return None
    return (f"activation_offloading is not supported under {engine}: its gathered parameters live in temporary "
            "storages that the offload cannot tell from activations, so every gathered weight would be copied to "
            "the host whole. Use gradient_checkpointing: true (and DeepSpeed's own activation_checkpointing "
            "cpu_checkpointing), or launch without FSDP / DeepSpeed.")


def fsdp2_token_kl_problem(cfg, objective, engine: str | None) -> str | None:
    """An objective with token-level KL to the reference (token_needs "token_kl": SparsePO) under FSDP2: it reads the
    reference's LM head outside the reference's forward, where FSDP2 keeps it sharded. Asked by the offline Trainer
    and `preflab plan`."""
    if engine != "FSDP2" or "token_kl" not in objective.token_needs:
        return None
    return (f"objective {cfg.loss_type!r} needs token-level KL through the reference's LM head outside the "
            "reference's forward, where FSDP2 keeps it sharded; train it with examples/accelerate/ddp.yaml.")


def sharded_distill_problem(distributed_type: str | None) -> str | None:
    """Distillation (task: sft with teacher_model_name_or_path) under a sharding engine, named by accelerate's
    distributed_type (FSDP for both FSDP versions, DEEPSPEED; None without sharding): the student's and the
    teacher's LM heads run outside the wrapped model's forward. Asked by DistillTrainer and `preflab plan`."""
    if distributed_type is None:
        return None
    return (f"distillation under {distributed_type}: the student's and the teacher's LM heads run outside the "
            "wrapped model's forward (preflab.scoring.distill), where FSDP and DeepSpeed ZeRO-3 hold only this "
            "rank's shard of the weights (and ZeRO-1/2 is not verified for this path); train on one process or "
            "data parallel with examples/accelerate/ddp.yaml (2 processes equal 1 process with the doubled batch).")
