"""Which top-level options reach the stages of a recipe (`task: <recipe>`, preflab.recipes): the tables, and the
refusal TrainConfig.check runs (the one function that builds a stage's config from them, stage_config, is
preflab.recipe_options', above preflab.config; this module imports nothing of the config layer above it).

A recipe is a whole program: it builds its own tiny model, its data and the config of each stage (learning rates,
batch sizes, steps, lengths: its design; its knobs are its recipe_params). The STAGE_OPTIONS say how a stage runs,
not what it trains: set at the top level, one reaches every training stage of the recipe (stage_config), provided
every one of those stages' trainers reads it (STAGE_READS over RECIPE_STAGES). Any other top-level option written
by the user or set away from its default is refused before anything runs (recipe_option_errors), naming the option,
the recipe and why. Before, all of them were accepted and dropped: `attention: dense` on raft_ladder trained with
segment attention.
"""
from __future__ import annotations

import dataclasses

from preflab.config_defaults import set_options

# what every trainer reads: precision (autocast), dropout of the given models, logging and the non-finite guard
_EVERY_RUN = ("dtype", "bf16", "fp16", "disable_dropout", "logging_steps", "logging_first_step", "report_to",
              "max_nonfinite_steps")
_SCORER = ("attention", "chunk_tokens")  # the log-prob scorer's attention of prefix-shared rows, its LM-head chunk
_OFFLINE = ("pad_to_multiple_of", "gradient_checkpointing", "torch_compile", "torch_compile_backend",
            "torch_compile_mode")
# the stage kinds, by the stage's task: dpo (preflab.loops.offline.Trainer), sft (SFTTrainer), online (OnlineRun),
# reward (reward_models.train.RewardRun) -> the STAGE_OPTIONS its trainer reads with a model given from Python
STAGE_READS = {
    "dpo": _EVERY_RUN + _SCORER + _OFFLINE + ("precompute_ref_log_probs",),
    "sft": _EVERY_RUN + _SCORER + _OFFLINE,  # no reference (task: sft refuses precompute_ref_log_probs)
    "online": _EVERY_RUN + _SCORER + ("pad_to_multiple_of", "gradient_checkpointing"),  # OnlineRun: no torch_compile
    "reward": _EVERY_RUN + ("gradient_checkpointing",),  # themis: its own padded collate, no LM-head scorer
}
STAGE_OPTIONS = tuple(dict.fromkeys(o for names in STAGE_READS.values() for o in names))

# recipe -> the kinds of its training stages (a stage that is not a preflab run, e.g. PRO's adapter fit or ICPL's
# sampling, reads none of the options). stage_config refuses a stage of a kind not listed here, so this stays true.
RECIPE_STAGES = {
    "icpl": (),                           # trains no model
    "raft_ladder": ("dpo",),              # SFT (loss_type sft), DPO + NLL, the SFT control: the offline Trainer
    "themis": ("reward",),                # two reward models
    "otc": ("sft", "online"),             # SFT, then GRPO (and its control)
    "itool": ("sft", "dpo"),              # warm-up SFT, SimPO iterations, SFT controls
    "dstc": ("sft", "dpo"),               # warm-up SFT, DPO / KTO iterations
    "fspo": ("dpo",),                     # DPO / IPO on episodes (and the pooled baseline)
    "pro_orchestrator": ("sft", "online"),  # SFT, GRPO with the adapter's weights (and its control)
}

# the top-level options a recipe reads itself (preflab.recipes.run_recipe: output_dir, seed, quiet, resume,
# allow_config_change), and
# what it builds in code (range-checked away by TrainConfig.check)
_RECIPE_READS = ("task", "recipe_params", "output_dir", "seed", "disable_tqdm", "resume_from_checkpoint",
                 "allow_config_change")
# why the other options cannot reach a recipe's stages: (options, reason); the rest get _DESIGN
_WHY = (
    (("model_name_or_path", "model_init_kwargs", "trust_remote_code", "allow_pickle", "load_dtype",
      "ref_model_name_or_path", "ref_model_init_kwargs", "ref_load_dtype", "use_peft", "load_in_4bit",
      "load_in_8bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_compute_dtype"),
     "the recipe builds its tiny model in code (float32) and trains all of its weights: there is nothing to load, "
     "quantize or wrap in LoRA adapters"),
    (("dataset_name", "dataset_config", "dataset_columns", "dataset_split", "eval_dataset_name", "eval_dataset_config",
      "eval_split", "eval_fraction", "on_bad_row",
      "dataset_num_proc", "streaming", "streaming_shuffle_buffer", "max_length", "max_prompt_length",
      "max_completion_length", "truncation_mode", "layout", "packing", "completion_only_loss",
      "assistant_only_loss"),
     "the recipe builds its own data, sized for its model (lengths and layout are set per stage)"),
    (("eval_steps", "eval_strategy", "eval_delay", "per_device_eval_batch_size", "generate_during_eval", "save_steps",
      "save_strategy", "save_total_limit", "save_only_model", "load_best_model_at_end", "metric_for_best_model",
      "greater_is_better"),
     "the recipe evaluates with its own metric after each stage and keeps each stage's final weights"),
    (("push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo", "hub_token", "hub_revision"),
     "a recipe trains several models built in code and uploads none; upload a stage's model folder afterwards with "
     "`preflab push FOLDER --repo-id NAME`"),
    (("overwrite_output_dir",),
     "the recipe keeps its own state file: resume_from_checkpoint: true continues it (with the same "
     "recipe_params, or other ones with allow_config_change: true), anything else needs a new output_dir"),
)
_DESIGN = ("the recipe sets it per stage as part of its design (learning rates, schedules, batch sizes, steps, "
           "objectives); change the recipe through its recipe_params")


