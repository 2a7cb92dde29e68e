"""The values of a DeepSpeed config (a deepspeed_config_file's json, or the config accelerate forms from the
accelerate config's deepspeed_config) against the run config: what `preflab train` refuses before loading and
fills where the json says "auto", asked by preflab.loops.launch (check_deepspeed_settings, make_accelerator) and by
`preflab plan --accelerate-config` (preflab.plan.sharded_run_problem), so the plan stops with the run's message.

The rule is transformers' HfTrainerDeepSpeedConfig (what TRL users know): a key set to "auto" is filled from the run
config, a concrete value that disagrees is refused. preflab's run differs from the Trainer's in what it hands
DeepSpeed (accelerate's DeepSpeedEngineWrapper steps inside backward), which decides the rest:

    train_micro_batch_size_per_gpu   = per_device_train_batch_size
    gradient_accumulation_steps      = 1 (preflab runs DeepSpeed with one micro-batch per optimizer step)
    train_batch_size                 = per_device_train_batch_size x 1 x processes (DeepSpeed asserts this product)
    gradient_clipping                = max_grad_norm (0, null or inf: 0, DeepSpeed's "no clipping"); absent: filled
                                       too, since DeepSpeed's own default (1.0) would clip whatever max_grad_norm says
    bf16.enabled / fp16.enabled      = the run's precision (bf16: true / fp16: true / dtype); "bfloat16" is
                                       DeepSpeed's older name of the bf16 section, checked the same way
    optimizer, scheduler             refused: preflab builds its optimizer (optim, learning_rate, ...) and steps its
                                       own schedule (lr_scheduler_type, warmup_*); accelerate refuses an optimizer
                                       in both places (after the models load) and DeepSpeed would step a second
                                       schedule from a scheduler section
    zero_optimization.stage 3        needs stage3_gather_16bit_weights_on_model_save: true (the final model is
                                       gathered through it)

A module of the config layer: accelerate is imported only to read the settings as its DeepSpeedPlugin forms them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

AUTO = "auto"


@dataclass
class DeepSpeedSettings:
    """The DeepSpeed config as accelerate's DeepSpeedPlugin forms it (`config`; None where the plugin refused it),
    `where` it came from in the words of a refusal, and accelerate's refusal of it (`problem`)."""
    config: dict | None
    where: str
    problem: str | None = None


def where_of(config_file: str | None) -> str:
    """The start of a refusal: the deepspeed_config_file by its path, else the accelerate config's deepspeed_config
    (its key follows the dot, as accelerate's launcher variables carry it)."""
    if config_file in (None, "", "none"):
        return "the accelerate config's deepspeed_config."
    return f"the deepspeed_config_file {config_file}: "


def read_deepspeed_settings(config_file: str | None, launcher_fields: list[str] | None = None,
                            **plugin_fields) -> DeepSpeedSettings:
    """The DeepSpeed config accelerate's DeepSpeedPlugin forms: from `config_file` (the json) or, without one, from
    `plugin_fields` (zero_stage, gradient_clipping, ...), any field not given read from the launcher's ACCELERATE_*
    variables as accelerate reads it. `launcher_fields`: the accelerate config's keys as accelerate launch passes
    them (ACCELERATE_CONFIG_DS_FIELDS; the plan's, read from the file: None keeps this process's variable), beside
    a file accelerate refuses those the json decides. A config accelerate cannot take (no zero_optimization section,
    an unreadable file, such keys beside a file) gives its ValueError's text as the problem, after where."""
    from accelerate.utils import DeepSpeedPlugin

    where = where_of(config_file)
    file = None if config_file in (None, "", "none") else config_file
    before = os.environ.get("ACCELERATE_CONFIG_DS_FIELDS")
    if launcher_fields is not None:
        os.environ["ACCELERATE_CONFIG_DS_FIELDS"] = ",".join(launcher_fields).lower()
    try:
        plugin = DeepSpeedPlugin(hf_ds_config=file, **plugin_fields) if file else DeepSpeedPlugin(**plugin_fields)
    except (ValueError, OSError) as err:
        return DeepSpeedSettings(None, where, f"{where}accelerate cannot read this DeepSpeed config: {err}")
    finally:
        if launcher_fields is not None:
            if before is None:
                os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
            else:
                os.environ["ACCELERATE_CONFIG_DS_FIELDS"] = before
    return DeepSpeedSettings(plugin.deepspeed_config, where)


