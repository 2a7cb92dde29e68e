"""Options that only one task (or objective) reads: set to a non-default value under another, they were accepted
and silently ignored (e.g. `resolution` under task: vlm, `vision_pairs` under task: dpo, `recipe_params` under a
training task). TrainConfig._conflicts refuses them with the task that reads them, written by the user at any value
(TrainConfig.written_options) or set away from their default (preflab.config_defaults.set_options). The online block's own options
are checked per recipe by preflab.online_options.unread_online_options (any of them outside task: online here)."""
from __future__ import annotations

import dataclasses

from preflab.config_defaults import drop_hint, set_options
from preflab.models.builtin_names import DEMO_SFT
from preflab.online_options import ONLINE_OPTIONS
from preflab.recipe_names import RECIPE_TASKS

_VLM_MODEL = ("processor_name_or_path", "freeze_vision_tower", "freeze_multi_modal_projector", "max_frames")
_VLM_PAIRS = ("vision_pairs", "vision_pair_params", "clue_aggregator")
_DIFFUSION = ("resolution", "image_resize", "diffusion_noising", "cache_encodings", "caption_perturbation",
              "sample_steps", "guidance_scale", "flux_guidance")
_SELF_NPO = ("self_npo_ema_decay", "self_npo_num_ddim_steps", "self_npo_rollout_steps", "self_npo_teacher_guidance")
_PPD = ("user_column", "user_embedding_tokens", "user_embedding_dim", "user_embeddings",
        "user_embedding_dropout")

_TOKEN_LENGTHS = ("max_length", "chunk_tokens", "generate_during_eval")


def _router_loss_trainers() -> tuple:
    from preflab.models.moe import ROUTER_LOSS_TRAINERS

    return ROUTER_LOSS_TRAINERS


def _diffusion_objective_has_beta(cfg) -> bool:
    from preflab.objectives import list_objectives, objective_class

    names = _losses(cfg)
    if len(names) != 1 or names[0] not in list_objectives():
        return True  # a mixture or a custom objective: its own parameters decide
    return any(f.name == "beta" for f in dataclasses.fields(objective_class(names[0])))


def _losses(cfg) -> list[str]:
    return [str(n) for n in (cfg.loss_type if isinstance(cfg.loss_type, (list, tuple)) else [cfg.loss_type])]


def _game(cfg) -> bool:
    return cfg.task == "online" and cfg.online_task == "game"


def _vision_online(cfg) -> bool:
    return cfg.task == "online" and cfg.online_task == "vision_dataset"


# The sampling settings a distillation run reads for its sampled completions (lmbda > 0, seq_kd) beside temperature:
# TRL 1.16 DistillationConfig's (GKDConfig fixes top_k 0, top_p 1 and has no others); task: online's too.
DISTILL_SAMPLING_OPTIONS = ("top_p", "top_k", "min_p", "repetition_penalty")


def _distills(cfg) -> bool:
    """A task: sft run with a teacher (preflab.objectives._distill_task)."""
    return cfg.task == "sft" and bool(getattr(cfg, "teacher_model_name_or_path", None))


def _builds_its_model(cfg) -> bool:
    """An online run whose policy is built in code: the game's K-answer model, the demo's SFT model."""
    return cfg.task == "online" and (cfg.online_task == "game" or cfg.model_name_or_path == DEMO_SFT)


