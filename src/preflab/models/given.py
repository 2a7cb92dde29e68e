"""The loading options of a model given from Python (`Trainer(cfg, policy=..., ref=...)`, `OnlineRun(cfg,
policy=...)`, `online_dpo(policy, ...)`): preflab loads no model then, so the options that act only while it loads
one were accepted and silently ignored. Each is now applied where the given object already is what the option asks
for, and refused otherwise, naming the option and saying to load the model with it or drop it:

    load_dtype / ref_load_dtype  accepted when the given model's floating weights are in that dtype (casting a given
                                 model is not loading it in the dtype: a bfloat16 model cast to float32 keeps its
                                 rounding), else refused; ref_load_dtype without a given reference is refused
    model_init_kwargs            from_pretrained arguments: refused
    load_in_4bit / load_in_8bit  a quantized base is loaded quantized: refused
    use_peft and lora_*          preflab adds LoRA adapters to a model it loads: use_peft on a given model without
                                 adapters is refused; a given PEFT model trains its own adapters, and lora_* set
                                 beside it are accepted where its adapters were made with them, else refused
    ref_model_name_or_path       not loaded beside a given policy: refused without a given reference (beside one
                                 it records where that reference comes from, as the VLM demo does for eval)
    ref_model_init_kwargs        from_pretrained arguments of the reference: refused
    allow_pickle                 no weights are loaded: refused
    trust_remote_code            refused when the tokenizer is given too (else it loads the tokenizer), in the
                                 offline trainers (an online run's judges may load a model by name with it)

Models preflab loaded itself (load_causal_lm, load_vlm, load_pipeline: a recipe's stages pass them on) carry
LOADED_ATTR and are not checked: their options were applied when they were loaded.

The reward-model trainer (`train_reward(cfg, model=...)`) and the diffusion trainer (`DiffusionRun(cfg,
pipeline=...)`) run the same check over the options that apply to them (REWARD_OPTIONS, DIFFUSION_OPTIONS): both add
LoRA adapters to a given model under use_peft (so use_peft is carried out there, not refused), neither has a
reference model, and a diffusion pipeline carries its own tokenizers."""
from __future__ import annotations

from torch import nn

from preflab.config_defaults import set_options
from preflab.errors import ConfigError, PreflabError
from preflab.models.adapters import is_lora

LOADED_ATTR = "_preflab_loaded"
_LORA = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora", "use_dora",
         "lora_modules_to_save")
# the options each trainer checks; "use_peft": refused on a given model without adapters (the offline and online
# trainers add adapters only to a model they load), "lora": lora_* compared with a given PEFT model's adapters
TEXT_OPTIONS = frozenset({"load_dtype", "model_init_kwargs", "load_in_bits", "use_peft", "lora", "reference",
                          "allow_pickle", "trust_remote_code"})
REWARD_OPTIONS = frozenset({"load_dtype", "model_init_kwargs", "load_in_bits", "lora", "allow_pickle",
                            "trust_remote_code"})
DIFFUSION_OPTIONS = frozenset({"allow_pickle", "trust_remote_code"})  # load_dtype, model_init_kwargs, quantization
#                                                and the reference options are refused for task: diffusion anyway


def mark_loaded(model: nn.Module) -> nn.Module:
    """Tag a model preflab loaded (frozen_copy and LoRA wrapping keep it: a copy of __dict__, unwrap reaches it)."""
    setattr(model, LOADED_ATTR, True)
    return model


def _given(model) -> bool:
    from preflab.models.attention import unwrap

    return model is not None and not getattr(unwrap(model), LOADED_ATTR, False)


def _dtypes(model) -> list[str]:
    return sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()})


def _dtype_error(option: str, value: str, model, what: str) -> str | None:
    found = _dtypes(model)
    if found == [value]:
        return None  # already what the option asks for: nothing to do
    return (f"{option}: {value}: the {what} given from Python has {'/'.join(found) or 'no floating'} weights, and "
            f"preflab applies {option} only to a model it loads (casting a given model is not loading it in {value}). "
            f"Load the {what} with dtype={value} (from_pretrained), or drop {option}.")


