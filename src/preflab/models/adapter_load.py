"""A saved LoRA adapter folder loaded over its base model, its weights checked as a full model's are.

A full model goes through load_causal_lm's check_loading_info (missing and reshaped weights refused, unexpected ones
noted). PeftModel.from_pretrained does not refuse: an adapter_model.safetensors that lacks some of the tensors its
adapter_config.json asks for (a truncated copy, a hand-edited file) loads with a warning only, the missing ones left
at PEFT's initial values (lora_B zero, so that module's trained update is silently dropped; lora_A random), and a
tensor of another shape stops the load with torch's bare size-mismatch error. Here the PeftModel is built (its
adapters placed by the folder's adapter_config.json), and the file's tensors are compared, by name and shape, with
the ones that model saves (peft's get_peft_model_state_dict, the names save_pretrained writes: the LoRA modules'
lora_A / lora_B, DoRA's magnitude vectors, modules_to_save copies):

    model = load_lora_adapter(base, folder)   # a PeftModel; missing or reshaped tensors: a ConfigError naming them

Missing or reshaped tensors are refused with the file, the names (the first few and a count) and what to do;
tensors the model has no place for are noted (they change nothing the model computes), as check_loading_info does.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from preflab.errors import ConfigError
from preflab.runlog import is_main_process

SHOWN = 3  # the names a refusal or a note lists before "and N more"

# peft's own warnings for what check_adapter_weights refuses with the file and the names (not said twice)
_PEFT_WARNINGS = ("Found missing adapter keys", ".*ignore_mismatched_sizes=True")


def load_lora_adapter(base: nn.Module, folder: str | Path) -> nn.Module:
    """PeftModel.from_pretrained(base, folder), then check_adapter_weights. Mismatched shapes are skipped in the load
    (ignore_mismatched_sizes) so that the check names them with the file, instead of torch's size-mismatch error."""
    from peft import PeftModel

    with warnings.catch_warnings():
        for message in _PEFT_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        model = PeftModel.from_pretrained(base, str(folder), ignore_mismatched_sizes=True)
    check_adapter_weights(model, Path(folder))
    return model


def adapter_file_shapes(folder: Path, model: nn.Module | None = None) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """(the adapter weights file peft read, {tensor name: shape}): adapter_model.safetensors read from its header
    (no tensor data), else (a pickle file, loaded only with allow_pickle) through peft's own load_peft_weights. Where
    transformers registers a weight conversion for `model`'s model_type (MoE models whose experts v5 fuses), the
    tensors are read and converted as PeftModel.load_adapter converts them, so that a file saved in the older layout
    is compared under the names it is loaded under."""
    file = folder / "adapter_model.safetensors"
    convert = _conversion(model)
    if file.is_file() and convert is None:
        from safetensors import safe_open

        with safe_open(str(file), "pt") as handle:
            return file, {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    from peft.utils import load_peft_weights

    found = file if file.is_file() else next((p for p in sorted(folder.glob("adapter_model*")) if p.is_file()),
                                             folder / "adapter_model.bin")
    weights = load_peft_weights(str(folder), device="cpu")
    weights = weights if convert is None else convert(weights)
    return found, {k: tuple(v.shape) for k, v in weights.items()}


def _conversion(model: nn.Module | None):
    """weights -> weights as peft converts a LoRA adapter's state dict for transformers v5 (peft.utils.
    transformers_weight_conversion), where transformers registers a conversion for the model's model_type; else None."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        from peft.utils.transformers_weight_conversion import convert_peft_adapter_state_dict_for_transformers
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:
        return None
    if model_type is None or get_checkpoint_conversion_mapping(model_type) is None:
        return None
    config = model.peft_config["default"]
    return lambda weights: convert_peft_adapter_state_dict_for_transformers(model, config, weights, "default")


def expected_adapter_shapes(model: nn.Module) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """({name: shape} of every tensor the PeftModel's active adapter must load, the names it may also load): peft's
    get_peft_model_state_dict, without the embedding layers (saved beside adapters only where they were resized or
    targeted: a file may hold them or not), then with them (allowed, not required)."""
    from peft.utils import get_peft_model_state_dict

    with warnings.catch_warnings():  # "Setting save_embedding_layers ..." / "Could not identify embedding layer(s)"
        warnings.simplefilter("ignore")
        required = get_peft_model_state_dict(model, save_embedding_layers=False)
        allowed = get_peft_model_state_dict(model, save_embedding_layers=True)
    return {k: tuple(v.shape) for k, v in required.items()}, set(allowed)


def check_adapter_weights(model: nn.Module, folder: Path) -> None:
    """A ConfigError naming the adapter file, the tensors and what to do when a tensor the built PeftModel needs is
    missing from the file, or has another shape there; a note naming the file's tensors the model has no place for."""
    file, shapes = adapter_file_shapes(folder, model)
    required, allowed = expected_adapter_shapes(model)
    missing = [k for k in required if k not in shapes]
    reshaped = [f"{k}: {shapes[k]} in the file, {required[k]} in the model" for k in required
                if k in shapes and shapes[k] != required[k]]
    problems = [f"{len(v)} {what} ({_first(v)})" for what, v in (("missing", missing), ("of another shape", reshaped))
                if v]
    if problems:
        raise ConfigError(
            f"{file}: LoRA tensor(s) that {folder / 'adapter_config.json'} places are {' and '.join(problems)}; PEFT "
            "would load it with those left at their initial values (lora_B zero: the trained update of that module "
            "dropped), not the adapters that were trained. The file is truncated, edited or from another run: save "
            "the adapters again (or copy the run's adapter_model.safetensors again), evaluate a checkpoint of the run "
            "instead, or restore the adapter_config.json the file was saved with.")
    unused = [k for k in shapes if k not in allowed]
    if unused and is_main_process():
        print(f"preflab: note: {file} holds {len(unused)} tensor(s) that the adapters of {folder / 'adapter_config.json'}"
              f" have no place for ({_first(unused)}); they are not loaded. If the adapters should use them, the "
              "adapter_config.json is not the one they were saved with.", flush=True)


def _first(names: list[str]) -> str:
    """The first SHOWN names, then 'and N more'."""
    more = f", and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more
