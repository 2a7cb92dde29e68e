"""The option table: for every TrainConfig field, its one-line meaning and the values it allows.

    OPTIONS["seed"]            -> Option(meaning="...", allowed="integer in [0, 2**32 - 1]", ok=<predicate>)
    range_errors(values)       -> one message per option whose value is outside its allowed range

`TrainConfig.check()` and `preflab train --help` both read this table, so the documented range and the enforced
range cannot drift apart. The field's type is checked separately (from the dataclass annotation); the range
check here runs only on a value of the right type and never on None (None means "unset" where the type allows it).
A field with no entry is still type-checked; `--help` shows it as "(undocumented)". A helper adding a block of
fields to TrainConfig adds their rows here.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Callable

from preflab.lr_schedule_options import SCHEDULE_KWARGS
from preflab.option_types import is_number, weight_value
from preflab.recipe_names import RECIPE_TASKS

SEED_MAX = 2**32 - 1  # numpy.random.seed (called by accelerate's set_seed) takes seeds below 2**32

# report_to: the trackers accelerate knows -> the module that must be importable for it
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "comet_ml": "comet_ml",
            "mlflow": "mlflow", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}
NO_TRACKER = ("none", "all")
# torch.compile: `mode` values (torch._inductor.list_mode_options(); they configure inductor only) and the backends
# that need nothing beyond torch (inductor, the default; the debugging ones; CUDA graphs alone)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")


@dataclass(frozen=True)
class Option:
    meaning: str                                # one line, for --help
    allowed: str = ""                           # allowed values in words ("" : any value of the field's type)
    ok: Callable[[Any], bool] | None = None     # the range check; None: only the type is checked


def above(low, meaning: str) -> Option:
    return Option(meaning, f"> {low}", lambda v: is_number(v) and v > low)


def at_least(low, meaning: str) -> Option:
    return Option(meaning, f">= {low}", lambda v: is_number(v) and v >= low)


def within(low, high, meaning: str, high_open: bool = False) -> Option:
    text = f"in [{low}, {high})" if high_open else f"in [{low}, {high}]"
    return Option(meaning, text, lambda v: is_number(v) and low <= v and (v < high if high_open else v <= high))


def one_of(choices, meaning: str) -> Option:
    return Option(meaning, "one of " + " | ".join(map(str, choices)), lambda v: v in choices)


def _nonempty(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _trackers_ok(v) -> bool:
    names = [v] if isinstance(v, str) else v
    return isinstance(names, (list, tuple)) and all(isinstance(n, str) and (n in TRACKERS or n in NO_TRACKER)
                                                    for n in names)


def _resume_ok(v) -> bool:
    return isinstance(v, bool) or _nonempty(v)


def _target_modules_ok(v) -> bool:
    return _nonempty(v) or (isinstance(v, (list, tuple)) and len(v) > 0 and all(_nonempty(x) for x in v))


def _loss_type_ok(v) -> bool:
    return _nonempty(v) or (isinstance(v, (list, tuple)) and len(v) > 0 and all(_nonempty(x) for x in v))


def _weights_ok(v) -> bool:
    return isinstance(v, (list, tuple)) and all(is_number(x) and x >= 0 for x in v)


def _init_kwargs_ok(v) -> bool:
    return isinstance(v, dict) and set(v) <= set(INIT_KWARGS)


# model_init_kwargs / ref_model_init_kwargs: the from_pretrained arguments preflab passes on (others are refused)
INIT_KWARGS = ("dtype", "torch_dtype", "attn_implementation", "revision", "low_cpu_mem_usage")
WEIGHT_DTYPES = ("float32", "bfloat16", "float16", "auto")

OPTIONS: dict[str, Option] = {
    # what to train
    "task": one_of(("dpo", "reward", "sft", "online", "vlm", "diffusion") + RECIPE_TASKS,
                   "what to train: a policy (any pairwise/unpaired objective), a reward model, supervised "
                   "fine-tuning (sft), an online / self-play / Nash run (online), a vision-language model (vlm), a "
                   f"diffusion pipeline, or a recipe ({', '.join(RECIPE_TASKS)}: preflab.recipes)"),
    "model_name_or_path": Option("the policy: hub name, local directory, or builtin:tiny-llama|tiny-qwen2|tiny-gpt2",
                                 "a non-empty name", _nonempty),
    "ref_model_name_or_path": Option("the reference model (TRL: ref_model); default: a frozen copy of the policy",
                                     "a non-empty name or null", _nonempty),
    "dataset_name": Option("training data: hub name, save_to_disk directory, folder of data files, "
                           ".jsonl/.json/.parquet/.csv/.arrow file (.jsonl/.json/.csv also .gz/.bz2/.xz), or a glob",
                           "a non-empty name", _nonempty),
    "dataset_config": Option("configuration (subset) of dataset_name, as datasets.load_dataset(dataset_name, "
                             "dataset_config) reads it (TRL script: dataset_config): a hub dataset's, or a local "
                             "folder's README.md `configs:`; a data file has none", "a non-empty name or null",
                             _nonempty),
    "dataset_columns": Option("which dataset column each preflab field is read from, {preflab field: your column} "
                              "(e.g. {prompt: question, chosen: good, rejected: bad}); applies to dataset_name, "
                              "eval_dataset_name and `preflab eval --data` of the run",
                              "a mapping {field: column} of names"),
    "dataset_split": Option("split of dataset_name to train on (TRL script: dataset_train_split)", "a non-empty name",
                            _nonempty),
    "eval_dataset_name": Option("evaluation data (same forms as dataset_name); excludes eval_fraction",
                                "a non-empty name or null", _nonempty),
    "eval_dataset_config": Option("configuration (subset) of eval_dataset_name; default: dataset_config when "
                                  "eval_dataset_name is dataset_name, else none", "a non-empty name or null",
                                  _nonempty),
    "eval_split": Option("split of the eval data (TRL script: dataset_test_split); default: 'test' of a source "
                         "with splits, a single data file read whole", "a non-empty name or null", _nonempty),
    "eval_fraction": within(0, 1, "fraction of training rows held out for evaluation (0: none)", high_open=True),
    "loss_type": Option("objective name or TRL loss_type alias, or a list (weighted by loss_weights); "
                        "see `preflab objectives`", "a name or a non-empty list of names", _loss_type_ok),
    "loss_weights": Option("weights of the loss_type list (TRL's MPO); default 1.0 each",
                           "a list of numbers >= 0, one per loss_type", _weights_ok),
    "beta": Option("inverse temperature / KL weight of the objective (its own check applies)"),
    "objective_params": Option("further objective parameters by name (or give them as top-level keys)"),
    "center_rewards_coefficient": at_least(0, "task: reward; adds c * mean((r_w + r_l)^2) (TRL)"),
    "reward_head": one_of(("bt", "gpm", "multi_objective", "em_mixture"), "task: reward; bt: Bradley-Terry scalar "
                          "reward (TRL RewardTrainer), gpm: general preference model (preflab.reward_models.gpm), "
                          "multi_objective: DPA attribute regression on rated rows, em_mixture: MaxMin-RLHF's EM "
                          "mixture of K BT models over users (preflab.reward_models.maxmin_train)"),
    "reward_head_params": Option("task: reward; the head's fields: bt {tau}, gpm {dim, tau, normalize}, "
                                 "multi_objective {attributes, response_field, attribute_reduction}, em_mixture {num_components, "
                                 "em_iterations, user_column, group_column, hard, init, tau} (unknown keys are "
                                 "errors)"),
    "use_weighting": Option("TRL 1.16's use_weighting (WPO): each pair's loss times exp(mean_t adjusted log p of "
                            "chosen + of rejected), not clamped, no gradient through the weight (task: dpo)"),
    "router_aux_loss_coef": at_least(0, "TRL's router_aux_loss_coef: a mixture-of-experts policy's loss gets this "
                                        "x its routers' load-balancing loss (aux_loss); null: the model config's "
                                        "coefficient, 0: none (tasks dpo, sft; preflab.scoring.router_loss)"),
    "rpo_alpha": at_least(0, "TRL's rpo_alpha: adds rpo_alpha * mean token NLL of the chosen responses "
                             "(loss_type + ['sft'])"),
    # optimisation
    "learning_rate": above(0, "peak AdamW learning rate (not given: task sft 2e-5, task reward 1e-4, TRL's defaults)"),
    "lr_scheduler_type": one_of(tuple(SCHEDULE_KWARGS), "transformers' get_scheduler schedule (warmup from 0; "
                                "constant has no warmup, constant_with_warmup has; kwargs in "
                                "lr_scheduler_kwargs; reduce_lr_on_plateau: cut by factor after patience evaluations "
                                "without improvement of metric_for_best_model, no warmup)"),
    "lr_scheduler_kwargs": Option("TRL's lr_scheduler_kwargs: the schedule's keyword arguments (cosine num_cycles; "
                                  "cosine_with_min_lr min_lr or min_lr_rate; polynomial lr_end, power; "
                                  "warmup_stable_decay num_decay_steps, ...; unknown keys are errors)"),
    "warmup_steps": at_least(0, "linear warmup steps (give warmup_steps or warmup_ratio, not both)"),
    "warmup_ratio": within(0, 1, "warmup as a fraction of the total steps"),
    "weight_decay": at_least(0, "weight decay of every parameter but biases and norm weights, as transformers' "
                                "Trainer groups them (AdamW, adafactor: decoupled; sgd, adagrad, rmsprop: L2 added "
                                "to the gradient)"),
    "adam_beta1": within(0, 1, "AdamW beta1", high_open=True),
    "adam_beta2": within(0, 1, "AdamW beta2", high_open=True),
    "adam_epsilon": above(0, "AdamW epsilon"),
    "optim": Option("transformers' optimizer name: adamw_torch_fused (default) / adamw_torch (torch AdamW), "
                    "adafactor (transformers' Adafactor, lr = learning_rate), sgd, adagrad, rmsprop (torch's); "
                    "bitsandbytes' (pip install \"preflab[bnb]\"): adamw_8bit / adamw_bnb_8bit, paged_adamw_8bit, "
                    "paged_adamw_32bit, lion_8bit, lion_32bit, paged_lion_*, rmsprop_bnb(_8bit, _32bit), ademamix"
                    "(_8bit), paged_ademamix_* (paged: CUDA only); other packages' optimizers are refused",
                    "adamw_torch_fused | adamw_torch | adamw_hf | adafactor | sgd | adagrad | rmsprop | "
                    "adamw_8bit | paged_adamw_8bit | lion_8bit | ..."),
    "optim_args": Option("TRL's optim_args: \"key=value,...\" for sgd (momentum, dampening, nesterov), adagrad "
                         "(lr_decay, eps), rmsprop (momentum, alpha, eps, centered), ademamix* (beta1, beta2, beta3, "
                         "alpha, eps, t_alpha, t_beta3); keys an optimizer does not read are errors"),
    "max_grad_norm": Option("clip the global gradient norm to this (0: no clipping)", ">= 0",
                            lambda v: is_number(v) and v >= 0),
    "per_device_train_batch_size": above(0, "pairs per micro-batch per process"),
    "per_device_eval_batch_size": above(0, "pairs per evaluation batch per process"),
    "gradient_accumulation_steps": above(0, "micro-batches per optimizer step"),
    "max_steps": Option("optimizer steps; -1: use num_train_epochs", "-1 or > 0",
                        lambda v: isinstance(v, int) and (v == -1 or v > 0)),
    "num_train_epochs": above(0, "epochs over the training rows (when max_steps is -1)"),
    "seed": Option("seed of data order, initialisation and sampling", f"integer in [0, {SEED_MAX}]",
                   lambda v: isinstance(v, int) and 0 <= v <= SEED_MAX),
    "data_seed": Option("TRL: seed of the data order alone (null: seed); initialisation, dropout and sampling "
                        "keep seed", f"null or integer in [0, {SEED_MAX}]",
                        lambda v: isinstance(v, int) and 0 <= v <= SEED_MAX),
    "group_by_length": Option("transformers: order the rows in mega-batches of 50 global batches sorted by token "
                              "count, longest first (tasks dpo, sft; seeded like the random order)"),
    "dtype": one_of(("float32", "bfloat16", "float16"), "compute precision (autocast; master weights stay float32)"),
    "bf16": Option("TRL spelling of dtype: bfloat16"),
    "fp16": Option("TRL spelling of dtype: float16"),
    "load_dtype": one_of(WEIGHT_DTYPES, "dtype the weights are loaded and trained in (TRL: torch_dtype / "
                                        "model_init_kwargs.dtype); null: float32"),
    "model_init_kwargs": Option("TRL: from_pretrained arguments of the policy (a builtin: model takes only a dtype; "
                                "the others are refused there)", "a mapping with keys among "
                                + ", ".join(INIT_KWARGS), _init_kwargs_ok),
    "ref_model_init_kwargs": Option("TRL: from_pretrained arguments of ref_model_name_or_path",
                                    "a mapping with keys among " + ", ".join(INIT_KWARGS), _init_kwargs_ok),
    "teacher_model_name_or_path": Option("task: sft: distil from this teacher (TRL DistillationConfig / GKDConfig): "
                                         "the generalized JSD to its next-token distributions on the dataset's "
                                         "completions replaces the NLL", "a non-empty name or null", _nonempty),
    "teacher_model_init_kwargs": Option("TRL: from_pretrained arguments of teacher_model_name_or_path",
                                        "a mapping with keys among " + ", ".join(INIT_KWARGS), _init_kwargs_ok),
    "lmbda": Option("TRL GKD: share of the steps whose completions the student samples (on-policy distillation; "
                    "0: the dataset's completions, preflab's default; GKDConfig's is 0.5, and a config with "
                    "max_new_tokens gets it; 1: TRL's DistillationTrainer)",
                    "a number in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1),
    "divergence_temperature": Option("task: sft with a teacher: the temperature of the divergence's two softmaxes "
                                     "(null: `temperature`, TRL DistillationTrainer's rule; a saved GKDConfig: 1.0, "
                                     "GKDTrainer's loss)", "a positive number or null",
                                     lambda v: v is None or (is_number(v) and v > 0)),
    "seq_kd": Option("TRL GKD: on the steps that are not on-policy, distil on completions the teacher samples for "
                     "the rows' prompts (sequence-level KD); needs max_completion_length"),
    "max_nonfinite_steps": above(0, "stop after this many non-finite steps in a row"),
    "disable_dropout": Option("set every dropout probability to 0 in policy and reference"),
    "gradient_checkpointing": Option("recompute activations in the backward pass (less memory, slower)"),
    "gradient_checkpointing_kwargs": Option("TRL / transformers: keyword arguments of torch.utils.checkpoint for "
                                            "gradient_checkpointing (use_reentrant, preserve_rng_state, "
                                            "determinism_check, debug; null: use_reentrant false)"),
    "torch_empty_cache_steps": at_least(1, "TRL / transformers: empty the device's cache (torch.cuda.empty_cache) "
                                           "every N optimizer steps, as transformers' Trainer (null: never; the CPU "
                                           "has none: a note)"),
    "activation_offloading": Option("TRL: keep the tensors a training forward saves for backward in host memory, "
                                    "copied back for the backward (less GPU memory, same gradients; not under FSDP "
                                    "/ DeepSpeed)"),
    "torch_compile": Option("torch.compile the policy's and the reference's scorers (preflab.scoring.compile)"),
    "torch_compile_backend": one_of(COMPILE_BACKENDS, "TRL: torch.compile backend (null: inductor); sets torch_compile"),
    "torch_compile_mode": one_of(COMPILE_MODES, "TRL: torch.compile mode of the inductor backend (null: default); sets "
                                        "torch_compile"),
    # data
    "max_length": above(1, "max tokens of prompt + response (null: no limit); capped at the model's positions"),
    "max_prompt_length": above(0, "max prompt tokens (TRL 0.x), the prompt's end kept unless truncation_mode: keep_start (null: no limit)"),
    "max_completion_length": above(0, "max response tokens, keeping the start (null: no limit; counted in the "
                                      "data report); task: online: max new tokens per completion (default 16; "
                                      "a number, null is refused there)"),
    "truncation_mode": one_of(("keep_end", "keep_start"), "which end of a sequence longer than max_length is kept "
                              "(TRL 1.16; keep_end cuts the prompt's start, per sequence) and of a prompt longer than "
                              "max_prompt_length (null: sequences keep their start, as TRL's default, a prompt its "
                              "end; task: online: prompts keep their end, keep_start is refused)"),
    "on_bad_row": one_of(("error", "skip"), "a bad data row stops the run, or is skipped and counted"),
    "layout": one_of(("padded", "prefix_shared", "packed", "prefix_packed"),
                     "batch layout (preflab.data.prefix); TRL padding_free: true -> prefix_packed"),
    "attention": one_of(("auto", "segments", "dense"), "attention of prefix-shared and packed rows: per segment, "
                        "only the allowed pairs (preflab.models.segment_attention; auto: where the model supports it), "
                        "or the dense 4-D mask"),
    "precompute_ref_log_probs": Option("score the reference once before training and release it"),
    "sync_ref_model": Option("TR-DPO (TRL): every ref_model_sync_steps steps the reference becomes alpha * policy + "
                             "(1 - alpha) * reference (task: dpo, a separate reference model)"),
    "ref_model_mixup_alpha": Option("TR-DPO's alpha: the policy's share in the reference after a sync (1: the "
                                    "reference becomes the policy)", "in (0, 1]",
                                    lambda v: is_number(v) and 0 < v <= 1),
    "neftune_noise_alpha": above(0, "NEFTune (TRL): U(-1, 1) * alpha / sqrt(L * d) noise on the input embeddings "
                                    "while training (task dpo with layout padded, sft without packing, reward; "
                                    "null: none)"),
    "ref_model_sync_steps": at_least(1, "TR-DPO's tau: optimizer steps between reference syncs"),
    "dataset_num_proc": above(0, "processes that tokenize the data on a cache miss (TRL; null: one)"),
    "chunk_tokens": above(0, "LM-head chunk in positions (null: automatic, sized by the device's memory)"),
    "pad_to_multiple_of": above(0, "TRL: batch rows padded to a multiple of this length, so attention and kernel "
                                   "shapes repeat across batches (GPUs: 64 or 128; null: no rounding)"),
    # evaluation schedule (TRL)
    "eval_strategy": one_of(("no", "steps", "epoch"), "TRL: when to evaluate (null: eval_steps decides)"),
    "generate_during_eval": Option("at each evaluation, write greedy generations of the policy (and reference) "
                                   "for the first 4 eval prompts to eval_samples.jsonl (TRL)"),
    # models
    "use_peft": Option("train LoRA adapters instead of all weights (a policy passed from Python must carry them)"),
    "lora_r": above(0, "LoRA rank"),
    "lora_alpha": above(0, "LoRA scaling numerator (scale = lora_alpha / lora_r)"),
    "lora_dropout": within(0, 1, "dropout on the LoRA input", high_open=True),
    "use_rslora": Option("TRL's use_rslora: rank-stabilised LoRA, adapter scale lora_alpha / sqrt(lora_r) instead of "
                         "lora_alpha / lora_r (Kalajdzievski 2023)"),
    "use_dora": Option("TRL's use_dora: weight-decomposed LoRA (DoRA, Liu et al. 2024): a trained magnitude vector "
                       "per adapted layer beside the adapters"),
    "lora_modules_to_save": Option("TRL's lora_modules_to_save: module names (suffixes) trained whole beside the "
                                   "adapters (PEFT modules_to_save, e.g. [lm_head, embed_tokens]); saved with the "
                                   "adapters", "a list of module names",
                                   lambda v: v is None or (isinstance(v, (list, tuple)) and all(
                                       isinstance(n, str) and n for n in v))),
    "lora_target_modules": Option("module names (suffixes) that get adapters, or all-linear",
                                  "all-linear, a name, or a non-empty list of names", _target_modules_ok),
    "trust_remote_code": Option("run model code shipped with a hub model (off: refused)"),
    "allow_pickle": Option("allow .bin/.pt weights (pickle); off: safetensors only"),
    # output
    "output_dir": Option("where metrics, checkpoints and the final model go", "a non-empty path", _nonempty),
    "logging_steps": above(0, "write a metrics row every this many steps"),
    "logging_first_step": Option("also write a metrics row after the first optimizer step (TRL / transformers); "
                                 "a resumed run past step 1 does not write it again"),
    "eval_steps": at_least(0, "evaluate every this many steps (0: only at the end, when there is an eval set)"),
    "eval_on_start": Option("TRL: evaluate the starting model before the first step, logged at step 0 (a resumed "
                            "run: at its checkpoint's step); not a best-model candidate (transformers); needs an eval "
                            "set"),
    "eval_delay": at_least(0, "TRL's eval_delay: no evaluation before this many steps (eval_strategy epoch: "
                              "epochs), the final one included; eval_on_start and a callback's should_evaluate "
                              "still evaluate (transformers)"),
    "save_steps": at_least(0, "checkpoint every this many steps (0: no intermediate checkpoints; TRL's "
                                "default is 500, and a 500+ step run relying on 0 is told so)"),
    "save_strategy": one_of(("best", "epoch"), "TRL's save_strategy best: a checkpoint at each evaluation that "
                                                "improves metric_for_best_model; epoch: one at the end of each epoch "
                                                "(save_steps unused by both); null: save_steps decides (TRL's steps / "
                                                "no set save_steps)"),
    "save_total_limit": above(0, "keep at most this many checkpoints (null: keep all; the best checkpoint is always "
                                 "kept under metric_for_best_model)"),
    "save_only_model": Option("TRL: checkpoints hold the model only (no optimizer, scheduler or RNG state): "
                              "smaller, but a run cannot resume from them; load_best_model_at_end still works"),
    "push_to_hub": Option("TRL: upload the final model folder to the Hub repository hub_model_id (and checkpoints as "
                          "hub_strategy says) from the main process; a failed upload is an error (local files kept)"),
    "hub_model_id": Option("TRL: the Hub repository (null: output_dir's folder name, in the token's namespace)",
                           "a non-empty name or null", lambda v: v is None or (isinstance(v, str) and v.strip() != "")),
    "hub_strategy": one_of(("end", "every_save", "checkpoint", "all_checkpoints"),
                           "TRL: what push_to_hub uploads besides the final model: end nothing; every_save each "
                           "checkpoint's weights to last-checkpoint/; checkpoint the whole checkpoint there; "
                           "all_checkpoints each to checkpoint-N/"),
    "hub_private_repo": Option("TRL: create the repository private (an existing one keeps its visibility)"),
    "hub_token": Option("TRL: the token push_to_hub uploads with (null: HF_TOKEN or `hf auth login`); never written "
                        "to config.yaml"),
    "hub_revision": Option("TRL: the branch push_to_hub commits to (created from main when missing)"),
    "load_best_model_at_end": Option("TRL: the final model (output_dir) is the best checkpoint's weights by "
                                     "metric_for_best_model; needs save_steps a multiple of eval_steps"),
    "metric_for_best_model": Option("TRL: the eval metric that ranks checkpoints (eval_ is added when missing; "
                                    "null: loss with load_best_model_at_end); also read by EarlyStoppingCallback"),
    "greater_is_better": Option("TRL: a higher metric_for_best_model is better (null: false when the name ends in "
                                "loss, else true)"),
    "resume_from_checkpoint": Option("true: the latest checkpoint in output_dir; auto: that one when output_dir holds "
                                     "one, else a fresh start (a job a scheduler restarts with the same command); "
                                     "or a checkpoint path", "true, false, null, auto or a non-empty path", _resume_ok),
    "report_to": Option("trackers that also receive every metrics row",
                        "none, all, or a name or list among " + " | ".join(TRACKERS), _trackers_ok),
    "disable_tqdm": Option("no progress bar"),
    "use_cpu": Option("train on the CPU even when an accelerator is present"),
    # streaming data (preflab.loops.streaming)
    "streaming": Option("task: dpo | sft; read, check, tokenize and batch rows as training goes (TRL: "
                        "dataset_streaming); needs max_steps; resume re-reads up to the saved position"),
    "streaming_shuffle_buffer": at_least(0, "streaming: rows held by the seeded shuffle buffer (0: source order)"),
    # quantized base for QLoRA (preflab.models.quantize)
    "load_in_4bit": Option("QLoRA: load the base in 4 bits through bitsandbytes (needs use_peft, a CUDA GPU and "
                           "pip install bitsandbytes) (TRL ModelConfig)"),
    "load_in_8bit": Option("load the base in 8 bits (LLM.int8()) through bitsandbytes (needs use_peft and a CUDA GPU)"),
    "bnb_4bit_quant_type": one_of(("nf4", "fp4"), "load_in_4bit: the 4-bit data type (TRL ModelConfig)"),
    "use_bnb_nested_quant": Option("load_in_4bit: double quantization of the block constants (TRL ModelConfig)"),
    "bnb_4bit_compute_dtype": one_of(("float32", "bfloat16", "float16"), "load_in_4bit: dtype the 4-bit weights "
                                     "are dequantized to and stored as (null: load_dtype, else bfloat16)"),
    # vision-language runs (task: vlm)
    "processor_name_or_path": Option("task: vlm; AutoProcessor source (default: model_name_or_path)",
                                     "a non-empty name or null", _nonempty),
    "freeze_vision_tower": Option("task: vlm; the vision encoder's weights stay fixed (and get no LoRA)"),
    "freeze_multi_modal_projector": Option("task: vlm; also fix the vision-to-text projector / merger"),
    "max_frames": above(0, "task: vlm; frames kept per video, evenly spaced"),
    "vision_pairs": one_of(("given", "pami_vdpo", "cat_adpo"),
                           "task: vlm; pairs as given, or built by PaMi-VDPO / CAT-ADPO (preflab.data.vision_pairs)"),
    "vision_pair_params": Option("task: vlm; the pair builder's parameters"),
    "clue_aggregator": Option("task: vlm; add CAT's question-conditioned clue aggregator to the model"),
    # diffusion runs (task: diffusion)
    "resolution": above(0, "diffusion: images are resized (shorter side) and centre-cropped to this square"),
    "image_resize": Option("diffusion: false = an image of another size is a bad row"),
    "diffusion_noising": Option("diffusion: PairNoiser overrides (mode: forward | ddim_invert, num_inversion_steps, "
                                "inversion_eta, renoise_iters, grid_snap: exact | floor, steps_offset, min_timestep, "
                                "max_timestep)"),
    "cache_encodings": Option("diffusion: encode every image (VAE) and caption (text encoder) once before training"),
    "user_column": Option("ppd: the column naming each row's user", "a non-empty name", _nonempty),
    "user_embedding_tokens": above(0, "ppd: L_u, tokens of a learned user embedding"),
    "user_embedding_dim": above(0, "ppd: d_u, width of a learned user embedding token"),
    "user_embeddings": Option("ppd: safetensors file {user_id: [L_u, d_u] or [S, L_u, d_u] few-shot subsets} of "
                              "precomputed user embeddings (fixed; a pair draws a subset each epoch, eval reads "
                              "subset 0)",
                              "a non-empty path or null", _nonempty),
    "user_embedding_dropout": within(0, 1, "ppd: probability that a training pair's user embedding is zeroed "
                                     "(drawn per pair and epoch; 0 = off)", high_open=True),
    "caption_perturbation": one_of(("none", "weak", "medium", "strong"),
                                   "dcpo: build a missing caption_rejected by perturbing the caption"),
    "score_range": Option("smpo_diffusion: [s_min, s_max] normalising reward scores (default: PickScore's)"),
    "self_npo_ema_decay": Option("self_npo: teacher <- decay * teacher + (1 - decay) * student after each step",
                                 "in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1),
    "self_npo_num_ddim_steps": above(0, "self_npo: K of the truncated-rollout DDIM grid"),
    # 0 is a real choice, not a typo: no rollout, t_e = t_s and the target is the teacher's x0-prediction at the
    # noised start (preflab.diffusion.self_npo.truncated_teacher_target runs its loop zero times); the run's own
    # check (loops.diffusion.check_diffusion_options) has always taken >= 0
    "self_npo_rollout_steps": at_least(0, "self_npo: teacher DDIM steps per example (the truncation; 0: none, the "
                                       "target is the teacher's x0-prediction at the noised start)"),
    "self_npo_teacher_guidance": Option("self_npo: LCM-convention teacher guidance (-1 = the unconditional "
                                        "prediction)"),
    "sample_steps": Option("diffusion: DDIM steps when sampling images (samples.png, eval, demo; 0: none)", ">= 0",
                           lambda v: is_number(v) and v >= 0),
    "guidance_scale": Option("diffusion: classifier-free guidance scale when sampling (1 = none)", ">= 0",
                             lambda v: is_number(v) and v >= 0),
    "flux_guidance": Option("diffusion, Flux-dev: the guidance embedding's value in training and sampling "
                            "(train_dreambooth_lora_flux's --guidance_scale; unused by Flux-schnell)", ">= 0",
                            lambda v: is_number(v) and v >= 0),
    "hypo_online_samples": Option("task: dpo, loss_type: hypo; k fresh samples of the policy per pair's prompt per "
                                  "step for the online KL term (RLOO needs k >= 2)", ">= 2",
                                  lambda v: is_number(v) and v >= 2),
    # online runs (task: online; preflab.online_options checks the block and fills the recipe's defaults)
    "trainer": Option("task: online; the recipe (preflab.online.trainers): online_dpo, grpo, sppo, egpo, ..."),
    "online_task": one_of(("dataset", "vision_dataset", "demo", "game"), "task: online; prompts + judge: dataset "
                          "prompts, image prompts for an image-text policy (preflab.online.vision), the demo's "
                          "loud echo, or the preference game"),
    "reward_funcs": Option("task: online; judge(s): demo_true_reward | verifier:<name> | module:attr | model dir"),
    "reward_weights": Option("task: online; one weight per judge in reward_funcs (TRL); default 1 each",
                             "a list of finite numbers", lambda v: isinstance(v, (list, tuple)) and
                             all(weight_value(w) is not None for w in v)),
    "tools": Option("task: online, group recipes, online_task dataset; tool functions the model may call (TRL "
                    "GRPOTrainer's tools=): calculator | python (sandboxed) | module:function | path/to/file.py:function "
                    "(preflab.online.tool_calling)"),
    "environment_factory": Option("task: online, group recipes, online_task dataset; stateful environments whose "
                                  "public methods are tools (TRL GRPOTrainer's environment_factory): module:Class | "
                                  "path/to/file.py:function, or {name: ...} with each row's 'environment' column "
                                  "(preflab.online.environments); without dataset_name, reset's text is each "
                                  "prompt (TRL's train_dataset=None)", "a 'module:name' / 'file.py:name' string or a "
                                  "mapping of names to such strings",
                                  lambda v: v is None or isinstance(v, str) or (isinstance(v, dict) and bool(v) and all(
                                      isinstance(k, str) and isinstance(x, str) for k, x in v.items()))),
    "max_tool_calling_iterations": Option("task: online with tools; tool-calling turns per completion (TRL "
                                          "GRPOConfig; null: no limit but max_completion_length)", ">= 0 (null: no "
                                          "limit)", lambda v: v is None or (is_number(v) and v >= 0 and v == int(v))),
    "tool_timeout_s": Option("task: online with tools; one tool call's wall-clock limit in seconds: a call past it "
                             "gives the model an error observation and counts as a failure and a timeout (the call "
                             "is abandoned in a background thread); null: no limit (TRL has none)",
                             "> 0 and finite (null: no limit)",
                             lambda v: v is None or (is_number(v) and 0 < v < math.inf)),
    "reward_aggregator": Option("task: online; a PRO orchestrator folder (task: pro_orchestrator's adapter/): "
                                "per-prompt weights over reward_funcs instead of reward_weights", "a non-empty path",
                                _nonempty),
    "num_generations": above(0, "task: online; K completions sampled per prompt per generation round"),
    "prompts_per_generation": above(0, "task: online; prompts per generation round (all processes together)"),
    "steps_per_generation": above(0, "task: online; optimizer steps on one round's slices (TRL GRPO)"),
    "num_iterations": above(0, "task: online; passes over each generation round (TRL GRPO's mu)"),
    "temperature": above(0, "task: online; sampling temperature (log-probs are at temperature 1)"),
    "top_p": Option("task: online and distillation sampling (lmbda > 0, seq_kd); nucleus sampling (1: the full "
                    "distribution)", "in (0, 1]", lambda v: is_number(v) and 0 < v <= 1),
    "top_k": at_least(0, "task: online and distillation sampling; sample from the k most likely tokens only (0: off; "
                         "TRL GRPOConfig, DistillationConfig)"),
    "min_p": within(0, 1, "task: online and distillation sampling; drop tokens below min_p x the top token's "
                          "probability (null: off; TRL)"),
    "repetition_penalty": above(0, "task: online and distillation sampling; transformers' repetition penalty while "
                                   "sampling (1: none; TRL)"),
    "shuffle_dataset": Option("task: online; each generation round's prompts are drawn at random (seeded); false: in "
                              "dataset order, rounds of prompts_per_generation consecutive prompts, as TRL GRPOConfig"),
    "chat_template_kwargs": Option("task: online, online_task dataset; arguments of the chat template of "
                                   "conversational prompts, e.g. {enable_thinking: false} (TRL GRPOConfig; a prompt "
                                   "row's own chat_template_kwargs column adds to them)"),
    "generation_batch_size": above(0, "task: online; prompts per generate() call"),
    "generation_backend": one_of(("transformers", "vllm"), "task: online; vllm needs pip install preflab[vllm]"),
    "pair_builder": Option("task: online; pairs from a judged group: best_vs_worst | all_pairs | rso | "
                           "module:function | path/to/file.py:function"),
    "rso_beta": above(0, "task: online, rso pairs: temperature of pi_ref exp(r / rso_beta)"),
    "rso_num_samples": above(0, "task: online, rso pairs: accepted samples per prompt, 2 to num_generations (the "
                                "default 4 is lowered to num_generations where that is smaller)"),
    "refresh_reference_every": Option("task: online; 0: reference pi_0 throughout; n: reference <- policy every n "
                                      "rounds", ">= 0", lambda v: is_number(v) and v >= 0),
    "missing_eos_penalty": Option("task: online; subtracted from the score of a completion without eos (TRL)"),
    "preference_temperature": Option("task: online; reward -> P(a>b): 0 gives 1[r_a>r_b], t>0 sigmoid(dr/t)",
                                     ">= 0", lambda v: is_number(v) and v >= 0),
    "max_judge_failure_fraction": Option("task: online; stop when more of a round's completions fail to be judged",
                                         "in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1),
    "judge_timeout_s": Option("task: online; stop the run when one call of a judge (reward function on a batch, "
                              "reward model, preference model on a group; also the reward_aggregator and a user "
                              "pair_builder) takes longer than this many seconds; "
                              "null: no limit (TRL has none)", "> 0 and finite (null: no limit)",
                              lambda v: is_number(v) and 0 < v < math.inf),
    "epsilon": above(0, "task: online, GRPO family: clip range (TRL)"),
    "epsilon_high": above(0, "task: online, GRPO family: upper clip range (DAPO clip-higher); null: epsilon"),
    "scale_rewards": one_of(("group", "batch", "none"), "task: online, GRPO family: advantage scale (TRL)"),
    "mask_truncated_completions": Option("task: online, GRPO family: a completion without eos (cut at "
                                         "max_completion_length) is left out of the loss (TRL; DAPO's overlong "
                                         "filtering)"),
    "normalize_advantages": Option("task: online, trainer rloo: advantages (A - mean) / (std + 1e-4) over the "
                                   "generation round (TRL RLOOConfig)"),
    "reward_clip_range": Option("task: online, trainer rloo: [min, max] clamp of the rewards before the KL penalty "
                                "and the baseline (TRL RLOOConfig); null: none", "[min, max] with min <= max",
                                lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == 2 and
                                                        all(is_number(x) for x in v) and v[0] <= v[1])),
    "num_generations_eval": Option("task: online, GRPO family and rloo with an eval set: each held-out prompt "
                                   "answered this many times, sampled as in training, eval_reward their mean "
                                   "(TRL); null: one greedy answer", ">= 1 (null: greedy)",
                                   lambda v: v is None or (isinstance(v, int) and v >= 1)),
    "cast_lm_head_to_fp32": Option("task: online, GRPO family: the LM head of the policy and its reference computed "
                                   "in float32 (TRL; ScaleRL)"),
    "multi_objective_aggregation": one_of(("sum_then_normalize", "normalize_then_sum"), "task: online, GRPO family: "
                                          "sum the judges' weighted rewards then normalise (TRL's default), or "
                                          "normalise each judge's in its group first (GDPO)"),
    "game_preferences": Option("task: online, game: K x K P[i][j] = P(answer i beats j), P + P^T = 1"),
    "game_eta": Option("task: online, game: inpo / nash_md step, eta * beta", "in (0, 1]",
                       lambda v: is_number(v) and 0 < v <= 1),
    "apo_alpha": Option("task: online, game, trainer apo: extrapolation (momentum) on the iterates and the "
                        "round-start parameters", ">= 0",
                        lambda v: is_number(v) and v >= 0),
    # the demo task has 64 held-out prompts (preflab.demo.task.make_splits' n_eval): more ran as 64, silently
    "heldout_prompts": within(1, 64, "task: online, demo: held-out prompts for true_reward_before/after (the demo "
                                     "task has 64)"),
    "upo_fraction": Option("task: online, trainer upo: share of the agreeing pairs kept per round", "in (0, 1]",
                           lambda v: is_number(v) and 0 < v <= 1),
    "upo_mu": above(0, "task: online, trainer upo: reliable-pair sampling weights (1 - BALD)^mu"),
    "upo_selection": Option("task: online, trainer upo: sample (weights (1 - BALD)^mu) | lowest (lowest BALD)",
                            "sample | lowest", lambda v: v in ("sample", "lowest")),
    "upo_temperature": above(0, "task: online, trainer upo: judge t's P(chosen > rejected) = sigmoid(dr_t / temp)"),
    "upo_alpha_max": Option("task: online, trainer upo: smoothing alpha = alpha_max * BALD / ln 2", "in [0, 0.5)",
                            lambda v: is_number(v) and 0 <= v < 0.5),
    "upo_uncertainty": one_of(("judges", "mc_dropout"), "task: online, trainer upo: the BALD passes: one per judge "
                              "(judges) or upo_passes dropout passes of the reward model (mc_dropout, the paper's)"),
    "upo_passes": Option("task: online, trainer upo, upo_uncertainty mc_dropout: dropout passes T (paper: 10)",
                         "an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "mcts_iterations": above(0, "task: online, trainer mcts_dpo: simulations per committed decision "
                                "(4 x at the prompt's first decision, as released)"),
    "mcts_num_actions": Option("task: online, trainer mcts_dpo: samples per expansion", ">= 2",
                               lambda v: is_number(v) and v >= 2),
    "mcts_depth_limit": above(0, "task: online, trainer mcts_dpo: steps per answer (the last takes the rest)"),
    "mcts_step_delimiter": Option("task: online, trainer mcts_dpo: a step ends with this one-token string (or eos)"),
    "tpo_tree_depth": Option("task: online, trainer tpo: levels of the preference tree, num_generations branches "
                             "a node (1: the K samples of the prompt)", "an integer >= 1",
                             lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "tpo_step_delimiter": Option("task: online, trainer tpo, tpo_tree_depth > 1: a step ends with this one-token "
                                 "string (or eos)"),
    "mcts_value": one_of(("rollout", "self_eval"), "task: online, trainer mcts_dpo: a child's value: the judge's score "
                         "of a rollout (rollout) or the policy's self-evaluation + the outcome at the end (self_eval)"),
    "mcts_self_eval_weight": at_least(0, "task: online, trainer mcts_dpo, mcts_value self_eval: w in v = w conf / "
                                         "max(d - 3, 1) + outcome"),
    "recipe_params": Option(f"task: {' | '.join(RECIPE_TASKS)}: the recipe's own options (unknown keys are errors)"),
    # run safety (rows for the fields the run-safety work adds)
    "overwrite_output_dir": Option("allow writing into a non-empty directory that is not a preflab run"),
    "allow_config_change": Option("allow resuming with options that change the run's meaning"),
    # supervised fine-tuning (task: sft)
    "completion_only_loss": Option("task: sft; loss on completion tokens only (false: prompt tokens too) (TRL)"),
    "assistant_only_loss": Option("task: sft, conversational rows; loss on the tokens the chat template wraps in "
                                  "{% generation %} (the assistant turns) only (TRL)"),
    "packing": Option("task: sft; pack sequences into rows of <= max_length tokens, no cross-attention (TRL)"),
    "packing_strategy": one_of(("bfd", "bfd_split", "wrapped"), "TRL SFTConfig, with packing: true: bfd keeps a "
                               "row's first max_length tokens, bfd_split cuts a long row into sequences of "
                               "max_length, wrapped concatenates the rows and cuts every max_length tokens "
                               "(preflab.loops.sft_packing)"),
    "skip_prepare_dataset": Option("task: sft; TRL SFTConfig's dataset_kwargs.skip_prepare_dataset: every row is "
                                   "already tokenized (input_ids, optional labels) and used as it is: not cut at "
                                   "max_length, not cut by packing_strategy"),
    "dataset_text_field": Option("task: sft; the column holding a language-modeling row's text (TRL SFTConfig; "
                                 "messages and prompt / completion rows are read as they are)", "a non-empty name",
                                 _nonempty),
    "eos_token": Option("task: sft / reward; the token that ends each text row and text completion (reward: each "
                        "text response), replacing the tokenizer's eos (TRL SFTConfig / RewardConfig; it must be in "
                        "the vocabulary; the model's config learns it too)",
                        "a non-empty token", _nonempty),
    "chat_template_path": Option("task: sft / reward; a .jinja / .j2 file whose template replaces the tokenizer's "
                                 "chat template (TRL SFTConfig / RewardConfig; saved with the run's tokenizer)",
                                 "a non-empty path",
                                 _nonempty),
    "full_determinism": Option("transformers' TrainingArguments: torch's deterministic algorithms, cuDNN "
                               "deterministic, CUBLAS_WORKSPACE_CONFIG (enable_full_determinism; slower; process-wide)"),
    # scaling out
    "ref_load_dtype": one_of(("float32", "bfloat16", "float16"), "dtype of the frozen reference's weights (null: "
                             "bfloat16 on a CUDA GPU, else load_dtype)"),
}


INFINITE_ALLOWED = ("max_grad_norm",)  # inf: torch's clip_grad_norm_ measures the norm and clips nothing


def _not_finite(value) -> bool:
    """A float that is nan or +-inf (YAML .inf / .nan, `nan`, a literal too large for a float such as 1e400), alone or
    inside a list or mapping value."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_not_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_not_finite(v) for v in value.values())
    return False


