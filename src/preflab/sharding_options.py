"""The options a sharding engine (DeepSpeed ZeRO, FSDP2, FSDP version 1) refuses that have no options module of
their own (activation_offloading, generate_during_eval, gradient_accumulation_steps under DeepSpeed), and
sharded_config_problem: every refusal of a run under an engine that the config and the engine alone decide, in the
order `preflab train` meets them, so that `preflab plan` stops with the run's own message.

Each function takes the engine by launch.sharding_engine's name (DEEPSPEED, FSDP2, FSDP; None without sharding) and
returns the refusal's text, None where the run goes on; the run raises ConfigError with it where it checks. A module
of the config layer: it imports no loop.
"""
from __future__ import annotations

from preflab.best_model_options import (fsdp1_checkpoint_problem, sharded_best_model_problem,
                                        sharded_model_only_problem)
from preflab.optimizer_options import sharded_optimizer_problem
from preflab.ref_sync_options import sharded_ref_sync_problem


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
    if engine is None or not getattr(cfg, "generate_during_eval", False):
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


def sharded_config_problem(cfg, engine: str | None, resumes: bool) -> str | None:
    """The first refusal `preflab train` gives this config under `engine`, None where none of these applies, in the
    run's order: make_accelerator (DeepSpeed's accumulation, FSDP1's checkpoints, generate_during_eval), the
    trainer's sync_ref_model check, TrainingRun._check_engine_can_save (optim, load_best_model_at_end,
    save_only_model), the training forward (activation_offloading). `resumes`: resume_from_checkpoint asks for a
    resume (preflab.loops.resume.resume_requested). Left to the run: what the machine, the data, a checkpoint on
    disk or the built objective decide (docs/scaling.md lists them)."""
    for problem in (lambda: deepspeed_accumulation_problem(cfg, engine),
                    lambda: fsdp1_checkpoint_problem(cfg, engine, resumes),
                    lambda: sharded_generation_problem(cfg, engine),
                    lambda: sharded_ref_sync_problem(cfg, engine),
                    lambda: sharded_optimizer_problem(getattr(cfg, "optim", "adamw_torch_fused"), engine),
                    lambda: sharded_best_model_problem(cfg, engine),
                    lambda: sharded_model_only_problem(cfg, engine),
                    lambda: sharded_activation_offload_problem(cfg, engine)):
        said = problem()
        if said:
            return said
    return None
