"""gradient_checkpointing_kwargs (transformers' TrainingArguments option; transformers 5 spells it
activation_checkpointing_kwargs): what the config check refuses, and the keyword arguments every trainer passes to
its model's checkpointing.

    checkpoint_kwargs(cfg)            # {"use_reentrant": False, **gradient_checkpointing_kwargs}
    checkpointing_option_errors(cfg)  # one line per problem (TrainConfig.check)

transformers passes the mapping to torch.utils.checkpoint.checkpoint through gradient_checkpointing_enable(
gradient_checkpointing_kwargs=...) (its default, with no mapping: use_reentrant False, which preflab has always
used). preflab takes the keys of torch.utils.checkpoint.checkpoint that a config can write (CHECKPOINT_KEYS) and
passes them the same way to every model it checkpoints: the policy (offline, sft, vlm, online runs), a reward model,
a QLoRA base (peft's prepare_model_for_kbit_training) and a diffusion UNet (diffusers' gradient_checkpointing_func).
The two keys transformers 5 takes out of the mapping itself are refused: `offload` (preflab's activation_offloading
keeps the checkpointed layers' inputs in host memory together with checkpointing) and `every_n_layers` (not applied;
`preflab plan`'s estimate assumes every layer is checkpointed).
"""
from __future__ import annotations

# torch.utils.checkpoint.checkpoint's keyword arguments a YAML config can give, and the values each takes
CHECKPOINT_KEYS = {
    "use_reentrant": ("true or false", lambda v: isinstance(v, bool)),
    "preserve_rng_state": ("true or false", lambda v: isinstance(v, bool)),
    "determinism_check": ("default or none", lambda v: v in ("default", "none")),
    "debug": ("true or false", lambda v: isinstance(v, bool)),
}
# keys transformers 5's Trainer takes out of activation_checkpointing_kwargs itself -> why preflab refuses them
REFUSED_KEYS = {
    "offload": "preflab does not hold checkpointed activations on the host this way; activation_offloading: true "
               "keeps the tensors saved for backward (with gradient_checkpointing: the checkpointed layers' inputs) "
               "in host memory",
    "every_n_layers": "preflab checkpoints every decoder layer (preflab plan's estimate assumes so); remove it",
}
DEFAULT_KWARGS = {"use_reentrant": False}  # transformers' default and TRL's, and preflab's before the option


def checkpoint_kwargs(cfg) -> dict:
    """The keyword arguments of torch.utils.checkpoint.checkpoint for this run's models: use_reentrant False unless
    gradient_checkpointing_kwargs says otherwise, and its other keys."""
    return {**DEFAULT_KWARGS, **(getattr(cfg, "gradient_checkpointing_kwargs", None) or {})}


def checkpointing_option_errors(cfg) -> list[str]:
    """gradient_checkpointing_kwargs: a mapping of CHECKPOINT_KEYS with their values, and given only with
    gradient_checkpointing: true (without it nothing is checkpointed, so the mapping has nothing to apply to; its
    default {use_reentrant: false} asks for nothing and is accepted)."""
    out = []
    kwargs = cfg.gradient_checkpointing_kwargs
    if kwargs is not None and not isinstance(kwargs, dict):
        out.append(f"gradient_checkpointing_kwargs={kwargs!r} must be a mapping, e.g. "
                   "gradient_checkpointing_kwargs: {use_reentrant: true}.")
    elif kwargs:
        for key, value in kwargs.items():
            if key in REFUSED_KEYS:
                out.append(f"gradient_checkpointing_kwargs.{key} is not supported: {REFUSED_KEYS[key]}.")
            elif key not in CHECKPOINT_KEYS:
                out.append(f"gradient_checkpointing_kwargs.{key} is not a keyword of torch.utils.checkpoint."
                           f"checkpoint that preflab passes; give {', '.join(CHECKPOINT_KEYS)}.")
            elif not CHECKPOINT_KEYS[key][1](value):
                out.append(f"gradient_checkpointing_kwargs.{key}={value!r}: must be {CHECKPOINT_KEYS[key][0]}.")
        if not cfg.gradient_checkpointing and kwargs != DEFAULT_KWARGS:
            out.append(f"gradient_checkpointing_kwargs={kwargs!r} without gradient_checkpointing: true: nothing is "
                       "checkpointed, so it would apply to nothing; set gradient_checkpointing: true or remove it.")
    return out
