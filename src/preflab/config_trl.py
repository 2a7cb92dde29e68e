"""TRL keys in a preflab config: a TRL 1.16 DPOConfig (with its TrainingArguments), TRL's script and model
arguments, and the legacy 0.2x DPOConfig fields many configs still carry.

    raw, notes, errors = translate_trl(raw)   # preflab names; notes to print once; errors (refused TRL values)

Each TRL key ends in exactly one of four ways, never silently dropped:
- RENAMED: the same meaning under a preflab name (e.g. ref_model -> ref_model_name_or_path);
- translated with TRL's meaning (eval_strategy, save_strategy, padding_free, label_smoothing with sigmoid, ...);
- NO_EFFECT: accepted; when its value asks for something preflab does not do (or already does), a note says so;
- REFUSED: a value other than TRL's default is a ConfigError with the reason and what to do instead.
Before these, preflab.config_trl_methods gives a CPOConfig / ORPOConfig its method, a saved GRPOConfig's round size
its preflab name, and a saved RLOOConfig trainer rloo; TRL_ONLINE_DEFAULTS are GRPOConfig's / RLOOConfig's /
OnlineDPOConfig's defaults.
"""
from __future__ import annotations

from preflab.online_recipes import TRL_GRPO_TRAINERS

# TRL name -> preflab name (same meaning)
RENAMED = {
    "ref_model": "ref_model_name_or_path",
    "dataset_train_split": "dataset_split",
    "dataset_test_split": "eval_split",
    "torch_dtype": "load_dtype",
    "f_divergence_type": "f_divergence",
    "f_alpha_divergence_coef": "f_alpha",
    "evaluation_strategy": "eval_strategy",  # transformers < 4.46 spelling
    "dataset_streaming": "streaming",  # TRL ScriptArguments
    "activation_checkpointing": "gradient_checkpointing",  # transformers 5 spelling (DPOConfig.to_dict has both)
    "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs",  # likewise
    "reward_model_path": "reward_funcs",  # OnlineDPOConfig: a sequence-classification model directory is a judge
    "max_new_tokens": "max_completion_length",  # OnlineDPOConfig: new tokens per sampled completion
}

# names from other trainers' configs -> the preflab name (suggested in the unknown-key message, not applied)
SUGGEST = {
    "lr": "learning_rate", "batch_size": "per_device_train_batch_size", "train_batch_size":
    "per_device_train_batch_size", "micro_batch_size": "per_device_train_batch_size", "epochs": "num_train_epochs",
    "num_epochs": "num_train_epochs", "model": "model_name_or_path", "model_name": "model_name_or_path",
    "pretrain": "model_name_or_path", "dataset": "dataset_name", "train_file": "dataset_name", "eval_dataset":
    "eval_dataset_name", "pref_beta": "beta", "pref_loss": "loss_type", "loss": "loss_type", "cutoff_len":
    "max_length", "max_seq_length": "max_length", "max_len": "max_length", "lora_rank": "lora_r",
    "lora_target": "lora_target_modules", "target_modules": "lora_target_modules", "finetuning_type": "use_peft",
    "ref_model_name": "ref_model_name_or_path", "ref_pretrain": "ref_model_name_or_path", "gradient_clipping":
    "max_grad_norm", "clip_grad": "max_grad_norm", "warmup": "warmup_steps", "lr_warmup_steps": "warmup_steps",
    "save_dir": "output_dir", "save_path": "output_dir", "precompute_ref": "precompute_ref_log_probs",
    "mixed_precision": "dtype", "nll_loss_coef": "rpo_alpha", "pref_ftx": "rpo_alpha",
}

# diffusers' examples/research_projects/diffusion_dpo/train_diffusion_dpo.py flags -> what preflab calls them
DIFFUSERS_DPO_SCRIPT = {
    "beta_dpo": "diffusers' train_diffusion_dpo.py --beta_dpo is preflab's beta with convention: diffusers "
                "(beta_dpo=2500 -> beta=2500 convention=diffusers, the same loss as beta=5000 in the default "
                "salesforce convention; loss_type diffusion_dpo)",
    "max_train_steps": "preflab calls it 'max_steps'", "checkpointing_steps": "preflab calls it 'save_steps'",
    "rank": "preflab calls it 'lora_r' (with use_peft: true)", "lr_scheduler": "preflab calls it 'lr_scheduler_type'",
    "pretrained_model_name_or_path": "preflab calls it 'model_name_or_path'",
    "dataset_split_name": "preflab calls it 'dataset_split'", "adam_weight_decay": "preflab calls it 'weight_decay'",
    "no_hflip": "preflab never flips (each image is centre-cropped once, so its latent can be cached)",
    "random_crop": "preflab always centre-crops (each image once, so its latent can be cached)",
}

# TRL key -> (TRL's default, note printed once when the config sets another value: what preflab does instead;
# for NOTED_WHEN_WRITTEN keys the value preflab acts as, noted only when written)
NO_EFFECT = {
    "restore_callback_states_from_checkpoint": (True, "preflab always restores the state of the callbacks passed "
                                                "to Trainer(callbacks=...) on resume (EarlyStoppingCallback's "
                                                "patience counter continues, so a resumed run stops where the "
                                                "uninterrupted one would; transformers' false starts them afresh)"),
    "use_logits_to_keep": (False, "preflab already runs the LM head on response positions only"),
    "remove_unused_columns": (True, "preflab keeps only the columns it uses (an objective's extra columns "
                                    "travel with the rows)"),
    "run_name": (None, "trackers receive the run under the name 'preflab'"),
    "tf32": (None, "no effect on the matmul precision in preflab"),
    "dataloader_num_workers": (0, "batches are built in the training process"),
    "ddp_find_unused_parameters": (None, "preflab's DDP wrapper sets this itself"),
    "pad_token": (None, "the tokenizer's pad token is used (EOS when it has none)"),
    "label_pad_token_id": (-100, "preflab builds its own masks; there is no label padding"),
    "padding_value": (None, "preflab builds its own masks; padding values never reach the loss"),
    "precompute_ref_batch_size": (None, "precompute uses per_device_train_batch_size / per_device_eval_batch_size"),
    "use_liger_loss": (False, "preflab uses its own chunked LM head"),
    "use_liger_kernel": (False, "preflab uses its own chunked LM head"),
    "base_model_attribute_name": ("model", "used only with use_liger_loss; preflab uses its own chunked LM head"),
    "ignore_bias_buffers": (False, "no effect in preflab"),
    "lora_task_type": ("CAUSAL_LM", "adapters are always built for CAUSAL_LM"),
    "logging_dir": (None, "trackers write under output_dir"),
    "log_level": ("passive", "preflab prints its own lines"),
    "logging_nan_inf_filter": (True, "non-finite steps are skipped, logged with their rows, and stop the run after "
                                     "max_nonfinite_steps"),
    "dataloader_drop_last": (False, "the incomplete last batch of an epoch is always left out (counted in "
                                    "unused_rows_per_epoch)"),
    "eval_accumulation_steps": (None, "evaluation sums its metrics batch by batch"),
    "ddp_timeout": (1800, "accelerate's default timeout is used"),
    "include_num_input_tokens_seen": (False, "num_tokens is always logged"),
    "average_tokens_across_devices": (True, "the loss is averaged per example across processes"),
    "local_rank": (-1, "accelerate sets up the processes"),
    "bf16_full_eval": (False, "evaluation runs under the same dtype as training"),
    "fp16_full_eval": (False, "evaluation runs under the same dtype as training"),
    "include_tokens_per_second": (False, "tokens_per_second is always logged"),
    "eval_packing": (None, "task: sft evaluates with the training layout, and its eval metrics are the same packed or "
                           "not (each packed sequence attends to itself only, with its own positions; the loss is the "
                           "token mean over the whole eval set)"),
    # the rest of TrainingArguments (a saved DPOConfig / GRPOConfig, `args.to_dict()`, carries them all)
    "do_train": (False, "preflab train always trains"),
    "skip_memory_metrics": (True, "transformers' memory metrics are not logged; summary.json's peak_memory records "
                                  "the run's peak (preflab.peak_memory) either way"),
    "log_on_each_node": (True, "preflab prints on the main process only"),
    "log_level_replica": ("warning", "preflab prints on the main process only"),
    "project": ("huggingface", "trackers receive the run under the project name 'preflab'"),
    "trackio_space_id": (None, "preflab does not deploy a Trackio space"),
    "trackio_bucket_id": (None, "preflab does not deploy a Trackio space"),
    "trackio_static_space_id": (None, "preflab does not deploy a Trackio space"),
    "liger_kernel_config": (None, "preflab uses its own chunked LM head"),
    "use_cache": (False, "training never uses the KV cache"),
    "dataloader_pin_memory": (True, "batches are built in the training process"),
    "dataloader_persistent_workers": (False, "batches are built in the training process"),
    "dataloader_prefetch_factor": (None, "batches are built in the training process"),
    "dataloader_multiprocessing_context": (None, "batches are built in the training process"),
    "dataloader_in_order": (True, "batches are built in the training process, in order"),
    "eval_do_concat_batches": (True, "evaluation sums its metrics batch by batch"),
    "eval_use_gather_object": (False, "evaluation sums its metrics batch by batch"),
    "batch_eval_metrics": (False, "evaluation sums its metrics batch by batch"),
    "include_for_metrics": ([], "preflab has no compute_metrics; evaluation logs its own eval_* metrics"),
    "label_names": (None, "preflab builds its own masks; there are no label columns"),
    "length_column_name": ("length", "not read: group_by_length takes each example's length from its tokens "
                                     "(prompt + completion; a pair's two sequences), transformers' own lengths when "
                                     "the dataset has no such column"),
    "ddp_bucket_cap_mb": (None, "preflab's DDP wrapper sets this itself"),
    "ddp_broadcast_buffers": (None, "preflab's DDP wrapper sets this itself"),
    "ddp_static_graph": (None, "preflab's DDP wrapper sets this itself"),
    "hub_always_push": (False, "push_to_hub uploads every due checkpoint before training goes on (transformers "
                               "skips one while an upload is in flight unless hub_always_push)"),
    # GRPOConfig logging
    "log_completions": (False, "completions are not sent to trackers (preflab.online writes its own samples)"),
    "log_multimodal": (True, "completions are not sent to trackers"),
    "num_completions_to_print": (None, "completions are not printed"),
    "log_unique_prompts": (False, "completions are not sent to trackers"),
    "log_completions_hub_repo": (None, "preflab does not push to the hub"),
    # GRPOConfig / OnlineDPOConfig vLLM options (TRL reads them only with use_vllm, which REFUSED refuses)
    **{key: (default, "TRL's vLLM options are not read: preflab's vLLM backend "
                      "(generation_backend: vllm) runs in-process with its own settings") for key, default in (
        ("vllm_mode", "colocate"), ("vllm_model_impl", "vllm"), ("vllm_enable_sleep_mode", False),
        ("vllm_structured_outputs_regex", None), ("vllm_server_base_url", None), ("vllm_server_host", "0.0.0.0"),
        ("vllm_server_port", 8000), ("vllm_server_timeout", 240.0), ("vllm_group_port", 51216),
        ("vllm_gpu_memory_utilization", 0.3), ("vllm_max_model_length", None), ("vllm_tensor_parallel_size", 1),
        ("vllm_importance_sampling_correction", True), ("vllm_importance_sampling_mode", "sequence_mask"),
        ("vllm_importance_sampling_clip_max", 3.0), ("vllm_importance_sampling_clip_min", None),
        ("vllm_importance_sampling_cap", None))},
}

