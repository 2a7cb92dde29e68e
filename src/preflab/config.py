"""Typed training config: YAML file + `key=value` overrides, strict, saved with the run.

Option names follow TRL's DPOConfig where TRL has the same option; TRL keys preflab spells differently, or that
have no effect in preflab, are handled by preflab.config_trl (translated, or accepted with a note printed once).
Keys the config does not know but the chosen objective does (e.g. `label_smoothing` for `robust`, `gamma` for
`simpo`) are passed to the objective. Every other key is an error; all of them are reported in one message, each
with a suggestion when one is really close. Every value is checked against preflab.config_options (one table,
also shown by `preflab train --help`) before a model is loaded.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from preflab.config_defaults import DEFAULT_SEED, PYTHON_EVAL_ROUTE
from preflab.config_options import REQUIRED_NAMES, help_line, missing_trackers, range_errors, unset_required_errors
from preflab.errors import ConfigError
from preflab.home_paths import home_expanded
from preflab.strict_yaml import MAX_ALIASES, BoundedLoader, load_yaml  # noqa: F401 - re-exported
from preflab.model_part_options import ModelPartOptions
from preflab.option_types import check_type
from preflab.recipe_names import RECIPE_TASKS

MAX_OPTION_CHARS = 256 * 1024  # an option's value, fully expanded, serialized (about); far above any real option


@dataclass
class TrainConfig:
    # what to train
    task: str = "dpo"                          # dpo | reward | sft | online | vlm | diffusion | a recipe (preflab.recipes)
    model_name_or_path: str = ""               # hub name, local directory, or builtin:tiny-llama|tiny-qwen2|tiny-gpt2
    ref_model_name_or_path: str | None = None  # default: a frozen copy of the policy (LoRA: adapters disabled)
    dataset_name: str = ""                     # hub name, save_to_disk directory, or .jsonl/.json/.parquet/.csv file
    dataset_config: str | None = None          # TRL: the configuration (subset) of dataset_name (load_dataset's name)
    dataset_columns: dict = field(default_factory=dict)  # {preflab field: dataset column}, e.g. {prompt: question}
    dataset_split: str = "train"
    eval_dataset_name: str | None = None       # default: hold out eval_fraction of the training rows
    eval_dataset_config: str | None = None     # None: dataset_config when eval_dataset_name is dataset_name
    eval_split: str | None = None              # None: "test" of a source with splits; a single data file read whole
    eval_fraction: float = 0.0
    loss_type: Any = "sigmoid"                 # objective name or TRL alias, or a list (weighted by loss_weights)
    loss_weights: list | None = None
    beta: float = 0.1
    objective_params: dict = field(default_factory=dict)  # further objective parameters
    center_rewards_coefficient: float | None = None  # task: reward; adds c * mean((r_w + r_l)^2) (TRL)
    reward_head: str = "bt"                    # task: reward; bt (Bradley-Terry) | gpm | multi_objective (DPA)
    reward_head_params: dict = field(default_factory=dict)  # task: reward; the head's own fields (gpm: dim, tau, ...)
    rpo_alpha: float | None = None             # TRL: adds rpo_alpha * token-mean NLL of chosen (loss_type + sft)
    use_weighting: bool = False                # TRL: WPO, each pair's loss times min(1, exp(mean adjusted logps))
    router_aux_loss_coef: float | None = None  # TRL: MoE router load-balancing loss weight (None: the model config's)
    # optimisation
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "linear"          # linear | cosine | constant | ... (preflab.lr_schedule_options)
    lr_scheduler_kwargs: dict | None = None    # TRL: the schedule's keyword arguments (num_cycles, min_lr, ...)
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optim: str = "adamw_torch_fused"           # TRL / transformers: adamw_torch(_fused) | adafactor | sgd | adagrad | rmsprop
    optim_args: str | None = None              # TRL / transformers: "key=value,..." (sgd momentum, ...; optimizer_options)
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_steps: int = -1                        # > 0 overrides num_train_epochs
    num_train_epochs: float = 1.0
    seed: int = DEFAULT_SEED                   # (preflab.config_defaults: a saved config's readers share it)
    data_seed: int | None = None               # TRL: seed of the data order alone (None: seed)
    group_by_length: bool = False              # transformers: batches of similar length (LengthGroupedSampler), seeded
    dtype: str = "float32"                     # float32 | bfloat16 | float16 (autocast where the device allows)
    bf16: bool = False                         # TRL spelling of dtype: bfloat16
    fp16: bool = False
    load_dtype: str | None = None              # dtype the weights are loaded in (TRL torch_dtype); None: float32
    model_init_kwargs: dict | None = None      # TRL: from_pretrained arguments of the policy
    ref_model_init_kwargs: dict | None = None  # TRL: from_pretrained arguments of ref_model_name_or_path
    teacher_model_name_or_path: str | None = None  # task: sft distillation (TRL DistillationConfig / GKDConfig)
    teacher_model_init_kwargs: dict | None = None  # TRL: from_pretrained arguments of the teacher
    lmbda: float = 0.0                         # TRL GKD: share of on-policy steps (student-sampled completions)
    seq_kd: bool = False                       # TRL GKD: the teacher samples the completions of off-policy steps
    divergence_temperature: float | None = None  # distillation: the divergence's temperature (None: `temperature`)
    max_nonfinite_steps: int = 3               # stop after this many non-finite steps in a row
    disable_dropout: bool = True
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: dict | None = None  # TRL: torch.utils.checkpoint kwargs (checkpointing_options)
    torch_empty_cache_steps: int | None = None  # TRL: empty the device cache every N steps (preflab.loops.device_cache)
    activation_offloading: bool = False        # TRL: keep the tensors saved for backward in host memory (GPU runs)
    torch_compile: bool = False
    torch_compile_backend: str | None = None   # TRL: torch.compile backend (None: inductor); turns torch_compile on
    torch_compile_mode: str | None = None      # TRL: torch.compile mode (None: default); turns torch_compile on
    # data
    max_length: int | None = 1024
    max_prompt_length: int | None = None
    max_completion_length: int | None = None   # responses keep their first max_completion_length tokens
    truncation_mode: str | None = None         # keep_start | keep_end: the end an over-long sequence / prompt keeps
    # (None: TRL 1.16's keep_start for sequences; a prompt cut to max_prompt_length keeps its end)
    on_bad_row: str = "error"                  # error | skip (skipped rows are counted in summary.json)
    layout: str = "prefix_shared"              # prefix_shared | padded | packed | prefix_packed (preflab.data.prefix)
    precompute_ref_log_probs: bool = False
    # TR-DPO (TRL's sync_ref_model): every ref_model_sync_steps optimizer steps the reference becomes
    # alpha * policy + (1 - alpha) * reference (preflab.loops.ref_sync; conflicts: preflab.ref_sync_options)
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512
    # NEFTune (TRL / transformers): noise on the input embeddings while training (preflab.models.neftune; which runs:
    # preflab.neftune_options)
    neftune_noise_alpha: float | None = None
    dataset_num_proc: int | None = None        # TRL: tokenization processes (None: one)
    chunk_tokens: int | None = None            # LM-head chunk (positions); default sized by the device
    pad_to_multiple_of: int | None = None      # TRL: row lengths rounded up to a multiple (shapes repeat: GPU plans)
    attention: str = "auto"                    # auto | segments | dense: prefix-shared rows attended per segment
    # models (the defaults of LoRA, vision freezing and the clue aggregator: preflab.model_part_options)
    use_peft: bool = ModelPartOptions.use_peft
    lora_r: int = ModelPartOptions.lora_r
    lora_alpha: int = ModelPartOptions.lora_alpha
    lora_dropout: float = ModelPartOptions.lora_dropout
    lora_target_modules: Any = ModelPartOptions.lora_target_modules
    use_rslora: bool = ModelPartOptions.use_rslora
    use_dora: bool = ModelPartOptions.use_dora
    lora_modules_to_save: Any = ModelPartOptions.lora_modules_to_save
    trust_remote_code: bool = False
    allow_pickle: bool = False                 # allow .bin/.pt weights (pickle); off: safetensors only
    # output
    output_dir: str = "outputs/preflab-run"
    overwrite_output_dir: bool = False         # allow an output_dir that is not empty and not a preflab run
    logging_steps: int = 10
    logging_first_step: bool = False           # TRL: also a metrics row after the first optimizer step
    eval_steps: int = 0                        # 0: evaluate only at the end (when there is an eval set)
    eval_strategy: str | None = None           # TRL: no | steps | epoch (None: eval_steps decides)
    eval_on_start: bool = False                # TRL: evaluate the starting model before the first step (driver.py)
    eval_delay: float = 0                      # TRL: no evaluation before this step (this epoch with eval_strategy epoch)
    generate_during_eval: bool = False         # TRL: at each evaluation, greedy samples to eval_samples.jsonl
    save_steps: int = 0                        # 0: no intermediate checkpoints
    save_strategy: str | None = None           # TRL: best: a checkpoint at each evaluation that improves metric_for_best_model
    save_total_limit: int | None = None
    save_only_model: bool = False              # TRL: checkpoints without optimizer, scheduler and RNG state (no resume)
    load_best_model_at_end: bool = False       # TRL: the final model is the best checkpoint's (preflab.loops.best_model)
    metric_for_best_model: str | None = None   # TRL: eval metric that ranks checkpoints (None: "loss" with load_best_model_at_end)
    greater_is_better: bool | None = None      # TRL: None: False when metric_for_best_model ends in "loss", else True
    resume_from_checkpoint: Any = None         # true (latest in output_dir) or a checkpoint path
    push_to_hub: bool = False                  # TRL: upload the final model (and checkpoints by hub_strategy), preflab.hub_push
    hub_model_id: str | None = None            # TRL: the repository (None: output_dir's folder name)
    hub_strategy: str = "every_save"           # TRL: end | every_save | checkpoint | all_checkpoints
    hub_private_repo: bool | None = None       # TRL: create the repository private
    hub_token: str | None = None               # TRL: None: huggingface_hub's token (HF_TOKEN, `hf auth login`)
    hub_revision: str | None = None            # TRL: the branch uploads commit to
    allow_config_change: bool = False          # resume even when options that change the run's meaning differ
    report_to: Any = "none"                    # none | tensorboard | wandb | a list
    disable_tqdm: bool = False
    use_cpu: bool = False
    # streaming data (task: dpo | sft; preflab.loops.streaming)
    streaming: bool = False                    # TRL: dataset_streaming; read, check, tokenize rows as training goes
    streaming_shuffle_buffer: int = 0          # streaming: rows held by the seeded shuffle buffer (0: source order)
    # quantized base for QLoRA (TRL ModelConfig's names; preflab.models.quantize)
    load_in_4bit: bool = False                 # 4-bit base through bitsandbytes (needs use_peft and a CUDA GPU)
    load_in_8bit: bool = False                 # 8-bit base (LLM.int8()) through bitsandbytes
    bnb_4bit_quant_type: str = "nf4"           # nf4 | fp4
    use_bnb_nested_quant: bool = False         # double quantization of the 4-bit constants
    bnb_4bit_compute_dtype: str | None = None  # None: load_dtype, else bfloat16
    # vision-language runs
    processor_name_or_path: str | None = None  # task: vlm; AutoProcessor source (default: model_name_or_path)
    # task: vlm; vision encoder weights stay fixed (and get no LoRA); freeze_multi_modal_projector: also the projector
    freeze_vision_tower: bool = ModelPartOptions.freeze_vision_tower
    freeze_multi_modal_projector: bool = ModelPartOptions.freeze_multi_modal_projector
    max_frames: int = 8                        # task: vlm; frames kept per video, evenly spaced
    vision_pairs: str = "given"                # task: vlm; given | pami_vdpo | cat_adpo (preflab.data.vision_pairs)
    vision_pair_params: dict = field(default_factory=dict)  # task: vlm; the pair builder's parameters
    clue_aggregator: bool = ModelPartOptions.clue_aggregator  # task: vlm; add CAT's question-conditioned clue aggr.
    # diffusion runs (task: diffusion)
    resolution: int = 512                      # diffusion: images are resized (shorter side) and centre-cropped to this square
    image_resize: bool = True                  # diffusion: false = an image of another size is a bad row
    diffusion_noising: dict = field(default_factory=dict)  # diffusion: PairNoiser overrides (mode, num_inversion_steps, inversion_eta, renoise_iters, grid_snap, steps_offset, min_timestep, max_timestep)
    cache_encodings: bool = True               # diffusion: encode every image (VAE) and caption (text encoder) once before training
    user_column: str = "user_id"               # ppd: the column naming each row's user
    user_embedding_tokens: int = 4             # ppd: L_u, tokens of a learned user embedding
    user_embedding_dim: int = 16               # ppd: d_u, width of a learned user embedding token
    user_embeddings: str | None = None         # ppd: safetensors file {user_id: [L_u, d_u] or [S, L_u, d_u] (S few-shot subsets, one drawn per pair and epoch)} of precomputed (e.g. VLM) embeddings, kept fixed
    user_embedding_dropout: float = 0.0        # ppd: probability that a training pair's user embedding is zeroed (drawn per pair and epoch; 0 = off)
    caption_perturbation: str = "none"         # dcpo: build a missing caption_rejected by perturbing the caption: none | weak | medium | strong
    score_range: list | None = None            # smpo_diffusion: [s_min, s_max] normalising reward scores (default: Pick-a-Pic PickScore)
    self_npo_ema_decay: float = 0.999          # self_npo: teacher <- decay * teacher + (1 - decay) * student after each step
    self_npo_num_ddim_steps: int = 25          # self_npo: K of the truncated-rollout DDIM grid
    self_npo_rollout_steps: int = 5            # self_npo: teacher DDIM steps per example (the truncation)
    self_npo_teacher_guidance: float = -1.0    # self_npo: LCM-convention teacher guidance (-1 = the unconditional prediction)
    sample_steps: int = 20                     # diffusion: DDIM steps when sampling images (samples.png, eval, demo; 0: no samples.png)
    guidance_scale: float = 1.0                # diffusion: classifier-free guidance scale when sampling (1 = none)
    flux_guidance: float = 3.5                 # diffusion, Flux-dev: the guidance embedding's value (training and sampling)
    # supervised fine-tuning (task: sft)
    completion_only_loss: bool = True          # TRL: loss on completion tokens only (prompt-completion rows)
    assistant_only_loss: bool = False          # TRL: loss on the chat template's {% generation %} (assistant) tokens only
    packing: bool = False                      # TRL: several sequences per row of <= max_length tokens
    packing_strategy: str = "bfd"              # TRL SFTConfig: bfd | bfd_split | wrapped (preflab.loops.sft_packing)
    skip_prepare_dataset: bool = False         # TRL SFTConfig dataset_kwargs: rows of input_ids (+ labels) used as they are
    dataset_text_field: str = "text"           # TRL SFTConfig: the column holding a language-modeling row's text
    eos_token: str | None = None               # TRL SFTConfig / RewardConfig: the eos appended to text rows / responses
    chat_template_path: str | None = None      # TRL SFTConfig / RewardConfig: a .jinja / .j2 file, the chat template
    # scaling out
    ref_load_dtype: str | None = None          # reference weights dtype; None: bfloat16 on a CUDA GPU, else load_dtype
    full_determinism: bool = False             # transformers: deterministic torch algorithms (enable_full_determinism)
    # online runs (task: online)
    trainer: str = "online_dpo"                # online recipe (preflab.online.trainers): online_dpo, grpo, sppo, ...
    online_task: str = "dataset"               # prompts + judge: dataset | vision_dataset (image prompts) | demo | game
    reward_funcs: Any = None                   # judge(s): demo_true_reward | verifier:<name> | module:attr | model dir
    reward_weights: list | None = None         # one weight per judge in reward_funcs (TRL); default 1 each
    reward_aggregator: str | None = None       # PRO adapter folder: prompt-aware weights over reward_funcs
    tools: Any = None                          # tool functions (TRL GRPOTrainer tools=): calculator | python | module:fn | file.py:fn
    max_tool_calling_iterations: int | None = None  # TRL GRPOConfig: tool-calling turns per completion (None: no limit)
    tool_timeout_s: float | None = 60.0        # one tool call's wall-clock limit: past it an error observation (None: none)
    environment_factory: Any = None            # TRL GRPOTrainer environment_factory: module:Class | file.py:fn | {name: ...}
    num_generations: int = 4                   # K completions sampled per prompt per generation round
    prompts_per_generation: int = 32           # prompts per generation round (all processes together)
    steps_per_generation: int = 1              # optimizer steps on one generation round's slices (TRL GRPO)
    num_iterations: int = 1                    # passes over each generation round (TRL GRPO's mu)
    temperature: float = 1.0                   # sampling temperature (log-probs are at temperature 1)
    top_p: float = 1.0                         # nucleus sampling (1: the full distribution)
    top_k: int = 0                             # top-k filtering of the sampling (0: off; TRL GRPOConfig)
    min_p: float | None = None                 # min-p filtering (None: off; TRL GRPOConfig)
    repetition_penalty: float = 1.0            # transformers' repetition penalty while sampling (1: none; TRL)
    shuffle_dataset: bool = True               # TRL GRPOConfig: each round's prompts drawn at random (false: in dataset order)
    chat_template_kwargs: dict | None = None   # TRL GRPOConfig: arguments of the prompts' chat template ({enable_thinking: false})
    generation_batch_size: int = 64            # prompts per generate() call; each call is seeded on its own
    generation_backend: str = "transformers"   # transformers | vllm (optional extra: pip install preflab[vllm])
    pair_builder: str = "best_vs_worst"        # best_vs_worst | all_pairs | rso | module:function
    rso_beta: float = 0.5                      # rso pairs: temperature of pi_ref exp(r / rso_beta)
    rso_num_samples: int = 4                   # rso pairs: accepted samples per prompt
    refresh_reference_every: int = 0           # 0: reference pi_0 throughout; n: reference <- policy every n rounds
    missing_eos_penalty: float | None = None   # subtracted from the score of a completion without eos (TRL)
    preference_temperature: float = 0.0        # reward -> P(a>b): 0 gives 1[r_a>r_b] (1/2 ties), t>0 sigmoid(dr/t)
    max_judge_failure_fraction: float = 0.1    # stop when more of a round's completions than this fail to be judged
    judge_timeout_s: float | None = None       # stop when one call of a judge's code takes longer (None: no limit)
    epsilon: float = 0.2                       # GRPO family: clip range (TRL)
    epsilon_high: float | None = None          # GRPO family: upper clip range (DAPO clip-higher); None: epsilon
    scale_rewards: str = "group"               # GRPO family: advantage scale group | batch | none (TRL)
    mask_truncated_completions: bool = False   # GRPO family: a completion without eos is out of the loss (TRL, DAPO)
    normalize_advantages: bool = False         # trainer rloo: the round's advantages to mean 0, std 1 (TRL RLOOConfig)
    reward_clip_range: list | None = None      # trainer rloo: [min, max] clamp of the rewards (TRL RLOOConfig)
    multi_objective_aggregation: str = "sum_then_normalize"  # GRPO family: several judges' rewards (TRL)
    cast_lm_head_to_fp32: bool = False         # GRPO family: the LM head of policy and reference in float32 (TRL)
    num_generations_eval: int | None = None    # GRPO family: eval samples this many per held-out prompt (None: greedy)
    game_preferences: list | None = None       # online_task game: K x K P[i][j] = P(answer i beats j), P + P^T = 1
    game_eta: float = 0.5                      # online_task game: inpo / nash_md step, eta * beta (in (0, 1])
    apo_alpha: float = 0.3                     # online_task game, trainer apo: extrapolation (momentum) on the iterates
    heldout_prompts: int = 64                  # online_task demo: held-out prompts for true_reward_before/after
    upo_fraction: float = 0.5                  # trainer upo: share of the agreeing pairs kept per round (bald_rate)
    upo_mu: float = 1.0                        # trainer upo: reliable-pair weights (1 - BALD)^mu
    upo_selection: str = "sample"              # trainer upo: sample (by (1 - BALD)^mu) | lowest (lowest BALD first)
    upo_temperature: float = 0.1               # trainer upo: judge t's P(chosen > rejected) = sigmoid(dr_t / temperature)
    upo_alpha_max: float = 0.1                 # trainer upo: per-pair smoothing alpha = alpha_max * BALD / ln 2
    upo_uncertainty: str = "judges"            # trainer upo: judges (one pass per judge) | mc_dropout (reward model)
    upo_passes: int = 10                       # trainer upo, upo_uncertainty mc_dropout: dropout passes T
    mcts_iterations: int = 8                   # trainer mcts_dpo: simulations per committed decision (x4 at the first)
    mcts_num_actions: int = 2                  # trainer mcts_dpo: samples per expansion (children of a node)
    mcts_depth_limit: int = 3                  # trainer mcts_dpo: steps per answer (the last takes the sample's rest)
    mcts_step_delimiter: str = "\n"            # trainer mcts_dpo: a step ends with this one-token string (or eos)
    mcts_value: str = "rollout"                # trainer mcts_dpo: rollout (judge a rollout) | self_eval (paper)
    mcts_self_eval_weight: float = 1.0         # trainer mcts_dpo, self_eval: v = w conf / max(d - 3, 1) + outcome
    tpo_tree_depth: int = 1                    # trainer tpo: levels of the preference tree (1: K flat samples)
    tpo_step_delimiter: str = "\n"             # trainer tpo, tpo_tree_depth > 1: a step ends with this one-token string
    # HyPO on offline pairs (task: dpo, loss_type: hypo; preflab.online.hypo_offline)
    hypo_online_samples: int = 4               # loss_type hypo: k fresh samples of the policy per pair's prompt per step
    # recipes that are whole programs (task: one of preflab.recipe_names.RECIPE_TASKS)
    recipe_params: dict = field(default_factory=dict)  # the recipe's own options (its function's keyword arguments)
    # not an option (no dataclass field: not saved, not in --help): the options the user wrote, recorded once when
    # the config is built (preflab.config_defaults.set_options). None: the keyword arguments given to TrainConfig(...)
    written_options: dataclasses.InitVar[frozenset | None] = None

    def __new__(cls, *args, **kwargs):
        """Records the names given to TrainConfig(...) (the Python API's written options) for __post_init__; copy
        and pickle call __new__ without arguments and restore written_options from the instance's state."""
        self = super().__new__(cls)
        if args or kwargs:
            self._given = frozenset([f.name for f in dataclasses.fields(cls)][:len(args)]) | frozenset(kwargs)
        return self

    def __post_init__(self, written_options=None):
        given = self.__dict__.pop("_given", frozenset())
        names = {f.name for f in dataclasses.fields(self)}
        # dataclasses.replace passes the instance's written_options on: the options a program changes with it are not
        # the user's (a recipe's stage, an evaluation's overrides), unless the user wrote them
        self.written_options = frozenset(given - {"written_options"} if written_options is None
                                         else written_options) & names
        from preflab.config_trl import apply_trl_defaults

        # TRL's config defaults (GRPOConfig's beta 0.0, ...) for the options not given: one place for every entry point
        trl_defaults, notes = apply_trl_defaults(self, given)
        _say(notes)
        # an objective TRL does not have trains at its own default (objectives._own_beta) when beta is not given
        if "beta" not in given | trl_defaults and "beta" not in (self.objective_params or {}):
            from preflab.objectives._own_beta import resolve_unset_beta

            self.beta = resolve_unset_beta(*self._own_beta_objective()) or self.beta
        _say(_diffusion_beta_default(self, given))  # task: diffusion's own rule (objectives._own_beta leaves it out)
        expand_home(self)
        _drop_unwritten_eval_steps(self)
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True  # TRL's TrainingArguments: a compile backend or mode implies torch_compile
        from preflab.best_model_options import resolve_best_model_options

        resolve_best_model_options(self)  # transformers' defaults of metric_for_best_model / greater_is_better
        self.check()

    def check(self) -> None:
        """Every out-of-range value and every conflict -> one ConfigError with one line per problem (the ranges
        are preflab.config_options.OPTIONS; the objective checks its own parameters in objective())."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.task in RECIPE_TASKS:  # a recipe builds its own model and data
            values = {k: v for k, v in values.items() if k not in ("model_name_or_path", "dataset_name")}
        elif self.task == "online" and "dataset" not in self.online_task:  # the demo and game tasks bring their prompts
            values.pop("dataset_name")
        elif self.task == "online" and self.online_task == "dataset" and self.environment_factory:
            values.pop("dataset_name")  # no dataset: the environment's reset gives the prompts (TRL's mode)
        unset = [k for k in REQUIRED_NAMES if values.get(k) == "" and k not in self.written_options]
        errors = unset_required_errors(unset, self.task)  # left out: "not set", not "'' is not allowed"
        errors += range_errors({k: v for k, v in values.items() if k not in unset})
        errors += self._conflicts()
        if self.task == "online" and not errors:
            from preflab.online_options import check_online

            check_online(self)  # the online block's own checks and the recipe's defaults
        if errors:
            raise ConfigError(errors[0] if len(errors) == 1 else
                              f"{len(errors)} invalid options:\n  " + "\n  ".join(errors))

    def evaluates_with_its_task(self) -> bool:
        """The online demo and game tasks evaluate without an eval set: the demo its held-out prompts
        (eval_true_reward, eval_win_rate_vs_reference), the game the equilibrium (eval_duality_gap), every eval_steps
        and at the end; so eval_on_start and eval_strategy steps / epoch need no eval_dataset_name there (the latter
        was refused as "needs an eval set" while eval_steps alone evaluated)."""
        return self.task == "online" and self.online_task in ("demo", "game")

    def _eval_on_start_conflicts(self) -> list[str]:
        """eval_on_start evaluates the starting model through the run's evaluate (loops/driver.py): refused where
        that evaluates nothing, rather than accepted and silently not run. The online demo and game tasks evaluate
        with their task (held-out prompts, the equilibrium); online_task: vision_dataset has no evaluation; the
        others need an eval set (eval_strategy: no drops it). Recipes refuse it with their other unread options."""
        if not self.eval_on_start or self.task in RECIPE_TASKS:
            return []
        if self.evaluates_with_its_task() or self._vision_dataset():  # the latter: _vision_dataset_eval_conflicts
            return []
        if self.eval_fraction or self.eval_dataset_name:
            return []
        why = ("eval_strategy: no turns evaluation off" if self.eval_strategy == "no" else
               "there is no eval set (no eval_dataset_name, eval_fraction 0)")
        return [f"eval_on_start: true evaluates the starting model before the first step, but {why}, so there is "
                "nothing to evaluate. Set eval_dataset_name or eval_fraction (and no eval_strategy: no), or remove "
                "eval_on_start."]

    def _vision_dataset(self) -> bool:
        return self.task == "online" and self.online_task == "vision_dataset"

    def _vision_dataset_eval_conflicts(self) -> list[str]:
        """online_task: vision_dataset has no evaluation (its task has no evaluate, preflab.online.vision; it reads no
        eval set, config_owners), so an option that asks for one is refused, naming each: eval_steps > 0 and
        eval_strategy steps / epoch ran and logged no eval_* row without a word (eval_on_start was already refused,
        eval_strategy was refused as needing an eval set that this task refuses)."""
        if not self._vision_dataset():
            return []
        asked = [f"{k}={getattr(self, k)!r}" for k in ("eval_steps", "eval_on_start") if getattr(self, k)]
        if self.eval_strategy in ("steps", "epoch"):
            asked.insert(0, f"eval_strategy={self.eval_strategy!r}")
        if not asked:
            return []
        return [f"{' and '.join(asked)}: online_task: vision_dataset has no evaluation (no eval_* metrics; it reads no "
                "eval set), so nothing would be evaluated; remove "
                + ("it" if len(asked) == 1 else "them") + ". The run's measure is the judges' reward on its training "
                "prompts (reward, rewards/<judge>/mean in metrics.jsonl)."]

    def _eval_delay_conflicts(self) -> list[str]:
        """eval_delay delays the run's evaluations (loops/driver.py): refused beside eval_strategy: no, where there
        is no evaluation to delay (a run without an eval set is told so when it reads its data, as for eval_steps:
        data.eval_set.note_eval_steps_without_eval_set). Recipes refuse it with their other unread options."""
        if not self.eval_delay or self.eval_strategy != "no" or self.task in RECIPE_TASKS:
            return []
        return [f"eval_delay={self.eval_delay:g} delays the first evaluation, but eval_strategy: no turns evaluation "
                "off, so there is nothing to delay; remove one."]

    def _lora_option_conflicts(self) -> list[str]:
        """TRL ModelConfig's use_rslora / use_dora / lora_modules_to_save where preflab cannot honour them (without
        use_peft: config_owners): task: diffusion saves its adapters in diffusers' LoRA format, which keeps neither
        the rsLoRA scale, DoRA's magnitudes nor whole modules; a 4/8-bit base (QLoRA) is verified with plain
        adapters only (a whole copy of a quantized module cannot train, DoRA on bitsandbytes layers is untested)."""
        if not self.use_peft:
            return []
        asked = [k for k in ("use_rslora", "use_dora", "lora_modules_to_save") if getattr(self, k)]
        if self.task == "diffusion" and asked:
            return [f"{', '.join(asked)}: task: diffusion adds its LoRA adapters with diffusers and saves them in "
                    "diffusers' LoRA format, which keeps neither the rsLoRA scale, DoRA's magnitude vectors nor "
                    "whole modules (a saved run would load as another model); remove "
                    f"{'it' if len(asked) == 1 else 'them'}."]
        quantized = [f"load_in_{b}bit" for b in ("4", "8") if getattr(self, f"load_in_{b}bit")]
        refused = [k for k in asked if k != "use_rslora"]
        if quantized and refused:
            return [f"{', '.join(refused)} with {quantized[0]} (QLoRA) is not supported: preflab's quantized base is "
                    "verified with plain adapters (use_rslora, which only changes their scale, is accepted); DoRA "
                    "on bitsandbytes layers is untested here and a whole copy of a quantized module cannot train. "
                    "Remove "
                    f"{'it' if len(refused) == 1 else 'them'}, or load the base unquantized."]
        return []

    def _conflicts(self) -> list[str]:
        from preflab.best_model_options import best_model_option_errors
        from preflab.dataset_columns_options import dataset_columns_conflicts
        from preflab.config_defaults import drop_hint, set_options
        from preflab.config_owners import refused_values, unread_task_options
        from preflab.models.load import builtin_init_kwargs_conflicts
        from preflab.models.quantize import quantization_conflicts
        from preflab.online_options import unread_online_options
        from preflab.lr_schedule_options import constant_warmup_conflicts, plateau_conflicts, schedule_kwargs_errors
        from preflab.checkpointing_options import checkpointing_option_errors
        from preflab.neftune_options import neftune_conflicts
        from preflab.optimizer_options import optimizer_errors
        from preflab.ref_sync_options import ref_sync_conflicts
        from preflab.scoring.compile import compile_conflicts
        from preflab.streaming_options import streaming_conflicts

        out = streaming_conflicts(self) + quantization_conflicts(self) + compile_conflicts(self)
        out += builtin_init_kwargs_conflicts(self) + ref_sync_conflicts(self) + neftune_conflicts(self)
        out += unread_online_options(self) + unread_task_options(self) + best_model_option_errors(self)
        out += dataset_columns_conflicts(self)
        if self.task in RECIPE_TASKS:  # a recipe passes only some options to its stages; the others are refused
            from preflab.config_owners import unread_option_names
            from preflab.recipe_stages import recipe_option_errors

            out += recipe_option_errors(self, unread_option_names(self))
        if "beta" in (self.objective_params or {}):  # the objective would train at it while cfg.beta says another
            out.append(f"objective_params.beta={self.objective_params['beta']!r}: the objective would train at it while "
                       f"the run's beta ({self.beta}), which config.yaml records and `preflab eval`, the report and a "
                       f"resume read, says another; set `beta: {self.objective_params['beta']!r}` instead.")
        if self.use_weighting and self.task != "dpo":
            out.append(f"use_weighting (WPO) applies to task: dpo (the text scorer computes its token terms), not "
                       f"task: {self.task}.")
        out += schedule_kwargs_errors(self.lr_scheduler_type, self.lr_scheduler_kwargs, self.learning_rate)
        out += checkpointing_option_errors(self)
        out += plateau_conflicts(self) + constant_warmup_conflicts(self) + optimizer_errors(self)
        if self.warmup_steps and self.warmup_ratio:  # transformers lets warmup_steps win and drops warmup_ratio
            out.append(f"warmup_steps={self.warmup_steps} and warmup_ratio={self.warmup_ratio} both set the warmup "
                       "(warmup_steps would win and warmup_ratio be ignored); keep one.")
        if self.bf16 and self.fp16:
            out.append("bf16 and fp16 are both set; choose one.")
        out += refused_values(self)  # config_owners.REFUSED_VALUES: e.g. truncation_mode keep_end for task: sft
        for flag, precision in (("bf16", "bfloat16"), ("fp16", "float16")):
            if getattr(self, flag) and self.dtype not in ("float32", precision):
                out.append(f"{flag}: true conflicts with dtype={self.dtype!r}; set one of them ({flag} means dtype: "
                           f"{precision}).")
        if self.eval_fraction and self.eval_dataset_name:
            out.append(f"eval_fraction={self.eval_fraction} and eval_dataset_name={self.eval_dataset_name!r} both "
                       "give an eval set; keep one.")
        if (self.eval_strategy in ("steps", "epoch") and not (self.eval_fraction or self.eval_dataset_name)
                and not self.evaluates_with_its_task() and not self._vision_dataset()):
            out.append(f"eval_strategy={self.eval_strategy!r} needs an eval set: set eval_dataset_name or "
                       "eval_fraction, or eval_split (TRL's dataset_test_split, e.g. test) for a split of dataset_name "
                       f"(or eval_strategy: no). {PYTHON_EVAL_ROUTE}")
        out += self._eval_on_start_conflicts() + self._vision_dataset_eval_conflicts() + self._eval_delay_conflicts()
        out += self._lora_option_conflicts()
        if self.eval_strategy == "no" and self.eval_steps:  # written (_drop_unwritten_eval_steps drops the others)
            out.append(f"eval_strategy='no' conflicts with eval_steps={self.eval_steps} (no evaluation runs, so "
                       "eval_steps would do nothing); remove one.")
        eval_set = [f"{k}={getattr(self, k)!r}" for k in ("eval_dataset_name", "eval_fraction") if getattr(self, k)]
        if self.eval_strategy == "no" and eval_set:  # (a YAML file or config_from_dict drops them with a note first)
            out.append(f"eval_strategy='no' conflicts with {' and '.join(eval_set)}: the run would still evaluate on "
                       "that eval set at its end; remove eval_strategy: no to evaluate, or the eval set.")
        if self.eval_dataset_config is not None and not self.eval_dataset_name:
            out.append(f"eval_dataset_config={self.eval_dataset_config!r} names a configuration of eval_dataset_name, "
                       "which is not set: it would be unused. Set eval_dataset_name (the eval set's dataset) or "
                       "remove eval_dataset_config.")
        if self.eval_split is not None and self.eval_fraction and not self.eval_dataset_name:
            # (eval_split alone, e.g. TRL's dataset_test_split, evaluates nothing: as in TRL with eval_strategy no)
            out.append(f"eval_split={self.eval_split!r} names the split of eval_dataset_name, which is not set: "
                       f"eval_fraction={self.eval_fraction} holds the eval set out of dataset_split instead; set "
                       "eval_dataset_name or remove eval_split.")
        if self.ref_model_init_kwargs and not self.ref_model_name_or_path:
            out.append("ref_model_init_kwargs only apply to ref_model_name_or_path, which is not set (the reference "
                       "is a copy of the policy, loaded with model_init_kwargs).")
        if self.task == "reward":  # a reward model has no reference and no objective temperature
            used = set_options(self, _PREFERENCE_ONLY)
            if used:
                out.append(f"task: reward trains a reward model (reward_head: {self.reward_head}); {', '.join(used)} "
                           f"only {'applies' if len(used) == 1 else 'apply'} to task: dpo. Remove "
                           f"{'it' if len(used) == 1 else 'them'}{drop_hint(used)}, or set task: dpo."
                           + (" MAPL's Rc-BT loss is reward_head: bt on intra rows {prompt_chosen, prompt_rejected, "
                              "completion} (preflab.data.mapl); its tau is reward_head_params.tau."
                              if self.loss_type == "rc_bt" else ""))
            if self.layout in ("packed", "prefix_packed"):  # RewardRun batches padded rows
                out.append(f"layout={self.layout!r} (or TRL's padding_free: true) is not read by task: reward, which "
                           "batches padded rows; remove it.")
            if self.generate_during_eval:
                out.append("generate_during_eval: a reward model generates nothing (task: reward); remove it.")
            if self.chunk_tokens is not None:
                out.append("chunk_tokens sizes the LM-head chunks of a policy's log-probs; a reward model (task: "
                           "reward) has no LM head; remove it.")
        elif set_options(self, ("center_rewards_coefficient",)):
            out.append("center_rewards_coefficient only applies to task: reward.")
        if self.generate_during_eval and self.task in ("sft", "online"):  # their evaluate() writes no samples
            out.append(f"generate_during_eval (TRL's DPOConfig option: greedy samples at each evaluation) is not read "
                       f"by task: {self.task}, whose evaluation "
                       + ("scores the eval rows' completions" if self.task == "sft" else
                          "already samples the held-out prompts (eval_reward, eval_win_rate_vs_reference)")
                       + " and writes no eval_samples.jsonl; remove it (before, it was accepted and ignored).")
        if self.task == "vlm" and self.layout in ("packed", "prefix_packed"):  # collate_vision_pairs builds neither
            out.append(f"layout={self.layout!r} (or TRL's padding_free: true) is not built for task: vlm, which lays "
                       "image-text pairs out as prefix_shared (the default: one row per pair where the model allows "
                       "it) or padded; before, packed ran padded and prefix_packed ran prefix_shared without a word. "
                       "Set layout: prefix_shared or padded.")
        if self.task != "reward" and set_options(self, ("reward_head", "reward_head_params")):
            out.append("reward_head / reward_head_params only apply to task: reward.")
        if (self.task == "reward" and self.reward_head not in ("bt", "em_mixture")
                and self.center_rewards_coefficient is not None):  # em_mixture: K BT components, each centred
            out.append(f"center_rewards_coefficient applies to reward_head: bt and em_mixture (a {self.reward_head} "
                       "head has no pairwise scalar reward to centre); remove it.")
        if self.ref_load_dtype and self.use_peft and not self.ref_model_name_or_path and not self.sync_ref_model:
            out.append("ref_load_dtype has no effect with use_peft (the reference is the policy with its adapters "
                       "disabled); remove it.")
        if self.task == "sft":
            out += self._distillation_conflicts()
            if self.skip_prepare_dataset and self.packing and self.packing_strategy != "bfd":
                out.append(f"packing_strategy: {self.packing_strategy} with skip_prepare_dataset: true: TRL packs "
                           "nothing when it skips preparing the dataset (each batch's rows are only laid side by "
                           "side); remove packing_strategy or skip_prepare_dataset.")
            if self.packing_strategy != "bfd" and not self.packing:
                out.append(f"packing_strategy: {self.packing_strategy} applies with packing: true (TRL reads it only "
                           "then); set packing: true or remove packing_strategy.")
            used = [n for n in set_options(self, _PREFERENCE_ONLY)
                    if not (n == "beta" and self.teacher_model_name_or_path)]  # beta: the distillation's JSD
            if used:
                out.append(f"task: sft trains on completions by maximum likelihood; {', '.join(used)} only "
                           f"{'applies' if len(used) == 1 else 'apply'} to preference tasks. Remove "
                           f"{'it' if len(used) == 1 else 'them'}{drop_hint(used)}, or set task: dpo.")
        elif self.packing or not self.completion_only_loss or self.assistant_only_loss:
            which = "packing" if self.packing else "completion_only_loss" if not self.completion_only_loss else \
                "assistant_only_loss"
            out.append(f"{which} applies to task: sft " + ("(preference tasks choose their layout with `layout`)."
                                                            if which == "packing" else "only; remove it."))
        return out

    def _distillation_conflicts(self) -> list[str]:
        """task: sft's distillation options (TRL's GKD / Distillation names): what preflab cannot do is refused
        with the reason (preflab.objectives._distill_task)."""
        from preflab.config_defaults import set_options
        from preflab.config_owners import DISTILL_SAMPLING_OPTIONS

        out = []
        teacher = self.teacher_model_name_or_path
        if not teacher:
            used = set_options(self, ("teacher_model_init_kwargs", "lmbda", "seq_kd"))
            if used:
                out.append(f"{', '.join(used)} {'applies' if len(used) == 1 else 'apply'} to distillation, which "
                           "needs teacher_model_name_or_path (the teacher model); set it, or remove them.")
            return out
        samples = self.lmbda > 0 or self.seq_kd  # the student's (lmbda) or the teacher's (seq_kd) completions
        who = " and ".join(([f"lmbda: {self.lmbda} (the student's)"] if self.lmbda > 0 else [])
                           + (["seq_kd: true (the teacher's)"] if self.seq_kd else []))
        if samples and self.streaming:
            out.append(f"{who} with streaming: true: sampled steps re-read their rows' prompts by dataset position; "
                       "remove streaming (or set lmbda: 0 and seq_kd: false).")
        if samples and not self.max_completion_length:
            out.append(f"{who} samples completions: set max_completion_length (the new tokens per completion; TRL "
                       "DistillationConfig's default is 512, GKDConfig's max_new_tokens 128).")
        if self.seq_kd and self.lmbda >= 1:
            out.append(f"seq_kd: true with lmbda: {self.lmbda}: every step is on-policy (the student samples), so the "
                       "teacher never would (TRL GKDTrainer: the student with probability lmbda, else with seq_kd the "
                       "teacher); lower lmbda or remove seq_kd.")
        unread = set_options(self, ("max_completion_length", *DISTILL_SAMPLING_OPTIONS))
        if not samples and unread:
            out.append(f"{', '.join(unread)} {'applies' if len(unread) == 1 else 'apply'} to sampled completions "
                       "(lmbda > 0: the student's; seq_kd: true: the teacher's); with lmbda: 0 and seq_kd: false "
                       "nothing is sampled (task: sft cuts whole rows at max_length; lmbda: 0 is preflab's default, "
                       "where TRL's GKDConfig has 0.5 and TRL's DistillationTrainer samples every completion, lmbda: "
                       f"1). Remove {'it' if len(unread) == 1 else 'them'}, or set lmbda or seq_kd: true to sample.")
        if self.packing and self.packing_strategy != "bfd":
            out.append(f"packing_strategy: {self.packing_strategy} with teacher_model_name_or_path: it cuts rows "
                       "before packing, so a completion is distilled without its prompt or its own beginning, and a "
                       "sampled step's prompts are the cut pieces'; use packing_strategy: bfd (whole rows packed, the "
                       "same divergence as unpacked rows) or packing: false.")
        if self.precompute_ref_log_probs:
            out.append("precompute_ref_log_probs with a teacher: the divergence needs the teacher's whole "
                       "next-token distribution at every step, not cached log-probs; remove it.")
        if self.use_peft and teacher == self.model_name_or_path:
            out.append("teacher_model_name_or_path is the policy itself: the divergence starts at 0 and the "
                       "teacher would be the student's own base; name a different teacher.")
        return out

    def distillation_temperature(self) -> float:
        """The divergence's temperature: divergence_temperature when set, else `temperature` (TRL
        DistillationTrainer's rule: one temperature samples and scores; a saved GKDConfig sets 1.0, as
        GKDTrainer.compute_loss scores at 1 whatever its sampling temperature)."""
        return float(self.temperature if self.divergence_temperature is None else self.divergence_temperature)

    def distillation_beta(self) -> float:
        """The JSD's beta: `beta` when written or set, else TRL 1.16 DistillationConfig's default 1.0 (reverse KL;
        preflab's own default beta 0.1 is DPO's)."""
        from preflab.config_defaults import set_options
        from preflab.objectives._distill_task import DEFAULT_BETA

        return float(self.beta) if set_options(self, ("beta",)) else DEFAULT_BETA

    @property
    def torch_dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float16" if self.fp16 else self.dtype

    def objective_kwargs(self) -> dict:
        """Parameters for get_objective: beta where the objective has it, plus objective_params."""
        return {"beta": self.beta, **self.objective_params}

    def objective(self):
        """Build (and so validate) the objective this config names (task: sft -> the SFT completion NLL)."""
        from preflab.objectives import get_objective

        if self.task == "sft" and self.teacher_model_name_or_path:
            from preflab.objectives._distill_task import DistillLoss

            return DistillLoss(beta=self.distillation_beta(), temperature=self.distillation_temperature())
        if self.task == "sft":
            from preflab.objectives._sft_task import SFTLoss

            return SFTLoss()

        loss_type, weights = self.loss_type, self.loss_weights
        if self.rpo_alpha is not None:  # TRL's RPO term: + rpo_alpha * token-mean NLL of the chosen responses
            names = list(loss_type) if isinstance(loss_type, (list, tuple)) else [loss_type]
            if "sft" in names:  # TRL 1.x's spelling of the same term, already in the list
                raise ConfigError(f"rpo_alpha={self.rpo_alpha} is TRL 0.x's NLL term, which TRL 1.x writes as 'sft' in "
                                  f"the loss_type list; loss_type {names} has it already. Remove rpo_alpha (and give "
                                  "the sft weight in loss_weights).")
            doubled = _own_chosen_nll(names, self.objective_params)
            if doubled:
                raise ConfigError(f"rpo_alpha={self.rpo_alpha} adds TRL's NLL term of the chosen responses, and "
                                  f"loss_type {doubled} has one of its own already: the run would train two. "
                                  "Weight that objective's own term instead, or use "
                                  "rpo_alpha with loss_type sigmoid (TRL's RPO).")
            weights = list(weights or [1.0] * len(names)) + [float(self.rpo_alpha)]
            loss_type = names + ["sft"]
        from preflab.objectives._ld import with_ld_alpha

        objective = with_ld_alpha(lambda names, params: get_objective(
            names, **params, **({"loss_weights": weights} if weights else {})),
            loss_type, _params_for(loss_type, self.objective_kwargs()))  # TRL's ld_alpha on every DPO loss type
        if self.use_weighting:
            from preflab.objectives import WPOWeighted

            names = list(loss_type) if isinstance(loss_type, (list, tuple)) else [loss_type]
            if any(str(n).startswith("aot") for n in names):
                raise ConfigError("use_weighting (WPO) cannot weight the aot losses (TRL refuses them too).")
            objective = WPOWeighted(objective)
        return objective

    def to_dict(self) -> dict:
        """The options as a dict (config.yaml, checkpoints' trainer_state.json); hub_token is masked as
        transformers' to_dict masks it (`<HUB_TOKEN>`, which loading drops), so no token is written to disk or
        uploaded with the run's config.yaml."""
        out = dataclasses.asdict(self)
        if out.get("hub_token") is not None:
            out["hub_token"] = "<HUB_TOKEN>"
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.yaml_text())

    def yaml_text(self) -> str:
        """The options as YAML (TrainConfig.save, a run's config.yaml); a beta that is its objective's own default
        (beta not written; objectives._own_beta) gets a comment line above it saying so (loading reads beta's value,
        so `preflab eval`, the report and a resume read the beta the run trained with)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        note = self.own_beta_note()
        return text.replace("\nbeta: ", f"\n# {note}\nbeta: ", 1) if note else text

    def own_beta_note(self) -> str | None:
        """The note on beta when the user did not write it and an objective's own default differs from 0.1
        (objectives._own_beta.unset_beta_note), else None."""
        if "beta" in self.written_options or "beta" in (self.objective_params or {}):
            return None
        from preflab.objectives._own_beta import RUN_DEFAULT_BETA, resolve_unset_beta, unset_beta_note

        own = resolve_unset_beta(*self._own_beta_objective())
        if (RUN_DEFAULT_BETA if own is None else own) != self.beta:  # a saved config's (or a program's) other beta
            return None
        return unset_beta_note(*self._own_beta_objective())

    def _own_beta_objective(self) -> tuple:
        """(task, loss_type, online_task) an unset beta's own default is read from (objectives._own_beta): for task:
        online the recipe's objective (online_recipes.recipe_loss_type), which check() sets loss_type to only after
        __post_init__ has resolved beta."""
        if self.task != "online":
            return self.task, self.loss_type, None
        from preflab.online_recipes import recipe_loss_type

        return self.task, recipe_loss_type(self.trainer, self.loss_type), self.online_task

    def model_kwargs(self, ref: bool = False) -> dict:
        """from_pretrained arguments of the policy (ref=False) or of the reference: ref_model_name_or_path's, or
        under distillation the teacher's (teacher_model_init_kwargs)."""
        if ref and self.task == "sft" and self.teacher_model_name_or_path:
            return dict(self.teacher_model_init_kwargs or {})
        return dict((self.ref_model_init_kwargs if ref else self.model_init_kwargs) or {})