# (options, does this config's run read them, who reads them)
OWNERS = (
    (_VLM_MODEL, lambda cfg: cfg.task == "vlm" or _vision_online(cfg),
     "task: vlm (and online_task: vision_dataset)"),
    (_VLM_PAIRS, lambda cfg: cfg.task == "vlm", "task: vlm"),
    (_DIFFUSION, lambda cfg: cfg.task == "diffusion", "task: diffusion"),
    (("score_range",), lambda cfg: cfg.task == "diffusion" and "smpo_diffusion" in _losses(cfg),
     "task: diffusion with loss_type: smpo_diffusion (it normalises the scores into preference_prob)"),
    (("beta",), lambda cfg: cfg.task != "diffusion" or _diffusion_objective_has_beta(cfg),
     "the diffusion objectives with a beta (self_npo has none: its loss is a distance to the EMA teacher's "
     "x0-prediction)"),
    (("router_aux_loss_coef",), lambda cfg: cfg.task in ("dpo", "sft", "vlm") or (
        cfg.task == "online" and cfg.trainer in _router_loss_trainers()),
     "task: dpo and task: sft (the offline trainer; task: vlm accepts only 0) and task: online with trainer grpo, "
     "bnpo, dapo, dr_grpo, gspo, cispo, sapo, luspo or vespo (TRL's GRPOTrainer) or rloo (its RLOOTrainer)"),
    (("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora", "use_dora",
      "lora_modules_to_save"), lambda cfg: cfg.use_peft,
     "use_peft: true (LoRA adapters: set it to train them; without it the whole model trains)"),
    (_SELF_NPO, lambda cfg: cfg.task == "diffusion" and "self_npo" in _losses(cfg),
     "task: diffusion with loss_type: self_npo"),
    (_PPD, lambda cfg: cfg.task == "diffusion" and "ppd" in _losses(cfg), "task: diffusion with loss_type: ppd"),
    (("ref_model_name_or_path", "ref_model_init_kwargs"),
     lambda cfg: cfg.task != "diffusion", "the text and image-text tasks (a diffusion run's reference is its starting "
     "denoiser: a frozen copy, or the UNet with its LoRA adapters off; to compare against another pipeline, "
     "`preflab eval RUN --task diffusion --reference DIR`)"),
    (("ref_load_dtype",), lambda cfg: cfg.task in ("dpo", "vlm") or _distills(cfg) or (cfg.task == "online" and not _builds_its_model(cfg)),
     "the runs that load a reference model (task: dpo, vlm and online; task: sft and task: reward train without "
     "one, a diffusion run's reference is its starting denoiser in the policy's dtype, and online_task: game and "
     "model builtin:demo-sft build their tiny policy and its reference in code)"),
    (("precompute_ref_log_probs",), lambda cfg: cfg.task not in ("diffusion", "online"),
     "the offline text and image-text tasks (task: online computes the reference's log-probs once per generation "
     "round anyway; a diffusion run's reference is its starting denoiser: a frozen copy, or the UNet with its LoRA "
     "adapters off)"),
    (("use_peft",), lambda cfg: not _builds_its_model(cfg),
     "the runs that load model_name_or_path (online_task: game and model builtin:demo-sft build their tiny policy "
     "in code and train all of its weights)"),
    (("model_init_kwargs", "load_dtype"), lambda cfg: not _builds_its_model(cfg) and cfg.task != "diffusion",
     "the runs that load model_name_or_path with transformers (online_task: game and model builtin:demo-sft build "
     "their tiny policy in code; a diffusion pipeline loads in float32 with diffusers)"),
    (("eval_dataset_name", "eval_dataset_config", "eval_fraction", "eval_split"),
     lambda cfg: not (cfg.task == "online" and cfg.online_task != "dataset"),
     "the offline tasks and online_task: dataset (online_task demo and game evaluate with their task: the demo's "
     "held-out prompts, the game's equilibrium, eval_steps sets when; online_task vision_dataset has no evaluation)"),
    (("dataset_name", "dataset_config", "dataset_columns", "dataset_split", "on_bad_row"),
     lambda cfg: not (cfg.task == "online" and cfg.online_task in ("demo", "game")),
     "the tasks that read a dataset (online_task demo and game make their own prompts)"),
    (("rpo_alpha",), lambda cfg: cfg.task != "diffusion",
     "the text and image-text tasks (it adds the chosen response's NLL; a diffusion objective has no such term)"),
    (_TOKEN_LENGTHS, lambda cfg: cfg.task != "diffusion",
     "the text and image-text tasks (a diffusion run's captions are cut at its text encoder's length)"),
    (("max_prompt_length",), lambda cfg: cfg.task not in ("diffusion", "sft") and not _game(cfg),
     "the tasks with prompts (dpo, reward, vlm, online on text; task: sft cuts whole rows at max_length, the game "
     "has no prompt text, a diffusion run's captions are cut at its text encoder's length)"),
    (("max_completion_length",), lambda cfg: cfg.task not in ("diffusion", "sft") or _distills(cfg),
     "the tasks with prompts and responses (dpo, reward, vlm, online; task: sft cuts whole rows at max_length, a "
     "diffusion run's captions are cut at its text encoder's length)"),
    # task: sft and task: vlm keep a long row's start (keep_start, TRL's default, which TRL's saved configs carry):
    # keep_end is refused there (REFUSED_VALUES), keep_start is what they do
    (("truncation_mode",), lambda cfg: cfg.task != "diffusion" and not _game(cfg) and not _vision_online(cfg),
     "the tasks that cut text (dpo, reward, sft, vlm, online on text; an image-text prompt over max_prompt_length "
     "is a bad row, a diffusion run's captions are cut at its text encoder's length)"),
    (("layout",), lambda cfg: cfg.task not in ("diffusion", "sft"),
     "the preference tasks (TRL's padding_free: true is layout: packed; task: sft lays its rows out by packing: "
     "true packs them, false pads them; a diffusion run's captions are cut at its text encoder's length)"),
    (("attention",), lambda cfg: cfg.task not in ("diffusion", "reward"),
     "the tasks that score prefix-shared rows with a policy (task: reward batches padded rows, a diffusion run has "
     "no token rows)"),
    (("dataset_num_proc",), lambda cfg: cfg.task in ("dpo", "reward"),
     "task: dpo and task: reward (their data is tokenized by forked processes; the other tasks tokenize in one)"),
    (("pad_to_multiple_of",), lambda cfg: cfg.task not in ("diffusion", "vlm") and not _vision_online(cfg),
     "the text tasks (dpo, sft, reward, online on text prompts: rows of token ids; an image-text row's vision "
     "inputs have their own shapes, and a diffusion run's captions are cut at its text encoder's length)"),
    (("data_seed",), lambda cfg: cfg.task in ("dpo", "reward", "sft", "vlm", "diffusion"),
     "the tasks whose batch order is preflab's BatchPlan (dpo, reward, sft, vlm, diffusion; task: online draws each "
     "round's prompts with seed, a recipe with its own seed)"),
    (("group_by_length",), lambda cfg: cfg.task in ("dpo", "sft"),
     "task: dpo and task: sft (the offline trainer's token rows; transformers' LengthGroupedSampler needs the rows' "
     "lengths, which reward pairs, image-text rows and diffusion captions are not grouped by here)"),
    (("skip_prepare_dataset",), lambda cfg: cfg.task == "sft",
     "task: sft (TRL's SFTConfig dataset_kwargs: its rows of input_ids)"),
    (("packing_strategy",), lambda cfg: cfg.task == "sft",
     "task: sft with packing: true (TRL's SFTConfig; the preference tasks choose their layout with `layout`)"),
    (("dataset_text_field",), lambda cfg: cfg.task == "sft",
     "task: sft (TRL's SFTConfig: the column of a language-modeling row's text)"),
    (("full_determinism",), lambda cfg: cfg.task not in RECIPE_TASKS and not (
        cfg.task == "reward" and cfg.reward_head == "multi_objective"),
     "the runs that set their seed when they start (every task but the recipe tasks and task: reward with "
     "reward_head: multi_objective, whose stages and loop seed themselves)"),
    (("eos_token", "chat_template_path"), lambda cfg: cfg.task in ("sft", "reward"),
     "task: sft and task: reward (TRL's SFTConfig and RewardConfig)"),
    (("hypo_online_samples",), lambda cfg: cfg.task == "dpo" and "hypo" in _losses(cfg),
     "task: dpo with loss_type: hypo (trainer hypo_online_pairs samples num_generations)"),
)