def accepted_options(task: str) -> tuple[str, ...]:
    """The STAGE_OPTIONS that every training stage of recipe `task` reads (none for a recipe without one)."""
    kinds = RECIPE_STAGES[task]
    return tuple(o for o in STAGE_OPTIONS if kinds and all(o in STAGE_READS[k] for k in kinds))


def recipe_config_options(cfg) -> tuple[dict, str]:
    """(options, comment) of a recipe run's config.yaml (preflab.recipes.run_recipe): the top-level options recipe
    `cfg.task` reads itself (_RECIPE_READS: task, recipe_params, output_dir, seed, ...) and those the user wrote or set
    away from their default (the STAGE_OPTIONS that reach its stages, stage_options; every other one is refused
    before the run, recipe_option_errors; use_cpu: true is met), in cfg's order, and the comment line saying the rest
    are left out. Before, every option was written at its default (`learning_rate: 1.0e-06`, `dataset_name: ''`),
    which the recipe never reads: its stages set their own (a stage option left unset is the recipe's value, not the
    top-level default), and each stage folder's config.yaml holds what that stage ran with."""
    read = set(_RECIPE_READS) | set(_changed(cfg))
    options = {k: v for k, v in cfg.to_dict().items() if k in read}
    comment = (f"task {cfg.task} is a recipe: listed are the options it reads itself and those set for its stages; "
               "no other top-level option reaches it (each stage folder's config.yaml holds what that stage ran with)")
    return options, comment


def _changed(cfg) -> list[str]:
    return set_options(cfg, [f.name for f in dataclasses.fields(cfg)])


def stage_options(cfg) -> dict:
    """{option: value} of the STAGE_OPTIONS the user's config writes or sets away from their defaults (checked before:
    every one is accepted by the recipe), for stage_config (they are the stage config's written options). use_cpu is
    the recipes' own setting (their stages run on the CPU), so use_cpu: true is met and passes nowhere."""
    return {k: getattr(cfg, k) for k in _changed(cfg) if k in STAGE_OPTIONS}


def recipe_option_errors(cfg, already: set | frozenset = frozenset()) -> list[str]:
    """One line per group of top-level options that recipe `cfg.task` would not pass to its stages: written by the
    user or set away from their default, they are refused rather than dropped (`already`: options reported by another
    check)."""
    accepted = set(accepted_options(cfg.task))
    unread = [k for k in _changed(cfg) if k not in _RECIPE_READS and k not in accepted and k not in already
              and not (k == "use_cpu" and cfg.use_cpu)]
    kinds = RECIPE_STAGES[cfg.task]
    if not unread:
        return []
    if not kinds:
        return [f"{', '.join(unread)} {'is' if len(unread) == 1 else 'are'} not read by task {cfg.task}: it trains "
                f"no preflab model, so no top-level option but output_dir, seed, disable_tqdm, "
                f"resume_from_checkpoint and allow_config_change reaches it; remove {'it' if len(unread) == 1 else 'them'} (its options are "
                "its recipe_params)."]
    reach = f"options that reach its stages: {', '.join(sorted(accepted))}"
    groups = [([k for k in unread if k in STAGE_OPTIONS], "; ".join(
        f"its {' and '.join(s for s in kinds if k not in STAGE_READS[s])} stage's trainer does not read {k}"
        for k in unread if k in STAGE_OPTIONS))]
    rest = [k for k in unread if k not in STAGE_OPTIONS]
    groups += [([k for k in rest if k in names], why) for names, why in _WHY]
    groups.append(([k for k in rest if not any(k in names for names, _ in _WHY)], _DESIGN))
    return [f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} not passed to the stages of task {cfg.task}: "
            f"{why}; remove {'it' if len(names) == 1 else 'them'} ({reach})." for names, why in groups if names]