# the preference objective's options, which task: reward and task: sft do not read (written or set, they are refused)
_PREFERENCE_ONLY = ("loss_type", "loss_weights", "rpo_alpha", "beta", "ref_model_name_or_path",
                    "precompute_ref_log_probs", "objective_params")


# objectives whose loss holds an NLL term of the chosen response of their own, with the parameter that weights it
# (None: always on): rpo_alpha's term (TRL's RPO, loss_type + sft) beside one of them trains a second NLL term
OWN_CHOSEN_NLL = {"rpo": "eta", "flex_dpo": "sft_weight", "cpo": "cpo_alpha", "simpo": "cpo_alpha",
                  "alphapo": "cpo_alpha", "orpo": None, "rationale_orpo": None}


def _own_chosen_nll(names: list, params: dict) -> str | None:
    """'rpo (eta=0.2: its own NLL term; set eta: 0 to drop it)' for the first of `names` whose loss holds its own
    chosen-response NLL term at a nonzero weight (OWN_CHOSEN_NLL; the weight from objective_params, else the
    objective's default), else None. A user's objective ('file.py:Class') or an unknown name is not checked here."""
    from preflab.objectives import _class_for, resolve_name

    for name in names:
        if not isinstance(name, str) or ":" in name:
            continue
        try:
            module = resolve_name(name)
        except ConfigError:
            continue
        if module not in OWN_CHOSEN_NLL:
            continue
        weight_name = OWN_CHOSEN_NLL[module]
        if weight_name is None:
            return f"{name} (its loss is an NLL term plus its preference term)"
        default = next(f.default for f in dataclasses.fields(_class_for(module)) if f.name == weight_name)
        weight = params.get(weight_name, default)
        if weight:
            return f"{name} ({weight_name}={weight}: its own NLL term; set {weight_name}: 0 to drop it)"
    return None


