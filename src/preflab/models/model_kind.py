"""Which kind of model a `model_name_or_path` names, and whether a task trains that kind.

Three kinds load through three different loaders: a causal language model (AutoModelForCausalLM: tasks dpo, sft,
reward, online), an image-text model (AutoModelForImageTextToText + AutoProcessor: task vlm, and the online vision
runs) and a text-to-image pipeline (diffusers' DiffusionPipeline: task diffusion). A name of one kind given to a task
of another reached the other loader, which failed with its own words: `builtin:tiny-qwen2-vl` as a diffusion model
asked the hub for it ("We couldn't connect to 'https://huggingface.co'"), `builtin:tiny-llama` or `builtin:tiny-sd`
under task: vlm said "Repo id must use alphanumeric chars" about a processor, and a diffusers pipeline folder under
task: vlm said it had no processor files. The kind is known for certain only for the built-in names
(preflab.models.builtin_names), a local folder holding a pipeline's `model_index.json`, and a local transformers
folder whose config.json's model_type transformers maps to one of the two auto classes only; anything else (a hub
name, a model type both classes load) is left to the loaders, which name what they could not load.
"""
from __future__ import annotations

from pathlib import Path

from preflab.errors import ConfigError
from preflab.models.builtin_names import BUILTIN, BUILTIN_ONLINE, BUILTIN_PIPELINES, BUILTIN_VLM

TEXT, IMAGE_TEXT, TEXT_TO_IMAGE, ONLINE_DEMO = ("a causal language model", "an image-text model",
                                                "a text-to-image pipeline", "the online demo's policy")

# task -> the kinds it loads, and what to give instead (the built-in names of its kind)
TASK_KINDS = {"dpo": (TEXT,), "sft": (TEXT,), "reward": (TEXT,), "online": (TEXT, IMAGE_TEXT, ONLINE_DEMO),
              "vlm": (IMAGE_TEXT,), "diffusion": (TEXT_TO_IMAGE,)}
BUILTINS_OF = {TEXT: BUILTIN, IMAGE_TEXT: BUILTIN_VLM, TEXT_TO_IMAGE: BUILTIN_PIPELINES, ONLINE_DEMO: BUILTIN_ONLINE}
# the task that trains each kind, for the error's "or set task: ..."
TASK_OF = {TEXT: "dpo (or sft, reward)", IMAGE_TEXT: "vlm", TEXT_TO_IMAGE: "diffusion", ONLINE_DEMO: "online"}


def model_kind(name) -> str | None:
    """The kind of model `name` is where that is certain without loading it: a built-in name's table, or a local
    folder with a diffusers `model_index.json` (a pipeline); None otherwise."""
    if not isinstance(name, str) or not name:
        return None
    for kind, table in BUILTINS_OF.items():
        if name in table:
            return kind
    if name.startswith("builtin:"):
        return None  # an unknown builtin: preflab.models.load.check_model_name lists the known ones
    folder = Path(name).expanduser()
    if (folder / "model_index.json").is_file():
        return TEXT_TO_IMAGE
    if (folder / "config.json").is_file():
        return transformers_kind(folder / "config.json")
    return None


def transformers_kind(config_file: Path) -> str | None:
    """The kind of a transformers model folder from its config.json's model_type: an image-text model when
    transformers maps that type to AutoModelForImageTextToText and not to AutoModelForCausalLM (qwen2_vl, llava,
    idefics3, ...), a causal language model the other way round (llama, qwen2, ...); None for a type in both (gemma3,
    which loads either way), in neither (remote code) or a config.json that cannot be read. A saved Qwen2-VL run given
    to task: dpo was refused only after the data was tokenized, with transformers' list of ~100 config classes."""
    import json

    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)

    image_text, causal = (model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                          model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    return IMAGE_TEXT if image_text and not causal else TEXT if causal and not image_text else None


def check_model_fits_task(name, task: str, option: str = "model_name_or_path") -> None:
    """Refuse, before anything loads, a model whose kind (model_kind) task `task` does not train, naming the option,
    the kind, what the task loads (with its built-in names) and the task that trains that kind. Tasks not in
    TASK_KINDS (the recipes) and names of unknown kind pass."""
    kinds = TASK_KINDS.get(task)
    kind = model_kind(name)
    if kinds is None or kind is None or kind in kinds:
        return
    wanted = " or ".join(kinds)
    examples = ", ".join(n for k in kinds for n in BUILTINS_OF[k])
    raise ConfigError(f"{option}={name!r} is {kind}, but task: {task} trains {wanted} (e.g. {examples}, a hub name "
                      f"or a saved folder of that kind). Give such a model, or set task: {TASK_OF[kind]} to train "
                      f"{kind}.")
