"""Online and GRPO runs from Python (thin wrappers over preflab.online.run.OnlineRun): online_dpo, run_online,
grpo_train. (Until 0.2 these were preflab.loops.online and preflab.loops.grpo, which still import.)

Online and iterative DPO from Python: a thin wrapper over the online run (preflab.online.run.OnlineRun).

    from preflab.online.api import online_dpo
    summary = online_dpo(policy, tokenizer, prompts, judge=true_reward_fn, num_iterations=3, num_generations=4,
                         loss_type="sigmoid", beta=0.1, refresh_reference_every=1, output_dir="runs/odpo")

The same run as `preflab train` with task: online (docs/online.md): checkpoints, exact
resume, metrics.jsonl with TRL's names, summary.json. Options (the former OnlineConfig names) map to TrainConfig:
num_iterations -> generation rounds; prompts_per_iteration -> prompts_per_generation (default: every prompt);
epochs_per_iteration -> num_iterations (passes over a round); max_new_tokens -> max_completion_length; a round takes
steps_per_generation = ceil(prompts / (per_device_train_batch_size x gradient_accumulation_steps)) steps (one pair
per prompt at most with best_vs_worst). trainer: iterative_dpo when refresh_reference_every > 0, rso when
pair_builder is rso and no loss_type is given (with a loss_type: that loss on RSO pairs), else online_dpo;
save_model=False writes no final weights (summary.json says final_model_saved: false). Any other key is a
TrainConfig option.
"""
from __future__ import annotations

import math
import tempfile
from typing import Any, Sequence

RENAMED = {"max_new_tokens": "max_completion_length", "prompts_per_iteration": "prompts_per_generation"}


def online_options(prompts: Sequence[Any], options: dict, trainer: str) -> dict:
    opts = dict(options)
    rounds = opts.pop("num_iterations", 3)
    epochs = opts.pop("epochs_per_iteration", 1)
    for old, new in RENAMED.items():
        if old in opts:
            opts[new] = opts.pop(old)
    if opts.get("prompts_per_generation") is None:
        opts["prompts_per_generation"] = len(prompts)
    b = opts.get("per_device_train_batch_size", 8) * opts.get("gradient_accumulation_steps", 1)
    spg = opts.pop("steps_per_generation", max(1, math.ceil(min(len(prompts), opts["prompts_per_generation"]) / b)))
    opts.setdefault("trainer", trainer)
    opts.setdefault("learning_rate", 5e-7)
    opts.setdefault("lr_scheduler_type", "constant")
    opts.setdefault("max_completion_length", 64)
    opts.setdefault("temperature", 0.9)
    opts.setdefault("seed", 0)
    opts.setdefault("num_generations", 4)
    if opts.get("output_dir") is None:
        opts["output_dir"] = tempfile.mkdtemp(prefix="preflab-online-")
    return {"task": "online", "online_task": "dataset", "steps_per_generation": spg, "num_iterations": epochs,
            "max_steps": rounds * spg * epochs, "logging_steps": 1, "disable_tqdm": True, **opts}


def written_by_user(options: dict, raw: dict, names: dict) -> set[str]:
    """The TrainConfig options among `raw` that the caller gave (`options`, in the wrappers' names: `names` maps
    them), not the defaults the wrapper fills in: only these count as written (TrainConfig.written_options), so a
    wrapper's own default for an option the chosen trainer does not read is never refused."""
    return {names.get(k, k) for k in options} & set(raw)


ONLINE_DPO_NAMES = {**RENAMED, "epochs_per_iteration": "num_iterations"}
GRPO_NAMES = {"loss_type": "trainer", "prompts_per_step": "per_device_train_batch_size",
              "groups_per_micro_batch": "per_device_train_batch_size"}


def run_online(policy, tokenizer, prompts, judge, ref, weights, raw: dict, written: set[str] | None = None,
               tools=None, environment_factory=None) -> dict:
    from preflab.config import config_from_dict
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    save = save_model_option(raw)
    raw.setdefault("model_name_or_path", "(in memory)")  # the policy and prompts are passed in
    raw.setdefault("dataset_name", "(in memory)")
    # tools / environments from Python: the config's check reads max_tool_calling_iterations / tool_timeout_s with
    # the config's own tools or environment_factory only
    from_python = bool(tools) or environment_factory is not None
    cap = raw.pop("max_tool_calling_iterations", None) if from_python else None
    limit = raw.pop("tool_timeout_s", 60.0) if from_python else None
    cfg = config_from_dict(raw, written)
    if from_python:
        from preflab.loops.time_limit import checked_limit

        cfg.max_tool_calling_iterations = cap
        cfg.tool_timeout_s = checked_limit(limit, "tool_timeout_s", "None")
    if weights is not None:
        cfg.reward_weights = list(weights)
    judges = list(judge) if isinstance(judge, (list, tuple)) else [] if judge is None else [judge]
    task = Task(list(prompts), judges) if prompts is not None else reset_only(cfg, judges, environment_factory)
    run = OnlineRun(cfg, policy=policy, ref=ref, tokenizer=tokenizer, task=task,
                    **({"tools": tools} if tools else {}),
                    **({"environment_factory": environment_factory} if environment_factory is not None else {}))
    run.save_final_model = save
    return run.train()


def reset_only(cfg, judges: list, environment_factory):
    """prompts=None: the Task of a run without a dataset (TRL's GRPOTrainer(train_dataset=None,
    environment_factory=...); preflab.online.tasks.reset_only_task without a held-out set); without an
    environment_factory refused."""
    from preflab.errors import ConfigError
    from preflab.online.tasks import reset_only_task

    if environment_factory is None:
        raise ConfigError("prompts=None needs environment_factory (its reset gives the prompts); give prompts.")
    return reset_only_task(cfg, judges, held_out=False)