# NO_EFFECT keys whose TRL default is not what preflab does (restore_callback_states_from_checkpoint: transformers'
# default false, preflab always restores): the value of a saved config (TRL's args.to_dict(), whose keys are nobody's
# choice: preflab.config.written_keys) is said nothing of, as every default DPOConfig printed the note; written by the
# user, a value other than NO_EFFECT's is noted
NOTED_WHEN_WRITTEN = frozenset({"restore_callback_states_from_checkpoint"})

# another TRL config's default of a NO_EFFECT key (NO_EFFECT holds GRPOConfig's): no note for it either (every saved
# OnlineDPOConfig printed a vllm_gpu_memory_utilization note, in a run that never asked for vLLM)
OTHER_TRL_DEFAULTS = {"vllm_gpu_memory_utilization": (0.55,)}  # OnlineDPOConfig's

# *_token options whose to_dict() placeholder is dropped on load (the token then comes from HF_TOKEN / the login)
MASKED_TOKENS = frozenset({"hub_token"})

GEN = "preflab samples with temperature, top_p, top_k, min_p and repetition_penalty only; remove {}"

# TRL key -> (TRL's default, why a different value is refused and what to do)
REFUSED = {
    "reference_free": (False, "use a reference-free objective instead (loss_type: simpo, cpo or orpo)"),
    "force_use_ref_model": (False, "set ref_model_name_or_path; preflab uses it whether or not use_peft is set"),
    "model_adapter_name": (None, "preflab trains one adapter; remove model_adapter_name"),
    "ref_adapter_name": (None, "preflab's LoRA reference is the base model with adapters disabled"),
    "max_target_length": (None, "encoder-decoder models are not supported; use max_completion_length"),
    "is_encoder_decoder": (None, "encoder-decoder models are not supported"),
    "deepspeed": (None, "give DeepSpeed settings to `accelerate launch --config_file ...`, not to the config: a "
                        "DeepSpeed json goes in the accelerate config as deepspeed_config: {deepspeed_config_file: "
                        "PATH}, its \"auto\" values filled from this config as TRL fills them (docs/scaling.md)"),
    "accelerate_config": (None, "TRL's CLI hands it to accelerate launch; run `accelerate launch --config_file "
                                "examples/accelerate/zero3.yaml $(which preflab) train CONFIG.yaml` (ddp.yaml, "
                                "fsdp2.yaml, zero2.yaml there too; TRL's names: its own accelerate configs)"),
    "fsdp": (None, "give FSDP settings to `accelerate launch --config_file ...`, not to the config"),
    "use_vllm": (False, "offline training generates nothing; online training is task: online (preflab.online), "
                        "where use_vllm: true is generation_backend: vllm"),
    "save_safetensors": (True, "preflab saves safetensors only"),
    "tools": (None, "give the tools per row in a 'tools' column (passed to the chat template); tool functions the "
                    "model calls while sampling are task: online's tools: option (a group recipe)"),
    # the rest of TrainingArguments
    "do_predict": (False, "there is no predict step; run `preflab eval` on the saved model"),
    "gradient_checkpointing_use_reentrant": (None, "give it as gradient_checkpointing_kwargs: {use_reentrant: "
                                                   "true} (or false)"),
    "optim_target_modules": (None, "preflab's optimizers (optim) train every trainable parameter alike; GaLore / "
                                   "APOLLO are not available; remove it"),
    "label_smoothing_factor": (0.0, "transformers' label smoothing of a token loss does not apply to preference "
                                    "losses; use label_smoothing (loss_type robust / cdpo) or remove it"),
    "auto_find_batch_size": (False, "set per_device_train_batch_size (and gradient_accumulation_steps) yourself"),
    "prediction_loss_only": (False, "preflab has no prediction step; evaluation logs its own eval_* metrics"),
    "save_on_each_node": (False, "the main process writes each checkpoint once; use an output_dir every node "
                                 "can read"),
    "enable_jit_checkpoint": (False, "checkpoints are written every save_steps; remove it"),
    "ignore_data_skip": (False, "resume always replays the data order to the exact step; remove it"),
    "accelerator_config": ({"split_batches": False, "dispatch_batches": None, "even_batches": True,
                            "use_seedable_sampler": True, "non_blocking": False, "gradient_accumulation_kwargs": None},
                           "give accelerate settings to `accelerate launch --config_file ...`"),
    "parallelism_config": (None, "tensor and context parallelism are not supported; use `accelerate launch` "
                                 "with DDP, FSDP2 or DeepSpeed"),
    "ddp_backend": (None, "accelerate picks the backend (nccl on GPUs, gloo on CPUs); remove it"),
    "fsdp_config": (None, "give FSDP settings to `accelerate launch --config_file ...`, not to the config"),
    "debug": ([], "transformers' debug modes are not supported; remove debug"),
    "train_sampling_strategy": ("random", "batches follow the seeded random order, or its length-grouped form "
                                          "(train_sampling_strategy: group_by_length, transformers 4's "
                                          "group_by_length: true); remove it"),
    # GRPOConfig (task: online): generation and loss options preflab's online loop does not have
    "generation_kwargs": (None, GEN.format("generation_kwargs")),
    "cache_implementation": (None, GEN.format("cache_implementation")),
    "ds3_gather_for_generation": (True, "not supported; remove it"),
    # GRPOTrainer's tools= is `tools:` in task: online (preflab.online.tool_calling), its environment_factory
    # preflab's environment_factory: option there (preflab.online.environments)
    "rollout_func": (None, "custom rollout functions (GRPOTrainer's rollout_func) are not built; give tools: for tool "
                           "calling, or a Task with its own generator from Python (preflab.online.tasks.Task)"),
    "use_transformers_continuous_batching": (False, "use generation_backend: transformers or vllm"),
    "transformers_continuous_batching_config": (None, "use generation_backend: transformers or vllm"),
    "use_transformers_paged": (False, "use generation_backend: transformers or vllm"),
    # TRL's ModelConfig and DatasetMixtureConfig (TRL's scripts parse them beside the trainer's config)
    "lora_target_parameters": (None, "preflab builds LoRA on modules only (PEFT's target_parameters, for MoE "
                                     "experts, is not built); use lora_target_modules"),
    "bnb_4bit_quant_storage": (None, "preflab's QLoRA keeps bitsandbytes' default 4-bit storage; remove it"),
    "test_split_size": (None, "hold out a fraction of the training rows with eval_fraction, or give the eval set as "
                              "eval_dataset_name"),
}