def _params_for(loss_type, params: dict) -> dict:
    """Drop `beta` for objectives without a beta field (e.g. `sft`), keep everything else (unknowns then raise)."""
    return {k: v for k, v in params.items() if k != "beta" or "beta" in _objective_fields(loss_type)}


def _default_loss_type(known: dict):
    """The objective a config without loss_type trains: sigmoid, or for task: online the recipe's own."""
    if known.get("task") == "online":
        from preflab.online_recipes import TRAINERS

        spec = TRAINERS.get(known.get("trainer", "online_dpo"))
        if spec is not None and spec.loss_type:
            return spec.loss_type
    return "sigmoid"


def _objective_fields(loss_type) -> set[str]:
    """The parameter names of the objective(s) `loss_type` names, a user's objective ('file.py:Class') included."""
    from preflab.objectives import _class_for

    names = loss_type if isinstance(loss_type, (list, tuple)) else [loss_type]
    fields = set()
    for name in names:
        if isinstance(name, str):
            fields |= {f.name for f in dataclasses.fields(_class_for(name))}
    return fields


def _objective_hint(loss_type, key: str):
    """The type of objective parameter `key` (the first part of `loss_type` that has it; ld_alpha, which
    objectives._ld reads for every TRL loss type, is a float or None)."""
    from preflab.objectives import _class_for

    for name in loss_type if isinstance(loss_type, (list, tuple)) else [loss_type]:
        try:
            hints = typing.get_type_hints(_class_for(name)) if isinstance(name, str) else {}
        except (NameError, TypeError):  # a user's class whose annotations do not resolve: no conversion
            hints = {}
        if key in hints:
            return hints[key]
    return float | None if key == "ld_alpha" else Any


