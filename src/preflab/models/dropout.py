"""disable_dropout (the default, as TRL's): no dropout while training, without changing what a saved model says.

TRL sets `nn.Dropout.p = 0` only. preflab also zeroes the float rates that attention reads at forward time without
a module: on the modules (Llama-family attention copies config.attention_dropout to `self.attention_dropout` at
init) and on their transformers configs (GPT-Neo's flash attention, Persimmon, Falcon and BLT read
`self.config.*dropout` at every forward, so a rate left there kept dropout on in training mode).

A config is what `save_pretrained` writes to config.json, so the rates it had are recorded on every module that
holds it (a plain attribute: copied by deepcopy / frozen_copy / merge_and_unload with the module) and
`original_dropout_config(model)` puts them back around a save: a user who continues training the saved model
elsewhere gets the dropout the input model had.
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn

ORIGINAL_RATES = "_preflab_config_dropout"  # module attribute: {"field" or "sub_config.field": the config's rate}


def disable_dropout(model: nn.Module) -> None:
    """Every dropout probability of `model` to 0: dropout modules (LoRA's too), the float `*dropout*` rates of
    modules, and those of their configs (the original config values recorded for `original_dropout_config`)."""
    configs: dict[int, tuple] = {}
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        rates = [k for k, v in vars(module).items() if "dropout" in k and type(v) is float]
        for name in rates:
            setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            configs.setdefault(id(config), (config, []))[1].append(module)
    for config, holders in configs.values():
        recorded: dict[str, float] = {}
        for module in holders:  # a second call (or a new wrapper) keeps the rates recorded before they were zeroed
            for path, rate in vars(module).get(ORIGINAL_RATES, {}).items():
                recorded.setdefault(path, rate)
        for path, rate in _zero_config_dropout(config, prefix="", depth=0).items():
            recorded.setdefault(path, rate)
        for module in holders:
            setattr(module, ORIGINAL_RATES, dict(recorded))


def disable_dropout_of(cfg, *models) -> None:
    """`disable_dropout` on each model given (None skipped) when cfg.disable_dropout: for runs whose models may come
    from Python or a task as well as from load_models."""
    if cfg.disable_dropout:
        for model in models:
            if model is not None:
                disable_dropout(model)


@contextmanager
def original_dropout_config(model):
    """Inside: the configs of `model` hold the dropout rates they had before `disable_dropout` (wrap every
    save_pretrained of a trained model with it); on exit the rates are 0 again. A model never given to
    disable_dropout is left alone."""
    changed = []
    modules = model.modules() if isinstance(model, nn.Module) else ()
    for module in modules:
        recorded = vars(module).get(ORIGINAL_RATES)
        config = getattr(module, "config", None)
        if not recorded or config is None:
            continue
        for path, rate in recorded.items():
            *parents, field = path.split(".")
            owner = config
            for name in parents:
                owner = getattr(owner, name)
            changed.append((owner, field, getattr(owner, field)))
            setattr(owner, field, rate)
    try:
        yield
    finally:
        for owner, field, rate in reversed(changed):
            setattr(owner, field, rate)


def _zero_config_dropout(config, prefix: str, depth: int) -> dict[str, float]:
    """Float `*dropout*` fields of a transformers config and its sub-configs (text_config, vision_config) to 0;
    returns their values before, by path ("attention_dropout", "text_config.attention_dropout")."""
    before = {}
    for key, value in list(vars(config).items()):
        if "dropout" in key and type(value) is float:
            before[prefix + key] = value
            setattr(config, key, 0.0)
        elif depth < 2 and hasattr(value, "to_dict") and hasattr(value, "model_type"):
            before.update(_zero_config_dropout(value, prefix + key + ".", depth + 1))
    return before