# TRL's defaults for the online recipes that are a TRL config (GRPOConfig: the GRPO family; OnlineDPOConfig), where
# TrainConfig's differ: a config that leaves the key out gets TRL's value (TrainConfig's beta 0.1 would add a KL term
# TRL does not; 16 new tokens would cut every completion). Other recipes (no TRL config) keep TrainConfig's.
TRL_ONLINE_DEFAULTS = {
    **{trainer: {"beta": 0.0, "num_generations": 8, "max_completion_length": 512}
       for trainer in TRL_GRPO_TRAINERS},
    "rloo": {"beta": 0.05, "num_generations": 2, "max_completion_length": 512},  # RLOOConfig's
    # max_new_tokens 64; beta 0.1 is TrainConfig's; OnlineDPOTrainer samples 2 completions per prompt (fixed in its
    # __init__, no config field): preflab's 4 paired best against worst of 4, not TRL's pair
    "online_dpo": {"max_completion_length": 64, "temperature": 0.9, "num_generations": 2},
}


def _local_test_split(name, config=None) -> bool:
    """`name` is a local directory (a folder of split files, a save_to_disk DatasetDict) that holds a split 'test'
    (in its README.md configuration `config`, when one is given)."""
    if not isinstance(name, str) or not name:
        return False
    from pathlib import Path

    from preflab.data.sources import directory_has_split

    path = Path(name).expanduser()
    return path.is_dir() and directory_has_split(path, "test", config)


TRL_TASK_LEARNING_RATES = {"sft": 2e-5, "reward": 1e-4}  # SFTConfig's and RewardConfig's learning_rate defaults


def _trl_task_learning_rate(cfg, given) -> list[str]:
    """task: sft / reward without learning_rate: TRL's SFTConfig (2e-5) / RewardConfig (1e-4) default, not the
    DPO default 1e-6 (100x too small for a reward model: it learned nothing, silently). Returns the note."""
    rate = TRL_TASK_LEARNING_RATES.get(cfg.task) if isinstance(cfg.task, str) else None
    if rate is None or "learning_rate" in given:
        return []
    cfg.learning_rate = rate
    return [f"task: {cfg.task} without learning_rate -> learning_rate: {rate:g} (TRL's "
            f"{'SFTConfig' if cfg.task == 'sft' else 'RewardConfig'} default)."]


TRL_EPOCHS = 3  # transformers' TrainingArguments.num_train_epochs default, which every TRL config keeps
TRL_EPOCH_TASKS = frozenset({"dpo", "sft", "reward", "vlm"})  # tasks with a TRL trainer that counts epochs


def trl_epochs_default_note(cfg, total_steps: int) -> str | None:
    """The one line for a run whose length is preflab's default and not TRL's: preflab's num_train_epochs defaults to
    1, transformers' (so every TRL config's) to 3, so a TRL config that sets neither max_steps nor num_train_epochs
    trained a third of TRL's steps without a word. Said for the tasks with a TRL trainer when the user wrote neither
    option and the run is preflab's 1 epoch (a saved TRL config, args.to_dict(), whose keys count as nobody's choice,
    carries num_train_epochs: 3 and gets TRL's length)."""
    written = getattr(cfg, "written_options", frozenset())
    if (cfg.task not in TRL_EPOCH_TASKS or cfg.max_steps > 0 or cfg.num_train_epochs != 1
            or {"max_steps", "num_train_epochs"} & written):
        return None
    return (f"preflab: note: this run trains 1 epoch ({total_steps} optimizer steps): preflab's num_train_epochs "
            f"defaults to 1, TRL's (transformers' TrainingArguments) to {TRL_EPOCHS}. Set num_train_epochs: "
            f"{TRL_EPOCHS} for TRL's length ({TRL_EPOCHS} epochs: {TRL_EPOCHS * total_steps} steps here), or "
            "num_train_epochs: 1 to say one epoch is wanted.")


def _trl_online_defaults(cfg, given) -> set[str]:
    """TRL's default for each key of TRL_ONLINE_DEFAULTS the online config leaves out (the game task samples no
    text: left alone); returns the keys set."""
    if cfg.task != "online" or cfg.online_task == "game" or not isinstance(cfg.trainer, str):
        return set()  # (a trainer that is no name: check_online refuses it)
    defaults = {k: v for k, v in TRL_ONLINE_DEFAULTS.get(cfg.trainer, {}).items() if k not in given}
    for key, value in defaults.items():
        setattr(cfg, key, value)
    return set(defaults)


def apply_trl_defaults(cfg, given) -> tuple[set[str], list[str]]:
    """TRL's config defaults where TrainConfig's differ (TRL_ONLINE_DEFAULTS: GRPOConfig's / RLOOConfig's /
    OnlineDPOConfig's; TRL_TASK_LEARNING_RATES: SFTConfig's / RewardConfig's), for the options not in `given` (the
    names passed to TrainConfig(...)). Called once, from TrainConfig.__post_init__, so the Python API, a mapping
    (config_from_dict) and a YAML file build the same run: before, only the file loaders applied them and
    TrainConfig(task="online", trainer="grpo") trained at beta 0.1 where the same YAML trained at TRL's 0.0. A saved
    config (a run's config.yaml, dataclasses.replace) gives every option, so it keeps its recorded values.
    Returns (the options set, the notes to print)."""
    return _trl_online_defaults(cfg, given), _trl_task_learning_rate(cfg, given)


# TRL loss parameters that are preflab objective parameters of some objectives: TRL's default value is accepted
# (and unused) when the chosen loss_type does not take it; another value is an unknown-key error as before
LOSS_DEFAULTS = {"discopop_tau": 0.05, "label_smoothing": 0.0, "ld_alpha": None, "delta": None,
                 "importance_sampling_level": "token", "use_bias_correction_kl": True, "f_divergence": "reverse_kl",
                 "f_alpha": 0.5,
                 # GRPOConfig's, the GRPO family's objective parameters
                 "top_entropy_quantile": 1.0, "off_policy_mask_threshold": None, "entropy_coef": 0.0,
                 "use_adaptive_entropy": False, "entropy_coef_min": 0.0, "entropy_coef_max": 1.0,
                 "entropy_coef_delta": 0.005, "entropy_target": 0.2}

TRL_KEYS = set(RENAMED) | set(NO_EFFECT) | set(REFUSED) | {"datasets", "env", "dataset_kwargs"} | {
    "teacher_model_revision",
    "do_eval", "save_strategy", "logging_strategy", "padding_free", "model_revision", "attn_implementation"}


def _env_block(raw: dict, notes: list, errors: list) -> None:
    """TRL's YAML `env:` block (TrlParser): each NAME: value is set in os.environ before the run, as TRL's parser
    sets it before parsing the rest. Said once, with its limit: a variable read when a library is imported (HF_HOME,
    ...) must be in the shell before preflab starts, as for TRL."""
    import os

    if "env" not in raw:
        return
    env = raw.pop("env")
    if env is None:
        return
    if not isinstance(env, dict):
        errors.append(f"env (TRL's YAML block of environment variables) must be a mapping of NAME: value, got "
                      f"{type(env).__name__}.")
        return
    for key, value in env.items():
        os.environ[str(key)] = str(value)
    if env:
        notes.append(f"env: set {', '.join(sorted(map(str, env)))} in the environment before the run, as TRL's parser "
                     "does (a variable read when a library is imported, such as HF_HOME, must be set in the shell).")