def _grpo_option_error(key: str, known: dict) -> str | None:
    """The error for `key`, a parameter of the GRPO family's objective (objectives.grpo: top_entropy_quantile,
    entropy_coef, importance_sampling_level, delta, ...), written in a task: online run whose trainer trains another
    objective (rloo, the pair recipes): it names the option's trainers and says this one does not read it (for rloo:
    TRL's RLOOConfig has no such field either). None for any other key or run (the unknown-key error stands)."""
    if known.get("task") != "online":
        return None
    from preflab.objectives import objective_class
    from preflab.online_recipes import TRL_GRPO_TRAINERS

    if key not in {f.name for f in dataclasses.fields(objective_class("grpo"))}:
        return None
    trainer = known.get("trainer", "online_dpo")
    trl = " (TRL's RLOOConfig has no such field either: RLOOTrainer does not read it)" if trainer == "rloo" else ""
    return (f"{key} is an option of the GRPO family (trainers {', '.join(TRL_GRPO_TRAINERS)}; TRL's GRPOConfig), "
            f"which trainer {trainer!r} does not read{trl}; remove it, or choose a GRPO-family trainer.")


def _suggestion(key: str, options: list[str]) -> str:
    """A hint for an unknown key: the preflab name of another trainer's option, the objectives that take it,
    or a really close name (difflib ratio >= 0.8); '' when nothing fits."""
    import difflib

    from preflab.config_trl import DIFFUSERS_DPO_SCRIPT, SUGGEST
    from preflab.objectives import list_objectives, objective_class

    if key in DIFFUSERS_DPO_SCRIPT:
        return f" {DIFFUSERS_DPO_SCRIPT[key]}."
    if key in SUGGEST:
        return f" preflab calls it {SUGGEST[key]!r}."
    if key == "ld_alpha":  # preflab.objectives._ld: TRL applies it to each of its DPO loss types
        from preflab.objectives._ld import TRL_LD_LOSS_TYPES

        return (f" It is TRL's LD-DPO option, read with TRL's DPO loss types ({', '.join(TRL_LD_LOSS_TYPES)}), not "
                "with the chosen loss_type.")
    takers = [n for n in list_objectives() if key in {f.name for f in dataclasses.fields(objective_class(n))}]
    if takers:
        shown = ", ".join(takers[:5]) + (", ..." if len(takers) > 5 else "")
        return f" It is a parameter of the objective(s) {shown}, not of the chosen loss_type."
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.8)
    return f" Did you mean {match[0]!r}?" if match else ""


