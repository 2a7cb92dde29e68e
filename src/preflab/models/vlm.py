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

freeze_vision, add_vlm_lora and load_vlm_processor live in preflab.models.vlm_parts (a reloaded run rebuilds its base
with them too), load_vlm_model beside load_vlm_run in preflab.models.vlm_run (the two recurse: a run's base may be a
run); all are importable from here.
"""
from __future__ import annotations

from torch import nn

from preflab.errors import ConfigError
from preflab.models.vlm_parts import (LM_LORA_TARGETS, add_vlm_lora, freeze_vision, is_projector,  # noqa: F401
                                      is_vision_tower, load_vlm_processor)
from preflab.models.vlm_run import load_vlm_model  # noqa: F401  (a public name of this module)

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


def shared_prompt_support(model) -> tuple[bool, str]:
    """(True, "") when the prefix-shared layout is exact for `model`: a custom 4-D mask is honoured and positions
    are 1-D (explicit position_ids reach the language model as given); else (False, why)."""
    from preflab.models.attention import supports_custom_mask, unwrap

    base = unwrap(model)
    if hasattr(getattr(base, "model", None), "get_rope_index") or getattr(base.config, "vision_start_token_id", None):
        return False, f"{base.config.model_type} computes its own multi-dimensional rotary positions"
    return supports_custom_mask(model)
