"""Loading image-text-to-text policies, references and processors; frozen vision towers; LoRA on the LM only.

    policy, ref, processor = load_vlm(cfg)

Models: a hub name or local directory loaded with `AutoModelForImageTextToText` + `AutoProcessor` (safetensors
only unless allow_pickle; remote code only with trust_remote_code), or a builtin tiny random model
("builtin:tiny-qwen2-vl", "builtin:tiny-llava"; preflab.models.tiny_vlm).

Which parameters are which (by module name, covering Qwen2-VL / Qwen2.5-VL, LLaVA, Idefics3 / SmolVLM):
    vision tower   visual.* (but visual.merger.*), vision_tower.*, vision_model.*
    projector      visual.merger.*, multi_modal_projector.*, connector.*
freeze_vision_tower fixes the tower (requires_grad False), freeze_multi_modal_projector the projector. With LoRA
and lora_target_modules "all-linear", adapters go on the language model's linear layers only when the tower is
frozen (the regex LM_LORA_TARGETS), on every linear layer otherwise; as with any peft model, only the adapters
then train (the projector too stays as loaded).
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from preflab.errors import ConfigError

LM_LORA_TARGETS = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_TOWER = re.compile(r"(^|\.)(visual|vision_tower|vision_model)\.")
_PROJECTOR = re.compile(r"(^|\.)(visual\.merger|multi_modal_projector|connector)\.")


def is_projector(name: str) -> bool:
    return bool(_PROJECTOR.search(name))


def is_vision_tower(name: str) -> bool:
    return bool(_TOWER.search(name)) and not is_projector(name)


def freeze_vision(model: nn.Module, tower: bool = True, projector: bool = False) -> dict:
    """Fix the vision tower and/or the projector; returns the number of parameters fixed in each."""
    counts = {"vision_tower": 0, "projector": 0}
    for name, param in model.named_parameters():
        if tower and is_vision_tower(name):
            param.requires_grad_(False)
            counts["vision_tower"] += param.numel()
        elif projector and is_projector(name):
            param.requires_grad_(False)
            counts["projector"] += param.numel()
    if tower and counts["vision_tower"] == 0:
        raise ConfigError(f"freeze_vision_tower is set but no vision-tower parameters were found in "
                          f"{type(model).__name__} (looked for visual.*, vision_tower.*, vision_model.*); set "
                          "freeze_vision_tower: false for this model.")
    return counts


def load_vlm_processor(cfg):
    """The processor of cfg.processor_name_or_path or cfg.model_name_or_path. A task: vlm run directory (or one of
    its checkpoints) gives the processor saved beside its weights, or, when its runs go back to a builtin model, the
    builtin one (preflab.models.vlm_run.processor_source)."""
    from preflab.models.tiny_vlm import BUILTIN_VLM, tiny_vlm_processor
    from preflab.models.vlm_run import processor_source

    name = processor_source(cfg.processor_name_or_path or cfg.model_name_or_path)
    if name in BUILTIN_VLM:
        return tiny_vlm_processor(BUILTIN_VLM[name])
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as err:
        where = (f"the directory {name} has no processor files (preprocessor_config.json and the tokenizer's) beside "
                 "its weights" if Path(name).is_dir() else f"{name!r} gives no processor")
        raise ConfigError(f"cannot load the image-text processor: {where} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:300]}). Save the processor with the model "
                          "(processor.save_pretrained(dir)), or set processor_name_or_path to the base model's "
                          "name or directory.") from err
    tok = getattr(processor, "tokenizer", None)
    if tok is not None and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return processor


def load_vlm_model(name: str, cfg, processor=None, ref: bool = False) -> nn.Module:
    """The image-text model `name`: a builtin tiny one, a task: vlm run, or transformers' from_pretrained in
    load_dtype with model_init_kwargs (ref: ref_load_dtype, else load_dtype, with ref_model_init_kwargs), as the text
    tasks load theirs (both were accepted and ignored: float32 and no kwargs)."""
    from preflab.models.load import DTYPES, check_weights_safe
    from preflab.models.tiny_vlm import BUILTIN_VLM, tiny_vlm

    if not name:
        raise ConfigError("model_name_or_path is empty; give a hub name, a local directory or builtin:tiny-qwen2-vl.")
    dtype = (getattr(cfg, "ref_load_dtype", None) if ref else None) or getattr(cfg, "load_dtype", None) or "float32"
    if name in BUILTIN_VLM:  # built in code: the dtype is cast to, as a builtin text model's (load_causal_lm)
        model = tiny_vlm(processor, BUILTIN_VLM[name], seed=cfg.seed)
        return model if dtype in ("float32", "auto") else model.to(DTYPES[dtype])
    from preflab.models.vlm_run import is_vlm_run, load_vlm_run

    if is_vlm_run(name):  # a task: vlm run (final or checkpoint-N), with CAT's clue aggregator when it has one
        return load_vlm_run(name, processor, cfg.allow_pickle, cfg.trust_remote_code)[0]
    from transformers import AutoModelForImageTextToText

    check_weights_safe(name, cfg.allow_pickle)
    kwargs = dict(getattr(cfg, "ref_model_init_kwargs" if ref else "model_init_kwargs", None) or {})
    return AutoModelForImageTextToText.from_pretrained(
        name, **{"dtype": DTYPES[dtype], "trust_remote_code": cfg.trust_remote_code,
                 "use_safetensors": None if cfg.allow_pickle else True, **kwargs})


def load_vlm(cfg, processor=None):
    """(policy, reference or None, processor). The reference is None for LoRA (adapters off) or when unneeded."""
    from preflab.models.load import disable_dropout, frozen_copy

    from preflab.models.given import mark_loaded

    processor = processor or load_vlm_processor(cfg)
    policy = mark_loaded(load_vlm_model(cfg.model_name_or_path, cfg, processor))
    if cfg.disable_dropout:
        disable_dropout(policy)
    needs_reference = cfg.objective().needs_reference
    ref = None
    if needs_reference and cfg.ref_model_name_or_path:
        ref = load_vlm_reference(cfg.ref_model_name_or_path, cfg, processor, policy).requires_grad_(False).eval()
    elif needs_reference and not cfg.use_peft:
        ref = frozen_copy(policy)
    freeze_vision(policy, cfg.freeze_vision_tower, cfg.freeze_multi_modal_projector)
    if cfg.use_peft:
        policy = add_vlm_lora(policy, cfg)
    return policy, ref, processor


def load_vlm_reference(name: str, cfg, processor, policy, option: str = "ref_model_name_or_path") -> nn.Module:
    """The model `name` (given as `option`) as the reference: it scores the policy's processor outputs (token ids with
    the image tokens expanded, pixel tensors, image grids), so it must be an image-text model of the policy's
    architecture with the policy's tokenizer (preflab.models.load.check_reference_tokens). Anything else is a
    ConfigError naming it: a built-in of another architecture crashed while being built for the policy's processor,
    another saved architecture mid-run, and a text model's name raised the hub's validation error."""
    from preflab.models.attention import unwrap
    from preflab.models.load import check_reference_tokens
    from preflab.models.tiny_vlm import BUILTIN_VLM

    kind = unwrap(policy).config.model_type
    why = (f"a task: vlm reference scores the policy's processor outputs (token ids, pixels, image grids), so it must "
           f"be an image-text model of the policy's architecture ({kind}) with its tokenizer, e.g. the model the policy "
           f"was trained from; or leave {option} out (the run's own reference)")
    if name.startswith("builtin:") and BUILTIN_VLM.get(name) != kind:
        raise ConfigError(f"{option}={name!r} is not a built-in {kind} model; {why}.")
    try:
        ref = load_vlm_model(name, cfg, processor, ref=True)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{option}={name!r} does not load as an image-text model "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); {why}.") from err
    if ref.config.model_type != kind:
        raise ConfigError(f"{option}={name!r} is a {ref.config.model_type} model; {why}.")
    check_reference_tokens(name, ref, policy, getattr(processor, "tokenizer", processor))
    return ref


def add_vlm_lora(policy: nn.Module, cfg) -> nn.Module:
    """LoRA adapters (cfg.lora_*) on the language model's linear layers while the tower is frozen (module docstring)."""
    from preflab.models.load import add_lora

    targets = cfg.lora_target_modules
    if targets == "all-linear" and cfg.freeze_vision_tower:
        targets = LM_LORA_TARGETS
    return add_lora(policy, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets)


def shared_prompt_support(model) -> tuple[bool, str]:
    """(True, "") when the prefix-shared layout is exact for `model`: a custom 4-D mask is honoured and positions
    are 1-D (explicit position_ids reach the language model as given); else (False, why)."""
    from preflab.models.attention import supports_custom_mask, unwrap

    base = unwrap(model)
    if hasattr(getattr(base, "model", None), "get_rope_index") or getattr(base.config, "vision_start_token_id", None):
        return False, f"{base.config.model_type} computes its own multi-dimensional rotary positions"
    return supports_custom_mask(model)