def _expanded_chars(value, memo: dict, active: set) -> int:
    """About how many characters `value` takes once serialized with every YAML alias expanded (computed over
    the shared structure, so a bomb is measured without being expanded)."""
    if isinstance(value, (list, dict)):
        key = id(value)
        if key in active:
            raise ConfigError("a YAML alias refers to itself (recursive structure).")
        if key in memo:
            return memo[key]
        active.add(key)
        items = [x for kv in value.items() for x in kv] if isinstance(value, dict) else value
        total = 2 + sum(_expanded_chars(x, memo, active) + 2 for x in items)
        active.discard(key)
        memo[key] = total
        return total
    return len(value) + 2 if isinstance(value, str) else 8


def _check_sizes(raw: dict) -> None:
    memo: dict = {}
    for key, value in raw.items():
        size = _expanded_chars(value, memo, set())
        if size > MAX_OPTION_CHARS:
            raise ConfigError(f"option {key!r} expands to about {size:,} characters (limit {MAX_OPTION_CHARS:,}); "
                              "a YAML alias bomb or a value far too large for an option.")


def _resolve_eval(raw: dict, notes: list[str]) -> None:
    """TRL's eval_strategy onto preflab's eval schedule (eval_steps; 0 = at the end only)."""
    strategy = raw.get("eval_strategy")
    if strategy == "no":  # (eval_steps: TrainConfig's _drop_unwritten_eval_steps, for every entry point)
        dropped = [k for k in ("eval_dataset_name", "eval_dataset_config", "eval_fraction") if raw.get(k)]
        for k in dropped:
            notes.append(f"eval_strategy: no -> {k}={raw.pop(k)!r} is not used (no evaluation).")
    elif strategy == "steps" and not raw.get("eval_steps"):
        raw["eval_steps"] = raw.get("logging_steps", 10)
        notes.append(f"eval_strategy: steps without eval_steps -> eval_steps: {raw['eval_steps']} (logging_steps, "
                     "as in transformers).")