_PEFT_NAMES = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
               "lora_target_modules": "target_modules", "use_rslora": "use_rslora", "use_dora": "use_dora",
               "lora_modules_to_save": "modules_to_save"}


def _adapters_have(policy, option: str, value) -> bool:
    """Whether the given PEFT policy's active adapter was made with `option` = `value` (peft's LoraConfig).
    lora_target_modules compares the modules targeted, not the spelling: peft stores the target_modules it was given
    as a set, and resolves "all-linear" to the set of module paths it picked, so "all-linear" and a list of names
    are each resolved on the given model (as peft resolves them) and compared with the modules its adapters sit on."""
    configs = getattr(policy, "peft_config", None) or {}
    adapter = getattr(policy, "active_adapter", "default")
    config = configs.get(adapter)
    if option == "lora_target_modules" and config is not None and hasattr(policy, "get_base_model"):
        return _targeted(policy.get_base_model(), value, config) == _adapted(policy.get_base_model(), adapter)
    have = getattr(config, _PEFT_NAMES[option], None)
    if isinstance(value, (list, tuple, set)) and isinstance(have, (list, tuple, set)):
        return set(value) == set(have)
    return have == value


def _candidates(model) -> dict:
    """Module path -> module for the modules an adapter could sit on: not the root, not inside an adapter layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    inside = set()
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            inside |= {f"{name}.{sub}" for sub, _ in module.named_modules() if sub}
    return {name: module for name, module in model.named_modules() if name and name not in inside}


def _adapted(model, adapter: str) -> set[str]:
    """The module paths the given model's adapter `adapter` sits on (its LoRA layers holding that adapter)."""
    return {name for name, module in _candidates(model).items() if adapter in (getattr(module, "lora_A", None) or {})}


def _peft_target_rule():
    """(peft's "all-linear" resolution, peft's target-name matching): peft.tuners.tuners_utils'
    _maybe_include_all_linear_layers and check_target_module_exists. The first is private: peft (0.21) has no public
    function that resolves target_modules on a model without injecting adapters into it (inject_adapter_in_model,
    get_peft_model: a copy of the whole model to compare). A peft without them is a PreflabError naming its
    version, never a comparison made by another rule."""
    import peft.tuners.tuners_utils as tuners_utils

    missing = [n for n in ("_maybe_include_all_linear_layers", "check_target_module_exists")
               if not callable(getattr(tuners_utils, n, None))]
    if missing:
        import peft

        raise PreflabError(f"peft {peft.__version__} has no peft.tuners.tuners_utils.{' or '.join(missing)}, which "
                           "preflab uses to resolve lora_target_modules on a PEFT model given from Python as peft "
                           "does (its adapters are compared with the option). Install the peft preflab is tested "
                           "with (0.21), or drop lora_target_modules beside the given model.")
    return tuners_utils._maybe_include_all_linear_layers, tuners_utils.check_target_module_exists


def _targeted(model, value, config) -> set[str]:
    """The module paths peft's LoraConfig(target_modules=value) would put adapters on in `model` ("all-linear"
    resolved by peft's own rule, names matched by peft's own suffix / regex matching; the given adapters'
    modules_to_save, e.g. a reward model's score head, are never targeted)."""
    from peft import LoraConfig

    all_linear, check_target_module_exists = _peft_target_rule()
    spec = list(value) if isinstance(value, (list, tuple, set)) else value
    wanted = all_linear(LoraConfig(target_modules=spec, task_type=config.task_type,
                                   modules_to_save=config.modules_to_save), model)
    return {name for name in _candidates(model) if bool(check_target_module_exists(wanted, name))}