# what to do instead, where a refused value is a common wish (a TRL user's temperature 0 for greedy decoding)
RANGE_HINTS = {
    "temperature": "Greedy decoding (temperature 0) is not offered: a judged group needs distinct samples and the "
                   "log-probs are those of the sampling distribution; for near-greedy samples set a small "
                   "temperature such as 0.1.",
}


# the options every model-and-data run needs, whose default "" means "not given"
REQUIRED_NAMES = ("model_name_or_path", "dataset_name")


def unset_required_errors(names, task: str) -> list[str]:
    """One message per required option (REQUIRED_NAMES) in `names`: those the config left at their default "" (not
    written). It says the option is not set and what it takes. Before, a config without dataset_name stopped with
    `dataset_name='' is not allowed`, a value the user never wrote, and task: online was not told of the online tasks
    that need no data. (A written "" keeps range_errors' `name='' is not allowed`.)"""
    errors = []
    for name in REQUIRED_NAMES:
        if name not in names:
            continue
        line = f"{name} is not set: {task!r} runs need it ({OPTIONS[name].meaning}); set {name}: ... in the config " \
               f"or {name}=... on the command line."
        if name == "dataset_name" and task == "online":
            line += (" (task: online reads prompts from it with online_task: dataset / vision_dataset; online_task: "
                     "demo or game bring their own prompts, and so does online_task: dataset with an "
                     "environment_factory, whose reset gives them.)")
        given = "policy=model" if name == "model_name_or_path" else "train_data=rows"
        line += (f" From Python, a trainer given {given} reads nothing from {name} but still needs it as the name "
                 "that the run's config, reports and model card give it (any string).")
        errors.append(line)
    return errors


