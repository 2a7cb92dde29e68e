"""The options of the best model (load_best_model_at_end, metric_for_best_model, greater_is_better, save_strategy
best), as transformers 5.25's TrainingArguments defaults and checks them: the config layer runs these
(TrainConfig.__post_init__ and _conflicts), the training loop (preflab.loops.best_model, .driver, .launch) reads
saves_best / writes_checkpoints from here. A module of its own, below the config layer: it imports no loop.

- metric_for_best_model defaults to "loss" when load_best_model_at_end is set; greater_is_better defaults to
  `not metric.endswith("loss")` -> resolve_best_model_options.
- load_best_model_at_end needs evaluation and checkpoints on the same steps schedule (save_steps a multiple of
  eval_steps); save_strategy "best" needs metric_for_best_model, an evaluation schedule and an eval set, and
  reads no save_steps -> best_model_option_errors.
"""
from __future__ import annotations


def resolve_best_model_options(cfg) -> None:
    """transformers' TrainingArguments.__post_init__ defaults: metric_for_best_model "loss" under
    load_best_model_at_end or lr_scheduler_type reduce_lr_on_plateau (the metric it steps with); greater_is_better
    from the metric's name (False when it ends in "loss")."""
    plateau = getattr(cfg, "lr_scheduler_type", None) == "reduce_lr_on_plateau"
    if (cfg.load_best_model_at_end or plateau) and cfg.metric_for_best_model is None:
        cfg.metric_for_best_model = "loss"
    if cfg.greater_is_better is None and cfg.metric_for_best_model is not None:
        cfg.greater_is_better = not cfg.metric_for_best_model.endswith("loss")


def saves_best(cfg) -> bool:
    """save_strategy "best": a checkpoint at each evaluation that improves metric_for_best_model."""
    return getattr(cfg, "save_strategy", None) == "best"


def saves_each_epoch(cfg) -> bool:
    """save_strategy "epoch": a checkpoint at the end of each epoch (save_steps = one epoch's steps, set when the
    steps per epoch are known: config.resolve_epoch_eval)."""
    return getattr(cfg, "save_strategy", None) == "epoch"


def writes_checkpoints(cfg) -> bool:
    """The run writes intermediate checkpoints (save_steps > 0, or save_strategy best or epoch)."""
    return bool(cfg.save_steps) or saves_best(cfg) or saves_each_epoch(cfg)


def sharded_best_model_problem(cfg, engine: str | None) -> str | None:
    """The refusal of load_best_model_at_end under sharding engine `engine` (launch.sharding_engine's name:
    DEEPSPEED, FSDP2, FSDP; None without sharding): preflab loads the best checkpoint's full weights only without
    sharding. `preflab train` (TrainingRun._check_engine_can_save) and `preflab plan` both ask it."""
    if not cfg.load_best_model_at_end or engine is None:
        return None
    return (f"load_best_model_at_end is not supported under {engine} (preflab loads the best checkpoint's full "
            "weights only without sharding); train with examples/accelerate/ddp.yaml or one process, or remove "
            "load_best_model_at_end.")


def sharded_model_only_problem(cfg, engine: str | None) -> str | None:
    """The refusal of save_only_model: true (with checkpoints written) under sharding engine `engine`: preflab's
    sharded checkpoints always hold the optimizer state. Asked by TrainingRun._check_sharded_model_only and
    `preflab plan`."""
    if engine is None or not (cfg.save_only_model and writes_checkpoints(cfg)):
        return None
    return (f"save_only_model: true is not supported under {engine}: preflab's sharded checkpoints (FSDP2, "
            "DeepSpeed) always hold the optimizer state. Set save_only_model: false, or train with "
            "examples/accelerate/ddp.yaml or one process.")


def checkpoint_uses(cfg, resumes: bool) -> list[str]:
    """The settings by which a run writes or resumes intermediate checkpoints (`resumes`: resume_from_checkpoint
    asks for a resume, preflab.loops.resume.resume_requested)."""
    return [k for k, used in (("save_steps", cfg.save_steps), ("save_strategy: best", saves_best(cfg)),
                              ("save_strategy: epoch", saves_each_epoch(cfg)),
                              ("resume_from_checkpoint", resumes)) if used]


def fsdp1_checkpoint_problem(cfg, engine: str | None, resumes: bool) -> str | None:
    """The refusal of intermediate checkpoints and resume under FSDP version 1 (engine "FSDP"), where each rank
    would hold only its shards: preflab writes sharded checkpoints under FSDP2 and DeepSpeed only. Asked by
    preflab.loops.launch.check_sharded_checkpoints and `preflab plan`."""
    used = checkpoint_uses(cfg, resumes)
    if engine != "FSDP" or not used:
        return None
    return (f"{', '.join(used)}: preflab writes and resumes sharded checkpoints under FSDP version 2 and DeepSpeed, "
            f"not under {engine} version 1 (the accelerate config's fsdp_version); use "
            "examples/accelerate/fsdp2.yaml, or set save_steps: 0 and no resume_from_checkpoint (the final model is "
            "still gathered and saved).")


