"""TRL keys in a preflab config: a TRL 1.16 DPOConfig (with its TrainingArguments), TRL's script and model
arguments, and the legacy 0.2x DPOConfig fields many configs still carry.

    raw, notes, errors = translate_trl(raw)   # preflab names; notes to print once; errors (refused TRL values)

Each TRL key ends in exactly one of four ways, never silently dropped:
- RENAMED: the same meaning under a preflab name (e.g. ref_model -> ref_model_name_or_path);
- translated with TRL's meaning (eval_strategy, save_strategy, padding_free, label_smoothing with sigmoid, ...);
- NO_EFFECT: accepted; when its value asks for something preflab does not do (or already does), a note says so;
- REFUSED: a value other than TRL's default is a ConfigError with the reason and what to do instead.
"""
from __future__ import annotations

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

# TRL key -> (TRL's default, note printed once when the config sets another value: what preflab does instead)
NO_EFFECT = {
    "use_logits_to_keep": (False, "preflab already runs the LM head on response positions only"),
    "remove_unused_columns": (True, "preflab keeps only the columns it uses (an objective's extra columns "
                                    "travel with the rows)"),
    "run_name": (None, "trackers receive the run under the name 'preflab'"),
    "tf32": (None, "no effect on the matmul precision in preflab"),
    "dataloader_num_workers": (0, "batches are built in the training process"),
    "gradient_checkpointing_kwargs": (None, "preflab always checkpoints with use_reentrant=False"),
    "gradient_checkpointing_use_reentrant": (None, "preflab always checkpoints with use_reentrant=False"),
    "ddp_find_unused_parameters": (None, "preflab's DDP wrapper sets this itself"),
    "hub_model_id": (None, "preflab does not push to the hub"),
    "pad_token": (None, "the tokenizer's pad token is used (EOS when it has none)"),
    "label_pad_token_id": (-100, "preflab builds its own masks; there is no label padding"),
    "padding_value": (None, "preflab builds its own masks; padding values never reach the loss"),
    "precompute_ref_batch_size": (None, "precompute uses per_device_train_batch_size / per_device_eval_batch_size"),
    "router_aux_loss_coef": (0.001, "no MoE router loss is added in preflab"),
    "use_liger_loss": (False, "preflab uses its own chunked LM head"),
    "use_liger_kernel": (False, "preflab uses its own chunked LM head"),
    "ignore_bias_buffers": (False, "no effect in preflab"),
    "lora_task_type": ("CAUSAL_LM", "adapters are always built for CAUSAL_LM"),
    "logging_dir": (None, "trackers write under output_dir"),
    "log_level": ("passive", "preflab prints its own lines"),
    "logging_nan_inf_filter": (True, "non-finite steps are skipped, logged with their rows, and stop the run after "
                                     "max_nonfinite_steps"),
    "save_only_model": (False, "checkpoints always hold the optimizer state, for exact resume"),
    "metric_for_best_model": (None, "preflab keeps the last model (no best-model selection)"),
    "greater_is_better": (None, "preflab keeps the last model (no best-model selection)"),
    "data_seed": (None, "the data order follows seed"),
    "dataloader_drop_last": (False, "the incomplete last batch of an epoch is always left out (counted in "
                                    "unused_rows_per_epoch)"),
    "eval_accumulation_steps": (None, "evaluation sums its metrics batch by batch"),
    "ddp_timeout": (1800, "accelerate's default timeout is used"),
    "hub_strategy": ("every_save", "preflab does not push to the hub"),
    "hub_private_repo": (None, "preflab does not push to the hub"),
    "hub_token": (None, "preflab does not push to the hub"),
    "include_num_input_tokens_seen": (False, "num_tokens is always logged"),
    "average_tokens_across_devices": (True, "the loss is averaged per example across processes"),
    "local_rank": (-1, "accelerate sets up the processes"),
    "bf16_full_eval": (False, "evaluation runs under the same dtype as training"),
    "fp16_full_eval": (False, "evaluation runs under the same dtype as training"),
    "ref_model_mixup_alpha": (0.6, "used only with sync_ref_model, which preflab does not support"),
    "ref_model_sync_steps": (512, "used only with sync_ref_model, which preflab does not support"),
    "include_tokens_per_second": (False, "tokens_per_second is always logged"),
    "torch_empty_cache_steps": (None, "preflab does not empty the device cache on a schedule"),
}