def _auto(value) -> bool:
    return value is None or value == AUTO


def _node(config: dict, dotted: str):
    """(the dict holding the last key of `dotted`, that key); (None, key) where a section on the way is absent."""
    *sections, key = dotted.split(".")
    for section in sections:
        config = config.get(section)
        if not isinstance(config, dict):
            return None, key
    return config, key


def clipping_of(cfg) -> float:
    """max_grad_norm as DeepSpeed's gradient_clipping: 0.0 (no clipping) for 0, null or inf (torch's clip_grad_norm_
    with inf measures and clips nothing)."""
    norm = cfg.max_grad_norm
    return float(norm) if norm and math.isfinite(float(norm)) else 0.0


def precision_sections(cfg) -> dict[str, bool]:
    """enabled, as the run's precision says, for each DeepSpeed precision section (bf16 and its older name
    bfloat16, fp16): bfloat16 runs enable bf16, float16 runs fp16, float32 runs neither."""
    dtype = cfg.torch_dtype
    return {"bf16": dtype == "bfloat16", "bfloat16": dtype == "bfloat16", "fp16": dtype == "float16"}


def run_values(cfg, world: int) -> dict:
    """The DeepSpeed keys preflab decides, with the run config's value of each (see the module docstring)."""
    micro = cfg.per_device_train_batch_size
    values = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
              "train_batch_size": micro * world, "gradient_clipping": clipping_of(cfg)}
    values.update({f"{section}.enabled": on for section, on in precision_sections(cfg).items()})
    return values


def _type_of(section) -> str:
    """An optimizer / scheduler section's type, as the refusal names it."""
    return str(section.get("type", "no type")) if isinstance(section, dict) else repr(section)


def _mismatch(where: str, key: str, asked, ours, said: str, fix: str) -> str:
    return (f"{where}{key} is {asked} but {said}; set {key} to {ours} or \"auto\" (preflab fills it from the run "
            f"config){fix}.")