def _dataset_mixture(raw: dict, notes: list, errors: list) -> None:
    """TRL's DatasetMixtureConfig `datasets` (a list of DatasetConfig). One entry that names only a dataset (path,
    and its configuration name and split) is dataset_name / dataset_config / dataset_split; a mixture of several,
    or an entry with data files, a data_dir, column selection or fraction, is refused (preflab trains on one
    dataset as given)."""
    if "datasets" not in raw:
        return
    entries = raw.pop("datasets")
    if entries in (None, []):  # DatasetMixtureConfig's default
        return
    only = entries[0] if isinstance(entries, list) and len(entries) == 1 and isinstance(entries[0], dict) else None
    extra = sorted(k for k, v in (only or {}).items() if k not in ("path", "name", "split") and v is not None)
    if only is None or not isinstance(only.get("path"), str) or extra:
        what = (f"its entry sets {', '.join(extra)}" if extra else "it lists several datasets" if
                isinstance(entries, list) and len(entries) > 1 else "it is not a list of {path, split} entries")
        errors.append(f"datasets (TRL's dataset mixture) is not supported here: {what}. preflab trains on one dataset: "
                      "give it as dataset_name (and dataset_split), with the rows mixed and their columns named "
                      "prompt / chosen / rejected beforehand.")
        return
    if raw.get("dataset_name") not in (None, only["path"]):
        errors.append(f"datasets names {only['path']!r} and dataset_name names {raw['dataset_name']!r}; keep one "
                      "(TRL uses datasets and warns).")
        return
    if only.get("name") is not None and raw.get("dataset_config") not in (None, only["name"]):
        errors.append(f"datasets names the configuration {only['name']!r} and dataset_config names "
                      f"{raw['dataset_config']!r}; keep one.")
        return
    raw["dataset_name"] = only["path"]
    if only.get("name") is not None:
        raw["dataset_config"] = only["name"]
    if only.get("split", "train") != "train":
        raw["dataset_split"] = only["split"]
    notes.append(f"datasets: [{{path: {only['path']}}}] -> dataset_name: {only['path']}" +
                 (f", dataset_config: {only['name']}" if only.get("name") is not None else "") +
                 (f", dataset_split: {only['split']}" if only.get("split", "train") != "train" else "") + ".")


def _same(value, default) -> bool:
    if default is False and value == "no":  # transformers 5 writes include_num_input_tokens_seen as "no"
        return True
    empty = value is False or (not isinstance(value, (int, float)) and value in ("", [], {}))  # not 0 (0 == False)
    return value == default or value is None or (default in (None, []) and empty)


