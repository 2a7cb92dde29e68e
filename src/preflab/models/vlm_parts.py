"""What loading an image-text model and reloading a task: vlm run share: which parameters are the vision tower and
the projector (freeze_vision), LoRA on the language model (add_vlm_lora), and the processor (load_vlm_processor,
found through a run's config.yaml by processor_source). See preflab.models.vlm for the models and the parameter
names, preflab.models.vlm_run for reloading a run.

Below both: preflab.models.vlm_run rebuilds a run's base with these, and preflab.models.vlm's loaders use them.
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from preflab.errors import ConfigError

# what processor.save_pretrained writes beside a model: transformers 5 writes processor_config.json (a llava processor
# with its image processor inside), an image processor saved on its own preprocessor_config.json (qwen2_vl's)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
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


def load_vlm_processor(cfg, options: dict | None = None):
    """The processor of cfg.processor_name_or_path or cfg.model_name_or_path. A task: vlm run directory (or one of
    its checkpoints) gives the processor saved beside its weights, or, when its runs go back to a builtin model, the
    builtin one (processor_source; options: that name's run_options where the caller has read them)."""
    from preflab.models.tiny_vlm import BUILTIN_VLM, tiny_vlm_processor

    name = processor_source(cfg.processor_name_or_path or cfg.model_name_or_path, options)
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


def add_vlm_lora(policy: nn.Module, cfg) -> nn.Module:
    """LoRA adapters (cfg.lora_*) on the language model's linear layers while the tower is frozen (module docstring)."""
    from preflab.models.load import add_lora, lora_extras

    targets = cfg.lora_target_modules
    if targets == "all-linear" and cfg.freeze_vision_tower:
        targets = LM_LORA_TARGETS
    return add_lora(policy, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets, **lora_extras(cfg))


def run_options(path: str | Path) -> dict:
    """The training config of the task: vlm run at `path` (preflab.models.run_config's rule: its own config.yaml, or
    its run's for a checkpoint), or {} where that is no task: vlm run's."""
    from preflab.models.run_config import run_config

    return vlm_options(run_config(path))


def vlm_options(saved: dict) -> dict:
    """A run's saved config `saved` where it is a task: vlm run's, else {} (run_options on a config already read)."""
    return saved if saved.get("task") == "vlm" else {}


def processor_source(name: str, options: dict | None = None) -> str:
    """Where the processor of model `name` loads from: `name` itself, except for a task: vlm run directory (or a
    checkpoint of one), whose runs are followed back through their config.yaml (processor_name_or_path, else
    model_name_or_path) to a builtin model (its processor is built in code: the one saved beside the weights may
    need torchvision to load), else the nearest processor saved with a run's weights (beside them, or for a checkpoint
    in its run's folder: run_config.run_file_folder), else the last name. A run folder inside another folder that holds
    a processor does not take that one: a warning says which it loads instead. options: run_options(name) where the
    caller has read them (the runs further back are read here)."""
    import warnings

    from preflab.models.run_config import parent_file_not_read, run_file_folder
    from preflab.models.tiny_vlm import BUILTIN_VLM

    asked, passed_over = name, parent_file_not_read(name, PROCESSOR_FILES)
    saved_beside, seen = None, set()
    while name not in BUILTIN_VLM and str(Path(name).resolve()) not in seen:
        seen.add(str(Path(name).resolve()))
        cfg, options = run_options(name) if options is None else options, None
        if not cfg:
            break
        if saved_beside is None:
            folder = run_file_folder(name, PROCESSOR_FILES)
            saved_beside = None if folder is None else str(folder)
        source = cfg.get("processor_name_or_path") or cfg.get("model_name_or_path")
        if not source:
            break
        name = str(source)
    found = name if name in BUILTIN_VLM or saved_beside is None else saved_beside
    if passed_over and found not in (asked, *BUILTIN_VLM):
        warnings.warn(f"preflab: {passed_over}; loading the processor from {found}, which its run's config.yaml "
                      "leads to (processor_name_or_path, else model_name_or_path).", stacklevel=2)
    return found