TRL_SAVE_STEPS = 500  # transformers' TrainingArguments defaults: save_strategy "steps", save_steps 500


def trl_save_default_note(cfg, total_steps: int) -> str | None:
    """The one line for a run that TRL would have checkpointed and preflab will not: preflab's save_steps defaults to
    0 (no intermediate checkpoints), transformers' to save_strategy steps every 500 steps. Said when the run has at
    least 500 steps, writes no checkpoints, and the user wrote neither save_steps nor save_strategy (a config that
    relies on the default; a saved TRL config carries save_strategy steps / save_steps 500 and gets them)."""
    written = getattr(cfg, "written_options", frozenset())
    if writes_checkpoints(cfg) or {"save_steps", "save_strategy"} & written or total_steps < TRL_SAVE_STEPS:
        return None
    count = total_steps // TRL_SAVE_STEPS
    names = f"checkpoint-{TRL_SAVE_STEPS}" + (f" ... checkpoint-{count * TRL_SAVE_STEPS}" if count > 1 else "")
    if total_steps % TRL_SAVE_STEPS:  # transformers' DefaultFlowCallback also saves at the last step
        names += f" and checkpoint-{total_steps}"
    return (f"preflab: note: this {total_steps}-step run writes no intermediate checkpoints (preflab's save_steps "
            f"defaults to 0); TRL (transformers' save_strategy: steps, save_steps: {TRL_SAVE_STEPS}) would write "
            f"{names}. Set save_steps: {TRL_SAVE_STEPS} for TRL's checkpoints, or save_steps: 0 to say none are "
            "wanted.")


def _save_best_errors(cfg) -> list[str]:
    if cfg.metric_for_best_model is None:
        return [("metric_for_best_model must be provided when using save_strategy: best (as transformers requires); "
                 "set it, e.g. metric_for_best_model: loss.")]
    if not (cfg.eval_steps or cfg.eval_strategy in ("steps", "epoch")):  # the eval set: data.eval_set
        return [(f"save_strategy: best saves a checkpoint at each evaluation that improves "
                 f"{cfg.metric_for_best_model}, but this run has no evaluation during training (it would save "
                 "nothing). Set eval_strategy: steps with eval_steps and an eval set (eval_dataset_name or "
                 "eval_fraction), or use save_strategy: steps with save_steps.")]
    if cfg.save_steps:
        return [(f"save_steps={cfg.save_steps} is not used with save_strategy: best (a checkpoint at each new best "
                 "evaluation); remove it.")]
    return []


def best_model_option_errors(cfg) -> list[str]:
    """transformers' rules for load_best_model_at_end and save_strategy best, in preflab's terms (save_strategy steps
    is save_steps > 0; eval_strategy steps is eval_steps > 0; both epoch: one epoch's steps each, at run time)."""
    if saves_best(cfg):
        return _save_best_errors(cfg)  # load_best_model_at_end: no strategy to match (transformers)
    if not cfg.load_best_model_at_end:
        return []
    eval_strategy = cfg.eval_strategy or ("steps" if cfg.eval_steps else "no")
    save_strategy = "epoch" if saves_each_epoch(cfg) else "steps" if cfg.save_steps else "no"
    if eval_strategy == save_strategy == "no":  # transformers' default save_strategy "steps" refuses this pair
        return [("load_best_model_at_end: true, but this run neither evaluates nor saves checkpoints during "
                 "training (no eval_strategy / eval_steps, save_steps 0: preflab's default, where transformers "
                 "saves every 500 steps), so there is no best checkpoint and the final model would be the last "
                 "step's. Set eval_strategy: steps with eval_steps, save_steps a multiple of eval_steps, and an eval "
                 "set (eval_dataset_name or eval_fraction); or remove load_best_model_at_end.")]
    if eval_strategy != save_strategy:
        return [(f"load_best_model_at_end requires the save and eval strategy to match, but found evaluation "
                 f"strategy {eval_strategy!r} (eval_steps={cfg.eval_steps}) and save strategy {save_strategy!r} "
                 f"(save_steps={cfg.save_steps}). Set eval_strategy: steps with eval_steps, save_steps a multiple of "
                 "eval_steps, and an eval set (eval_dataset_name or eval_fraction); or remove load_best_model_at_end.")]
    if cfg.eval_steps and cfg.save_steps % cfg.eval_steps:
        return [(f"load_best_model_at_end requires the saving steps to be a round multiple of the evaluation steps, "
                 f"but found save_steps={cfg.save_steps}, which is not a round multiple of eval_steps="
                 f"{cfg.eval_steps}.")]
    return []