# TRL key -> (TRL's default, why a different value is refused and what to do)
REFUSED = {
    "sync_ref_model": (False, "TR-DPO reference syncing is not implemented; remove sync_ref_model"),
    "reference_free": (False, "use a reference-free objective instead (loss_type: simpo, cpo or orpo)"),
    "force_use_ref_model": (False, "set ref_model_name_or_path; preflab uses it whether or not use_peft is set"),
    "model_adapter_name": (None, "preflab trains one adapter; remove model_adapter_name"),
    "ref_adapter_name": (None, "preflab's LoRA reference is the base model with adapters disabled"),
    "activation_offloading": (False, "not supported; use gradient_checkpointing: true"),
    "push_to_hub": (False, "preflab does not upload; push output_dir afterwards with `hf upload`"),
    "use_rslora": (False, "rsLoRA is not supported; remove use_rslora"),
    "use_dora": (False, "DoRA is not supported; remove use_dora"),
    "lora_modules_to_save": (None, "not supported; remove lora_modules_to_save"),
    "dataset_config": (None, "preflab has no dataset configuration names; give the files or a save_to_disk "
                             "directory in dataset_name"),
    "max_target_length": (None, "encoder-decoder models are not supported; use max_completion_length"),
    "is_encoder_decoder": (None, "encoder-decoder models are not supported"),
    "load_best_model_at_end": (False, "not supported: the saved model is the last step's; remove it"),
    "deepspeed": (None, "give DeepSpeed settings to `accelerate launch --config_file ...`, not to the config"),
    "fsdp": (None, "give FSDP settings to `accelerate launch --config_file ...`, not to the config"),
    "neftune_noise_alpha": (None, "NEFTune noise is not supported; remove it"),
    "use_vllm": (False, "offline DPO generates nothing; online training is task: online (preflab.online)"),
    "save_safetensors": (True, "preflab saves safetensors only"),
    "eval_on_start": (False, "evaluation runs every eval_steps and at the end (its "
                             "eval_reference_ranking_accuracy measures the starting model); remove it"),
    "group_by_length": (False, "batches follow the seeded order (layout prefix_shared or "
                               "prefix_packed already drops the padding); remove it"),
    "lr_scheduler_kwargs": (None, "scheduler options are not supported; use lr_scheduler_type linear, cosine, "
                                  "constant or constant_with_warmup with warmup_steps / warmup_ratio"),
    "tools": (None, "give the tools per row in a 'tools' column (passed to the chat template)"),
    "chat_template_path": (None, "save the chat template with the tokenizer in the model directory "
                                 "(tokenizer.chat_template), then point model_name_or_path at it"),
}

TRL_KEYS = set(RENAMED) | set(NO_EFFECT) | set(REFUSED) | {
    "do_eval", "save_strategy", "logging_strategy", "optim", "padding_free", "model_revision", "attn_implementation"}


def _same(value, default) -> bool:
    return value == default or (default is None and value in (None, False, "", [], {}))