def _drop_unwritten_eval_steps(cfg: TrainConfig) -> None:
    """eval_steps beside eval_strategy: no, one rule for TrainConfig(...), a YAML file and config_from_dict: written by
    the user it cannot do what it says and _conflicts refuses it; not written (a saved config: TRL's args.to_dict(),
    a run's config.yaml, whose keys count as nobody's choice, or a value a program set) it is the saved config's
    unused value, as TrainingArguments leaves it unread with eval_strategy "no": set to 0 with a note."""
    if cfg.eval_strategy == "no" and cfg.eval_steps and "eval_steps" not in cfg.written_options:
        _say([f"eval_strategy: no -> eval_steps={cfg.eval_steps!r} is not used (no evaluation)."])
        cfg.eval_steps = 0


def resolve_epoch_eval(cfg: TrainConfig, steps_per_epoch: int, main: bool = True) -> None:
    """TRL's eval_strategy: epoch and save_strategy: epoch, once the steps per epoch are known: eval_steps (unless
    eval_steps was given) and save_steps become one epoch."""
    if cfg.eval_strategy == "epoch" and not cfg.eval_steps:
        cfg.eval_steps = max(1, steps_per_epoch)
        if main:
            print(f"preflab: note: eval_strategy: epoch -> eval_steps: {cfg.eval_steps} (one epoch).")
    if cfg.save_strategy == "epoch" and not cfg.save_steps:
        cfg.save_steps = max(1, steps_per_epoch)
        if main:
            print(f"preflab: note: save_strategy: epoch -> save_steps: {cfg.save_steps} (one epoch).")


def _say(notes: list[str]) -> None:
    if notes and int(os.environ.get("RANK", "0") or 0) == 0:
        for note in dict.fromkeys(notes):
            print(f"preflab: note: {note}", file=sys.stderr)


def _diffusion_beta_default(cfg, given) -> list[str]:
    """A diffusion run that leaves `beta` out gets its objective's own default (Diffusion-DPO: 5000 on per-pixel MSE
    differences), not TrainConfig's 0.1 for log-prob differences, with which the run would barely move. A loss_type
    list takes its parts' shared own default (objectives._own_beta.own_betas); parts that disagree (diffusion_dpo
    5000, dcpo 500) are refused, naming each: no one value is theirs, and 0.1 (what such a list trained at, without
    a word) is no diffusion objective's scale. Called from TrainConfig.__post_init__ with the options given to it, so
    TrainConfig(task="diffusion", ...) in Python gets it as a YAML file does (only the file loader applied it: the
    Python API trained Diffusion-DPO at 0.1). Returns the note to print."""
    from preflab.objectives._own_beta import own_betas

    loss = cfg.loss_type
    if cfg.task != "diffusion" or "beta" in given or "beta" in (cfg.objective_params or {}):
        return []
    betas = own_betas(loss)  # None: a user's objective or an unknown name (the objective's own checks say so)
    if len(set((betas or {}).values())) > 1:
        own = ", ".join(f"{name} {value:g}" for name, value in betas.items())
        raise ConfigError(f"beta is not set and the parts of loss_type {loss} disagree on their own default beta "
                          f"({own}); a diffusion list has one beta for every part and 0.1 (the text objectives' "
                          "default) is none of their scales: set beta.")
    default = next(iter(betas.values())) if betas else None
    if default is None or default == cfg.beta:
        return []
    cfg.beta = float(default)
    names = loss if isinstance(loss, str) else ", ".join(betas)
    return [f"beta is not set: {names}'s own default beta={default:g} is used (salesforce convention), not the text "
            "objectives' 0.1; set beta to choose."]