def translate_trl(raw: dict, written=None) -> tuple[dict, list[str], list[str]]:
    """(the config in preflab's names, notes to print once, one error line per refused TRL value). written: the
    options the user wrote (preflab.config.written_keys; None: every key of `raw`), for NOTED_WHEN_WRITTEN."""
    from preflab.config_trl_methods import (grpo_batch_note, grpo_generation_note, grpo_round_from_trl,
                                            grpoconfig_task_and_trainer, method_from_trl_fields, rlooconfig_trainer,
                                            task_from_trl_fields)

    raw, notes, errors = dict(raw), [], []
    task_from_trl_fields(raw, notes)  # a saved RewardConfig / SFTConfig that names no task
    method_from_trl_fields(raw, notes, errors)  # CPOConfig / ORPOConfig: the method their fields say
    rlooconfig_trainer(raw, notes, errors)  # a saved RLOOConfig: trainer rloo
    grpoconfig_task_and_trainer(raw, notes)  # a saved GRPOConfig: task online, trainer its loss_type
    _dataset_mixture(raw, notes, errors)  # TRL's DatasetMixtureConfig `datasets`
    _env_block(raw, notes, errors)  # TrlParser's `env:` block
    grpo_round_from_trl(raw, notes, errors)  # GRPOConfig's generation_batch_size: completions per round
    grpo_batch_note(raw, notes)  # a hand-written GRPO config: TRL's per_device_train_batch_size counts completions
    grpo_generation_note(raw, notes)  # ... and its generation_batch_size / steps_per_generation count otherwise
    _distillation_dump(raw, notes, errors)  # DistillationConfig / GKDConfig: task: sft with a teacher
    for key in [k for k, v in raw.items() if k.endswith("_token") and v == f"<{k.upper()}>" and (k in NO_EFFECT or
                                                                                        k in MASKED_TOKENS)]:
        raw.pop(key)  # masked by to_dict() (transformers' and preflab's; hub_token): the token itself was not saved
    for key in [k for k, v in raw.items() if k.endswith("_token") and v == f"<{k.upper()}>" and
                k not in NO_EFFECT and k not in MASKED_TOKENS]:
        errors.append(f"{key}={raw.pop(key)!r} is the placeholder transformers' to_dict() writes for every *_token "
                      f"option (the value was not saved); remove {key} or give the token itself.")
    _dataset_kwargs(raw, errors)
    _packing_strategy(raw, errors)
    if raw.get("task") == "sft" and "shuffle_dataset" in raw:  # SFTConfig's (default false); GRPO's: an option
        # (preflab's own config.yaml, which writes every option, online_task too, holds the online option's default,
        # true: nobody's choice, no note; a TRL SFTConfig dump's true is noted)
        if raw.pop("shuffle_dataset") and "online_task" not in raw:
            notes.append("shuffle_dataset: batches follow the seeded random order (each epoch).")
    if raw.get("train_sampling_strategy") == "sequential" and raw.get("loss_type") in ("kto", "apo_zero_unpaired"):
        raw.pop("train_sampling_strategy")  # KTOConfig's default: TRL builds its KL pairs from neighbouring rows
        notes.append("train_sampling_strategy: sequential (KTOConfig's default) -> the seeded random order; " + (
            "preflab's KTO takes its KL pairs x_i + y_(i-1) inside each batch, whatever the order."
            if raw.get("loss_type") == "kto" else
            "apo_zero_unpaired scores no KL pairs (TRL's calculate_KL = False), so the order does not change its loss."))
    if raw.get("train_sampling_strategy") == "random" and raw.get("group_by_length") is True:
        raw.pop("train_sampling_strategy")  # each transformers reads one of the two: they ask for different orders
        errors.append("group_by_length: true and train_sampling_strategy: random disagree: transformers 5 (TRL 1.x) "
                      "has no group_by_length and samples train_sampling_strategy's random order, transformers 4 has "
                      "no train_sampling_strategy and groups by length. Keep one: train_sampling_strategy: "
                      "group_by_length (or group_by_length: true alone) for length-grouped batches, or remove "
                      "group_by_length for the random order.")
    if raw.get("train_sampling_strategy") == "group_by_length":  # transformers 5's spelling of group_by_length: true
        raw.pop("train_sampling_strategy")
        if raw.get("group_by_length") is False:
            errors.append("train_sampling_strategy: group_by_length and group_by_length: false disagree; keep one.")
        else:
            raw["group_by_length"] = True
            notes.append("train_sampling_strategy: group_by_length -> group_by_length: true.")
    if isinstance(raw.get("pad_to_multiple_of"), str) and raw["pad_to_multiple_of"].lower() in ("auto", "none", "null"):
        # TRL 1.16's RewardConfig / DPOConfig default "auto" (their __post_init__): 128 on Neuron (AWS Trainium), which
        # compiles once per shape, else no padding; "none" / "null" are its CLI text for no padding. preflab runs on
        # no Neuron device, so every one is no padding (before, a type error: "must be int, got 'auto'")
        said = raw.pop("pad_to_multiple_of")
        raw["pad_to_multiple_of"] = None
        if said.lower() == "auto":
            notes.append("pad_to_multiple_of: auto -> null (TRL pads to a multiple of 128 only on AWS Neuron, which "
                         "preflab does not run on; rows are not padded to a multiple).")
    if raw.get("group_by_length") is False:  # transformers' default (a saved TrainingArguments carries it): asks nothing
        raw.pop("group_by_length")
    if isinstance(raw.get("report_to"), list) and "none" in raw["report_to"]:  # transformers' ["none"]: no tracker
        raw["report_to"] = [name for name in raw["report_to"] if name != "none"] or "none"
    if raw.get("task") == "online" and "max_length" in raw:  # read by no online run (it was accepted, unread)
        length = raw.pop("max_length")
        if length not in (None, 512, 1024):  # OnlineDPOConfig's default 512, DPOConfig's (and preflab's) 1024
            completion = raw.get("max_completion_length", raw.get("max_new_tokens"))
            hint = f" (here max_prompt_length: {length - completion})" if isinstance(length, int) and \
                isinstance(completion, int) and length > completion else ""
            errors.append(f"max_length={length} is not read by task: online: a completion has at most "
                          "max_completion_length new tokens and a prompt is cut to max_prompt_length tokens (TRL's "
                          "OnlineDPOConfig cut prompt + completion to max_length from the left). Remove max_length, "
                          f"or set max_prompt_length to max_length - max_completion_length{hint}.")
    if isinstance(raw.get("beta"), list):  # OnlineDPOConfig: one beta per epoch, the last for the rest
        betas = raw["beta"]
        if len(betas) == 1:
            raw["beta"] = betas[0]
        else:
            raw.pop("beta")
            errors.append(f"beta={betas} is OnlineDPOConfig's per-epoch beta schedule, which preflab does not have: "
                          "beta is one number for the whole run. Give one value (e.g. the first, "
                          f"beta: {betas[0]}).")
    for key, default in (("top_k", 0), ("repetition_penalty", 1.0)):  # null in a TRL 0.x config: TRL's default
        if key in raw and raw[key] is None:
            raw[key] = default
    if isinstance(raw.get("scale_rewards"), bool):  # GRPOConfig reads true as "group" and false as "none"
        raw["scale_rewards"] = "group" if raw["scale_rewards"] else "none"
    for key in ("eval_strategy", "evaluation_strategy", "save_strategy", "logging_strategy"):
        if raw.get(key) is False:  # YAML 1.1 reads a bare `no` as false
            raw[key] = "no"
    split_key = next((k for k in ("dataset_test_split", "eval_split") if raw.get(k)), None)  # TRL's, preflab's name
    if (split_key and raw.get("dataset_name") and raw.get("eval_strategy") in ("steps", "epoch")
            and not raw.get("eval_dataset_name") and not raw.get("eval_fraction")):
        # TRL's scripts evaluate on dataset_name's dataset_test_split whenever eval_strategy is not "no"
        raw["eval_dataset_name"] = raw["dataset_name"]
        notes.append(f"{split_key}: {raw[split_key]} with eval_strategy: {raw['eval_strategy']} -> "
                     f"eval_dataset_name: {raw['dataset_name']} (its {raw[split_key]!r} split), as TRL's "
                     "scripts do.")
    elif (not split_key and raw.get("eval_strategy") in ("steps", "epoch") and not raw.get("eval_dataset_name")
          and not raw.get("eval_fraction") and _local_test_split(raw.get("dataset_name"), raw.get("dataset_config"))):
        # TRL's scripts: dataset_test_split defaults to "test"; preflab takes it unasked only where it sees it (a
        # local folder or saved DatasetDict), never from a single file (its only split is the training data)
        raw["eval_dataset_name"], raw["eval_split"] = raw["dataset_name"], "test"
        notes.append(f"eval_strategy: {raw['eval_strategy']} without an eval set -> eval_dataset_name: "
                     f"{raw['dataset_name']} (its 'test' split), as TRL's scripts do (their dataset_test_split "
                     "defaults to test).")
    for trl, ours in RENAMED.items():
        if trl in raw:
            if ours in raw and raw[ours] is None:  # preflab's name left unset (a saved config carries both)
                raw.pop(ours)
                raw[ours] = raw.pop(trl)
            elif ours in raw and (raw[ours] == raw[trl] or raw[trl] is None):
                raw.pop(trl)  # the same value under both spellings (TrainingArguments.to_dict writes both), or
                # TRL's spelling left unset (a saved OnlineDPOConfig's reward_model_path: null beside reward_funcs)
            elif ours in raw:
                raw.pop(trl)  # said once here (it was also reported as an unknown key, "did you mean" itself)
                errors.append(f"{trl} and {ours} are the same option (TRL and preflab spelling); keep one.")
            else:
                raw[ours] = raw.pop(trl)
    if raw.get("task") == "online" and raw.get("use_vllm") is True:
        raw.pop("use_vllm")
        if raw.get("vllm_mode", "colocate") not in ("colocate", None):
            errors.append(f"use_vllm with vllm_mode={raw['vllm_mode']!r} is not supported: preflab's vLLM backend "
                          "runs in the training process (TRL's colocate mode); set vllm_mode: colocate or remove it.")
        elif raw.get("generation_backend", "vllm") != "vllm":
            errors.append(f"use_vllm: true and generation_backend: {raw['generation_backend']} disagree; keep one.")
        else:
            raw["generation_backend"] = "vllm"
            notes.append("use_vllm: true -> generation_backend: vllm (in the training process, as TRL's colocate "
                         "mode).")
    if raw.get("task") == "reward" and raw.get("lora_modules_to_save") in (["score"], ("score",), "score"):
        raw.pop("lora_modules_to_save")  # TRL's reward docs: PEFT SEQ_CLS keeps the score head whole, as preflab does
        notes.append("lora_modules_to_save: [score]: task: reward trains the score head whole beside the adapters "
                     "(PEFT's SEQ_CLS modules_to_save), so it is what runs anyway.")
    for key in ("use_rslora", "use_dora", "lora_modules_to_save"):  # TRL ModelConfig's, preflab options now
        if key in raw and _same(raw[key], False if key != "lora_modules_to_save" else None):
            raw.pop(key)  # TRL's default (off) asks for nothing: not refused beside use_peft: false as a LoRA option
    if raw.get("task") == "online" and "generation_kwargs" in raw:
        _generation_kwargs(raw, notes, errors)
    if "chat_template_kwargs" in raw:  # GRPOConfig's: a JSON string from TrainingArguments' command line; {}: none
        from preflab.lr_schedule_options import parsed_kwargs

        try:
            raw["chat_template_kwargs"] = parsed_kwargs(raw["chat_template_kwargs"]) or None
        except ValueError as exc:
            raw.pop("chat_template_kwargs")
            errors.append(f"chat_template_kwargs is not valid JSON ({exc}); give a mapping, e.g. "
                          "chat_template_kwargs: {enable_thinking: false}.")
    for key, (default, why) in REFUSED.items():
        if key == "tools" and raw.get("task") == "online":  # GRPOTrainer's tools=, preflab's tools: option there
            continue
        if key in raw and not _same(raw.pop(key), default):
            reason = why.removeprefix("not supported").lstrip(";: ")  # the line already says "not supported"
            errors.append(f"{key} is not supported" + (f": {reason}." if reason else "."))
    if raw.get("task") == "online" and "remove_unused_columns" in raw:  # GRPOConfig's default false
        if raw.pop("remove_unused_columns") is True:
            notes.append("remove_unused_columns: in task: online the prompt row's other columns always reach the "
                         "reward functions.")
    if raw.get("task") == "reward" and "lora_task_type" in raw:  # TRL's reward-model docs pass SEQ_CLS
        if raw.pop("lora_task_type") != "SEQ_CLS":
            notes.append("lora_task_type: task: reward builds its adapters for SEQ_CLS (the score head trains "
                         "whole, as TRL's RewardTrainer with lora_task_type SEQ_CLS).")
    for key, (default, why) in NO_EFFECT.items():
        if key in raw:
            value = raw.pop(key)
            if value in OTHER_TRL_DEFAULTS.get(key, ()) or (key in NOTED_WHEN_WRITTEN and written is not None
                                                            and key not in written):
                continue
            if not _same(value, default) or (value is False and default is None):  # false asks for something
                notes.append(f"{key}: {why}.")
    if raw.get("task") == "sft" and raw.get("loss_type") in ("nll", "dft"):  # SFTConfig.loss_type (default nll)
        if raw.pop("loss_type") == "dft":
            errors.append("loss_type='dft' (SFTConfig's dynamic fine-tuning loss) is not supported: task: sft trains "
                          "the token-mean NLL (TRL's nll); remove loss_type.")
    if "completion_only_loss" in raw and raw["completion_only_loss"] is None:
        raw.pop("completion_only_loss")  # TRL's default: loss on the completion of prompt-completion rows (ours too)
    if "eval_steps" in raw and raw["eval_steps"] is None:
        raw.pop("eval_steps")  # TRL's default: logging_steps when eval_strategy is steps (applied below)
    _grpo_loss_type(raw, errors)
    _lr_schedule(raw, errors)
    _kwargs_option(raw, "gradient_checkpointing_kwargs", "{use_reentrant: true}", errors)  # checkpointing_options
    _strategies(raw, notes, errors)
    _ratios(raw, notes, errors)
    _model_kwargs(raw, errors)
    if "padding_free" in raw:
        if raw.pop("padding_free") is True:
            if raw.get("layout") in ("padded", "prefix_shared"):  # both pad every row to the batch's longest
                errors.append(f"padding_free: true asks for rows without padding, and layout: {raw['layout']} pads "
                              "each row to the micro-batch's longest (TRL 1.16's silent fallback to padding, "
                              "huggingface/trl#2469): remove one of them; padding_free: true alone is layout: "
                              "prefix_packed, and layout: packed is padding-free too.")
            elif "layout" in raw:
                notes.append(f"padding_free: true, with layout: {raw['layout']} as given (no padding).")
            else:
                raw["layout"] = "prefix_packed"
                notes.append("padding_free: true -> layout: prefix_packed (no padding; the same log-probs).")
    _label_smoothing(raw, notes)
    return raw, notes, errors