def given_model_errors(cfg, policy, ref=None, tokenizer=None, what: str = "policy",
                       options: frozenset = TEXT_OPTIONS) -> list[str]:
    """One line per loading option `cfg` sets that a `policy` (and `ref`) given from Python does not carry out.
    tokenizer: the one given beside them (None: preflab loads one, or other models, with trust_remote_code).
    what: the given model's name in the lines ("policy", "reward model", "pipeline"); options: the checks the
    trainer runs (TEXT_OPTIONS, REWARD_OPTIONS, DIFFUSION_OPTIONS)."""
    if not _given(policy):
        return []
    out = []
    drop = f"preflab loads no model when the {what} is given from Python"
    if cfg.load_dtype and "load_dtype" in options:
        out.append(_dtype_error("load_dtype", cfg.load_dtype, policy, what))
    if cfg.model_init_kwargs and "model_init_kwargs" in options:
        out.append(f"model_init_kwargs: {cfg.model_init_kwargs} are from_pretrained arguments and {drop}. Load the "
                   f"{what} with them, or drop model_init_kwargs.")
    for bits in ("4", "8") if "load_in_bits" in options else ():
        if getattr(cfg, f"load_in_{bits}bit"):
            out.append(f"load_in_{bits}bit: {drop}, so it does not quantize it. Load the {what} with transformers' "
                       f"BitsAndBytesConfig(load_in_{bits}bit=True) and add its LoRA adapters, or drop "
                       f"load_in_{bits}bit.")
    adapters = is_lora(policy)
    if cfg.use_peft and not adapters and "use_peft" in options:
        out.append(f"use_peft: {drop}, and it adds LoRA adapters only to a model it loads: the given {what} has none "
                   "and would train all of its weights. Add the adapters (preflab.models.load.add_lora or "
                   "peft.get_peft_model) before passing it, or drop use_peft.")
    lora = [n for n in set_options(cfg, _LORA) if not _adapters_have(policy, n, getattr(cfg, n))] \
        if adapters and "lora" in options else []
    if lora:
        out.append(f"{', '.join(lora)}: {drop}, and the LoRA options shape the adapters it adds to a model it loads; "
                   f"the given {what}'s own adapters differ. Give the {what} with those adapters, or drop "
                   f"{'it' if len(lora) == 1 else 'them'}.")
    if "reference" in options:
        out += _reference_errors(cfg, ref, drop)
    if cfg.allow_pickle and "allow_pickle" in options:
        out.append(f"allow_pickle: {drop}, so no weights are read. Drop allow_pickle.")
    if cfg.trust_remote_code and tokenizer is not None and "trust_remote_code" in options:
        out.append(f"trust_remote_code: {drop} and the tokenizer was given too, so no code is loaded. Drop "
                   "trust_remote_code.")
    return [line for line in out if line]


def _reference_errors(cfg, ref, drop: str) -> list[str]:
    """The reference's loading options beside a given policy (the offline and online trainers)."""
    out = []
    if cfg.ref_model_name_or_path and ref is None:  # beside a given ref it records where that one comes from
        out.append(f"ref_model_name_or_path: {drop}, the reference neither. Pass ref=<the model> with the policy, or "
                   "drop ref_model_name_or_path.")
    if cfg.ref_model_init_kwargs:
        out.append(f"ref_model_init_kwargs: {cfg.ref_model_init_kwargs} are from_pretrained arguments and {drop}, the "
                   "reference neither. Load the reference with them, or drop ref_model_init_kwargs.")
    if cfg.ref_load_dtype and ref is None:
        out.append(f"ref_load_dtype: {cfg.ref_load_dtype}: {drop}, the reference neither, and none was given. Pass "
                   "ref=<the model> in that dtype, or drop ref_load_dtype.")
    elif cfg.ref_load_dtype and _given(ref):
        out.append(_dtype_error("ref_load_dtype", cfg.ref_load_dtype, ref, "reference"))
    return out


def check_given_models(cfg, policy, ref=None, tokenizer=None, what: str = "policy",
                       options: frozenset = TEXT_OPTIONS) -> None:
    """ConfigError listing given_model_errors, if any."""
    errors = given_model_errors(cfg, policy, ref, tokenizer, what, options)
    if errors:
        raise ConfigError("options that apply only to a model preflab loads:\n  " + "\n  ".join(errors))