def _user_beta_default_notes(objective, beta: float) -> list[str]:
    """A note per objective of the user's own (a class outside preflab) whose `beta` field has another default than
    the run's beta, when the config does not set beta: the run passes its `beta` option (0.1, TRL's default) to every
    objective with a beta field, so the class's own default (what `preflab objectives my.py:Class` and
    get_objective print and use) is not what trains."""
    import dataclasses

    from preflab.objectives import objective_parts

    notes = []
    for part in objective_parts(objective):
        cls = type(part)
        if cls.__module__.startswith("preflab."):
            continue
        default = next((f.default for f in dataclasses.fields(cls) if f.name == "beta"), None)
        if isinstance(default, (int, float)) and default != beta:
            notes.append(f"beta is not set: {cls.__name__} trains with the run's beta={beta:g} (the beta option's "
                         f"default), not its own field default beta={default:g}; set beta to choose (beta={default:g} "
                         "for the class's own).")
    return notes


SAVED_CONFIG_KEYS = 80  # a mapping of this many options or more is a saved config (is_saved_config)


def is_saved_config(raw: dict) -> bool:
    """Whether `raw` is a saved config that writes out every option (a run's config.yaml: TrainConfig.save writes
    all 164; TRL's args.to_dict(): 125 to 191 keys) rather than one a person wrote (the examples write at most 28):
    its keys are not what the user chose, so none of them counts as written (TrainConfig.written_options)."""
    return len(raw) >= SAVED_CONFIG_KEYS


def written_keys(raw: dict) -> set[str]:
    """The TrainConfig options a mapping of the user's writes: its keys in preflab's names (TRL's renamed keys
    translated); none for a saved config (is_saved_config). A written save_strategy: no counts save_steps as written
    too: config_trl turns it into save_steps 0, the user's own "no checkpoints" (not the default that
    best_model_options.trl_save_default_note speaks of)."""
    from preflab.config_trl import RENAMED

    if is_saved_config(raw):
        return set()
    keys = {RENAMED.get(k, k) for k in raw}
    return keys | {"save_steps"} if raw.get("save_strategy") in ("no", False) else keys


# the options that name a local file or folder (or a hub name, which never starts with "~")
HOME_PATH_OPTIONS = ("model_name_or_path", "ref_model_name_or_path", "processor_name_or_path", "dataset_name",
                     "eval_dataset_name", "output_dir", "resume_from_checkpoint", "user_embeddings",
                     "reward_aggregator", "chat_template_path")
# options holding paths inside a list or mapping: judges' model folders and code files (reward_funcs: `~/rm`,
# `~/rewards.py:fn`), a recipe's data files and models (recipe_params), an objective's or pair builder's files
HOME_NESTED_OPTIONS = ("reward_funcs", "tools", "environment_factory", "recipe_params", "objective_params",
                       "vision_pair_params")


def expand_home(cfg) -> None:
    """A leading "~" (or "~user") of a path option becomes the home folder, as a shell would expand it: the value
    reaches Python unexpanded from a YAML file, a quoted override or TrainConfig(...). Each loader expanding it on its
    own left gaps: output_dir="~/run" put the run's lock in $HOME/run and its files in ./~/run, and
    model_name_or_path="~/model" passed the existence check and then reached from_pretrained as a hub name. Nested
    options (HOME_NESTED_OPTIONS): every string in them that starts with "~" (preflab.home_paths.home_expanded)."""
    for name in HOME_PATH_OPTIONS + HOME_NESTED_OPTIONS:
        value = getattr(cfg, name)
        expanded = home_expanded(value)
        if expanded != value:
            setattr(cfg, name, expanded)


def config_from_dict(raw: dict, written=None, sources: dict | None = None) -> TrainConfig:
    """A TrainConfig from a flat dict (preflab or TRL names). Unknown keys go to the objective if it has them; all
    other unknown keys and all type errors are reported together in one ConfigError. Notes on translated TRL keys
    are printed once.

    written: the options the user wrote (TrainConfig.written_options; checked by the unread-option refusals at any
    value, preflab.config_defaults.set_options). None: every key of `raw` (written_keys: none of a saved config).
    Code that builds a config from its own keys plus the user's (a recipe stage, an evaluation) passes the user's."""
    from preflab.config_trl import translate_trl

    _check_sizes(raw)
    written = written_keys(raw) if written is None else set(written)
    raw, notes, errors = translate_trl(raw, written)
    _resolve_eval(raw, notes)
    hints = field_hints()
    known, extra = {}, {}
    for key, value in raw.items():
        if key in hints:
            try:
                known[key] = check_type(key, value, hints[key])
            except ConfigError as err:  # with where the value was written (load_config's file or override)
                errors.append(f"{str(err).rstrip('.')}, {sources[key]}." if sources and key in sources else str(err))
        else:
            extra[key] = value
    if extra:
        try:
            objective_fields = _objective_fields(known.get("loss_type", _default_loss_type(known)))
        except ConfigError as err:
            errors.append(str(err))
            objective_fields = set()
        from preflab.config_trl import LOSS_DEFAULTS, TRL_KEYS
        from preflab.objectives._ld import takes_ld_alpha

        if "ld_alpha" in extra and takes_ld_alpha(known.get("loss_type", _default_loss_type(known))):
            objective_fields.add("ld_alpha")  # TRL reads it with each of its DPO loss types (objectives._ld)
        options = list(hints) + sorted(objective_fields) + sorted(TRL_KEYS)
        for key in list(extra):
            if key in objective_fields:
                if isinstance(extra[key], str):  # number text, as TRL's parser reads it (see option_types.check_type)
                    try:
                        extra[key] = check_type(key, extra[key], _objective_hint(
                            known.get("loss_type", _default_loss_type(known)), key))
                    except ConfigError as err:
                        errors.append(str(err))
                continue
            if key in LOSS_DEFAULTS and extra[key] == LOSS_DEFAULTS[key]:
                del extra[key]  # TRL's default of another loss's parameter (a saved DPOConfig carries them all)
            else:
                errors.append(_grpo_option_error(key, known) or
                              f"unknown config key {key!r}.{_suggestion(key, options)}")
    if errors:
        raise ConfigError("\n".join(errors) + ("\nRun `preflab train --help` for the options."
                                               if any("unknown config key" in e for e in errors) else ""))
    # (TRL's config defaults for the keys left out, and a diffusion objective's own beta: TrainConfig.__post_init__)
    # the user's keys that reach the config (not the ones translate_trl or _resolve_eval dropped or added)
    cfg = TrainConfig(**known, written_options=frozenset(k for k in raw if k in written and k in hints))
    from preflab.online_options import check_explicit_loss_type, unread_game_option_notes

    check_explicit_loss_type(cfg, known)
    notes += unread_game_option_notes(cfg)  # (greedy_eval_notes: said by the training driver at the run's start)
    for key, value in extra.items():  # (after TrainConfig's expand_home: a leading "~" expanded as in objective_params)
        cfg.objective_params[key] = home_expanded(value)
    from preflab.objectives import check_modality, check_online_only

    objective = cfg.objective()
    check_modality(objective, cfg.task)  # validates the objective and its modality before any model loads
    check_online_only(objective, cfg.task)  # grpo / rloo: a policy gradient needs sampled completions
    if "beta" not in raw:
        notes += _user_beta_default_notes(objective, cfg.beta)
        notes += [n for n in [cfg.own_beta_note()] if n]
    if cfg.precompute_ref_log_probs and cfg.task == "dpo" and not objective.needs_reference:
        notes.append(f"precompute_ref_log_probs: loss_type {cfg.loss_type} uses no reference model, so there is "
                     "nothing to precompute (no reference is loaded).")
    if cfg.ref_model_name_or_path and cfg.task in ("dpo", "vlm") and not objective.needs_reference:
        notes.append(f"ref_model_name_or_path: loss_type {cfg.loss_type} uses no reference model, so "
                     f"{cfg.ref_model_name_or_path!r} is not loaded; remove it, or choose a loss_type with a "
                     "reference (sigmoid, ipo, ...).")
    if cfg.ref_load_dtype and cfg.task in ("dpo", "vlm") and not objective.needs_reference:
        notes.append(f"ref_load_dtype: loss_type {cfg.loss_type} uses no reference model, so no reference is loaded "
                     f"in {cfg.ref_load_dtype}; remove it.")
    _say(notes)
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """'key=value' -> (key, value parsed as YAML: numbers, booleans, null and lists work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value.")
    key, _, text = item.partition("=")
    try:
        value = load_yaml(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip(), value


def lora_off_overrides() -> list[str]:
    """load_config overrides that turn LoRA off for a run's saved config (evaluating its merged model): use_peft false
    and the LoRA options at their defaults, which are refused beside use_peft: false (config_owners)."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    shown = {None: "null", False: "false"}  # read back as YAML: "None" would be the text None
    return ["use_peft=false"] + [f"{k}={shown.get(defaults[k], defaults[k])}" for k in (
        "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora", "use_dora", "lora_modules_to_save")]


def load_config(path: str | Path | None, overrides: list[str] = (), preflab_overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config (safe loader) and apply key=value overrides (`objective_params.x=1` sets a nested key).

    The file's keys (none of a saved config: is_saved_config) and the overrides' are the options the user wrote
    (TrainConfig.written_options); preflab_overrides are applied after them and are preflab's own settings (an
    evaluation of a saved run: its data, no LoRA), not written by the user."""
    return config_with_overrides(_read_config_file(path) if path else {}, overrides, preflab_overrides, path)


def _read_config_file(path: str | Path) -> dict:
    """The mapping of options in the YAML file `path`; a ConfigError naming the file when it is missing, unreadable,
    not YAML, empty or not a mapping."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist.") from err
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as err:
        raise ConfigError(f"config file {path} cannot be read as text: {err}") from err
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from err
    if raw is None:
        raise ConfigError(f"config file {path} is empty (no options); give at least model_name_or_path and "
                          "dataset_name.")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options, got {type(raw).__name__}.")
    return raw