# TRL 1.16's distillation configs: the defaults of the options where a config that claims to be one of them (see
# _distillation_dump) and preflab's own task: sft + teacher_model_name_or_path differ
# (tests/test_distill_trl_defaults.py reads them back from the installed TRL). GKDConfig (trl.experimental.gkd, an
# SFTConfig: learning_rate 2e-5 and disable_dropout true, as here); DistillationConfig (trl.DistillationConfig: its
# trainer samples every completion from the student, so it has no lmbda: lmbda 1 here).
GKD_CONFIG_DEFAULTS = {"lmbda": 0.5, "beta": 0.5, "temperature": 0.9, "max_new_tokens": 128, "seq_kd": False}
DISTILLATION_CONFIG_DEFAULTS = {"beta": 1.0, "temperature": 1.0, "max_completion_length": 512, "learning_rate": 1e-6,
                                "disable_dropout": False}
# preflab's own values of those options under task: sft with a teacher, where the config leaves them out (lmbda 0:
# the dataset's completions, nothing sampled; beta: preflab.objectives._distill_task.DEFAULT_BETA; learning_rate:
# task: sft's, TRL_TASK_LEARNING_RATES; max_completion_length: none, required when anything is sampled)
PREFLAB_DISTILL_DEFAULTS = {"lmbda": 0.0, "beta": 1.0, "temperature": 1.0, "max_completion_length": None,
                            "learning_rate": TRL_TASK_LEARNING_RATES["sft"], "disable_dropout": True, "seq_kd": False}


def _distillation_dump(raw: dict, notes: list, errors: list) -> None:
    """A TRL DistillationConfig or GKDConfig (teacher_model_name_or_path set): preflab's task: sft distillation
    (preflab.objectives._distill_task, preflab.loops.distill).

    Which TRL config a mapping claims to be: teacher_model_revision (DistillationConfig's field, in every saved one)
    -> DistillationConfig; else max_new_tokens (GKDConfig's name for its sampling length; DistillationConfig and
    preflab say max_completion_length) -> GKDConfig; else neither (preflab's own distillation). A claimed config
    gets its TRL defaults for the options it leaves out (GKD_CONFIG_DEFAULTS, DISTILLATION_CONFIG_DEFAULTS: a saved
    one carries them all, a hand-written one may not), each noted where preflab's own (PREFLAB_DISTILL_DEFAULTS)
    differs; a config that claims neither and names no task (the shape of a TRL config) is told preflab's defaults
    and TRL's beside them. DistillationConfig has no lmbda: lmbda 1. teacher_model_revision goes to
    teacher_model_init_kwargs.revision; the generation lengths (max_completion_length, GKD's max_new_tokens) and
    DistillationConfig's sampling settings (top_p, top_k, min_p, repetition_penalty) are unread when nothing is
    sampled (lmbda 0, no seq_kd), read otherwise."""
    if not raw.get("teacher_model_name_or_path"):
        return
    distillation = "teacher_model_revision" in raw  # DistillationConfig's field (GKDConfig has none)
    gkd = "max_new_tokens" in raw and not distillation  # GKDConfig's sampling length (the others': another name)
    if "task" not in raw:
        raw["task"] = "sft"
        notes.append("teacher_model_name_or_path -> task: sft (distillation from the teacher)."
                     if distillation or gkd else _unclaimed_distillation_note(raw))
    if distillation and raw["task"] == "sft":
        if "lmbda" not in raw:  # DistillationTrainer: every step's completions sampled from the student
            raw["lmbda"] = 1.0
            notes.append("DistillationConfig -> lmbda: 1 (TRL's DistillationTrainer samples every completion from "
                         "the student).")
        _claimed_defaults(raw, notes, "DistillationConfig", DISTILLATION_CONFIG_DEFAULTS,
                          ("max_completion_length",))
    if gkd and raw["task"] == "sft":
        _claimed_defaults(raw, notes, "GKDConfig", GKD_CONFIG_DEFAULTS, ("temperature",))  # GKD scores at 1
    revision = raw.pop("teacher_model_revision", None)
    if revision is not None:
        kwargs = dict(raw.get("teacher_model_init_kwargs") or {})
        if kwargs.get("revision", revision) != revision:
            errors.append(f"teacher_model_revision={revision!r} and teacher_model_init_kwargs.revision="
                          f"{kwargs['revision']!r} disagree; keep one.")
        raw["teacher_model_init_kwargs"] = {**kwargs, "revision": revision}
    if gkd and raw.get("seq_kd") and float(raw.get("lmbda", 0.0) or 0.0) >= 1.0:
        raw["seq_kd"] = False  # GKDTrainer.training_step: random() <= 1 always, its seq_kd branch is never reached
        notes.append("seq_kd: not read (with lmbda: 1 TRL's GKDTrainer samples every completion from the student and "
                     "never reaches seq_kd).")
    if gkd and "divergence_temperature" not in raw:  # GKDTrainer.compute_loss: generalized_jsd_loss at temperature 1
        raw["divergence_temperature"] = 1.0
        if raw.get("temperature", 1.0) != 1.0:
            notes.append(f"GKDConfig -> divergence_temperature: 1.0 (TRL's GKDTrainer scores the divergence at "
                         f"temperature 1; its temperature {raw['temperature']} only samples).")
    if raw.get("task") == "sft" and not raw.get("lmbda", 0.0) and not raw.get("seq_kd") and (distillation or gkd):
        # the dump's sampling lengths: nothing is sampled off-policy (written by hand, they are refused as for sft)
        for key in ("max_completion_length", "max_new_tokens"):
            if key in raw:
                raw.pop(key)
                notes.append(f"{key}: not read (distillation on the dataset's completions generates nothing).")
        if gkd and raw.pop("temperature", 1.0) != 1.0:  # GKDTrainer: the divergence at 1, nothing sampled here
            notes.append("temperature: not read (GKDTrainer scores the divergence at temperature 1, and distillation "
                         "on the dataset's completions samples nothing).")
        for key, default in (("top_p", 1.0), ("top_k", 0), ("min_p", None), ("repetition_penalty", 1.0)):
            if key in raw and raw.pop(key) != default:  # DistillationConfig's sampling settings (at its default: none)
                notes.append(f"{key}: not read (distillation on the dataset's completions samples nothing).")
    elif gkd and "max_completion_length" not in raw:  # GKDConfig's sampling length, preflab's name
        raw["max_completion_length"] = raw.pop("max_new_tokens")


def _claimed_defaults(raw: dict, notes: list, trl_config: str, defaults: dict, sampling_only: tuple) -> None:
    """The TRL defaults (`defaults`: GKD_CONFIG_DEFAULTS or DISTILLATION_CONFIG_DEFAULTS) of the options a config
    that claims to be TRL's `trl_config` leaves out, in one note naming those that differ from preflab's own
    (PREFLAB_DISTILL_DEFAULTS). The options in `sampling_only` are not filled when nothing is sampled (lmbda 0 and
    no seq_kd): they would be read by nobody."""
    samples = float(raw.get("lmbda", defaults.get("lmbda", 0.0)) or 0.0) > 0 or bool(raw.get("seq_kd"))
    filled = []
    for key, value in defaults.items():
        if key in raw or (key in sampling_only and not samples):
            continue
        raw[key] = value
        if value != PREFLAB_DISTILL_DEFAULTS.get(key, value):
            filled.append(f"{key}: {value:g}" if isinstance(value, float) else f"{key}: {str(value).lower()}")
    if filled:
        notes.append(f"{trl_config} -> its defaults for the options left out: {', '.join(filled)} (preflab's own "
                     "distillation defaults differ: docs/distillation.md, 'TRL's defaults').")