def deepspeed_values_problem(cfg, settings: DeepSpeedSettings | None, world: int) -> str | None:
    """The first DeepSpeed config value the run refuses against `cfg` on `world` processes (the module docstring's
    table), None where every value is "auto", absent or equal. Asked by check_deepspeed_settings before anything
    loads and by `preflab plan --accelerate-config`."""
    if settings is None:
        return None
    if settings.problem:
        return settings.problem
    ds, where = settings.config, settings.where
    accumulation = ds.get("gradient_accumulation_steps", AUTO)
    if not _auto(accumulation) and str(accumulation) != "1":
        return f"{where}gradient_accumulation_steps is {accumulation}; preflab runs DeepSpeed with 1 (set it to 1)."
    micro = cfg.per_device_train_batch_size
    asked = ds.get("train_micro_batch_size_per_gpu", AUTO)
    if not _auto(asked) and asked != micro:
        return _mismatch(where, "train_micro_batch_size_per_gpu", asked, micro,
                         f"per_device_train_batch_size is {micro} (each process's micro-batch)",
                         f", or per_device_train_batch_size: {asked} in the run config")
    asked = ds.get("train_batch_size", AUTO)
    if not _auto(asked) and asked != micro * world:
        return _mismatch(where, "train_batch_size", asked, micro * world,
                         f"per_device_train_batch_size x gradient_accumulation_steps x processes is {micro} x 1 x "
                         f"{world} = {micro * world} (DeepSpeed requires them equal)",
                         ", or change per_device_train_batch_size / the number of processes")
    clipping = ds.get("gradient_clipping", AUTO)
    if not _auto(clipping) and clipping != "none" and float(clipping) != clipping_of(cfg):
        return (f"{where}gradient_clipping is {clipping} but max_grad_norm is {cfg.max_grad_norm}: DeepSpeed clips "
                f"with its own setting; make them equal (gradient_clipping: {clipping_of(cfg)} or \"auto\", or "
                f"max_grad_norm: {clipping} in the run config).")
    if "optimizer" in ds:
        return (f"{where}optimizer is set ({_type_of(ds['optimizer'])}), but preflab builds "
                f"the optimizer itself from the run config (optim: {getattr(cfg, 'optim', 'adamw_torch_fused')}, "
                f"learning_rate: {cfg.learning_rate}, weight_decay, adam_beta1 / adam_beta2, adam_epsilon) and "
                "hands it to DeepSpeed, which accelerate refuses beside an optimizer section. Remove the optimizer "
                "section and set those keys in the run config.")
    if "scheduler" in ds:
        return (f"{where}scheduler is set ({_type_of(ds['scheduler'])}), but preflab steps "
                f"its own learning-rate schedule (lr_scheduler_type: {cfg.lr_scheduler_type}, warmup_steps / "
                "warmup_ratio), and DeepSpeed would step a second one from this section. Remove the scheduler "
                "section and set the schedule in the run config.")
    for section, on in precision_sections(cfg).items():
        node = ds.get(section)
        enabled = node.get("enabled", AUTO) if isinstance(node, dict) else AUTO
        if not _auto(enabled) and (str(enabled).lower() == "true") != on:
            return _mismatch(where, f"{section}.enabled", enabled, str(on).lower(),
                             f"the run config trains in {cfg.torch_dtype} (bf16 / fp16 / dtype), so DeepSpeed "
                             "would train in another precision than the one asked",
                             ", or change bf16 / fp16 / dtype in the run config")
    return zero3_gather_problem(ds.get("zero_optimization") or {})


def zero3_gather_problem(zero: dict) -> str | None:
    """Under ZeRO-3 no rank holds the whole weights; the final model is gathered through accelerate's get_state_dict
    (gather_full_state), which DeepSpeed allows only with stage3_gather_16bit_weights_on_model_save (accelerate's
    zero3_save_16bit_model, false by default). Without it the run would train to its end and then stop with
    accelerate's ValueError at the final save. `zero`: the DeepSpeed config's zero_optimization."""
    if str(zero.get("stage")) != "3" or zero.get("stage3_gather_16bit_weights_on_model_save") is True:
        return None
    return ("DeepSpeed ZeRO-3 without zero3_save_16bit_model: true (DeepSpeed's "
            "stage3_gather_16bit_weights_on_model_save): preflab gathers the final model through it, so this run "
            "would train to its end and then fail to save the model. Set zero3_save_16bit_model: true in the "
            "accelerate config's deepspeed_config (as examples/accelerate/zero3.yaml; the gathered weights keep the "
            "training dtype), or stage3_gather_16bit_weights_on_model_save: true in the deepspeed_config_file.")


def fill_deepspeed_auto(cfg, ds: dict, world: int) -> dict:
    """Fill the keys preflab decides (run_values) where `ds` says "auto" or leaves them out (a precision section's
    enabled only where the section is there: accelerate adds absent ones from the same precision), in place;
    returns {key: value filled}. A concrete value is left as it is: deepspeed_values_problem has refused any that
    disagrees."""
    filled = {}
    for dotted, value in run_values(cfg, world).items():
        node, key = _node(ds, dotted)
        if node is None or not _auto(node.get(key, AUTO)):
            continue
        node[key] = value
        filled[dotted] = value
    return filled


def launcher_config_file() -> str | None:
    """The deepspeed_config_file accelerate's launcher passed (ACCELERATE_DEEPSPEED_CONFIG_FILE), None without."""
    file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    return None if file == "none" else file
