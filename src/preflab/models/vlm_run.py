"""Reloading a trained task: vlm run (its final directory or a checkpoint-<step>), CAT's clue aggregator included.

    model, processor = load_vlm_run("outputs/vlm-cat-adpo")               # or outputs/vlm-cat-adpo/checkpoint-2

load_vlm_model (here, and importable from preflab.models.vlm) sends a run directory to load_vlm_run, and the base
model a run names back through itself (the base may be a run too), so a run reloads the same way as a policy to
train on (model_name_or_path), a reference (ref_model_name_or_path) or a judge. Forms (what
VisionTrainer.save_model and the step checkpoints write):

    final, full weights   config.json + model.safetensors; the clue aggregator's weights are the `clue_aggregator.*`
                          keys there (transformers' from_pretrained drops them: they are loaded here)
    final, LoRA           adapter_config.json + adapter_model.safetensors, the aggregator in clue_aggregator.safetensors
                          (peft saves adapters only); the base is the run's config.yaml model_name_or_path, the
                          adapters are merged into it
    checkpoint-<step>     model.safetensors with the trainable parameters + trainer_state.json; the base is rebuilt
                          from the run's config.yaml (vision freezing, LoRA with its lora_* options, the aggregator) and
                          the parameters are loaded over it by name (LoRA adapters then merged)

A run trained with clue_aggregator: true (config.yaml), or whose weights hold an aggregator, gets the aggregator
attached (preflab.models.clue_aggregator) and every one of its saved tensors loaded; a missing file, a missing or
unknown tensor, or another shape is a ConfigError naming the file (a model without its trained aggregator scores
differently from the one that was trained, and would do so silently).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from preflab.errors import ConfigError
from preflab.model_part_options import model_part_options
from preflab.models.clue_aggregator import CLUE_AGGREGATOR_FILE, attach_clue_aggregator
from preflab.models.run_config import parent_file_not_read, run_file_folder, run_seed
from preflab.models.vlm_parts import (PROCESSOR_FILES, add_vlm_lora, freeze_vision, load_vlm_processor,  # noqa: F401
                                      processor_source, run_options, vlm_options)

AGGREGATOR_PREFIX = "clue_aggregator."


def is_vlm_run(path: str | Path) -> bool:
    """A directory that a task: vlm run saved (final or checkpoint), or model weights holding a clue aggregator."""
    path = Path(path)
    return path.is_dir() and (bool(run_options(path)) or bool(_aggregator_keys(path / "model.safetensors")))


def load_vlm_run(path: str | Path, processor=None, allow_pickle: bool = False, trust_remote_code: bool = False,
                 seed: int | None = None, saved: dict | None = None, option: str = "CHECKPOINT"):
    """(model in eval mode, processor) of a task: vlm run directory or checkpoint (module docstring). saved: the run's
    config (preflab.models.run_config.run_config(path)) where the caller has read it (preflab eval --task vlm).
    option: what the errors call `path` (the config option that named it: model_name_or_path, ...)."""
    from preflab.models.load import check_weights_safe

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; give a task: vlm run's output_dir or one of its checkpoint-N.")
    check_weights_safe(str(path), allow_pickle)
    cfg = run_options(path) if saved is None else vlm_options(saved)
    opts = SimpleNamespace(seed=run_seed(cfg, seed), allow_pickle=allow_pickle,
                           trust_remote_code=trust_remote_code)
    if processor is None:
        processor = _processor(path, cfg, trust_remote_code)
    if (path / "config.json").is_file():
        model = _full(path, opts, option)
        state, source = _saved_aggregator(path / "model.safetensors", AGGREGATOR_PREFIX)
        if state or cfg.get("clue_aggregator"):
            restore_clue_aggregator(model, processor, state, source)
    elif (path / "adapter_config.json").is_file():
        model = _lora(path, cfg, opts, processor)
        source = path / CLUE_AGGREGATOR_FILE
        if cfg.get("clue_aggregator") or source.is_file():
            if not source.is_file():
                raise ConfigError(f"{path} is a LoRA run trained with clue_aggregator: true, but {source} is missing: "
                                  "the trained clue aggregator is not there (saved by an older preflab, or the file "
                                  "was not copied). Copy it from the run, or load a checkpoint-N of the run.")
            restore_clue_aggregator(model, processor, load_file(str(source)), source)
    elif (path / "model.safetensors").is_file() and (path / "trainer_state.json").is_file():
        model = _checkpoint(path, cfg, opts, processor)
    else:
        raise ConfigError(f"{path} holds no task: vlm model: expected config.json + model.safetensors (a finished "
                          "run), adapter_config.json (LoRA) or model.safetensors + trainer_state.json (a checkpoint).")
    return model.eval(), processor


def restore_clue_aggregator(model: nn.Module, processor, state: dict, source: Path) -> None:
    """Attach the clue aggregator to `model` and load `state` (name -> tensor, without the model's prefix) into it;
    ConfigError naming `source` when a tensor is missing, unknown or of another shape."""
    aggregator = attach_clue_aggregator(model, processor)
    expected = aggregator.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unknown or shapes:
        what = (f"lacks {len(missing)} of its tensors, e.g. {missing[0]!r}" if missing else
                f"has tensors the aggregator does not, e.g. {unknown[0]!r}" if unknown else
                f"has {shapes[0]!r} of shape {tuple(state[shapes[0]].shape)}, the model's aggregator "
                f"{tuple(expected[shapes[0]].shape)}")
        raise ConfigError(f"{source}: the clue aggregator saved there {what}; it was saved from another model (or "
                          "is damaged). Load the run with the model it was trained from, or retrain it.")
    aggregator.load_state_dict(state)


def _aggregator_keys(weights: Path) -> list[str]:
    if not weights.is_file():
        return []
    with safe_open(str(weights), "pt") as f:
        return [k for k in f.keys() if k.startswith(AGGREGATOR_PREFIX)]


def _saved_aggregator(weights: Path, prefix: str) -> tuple[dict, Path]:
    """The aggregator's tensors in `weights` (keys `prefix`*, returned without it); sharded checkpoints: the shards."""
    index = weights.with_name(weights.name + ".index.json")
    files = [weights] if weights.is_file() else []
    if not files and index.is_file():
        mapping = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({weights.with_name(f) for k, f in mapping.items() if k.startswith(prefix)})
    state = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            state.update({k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    return state, files[0] if len(files) == 1 else weights


def _processor(path: Path, cfg: dict, trust_remote_code: bool):
    """The processor the run trained with (processor_source). Weights of no task: vlm run (a clue aggregator saved
    without config.yaml) take the processor saved beside them, or for a checkpoint its run's one level up
    (run_config.run_file_folder); a folder inside another run's folder does not take that run's: a ConfigError."""
    if not cfg:
        folder = run_file_folder(path, PROCESSOR_FILES)
        passed_over = parent_file_not_read(path, PROCESSOR_FILES) if folder is None else None
        if passed_over:
            raise ConfigError(f"{passed_over}: the processor this model was trained with is unknown. Save it in "
                              f"{path} (processor.save_pretrained), or give it: load_vlm_run(path, processor=...).")
        path = folder or path
    return load_vlm_processor(SimpleNamespace(processor_name_or_path=None, model_name_or_path=str(path),
                                              trust_remote_code=trust_remote_code), cfg or None)


def _full(path: Path, opts, option: str = "CHECKPOINT") -> nn.Module:
    """from_pretrained, its load report checked by preflab.models.load.check_loading_info as load_causal_lm checks a
    text model's: weights missing from the files (transformers leaves them at random values with a log line only) or
    of another shape are a ConfigError naming the key; other unexpected keys get a note. The clue_aggregator.* keys
    are left out of the report (from_pretrained calls them unexpected; they are loaded next). A run's final
    save_pretrained writes every parameter, a frozen vision tower's and projector's included (freezing only stops
    their gradients), so no key is missing by design."""
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging

    from preflab.models.load import DTYPES, check_loading_info

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            str(path), dtype=DTYPES["float32"], trust_remote_code=opts.trust_remote_code,
            use_safetensors=None if opts.allow_pickle else True, output_loading_info=True)
    finally:
        logging.set_verbosity(level)
    info["unexpected_keys"] = [k for k in info.get("unexpected_keys", ()) if not k.startswith(AGGREGATOR_PREFIX)]
    check_loading_info(info, str(path), option)
    return model


def _base(path: Path, cfg: dict, opts, processor) -> nn.Module:
    name = cfg.get("model_name_or_path")
    if not name:
        raise ConfigError(f"{path} holds no full model and no config.yaml naming the run's base model "
                          "(model_name_or_path); load the run's final directory, or keep config.yaml beside it.")
    if Path(name).resolve() in (path.resolve(), path.parent.resolve()):
        raise ConfigError(f"{path}: the run's config.yaml names its own directory as the base model "
                          f"(model_name_or_path: {name}; trained with output_dir = model_name_or_path?), which the run "
                          "overwrote; its base is lost. Load a copy of the base saved elsewhere.")
    return load_vlm_model(str(name), opts, processor)


def _lora(path: Path, cfg: dict, opts, processor) -> nn.Module:
    from preflab.models.adapter_load import load_lora_adapter

    return load_lora_adapter(_base(path, cfg, opts, processor), path).merge_and_unload()


def _checkpoint(path: Path, cfg: dict, opts, processor) -> nn.Module:
    import torch

    if not cfg:
        raise ConfigError(f"{path} is a checkpoint without the run's config.yaml above it (task: vlm): its base "
                          "model and LoRA options are unknown; keep the checkpoint inside its run directory.")
    run = model_part_options(cfg, run_file_folder(path, "config.yaml") / "config.yaml")
    model = _base(path, cfg, opts, processor)
    freeze_vision(model, run.freeze_vision_tower, run.freeze_multi_modal_projector)
    if run.use_peft:
        model = add_vlm_lora(model, run)
    if run.clue_aggregator:
        attach_clue_aggregator(model, processor)
    source = path / "model.safetensors"
    weights = load_file(str(source))
    params = dict(model.named_parameters())
    trained = [n for n, p in params.items() if p.requires_grad]
    missing = [n for n in trained if n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        what = f"lacks {missing[0]!r}" if missing else f"has {unknown[0]!r}, which the rebuilt model lacks"
        hint = " (the clue aggregator)" if AGGREGATOR_PREFIX in (missing or unknown)[0] else ""
        raise ConfigError(f"{source} {what}{hint}: it does not match the run's config.yaml (model_name_or_path, "
                          "use_peft, clue_aggregator, freeze_*); was it saved by another run?")
    with torch.no_grad():
        for name, value in weights.items():
            if tuple(value.shape) != tuple(params[name].shape):
                raise ConfigError(f"{source}: {name!r} has shape {tuple(value.shape)}, the rebuilt model "
                                  f"{tuple(params[name].shape)}; was it saved by another run?")
            params[name].copy_(value)
    return model.merge_and_unload() if run.use_peft else model


def load_vlm_model(name: str, cfg, processor=None, ref: bool = False) -> nn.Module:
    """The image-text model `name`: a builtin tiny one, a task: vlm run, or transformers' from_pretrained in
    load_dtype with model_init_kwargs (ref: ref_load_dtype, else load_dtype, with ref_model_init_kwargs), as the text
    tasks load theirs (both were accepted and ignored: float32 and no kwargs)."""
    from preflab.models.load import DTYPES, _first_line, check_weights_safe
    from preflab.models.tiny_vlm import BUILTIN_VLM, tiny_vlm

    if not name:
        raise ConfigError("model_name_or_path is empty; give a hub name, a local directory or builtin:tiny-qwen2-vl.")
    dtype = (getattr(cfg, "ref_load_dtype", None) if ref else None) or getattr(cfg, "load_dtype", None) or "float32"
    if name in BUILTIN_VLM:  # built in code: the dtype is cast to, as a builtin text model's (load_causal_lm)
        model = tiny_vlm(processor, BUILTIN_VLM[name], seed=cfg.seed)
        return model if dtype in ("float32", "auto") else model.to(DTYPES[dtype])
    if is_vlm_run(name):  # a task: vlm run (final or checkpoint-N), with CAT's clue aggregator when it has one
        return load_vlm_run(name, processor, cfg.allow_pickle, cfg.trust_remote_code,
                            option="ref_model_name_or_path" if ref else "model_name_or_path")[0]
    from transformers import AutoModelForImageTextToText

    check_weights_safe(name, cfg.allow_pickle)
    kwargs = dict(getattr(cfg, "ref_model_init_kwargs" if ref else "model_init_kwargs", None) or {})
    try:
        return AutoModelForImageTextToText.from_pretrained(
            name, **{"dtype": DTYPES[dtype], "trust_remote_code": cfg.trust_remote_code,
                     "use_safetensors": None if cfg.allow_pickle else True, **kwargs})
    except ValueError as err:  # a text model ("Unrecognized configuration class ..."): transformers' traceback
        if ref:
            raise  # preflab.models.vlm.load_vlm_reference says it, naming the option the reference came from
        said = _first_line(err).split(". ")[0]  # the library's first sentence (then it lists ~100 classes)
        raise ConfigError(f"model_name_or_path={name!r} is not an image-text model ({said}); task: vlm "
                          "loads an image-text-to-text model: a hub VLM (Qwen2-VL, LLaVA, SmolVLM, ...), a task: vlm "
                          f"run or one of {', '.join(BUILTIN_VLM)}.") from err