def range_errors(values: dict) -> list[str]:
    """One message per option whose (non-None) value is outside the range its table row allows. A value that is not
    finite is refused first, whatever the row allows (a `> 0` check passes inf: learning_rate=inf trained)."""
    errors = []
    for name, value in values.items():
        if _not_finite(value) and not (name in INFINITE_ALLOWED and value == math.inf):
            errors.append(f"{name}={value!r} is not allowed: {name} must be finite (nan, .inf and literals too large "
                          "for a float, such as 1e400, are refused).")
            continue
        option = OPTIONS.get(name)
        if option is None or option.ok is None or value is None:
            continue
        if not option.ok(value):
            hint = RANGE_HINTS.get(name, "")
            errors.append(f"{name}={value!r} is not allowed: {name} must be {option.allowed} ({option.meaning})."
                          + (f" {hint}" if hint else ""))
    return errors


def missing_trackers(report_to) -> list[str]:
    """The known trackers named in report_to whose package is not installed."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [n for n in names if n in TRACKERS and importlib.util.find_spec(TRACKERS[n]) is None]


def help_line(name: str, type_text: str, default: str) -> str:
    """`  name = default  (type; allowed) meaning` for --help."""
    option = OPTIONS.get(name)
    if option is None:
        return f"  {name} = {default}  ({type_text}) (undocumented)"
    allowed = f"; {option.allowed}" if option.allowed else ""
    return f"  {name} = {default}  ({type_text}{allowed}) {option.meaning}"