def save_model_option(raw: dict) -> bool:
    """The former OnlineConfig's save_model (popped from `raw`: it is no TrainConfig option): False writes no final
    weights to output_dir (the run's summary.json, metrics and checkpoints are written)."""
    from preflab.errors import ConfigError

    save = raw.pop("save_model", True)
    if not isinstance(save, bool):
        raise ConfigError(f"save_model must be true or false, got {save!r}.")
    return save


def online_dpo(policy, tokenizer, prompts: Sequence[Any], judge, ref=None,
               judge_weights: Sequence[float] | None = None, **options) -> dict:
    """Run online / iterative DPO (or RSO) as an online run; returns its summary dict."""
    rso = options.get("pair_builder") == "rso" and "loss_type" not in options  # a loss_type given: it, on RSO pairs
    trainer = "rso" if rso else "iterative_dpo" if options.get("refresh_reference_every") else "online_dpo"
    if trainer == "rso":
        options = {k: v for k, v in options.items() if k != "pair_builder"}
    raw = online_options(prompts, options, trainer)
    return run_online(policy, tokenizer, prompts, judge, ref, judge_weights, raw,
                      written_by_user(options, raw, ONLINE_DPO_NAMES))


def grpo_train(policy, tokenizer, prompts: Sequence[Any] | None, reward_funcs=None, ref=None,
               reward_weights: Sequence[float] | None = None, tools=None, environment_factory=None,
               **options) -> dict:
    """Run GRPO-family training as an online run; returns its summary dict. tools: tool functions the model may call
    while it samples (TRL GRPOTrainer's tools=; preflab.online.tool_calling). environment_factory: a class or function
    returning a stateful environment whose public methods are tools, or {name: factory} picked by each prompt's
    `environment` column (TRL GRPOTrainer's environment_factory; preflab.online.environments); reward_funcs may then be
    None when the environment has get_reward. prompts=None with one environment_factory: no dataset, each round's
    prompts are the environment's reset texts (TRL's train_dataset=None; max_steps needed)."""
    raw = grpo_options(options)
    return run_online(policy, tokenizer, prompts, reward_funcs, ref, reward_weights, raw,
                      written_by_user(options, raw, GRPO_NAMES), tools=tools, environment_factory=environment_factory)


def grpo_options(options: dict) -> dict:
    """TrainConfig keys of a GRPO run from grpo_train's options (prompts_per_step, groups_per_micro_batch, ...)."""
    opts = dict(options)
    per_step = opts.pop("prompts_per_step", 4)
    per_micro = opts.pop("groups_per_micro_batch", per_step)
    if per_step % per_micro:
        per_micro = per_step
    spg = opts.get("steps_per_generation", 1)
    raw = {"task": "online", "online_task": "dataset", "trainer": opts.pop("loss_type", "dapo"),
           "per_device_train_batch_size": per_micro, "gradient_accumulation_steps": per_step // per_micro,
           "prompts_per_generation": per_step * spg, "max_steps": opts.pop("max_steps", 10),
           "learning_rate": 1e-6, "lr_scheduler_type": "constant", "beta": 0.0, "num_generations": 8,
           "max_completion_length": 256, "seed": 0, "logging_steps": 1, "disable_tqdm": True, **opts}
    if raw.get("output_dir") is None:
        raw["output_dir"] = tempfile.mkdtemp(prefix="preflab-grpo-")
    return raw


def vision_grpo_options(options: dict) -> dict:
    """grpo_options with the released Vision-R1 trainer's loss where `options` leave it out (jefferyZhan/Griffon
    Vision-R1/vision_r1/trainer/qwen_trainer.py, TRL 0.14's GRPO): loss_type grpo, beta 0.04 and the KL term k3
    alone (objective_params use_bias_correction_kl false; TRL 1.16's default multiplies it by the importance ratio,
    another gradient whenever beta > 0)."""
    raw = grpo_options({"loss_type": "grpo", "beta": 0.04, **options})
    raw["objective_params"] = {"use_bias_correction_kl": False, **(raw.get("objective_params") or {})}
    return raw


def vision_grpo_train(policy, processor, rows: Sequence[dict], reward_funcs, ref=None,
                      reward_weights: Sequence[float] | None = None, **options) -> dict:
    """GRPO on an image-text model (e.g. Vision-R1) as an online run with online_task vision_dataset; rows: dicts
    with `images` (PIL images or paths) and `prompt`, other columns reach the reward functions. Options as
    grpo_train's, with Vision-R1's defaults (vision_grpo_options). Returns the summary dict.

        from preflab.verifiers import vision_r1_rewards
        vision_grpo_train(policy, processor, rows, vision_r1_rewards(), num_generations=4, max_steps=10)
    """
    from preflab.config import config_from_dict
    from preflab.online.tasks import Task
    from preflab.online.vision import VisionOnlineRun, vision_prompt_rows

    raw = vision_grpo_options(options)
    raw.update(online_task="vision_dataset", model_name_or_path=raw.get("model_name_or_path", "(in memory)"),
               dataset_name=raw.get("dataset_name", "(in memory)"))
    save = save_model_option(raw)
    cfg = config_from_dict(raw, written_by_user(options, raw, GRPO_NAMES))
    if reward_weights is not None:
        cfg.reward_weights = list(reward_weights)
    prompt_rows = vision_prompt_rows(list(rows), processor, on_bad_row=cfg.on_bad_row,
                                     max_prompt_length=cfg.max_prompt_length)
    judges = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    task = Task([r.prompt for r in prompt_rows], judges)
    task.rows = prompt_rows
    run = VisionOnlineRun(cfg, policy=policy, ref=ref, processor=processor, task=task)
    run.save_final_model = save
    return run.train()