def _unclaimed_distillation_note(raw: dict) -> str:
    """The note of a config with a teacher and no task that is neither a GKDConfig nor a DistillationConfig (see
    _distillation_dump): preflab's distillation, with its defaults and TRL's beside them for what it leaves out."""
    ours = PREFLAB_DISTILL_DEFAULTS
    left = [f"{key}: {ours[key]:g} (GKDConfig's {GKD_CONFIG_DEFAULTS[key]:g}{extra})" for key, extra in (
        ("lmbda", "; TRL's DistillationTrainer samples every completion, lmbda: 1"),
        ("beta", f"; DistillationConfig's {DISTILLATION_CONFIG_DEFAULTS['beta']:g}"),
        ("temperature", "")) if key not in raw]
    if not left:
        return "teacher_model_name_or_path -> task: sft (preflab's distillation)."
    return (f"teacher_model_name_or_path -> task: sft (preflab's distillation; left out: {', '.join(left)}). Write "
            f"{'them' if len(left) > 1 else 'it'} to choose (docs/distillation.md, 'TRL's defaults').")


def _dataset_kwargs(raw: dict, errors: list) -> None:
    """SFTConfig's dataset_kwargs, whose only key TRL 1.16 reads is skip_prepare_dataset: it becomes preflab's option
    of that name (a JSON string is read as TrainingArguments reads it; null / {} ask for nothing). Any other key is
    refused, naming it (TRL ignores it without a word)."""
    from preflab.lr_schedule_options import parsed_kwargs

    if "dataset_kwargs" not in raw:
        return
    try:
        given = parsed_kwargs(raw.pop("dataset_kwargs"))
    except ValueError as exc:
        errors.append(f"dataset_kwargs is not valid JSON ({exc}); give a mapping, e.g. "
                      "dataset_kwargs: {skip_prepare_dataset: true}.")
        return
    if given in (None, {}):
        return
    if not isinstance(given, dict):
        errors.append(f"dataset_kwargs must be a mapping (TRL's SFTConfig: {{skip_prepare_dataset: true}}), got "
                      f"{given!r}.")
        return
    other = sorted(str(k) for k in given if k != "skip_prepare_dataset")
    if other:
        errors.append(f"dataset_kwargs key(s) {', '.join(other)} are not supported: TRL 1.16's SFTTrainer reads only "
                      "skip_prepare_dataset (and ignores the rest); remove them.")
    if "skip_prepare_dataset" in given:
        if raw.get("skip_prepare_dataset") not in (None, given["skip_prepare_dataset"]):
            errors.append("dataset_kwargs.skip_prepare_dataset and skip_prepare_dataset disagree; keep one.")
        else:
            raw["skip_prepare_dataset"] = given["skip_prepare_dataset"]


def _packing_strategy(raw: dict, errors: list) -> None:
    """SFTConfig's packing_strategy bfd_split / wrapped (preflab.loops.sft_packing) beside the TRL options that would
    pack the eval set another way or shuffle the rows before wrapping them: refused, naming both."""
    strategy = raw.get("packing_strategy")
    if raw.get("task") != "sft" or not raw.get("packing") or strategy not in ("bfd_split", "wrapped"):
        return
    if raw.get("eval_packing") is False:
        raw.pop("eval_packing")
        errors.append(f"eval_packing: false with packing_strategy: {strategy} is not supported: task: sft evaluates "
                      f"the eval rows cut as {strategy} cuts the training rows (TRL would evaluate them whole, cut at "
                      "max_length). Remove eval_packing (it then follows packing, as in TRL).")
    if strategy == "wrapped" and raw.get("shuffle_dataset") is True and "online_task" not in raw:  # preflab's own
        # config.yaml writes the online option's default true beside online_task: nobody's choice
        raw.pop("shuffle_dataset")
        errors.append("shuffle_dataset: true with packing_strategy: wrapped is not supported: TRL shuffles the rows "
                      "(datasets' permutation) before it concatenates them, which preflab does not reproduce; preflab "
                      "wraps the rows in file order and draws the chunks in its seeded random order. Remove "
                      "shuffle_dataset, or shuffle the file beforehand.")


GRPO_LOSS_TYPES = ("dapo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16 GRPOConfig; grpo is ours too


def _drop_group_loss_options(raw: dict) -> None:
    """The GRPO family's loss options (fields of objective grpo: sapo_*, vespo_*, epsilon, ...) of a config refused
    for its GRPOConfig loss_type: they are checked once the recipe is named as the refusal says. Before, a saved
    GRPOConfig under the wrong trainer got six `unknown config key 'sapo_temperature_neg'. It is a parameter of the
    objective(s) grpo` lines beside the one that says what to do."""
    import dataclasses

    from preflab.objectives import objective_class

    for name in {f.name for f in dataclasses.fields(objective_class("grpo"))} - {"beta", "loss_type"}:
        raw.pop(name, None)


def _grpo_loss_type(raw: dict, errors: list) -> None:
    """TRL's GRPOConfig loss_type (default dapo, so often written out) is a preflab online recipe, not an objective;
    said here, before the objective registry would answer `unknown objective 'dapo'. Did you mean 'dpo'?`."""
    from preflab.online_options import GRPO_RECIPE_LOSS_TYPES, grpo_loss_type_error

    loss = raw.get("loss_type")
    if not isinstance(loss, str) or loss not in GRPO_LOSS_TYPES:
        return
    raw.pop("loss_type")
    if loss in GRPO_RECIPE_LOSS_TYPES and raw.get("task") == "online" and raw.get("trainer") == loss:
        return  # the recipe already named (a saved GRPOConfig carries its loss_type; it was refused as a mismatch)
    if loss in GRPO_RECIPE_LOSS_TYPES:
        task = "" if raw.get("task") == "online" else "task: online, "
        errors.append(grpo_loss_type_error(loss, raw.get("trainer", "online_dpo"), task))
        _drop_group_loss_options(raw)
    else:
        errors.append(f"loss_type={loss!r} is a TRL GRPOConfig loss_type that preflab does not have; the GRPO "
                      "recipes are task: online with trainer: grpo, dapo, dr_grpo, bnpo, gspo, cispo, sapo, luspo or "
                      "vespo.")


# GRPOConfig.generation_kwargs keys that are preflab options of the same meaning (the sampler's settings; TRL does
# not apply them to the log-probs either), and max_new_tokens, TRL's generate() length, preflab's
# max_completion_length
GENERATION_KWARGS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                     "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_completion_length"}


def _generation_kwargs(raw: dict, notes: list, errors: list) -> None:
    """task: online: TRL GRPOConfig's generation_kwargs, by TRL 1.16's rule: GRPOTrainer builds its generation
    settings from temperature, top_p, top_k, min_p, repetition_penalty and max_completion_length (max_new_tokens),
    then `.update(generation_kwargs)`, so a key given there wins over the option. Those keys become the options (a
    note when one replaces another value of the option); do_sample: true is what preflab does; any other key (num_beams,
    eos_token_id, ...) and do_sample: false are refused, naming them. A JSON string is read as TrainingArguments
    reads it from its command line."""
    from preflab.lr_schedule_options import parsed_kwargs

    value = raw.pop("generation_kwargs")
    try:
        kwargs = parsed_kwargs(value)
    except ValueError as exc:
        errors.append(f"generation_kwargs is not valid JSON ({exc}); give a mapping, e.g. generation_kwargs: "
                      "{top_k: 20}.")
        return
    if kwargs in (None, {}):
        return
    if not isinstance(kwargs, dict):
        errors.append(f"generation_kwargs must be a mapping of generate() arguments, got {type(kwargs).__name__}.")
        return
    other = sorted(k for k in kwargs if k not in GENERATION_KWARGS and k != "do_sample")
    if kwargs.get("do_sample", True) is not True:
        other.insert(0, "do_sample: false")
    if other:
        errors.append(f"generation_kwargs {', '.join(other)}: preflab samples (do_sample) with temperature, top_p, "
                      "top_k, min_p and repetition_penalty, up to max_completion_length (max_new_tokens) new tokens, "
                      "and takes no other generate() argument; remove "
                      f"{'it' if len(other) == 1 else 'them'} from generation_kwargs.")
        return
    for key, ours in GENERATION_KWARGS.items():
        if key in kwargs:
            before = raw.get(ours)  # max_new_tokens (OnlineDPOConfig's) is max_completion_length by now (RENAMED)
            if before is not None and before != kwargs[key]:
                notes.append(f"generation_kwargs {key}: {kwargs[key]} replaces {ours}: {before} (TRL's rule: "
                             "generation_kwargs is applied last).")
            raw[ours] = kwargs[key]