def config_with_overrides(raw: dict, overrides: list[str] = (), preflab_overrides: list[str] = (),
                          path=None) -> TrainConfig:
    """load_config on options already read (a saved run's config.yaml that an evaluation reads once: preflab.models.
    run_config.require_run_config); `raw` is not changed (the overrides apply to a copy). `path`: the file `raw` was
    read from, named in a type error of a value it sets (an override's type error names the override)."""
    import copy

    sources = dict.fromkeys(raw, f"set in {path}") if path else {}
    raw = copy.deepcopy(raw)
    written = written_keys(raw)
    given: dict[str, tuple[str, Any]] = {}
    for item, users in [(o, True) for o in overrides] + [(o, False) for o in preflab_overrides]:
        if item.strip().startswith("~"):  # Hydra's `~key`: drop a key the config file (or an earlier override) sets
            for dropped in drop_override(raw, item):
                written.discard(dropped)
                given.pop(dropped, None)
            continue
        key, value = parse_override(item)
        if users and value is None and _refuses_null(key):
            raise ConfigError(f"override {item!r}: {key} may not be null. To drop a {key} that the config file sets "
                              f"(it then takes its default and counts as not written), write '~{key}' instead.")
        if key in given and given[key][1] != value:  # the last wins, as argparse (TRL's HfArgumentParser), said
            from preflab.runlog import is_main_process

            if is_main_process():
                print(f"preflab: note: overrides {given[key][0]!r} and {item!r} set {key} twice; the last one "
                      "wins.", flush=True)
        given[key] = (item, value)
        if users:
            sources[key] = f"set by the override {item!r}"
        head, dot, sub = key.partition(".")
        if users:
            written |= written_keys({head: None if dot else value})
        if dot and head in NESTED_OPTIONS:  # recipe_params.iterations=3 sets one key of a dict option
            nested = raw.get(head)
            if nested is None:
                nested = raw[head] = {}
            if not isinstance(nested, dict):
                raise ConfigError(f"override {item!r}: {head} is {nested!r} in the config, not a mapping.")
            nested[sub] = value
        else:
            raw[key] = value
    refuse_glued_flow_keys(raw)
    return config_from_dict(raw, written, sources)


def drop_override(raw: dict, item: str) -> list[str]:
    """Apply the override `~key` (Hydra's spelling; TRL's parser has none): delete `key` from `raw`, the options read
    so far, so that it takes its TrainConfig default and is not written (an option a task refuses at any written
    value, e.g. loss_type under task: reward, can then be dropped from the command line). `~name.key` deletes one key
    of a mapping option (NESTED_OPTIONS); a key written under TRL's name (RENAMED) is dropped by either name.
    Returns the option names dropped; a key that is not there is a ConfigError (a typo would otherwise drop nothing)."""
    from preflab.config_trl import RENAMED
    from preflab.errors import nearest

    key = item.strip()[1:].strip()
    if "=" in key or not key:
        raise ConfigError(f"override {item!r}: '~KEY' drops KEY from the config, and takes no value; write "
                          f"'~{key.partition('=')[0]}' alone.")
    head, dot, sub = key.partition(".")
    if dot and head in NESTED_OPTIONS:
        nested = raw.get(head)
        if not isinstance(nested, dict) or sub not in nested:
            keys = sorted(nested) if isinstance(nested, dict) else []
            raise ConfigError(f"override {item!r}: the config sets no {head}.{sub} to drop ({head} holds "
                              f"{keys or 'nothing'}).{nearest(sub, keys)}")
        del nested[sub]
        return []
    names = [k for k in raw if k == key or RENAMED.get(k) == key or RENAMED.get(key) == k]
    if not names:
        present = ", ".join(map(str, raw)) or "nothing"
        raise ConfigError(f"override {item!r}: the config sets no {key} to drop (it sets {present})."
                          f"{nearest(key, [str(k) for k in raw])}")
    for name in names:
        del raw[name]
    return [RENAMED.get(n, n) for n in names] + names


def _refuses_null(key: str) -> bool:
    """Whether the TrainConfig option `key` (preflab's name) takes no null; False for other keys (TRL's names, an
    objective's parameters, nested keys), whose own checks speak."""
    hint = field_hints().get(key)
    return hint is not None and hint is not Any and type(None) not in typing.get_args(hint)


@functools.cache
def field_hints() -> dict:
    """{option: its type hint} of every TrainConfig field (not the written_options InitVar); read once."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def refuse_glued_flow_keys(raw: dict) -> None:
    """A mapping option written in YAML's flow style without a space after a colon, `{dim:3}` (on the command line:
    reward_head_params={dim:3}), is read by YAML as the one key 'dim:3' with no value; the option's own check then
    said "['dim:3'] are not fields of reward_head: gpm (it has ['dim', ...])", which does not say what is wrong.
    A ConfigError naming the option, the key as read and the spelling that works."""
    for option, value in raw.items():
        if not isinstance(value, dict):
            continue
        glued = [k for k, v in value.items() if v is None and isinstance(k, str) and ":" in k
                 and k.split(":", 1)[0].strip().isidentifier() and k.split(":", 1)[1].strip()]
        if glued:
            fixed = ", ".join(f"{k.split(':', 1)[0].strip()}: {k.split(':', 1)[1].strip()}" for k in glued)
            raise ConfigError(f"{option}: YAML read {', '.join(repr(k) for k in glued)} as "
                              f"{'a key' if len(glued) == 1 else 'keys'} with no value, because a flow mapping needs a "
                              f"space after each colon. Write {option}: {{{fixed}}} (on the command line, quoted: "
                              f"'{option}={{{fixed}}}').")


# options that are mappings: `name.key=value` on the command line sets one key of them
NESTED_OPTIONS = ("objective_params", "recipe_params", "vision_pair_params", "diffusion_noising",
                  "model_init_kwargs", "ref_model_init_kwargs", "teacher_model_init_kwargs", "reward_head_params", "lr_scheduler_kwargs",
                  "gradient_checkpointing_kwargs")


def preflight(cfg: TrainConfig, check_models: bool = True) -> None:
    """Checks of the machine, before any model or data is loaded: trackers installed, cache directory writable,
    model names loadable (a missing path, builtin typo or unreachable hub name is one ConfigError line)."""
    missing = missing_trackers(cfg.report_to)
    if missing:
        raise ConfigError(f"report_to names {', '.join(missing)}, which is not installed: pip install "
                          f"{' '.join(missing)} (or remove it from report_to).")
    from preflab.scoring.ref_cache import default_cache_dir

    cache = default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".write-test-"):
            pass
    except OSError as err:
        where = "PREFLAB_CACHE_DIR" if os.environ.get("PREFLAB_CACHE_DIR") else "the cache directory"
        raise ConfigError(f"{where} {cache} is not writable ({err.strerror or err}); point PREFLAB_CACHE_DIR at a "
                          "writable directory.") from err
    _check_file_splits(cfg)
    _check_dataset_configs(cfg)
    if check_models and cfg.task not in RECIPE_TASKS:
        from preflab.models.load import (check_model_name, check_not_a_reward_model, check_policy_not_adapter,
                                         check_remote_code, check_weights_safe)
        from preflab.models.quantize import check_quantization_machine

        check_quantization_machine(cfg)

        names = [("model_name_or_path", cfg.model_name_or_path)]
        if cfg.ref_model_name_or_path:
            names.append(("ref_model_name_or_path", cfg.ref_model_name_or_path))
        from preflab.models.model_kind import check_model_fits_task

        for option, name in names:
            check_model_name(name, option)
            check_model_fits_task(name, cfg.task, option)  # a pipeline under task: vlm, a VLM as a diffusion model
            # what the model load would refuse, before the data is read and tokenized
            check_weights_safe(name, cfg.allow_pickle)
            check_remote_code(name, cfg.trust_remote_code, option)
            if cfg.task in ("dpo", "sft", "online"):  # a causal LM loads there (a reward run starts from one too)
                check_not_a_reward_model(name, option)
                if option == "model_name_or_path":  # before the data is read (load_models checks it again)
                    check_policy_not_adapter(name)


def _check_file_splits(cfg: TrainConfig) -> None:
    """A split that a single local data file cannot hold is refused here, naming the option, rather than ignored
    (preflab.data.sources.file_split_missing: a single file is the split "train", as datasets loads it)."""
    from preflab.data.sources import file_split_missing

    for data, split in (("dataset_name", "dataset_split"), ("eval_dataset_name", "eval_split")):
        source = getattr(cfg, data)
        if not isinstance(source, (str, os.PathLike)) or not Path(source).expanduser().is_file():
            continue
        missing = file_split_missing(Path(source).expanduser(), getattr(cfg, split))
        if missing:
            raise ConfigError(f"{split}={getattr(cfg, split)!r}: {data}: {missing} Remove {split} (or set it to "
                              f"'train') to read the file, or set {data} to a directory holding one file per split "
                              "(train.jsonl, test.jsonl, ...).")


def _check_dataset_configs(cfg: TrainConfig) -> None:
    """dataset_config / eval_dataset_config that a local dataset_name / eval_dataset_name cannot honour (a file, a
    glob, a folder without that configuration in its README.md) is refused here, naming the option, rather than
    left unused (preflab.data.sources.local_config_problem); a hub name is checked when it loads."""
    from preflab.data.configured_source import eval_config
    from preflab.data.sources import local_config_problem

    checks = (("dataset_name", cfg.dataset_name, cfg.dataset_config, "dataset_config"),
              ("eval_dataset_name", cfg.eval_dataset_name, eval_config(cfg),
               "eval_dataset_config" if cfg.eval_dataset_config is not None else "dataset_config"))
    for data, name, config, option in checks:
        if config is None or not isinstance(name, (str, os.PathLike)) or not name:
            continue
        problem = local_config_problem(name, config, option, data)
        if problem:
            raise ConfigError(f"{data}={str(name)!r}: {problem}")


def describe_options() -> str:
    """Every option with its default, type, allowed values and meaning (from config_options), for --help."""
    hints = field_hints()
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = repr(default) if isinstance(default, str) else json.dumps(default)
        lines.append(help_line(f.name, _type_text(hints[f.name]), text))
    return "\n".join(lines)


def _type_text(hint) -> str:
    if hint is Any:
        return "any"
    args = typing.get_args(hint) or (hint,)
    return " | ".join("null" if a is type(None) else getattr(typing.get_origin(a) or a, "__name__", str(a))
                      for a in args)