def _unread_groups(cfg) -> list[tuple[list[str], str]]:
    """(options written by the user or set away from their default, who reads them) per group this config's task does
    not read."""
    owners = OWNERS + ((("recipe_params",), lambda c: c.task in RECIPE_TASKS,
                        f"the recipe tasks ({', '.join(RECIPE_TASKS)})"),
                       (tuple(n for n in ONLINE_OPTIONS if n not in ("temperature", *DISTILL_SAMPLING_OPTIONS)),
                        lambda c: c.task == "online", "task: online"),
                       (("temperature",), lambda c: c.task == "online" or _distills(c),
                        "task: online (sampling) and task: sft with teacher_model_name_or_path (the divergence's "
                        "temperature)"),
                       (DISTILL_SAMPLING_OPTIONS, lambda c: c.task == "online" or _distills(c),
                        "task: online and task: sft with teacher_model_name_or_path (sampling: lmbda > 0 or "
                        "seq_kd)"),
                       (("teacher_model_name_or_path", "teacher_model_init_kwargs", "lmbda", "seq_kd"),
                        lambda c: c.task == "sft", "task: sft (distillation from a teacher)"),
                       (("divergence_temperature",), _distills,
                        "task: sft with teacher_model_name_or_path (the divergence's temperature)"))
    return [(used, who) for names, reads, who in owners for used in [set_options(cfg, names)]
            if used and not reads(cfg)]