def _kwargs_option(raw: dict, key: str, example: str, errors: list) -> None:
    """A TrainingArguments mapping option (lr_scheduler_kwargs, gradient_checkpointing_kwargs) as transformers reads
    it: a JSON string from its command line is the mapping; {} and null (its default) ask for nothing and are
    dropped. `example`: the mapping named in the error of a string that is no JSON."""
    from preflab.lr_schedule_options import parsed_kwargs

    if key in raw:
        try:
            kwargs = parsed_kwargs(raw.pop(key))
        except ValueError as exc:
            errors.append(f"{key} is not valid JSON ({exc}); give a mapping, e.g. {key}: {example}.")
            return
        if kwargs not in (None, {}):
            raw[key] = kwargs


def _lr_schedule(raw: dict, errors: list) -> None:
    """lr_scheduler_kwargs as TrainingArguments reads it (_kwargs_option); a transformers schedule preflab does not
    have is refused with its reason (REFUSED_SCHEDULES)."""
    from preflab.lr_schedule_options import REFUSED_SCHEDULES

    _kwargs_option(raw, "lr_scheduler_kwargs", "{min_lr_rate: 0.1}", errors)
    kind = raw.get("lr_scheduler_type")
    if isinstance(kind, str) and kind in REFUSED_SCHEDULES:
        raw.pop("lr_scheduler_type")
        errors.append(f"lr_scheduler_type={kind!r} is not supported: {REFUSED_SCHEDULES[kind]}.")


def _strategies(raw: dict, notes: list, errors: list) -> None:
    if "do_eval" in raw:  # as in transformers, do_eval does not switch evaluation; an eval set is needed for it
        has_eval = bool(raw.get("eval_dataset_name") or raw.get("eval_fraction"))
        value = raw.pop("do_eval")
        if value is True and not has_eval:
            from preflab.config_defaults import PYTHON_EVAL_ROUTE

            errors.append("do_eval: true but there is no eval set: set eval_dataset_name (or eval_fraction). "
                          + PYTHON_EVAL_ROUTE)
        elif value is False and has_eval and raw.get("eval_strategy") != "no":
            notes.append("do_eval: false does not switch evaluation off (as in transformers); the eval set is used "
                         "on eval_strategy / eval_steps. Set eval_strategy: no to skip evaluation.")
    if "logging_strategy" in raw:
        value = raw.pop("logging_strategy")
        if value != "steps":
            errors.append(f"logging_strategy={value!r} is not supported: preflab logs every logging_steps; "
                          "use logging_strategy: steps.")
    if "save_strategy" in raw:
        value = raw.pop("save_strategy")
        if value is None:  # preflab's own field left unset (a saved preflab config writes it)
            pass
        elif value == "best":  # transformers: save_steps is not read; a checkpoint at each new best evaluation
            raw["save_strategy"] = "best"
            if raw.get("save_steps"):
                notes.append(f"save_strategy: best -> save_steps {raw['save_steps']} is not used (a checkpoint at each "
                             "evaluation that improves metric_for_best_model).")
            raw["save_steps"] = 0
        elif value == "epoch":  # transformers: a checkpoint at the end of each epoch; save_steps is not read
            raw["save_strategy"] = "epoch"
            if raw.get("save_steps") not in (None, 0, 500):  # 500: TrainingArguments' default (a saved config's)
                notes.append(f"save_strategy: epoch -> save_steps {raw['save_steps']} is not used (a checkpoint at "
                             "the end of each epoch).")
            raw["save_steps"] = 0
        elif value == "no":
            if raw.get("save_steps"):
                notes.append(f"save_strategy: no -> save_steps {raw['save_steps']} is not used (no checkpoints).")
            raw["save_steps"] = 0
        elif value == "steps":
            if not raw.get("save_steps"):
                raw["save_steps"] = 500
                notes.append("save_strategy: steps without save_steps -> save_steps: 500 (transformers' default).")
        else:
            errors.append(f"save_strategy={value!r} is not supported: use save_strategy: steps with save_steps, "
                          "epoch, best, or no.")


def _ratios(raw: dict, notes: list, errors: list) -> None:
    """transformers 5 reads a float in (0, 1) for warmup_steps / logging_steps / eval_steps / save_steps as a
    fraction of the total steps: warmup_steps becomes warmup_ratio; the others need a step count in preflab."""
    def fraction(v) -> bool:
        return isinstance(v, float) and 0 < v < 1

    if fraction(raw.get("warmup_steps")):
        if raw.get("warmup_ratio"):
            errors.append(f"warmup_steps={raw['warmup_steps']} (a fraction of the total steps) and warmup_ratio="
                          f"{raw['warmup_ratio']} both set the warmup; keep one.")
        else:
            raw["warmup_ratio"] = raw.pop("warmup_steps")
            notes.append(f"warmup_steps: {raw['warmup_ratio']} is a fraction of the total steps (transformers 5) -> "
                         f"warmup_ratio: {raw['warmup_ratio']}.")
    for key in ("logging_steps", "eval_steps", "save_steps"):
        if fraction(raw.get(key)):
            errors.append(f"{key}={raw[key]} is transformers' fraction-of-total-steps form, which preflab does not "
                          f"take; give {key} as a number of steps.")


def _model_kwargs(raw: dict, errors: list) -> None:
    """ModelConfig's model_revision / attn_implementation go into model_init_kwargs; the dtype of
    model_init_kwargs becomes load_dtype (the one place preflab reads it)."""
    for key, kwarg in (("model_revision", "revision"), ("attn_implementation", "attn_implementation")):
        if key in raw:
            value = raw.pop(key)
            if value not in (None, "main" if key == "model_revision" else None):
                raw["model_init_kwargs"] = {**(raw.get("model_init_kwargs") or {}), kwarg: value}
    kwargs = raw.get("model_init_kwargs")
    if isinstance(kwargs, dict):
        kwargs = dict(kwargs)
        for name in ("dtype", "torch_dtype"):
            if name in kwargs:
                value = kwargs.pop(name)
                if raw.get("load_dtype") not in (None, value):
                    errors.append(f"model_init_kwargs.{name}={value!r} and torch_dtype/load_dtype="
                                  f"{raw['load_dtype']!r} disagree; keep one.")
                raw["load_dtype"] = value
        raw["model_init_kwargs"] = kwargs or None


# rDPO's loss at flip rate eps = 0 is DPO's -log sigmoid(z) exactly (preflab.objectives.robust_dpo; TRL 1.16 trains
# loss_type robust with its default label_smoothing 0.0 the same, without a word)
ROBUST_WITHOUT_EPS = ("loss_type robust without label_smoothing (its label flip rate eps, default 0) trains exactly "
                      "DPO (sigmoid): set label_smoothing to the flip rate you assume (Chowdhury et al. 2024 use 0.1).")


def _label_smoothing(raw: dict, notes: list) -> None:
    """TRL <= 0.28: loss_type sigmoid with label_smoothing eps is cDPO; TRL >= 0.29 ignores it. preflab keeps the
    old meaning (the one a config that sets it wants) under its own name, cdpo, and says so."""
    loss = raw.get("loss_type", "sigmoid")
    single = loss[0] if isinstance(loss, list) and len(loss) == 1 else loss
    params = raw.get("objective_params") if isinstance(raw.get("objective_params"), dict) else {}
    if single in ("robust", "robust_dpo") and raw.get("label_smoothing", params.get("label_smoothing", 0)) in (0, 0.0):
        notes.append(ROBUST_WITHOUT_EPS)  # eps as a top-level key or in objective_params
    if "label_smoothing" not in raw:
        return
    if single != "sigmoid":
        return  # robust, exo_pair, ... take label_smoothing themselves
    eps = raw["label_smoothing"]
    if eps in (0, 0.0):
        raw.pop("label_smoothing")  # TRL's default (every saved DPOConfig carries it): nothing asked, nothing said
        return
    raw["loss_type"] = "cdpo"
    notes.append(f"loss_type sigmoid with label_smoothing {eps} -> loss_type: cdpo (conservative DPO, TRL <= 0.28's "
                 "meaning; TRL 1.x ignores label_smoothing for sigmoid).")