def translate_trl(raw: dict) -> tuple[dict, list[str], list[str]]:
    """(the config in preflab's names, notes to print once, one error line per refused TRL value)."""
    raw, notes, errors = dict(raw), [], []
    for key in ("eval_strategy", "evaluation_strategy", "save_strategy", "logging_strategy"):
        if raw.get(key) is False:  # YAML 1.1 reads a bare `no` as false
            raw[key] = "no"
    if ("dataset_test_split" in raw and raw.get("dataset_name") and raw.get("eval_strategy") in ("steps", "epoch")
            and not raw.get("eval_dataset_name") and not raw.get("eval_fraction")):
        # TRL's scripts evaluate on dataset_name's dataset_test_split whenever eval_strategy is not "no"
        raw["eval_dataset_name"] = raw["dataset_name"]
        notes.append(f"dataset_test_split: {raw['dataset_test_split']} with eval_strategy: {raw['eval_strategy']} -> "
                     f"eval_dataset_name: {raw['dataset_name']} (its {raw['dataset_test_split']!r} split), as TRL's "
                     "scripts do.")
    for trl, ours in RENAMED.items():
        if trl in raw:
            if ours in raw:
                errors.append(f"{trl} and {ours} are the same option (TRL and preflab spelling); keep one.")
            else:
                raw[ours] = raw.pop(trl)
    for key, (default, why) in REFUSED.items():
        if key in raw and not _same(raw.pop(key), default):
            errors.append(f"{key} is not supported: {why}.")
    for key, (default, why) in NO_EFFECT.items():
        if key in raw and not _same(raw.pop(key), default):
            notes.append(f"{key}: {why}.")
    _strategies(raw, notes, errors)
    _ratios(raw, notes, errors)
    _model_kwargs(raw, errors)
    if "padding_free" in raw:
        if raw.pop("padding_free") is True:
            if "layout" in raw:
                notes.append(f"padding_free: true, with layout: {raw['layout']} as given.")
            else:
                raw["layout"] = "prefix_packed"
                notes.append("padding_free: true -> layout: prefix_packed (no padding; the same log-probs).")
    _label_smoothing(raw, notes)
    return raw, notes, errors


def _strategies(raw: dict, notes: list, errors: list) -> None:
    if "do_eval" in raw:  # as in transformers, do_eval does not switch evaluation; an eval set is needed for it
        has_eval = bool(raw.get("eval_dataset_name") or raw.get("eval_fraction"))
        value = raw.pop("do_eval")
        if value is True and not has_eval:
            errors.append("do_eval: true but there is no eval set: set eval_dataset_name (or eval_fraction).")
        elif value is False and has_eval and raw.get("eval_strategy") != "no":
            notes.append("do_eval: false does not switch evaluation off (as in transformers); the eval set is used "
                         "on eval_strategy / eval_steps. Set eval_strategy: no to skip evaluation.")
    if "optim" in raw:
        optim = raw.pop("optim")
        if optim not in ("adamw_torch", "adamw_torch_fused", "adamw_hf"):
            errors.append(f"optim={optim!r} is not supported: preflab trains with torch AdamW "
                          "(adamw_torch / adamw_torch_fused); remove optim.")
    if "logging_strategy" in raw:
        value = raw.pop("logging_strategy")
        if value != "steps":
            errors.append(f"logging_strategy={value!r} is not supported: preflab logs every logging_steps; "
                          "use logging_strategy: steps.")
    if "save_strategy" in raw:
        value = raw.pop("save_strategy")
        if value == "no":
            if raw.get("save_steps"):
                notes.append(f"save_strategy: no -> save_steps {raw['save_steps']} is not used (no checkpoints).")
            raw["save_steps"] = 0
        elif value == "steps":
            if not raw.get("save_steps"):
                raw["save_steps"] = 500
                notes.append("save_strategy: steps without save_steps -> save_steps: 500 (transformers' default).")
        else:
            errors.append(f"save_strategy={value!r} is not supported: use save_strategy: steps with save_steps, "
                          "or no.")


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


def _label_smoothing(raw: dict, notes: list) -> None:
    """TRL <= 0.28: loss_type sigmoid with label_smoothing eps is cDPO; TRL >= 0.29 ignores it. preflab keeps the
    old meaning (the one a config that sets it wants) under its own name, cdpo, and says so."""
    if "label_smoothing" not in raw:
        return
    loss = raw.get("loss_type", "sigmoid")
    single = loss[0] if isinstance(loss, list) and len(loss) == 1 else loss
    if single != "sigmoid":
        return  # robust, exo_pair, ... take label_smoothing themselves
    eps = raw["label_smoothing"]
    if eps in (0, 0.0):
        raw.pop("label_smoothing")
        notes.append("label_smoothing: 0 has no effect with loss_type sigmoid.")
        return
    raw["loss_type"] = "cdpo"
    notes.append(f"loss_type sigmoid with label_smoothing {eps} -> loss_type: cdpo (conservative DPO, TRL <= 0.28's "
                 "meaning; TRL 1.x ignores label_smoothing for sigmoid).")