def unread_option_names(cfg) -> set[str]:
    """The options unread_task_options reports (other checks leave them to it)."""
    return {name for used, _ in _unread_groups(cfg) for name in used}


def unread_task_options(cfg) -> list[str]:
    """One line per group of options written by the user (at any value) or set away from their default that this
    config's task does not read."""
    out = []
    for used, who in _unread_groups(cfg):
        run = f"task: {cfg.task}" + (f", loss_type: {cfg.loss_type}" if cfg.task in ("dpo", "diffusion") else "")
        out.append(f"{', '.join(used)} only {'applies' if len(used) == 1 else 'apply'} to {who}, not to this "
                   f"run ({run}); remove {'it' if len(used) == 1 else 'them'}{drop_hint(used)}.")
    return out


# Values of an option that a task reads but cannot do: (task, option, value, when (None: always), what the condition
# adds after the value, why and what to do). refused_values turns each row that applies into one line.
REFUSED_VALUES = (
    ("vlm", "truncation_mode", "keep_end", lambda cfg: cfg.max_length is not None, " with max_length={cfg.max_length}",
     " (as in TRL 1.16): it cuts the start of prompt + response, where the image tokens are. Use truncation_mode: "
     "keep_start (or unset it) or max_length: null."),
    ("sft", "truncation_mode", "keep_end", None, "",  # was accepted and ignored
     ": a row longer than max_length keeps its start (TRL SFTConfig's default keep_start). Unset truncation_mode (or "
     "keep_start), or raise max_length."),
    ("online", "truncation_mode", "keep_start", None, "",  # was accepted and ignored
     ": a prompt longer than max_prompt_length keeps its end, as TRL's online trainers cut it (TRL 0.x's GRPOTrainer "
     "and its OnlineDPOTrainer cut from the left; TRL 1.16's GRPOTrainer cuts no prompt), since the end holds the "
     "question and the generation prompt the completion follows. Unset truncation_mode (or keep_end), and raise "
     "max_prompt_length (or null: no limit) to keep a prompt's start."),
)


def refused_values(cfg) -> list[str]:
    """One line per REFUSED_VALUES row that this config sets: its task, the option at the value, the condition."""
    return [f"{option}: {value}{added.format(cfg=cfg)} is not supported for task: {task}{why}"
            for task, option, value, when, added, why in REFUSED_VALUES
            if cfg.task == task and getattr(cfg, option) == value and (when is None or when(cfg))]
