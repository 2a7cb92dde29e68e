"""bitsandbytes' 8-bit, 32-bit and paged optimizers (optim: adamw_8bit, paged_adamw_8bit, lion_8bit, ...), built as
transformers 5's Trainer builds them, so a run's steps equal a transformers run's on the same gradients bit for bit:

- the class and keyword arguments of Trainer.get_optimizer_cls_and_kwargs (_get_bitsandbytes_optimizer; read from
  the name by preflab.optimizer_options.bnb_kind and optim_arg_values): lr, optim_bits (8 or 32), is_paged (not for
  RMSprop), AdamW betas (adam_beta1, adam_beta2) and eps adam_epsilon, Lion betas, AdEMAMix betas / alpha / eps /
  t_alpha / t_beta3 from optim_args;
- Trainer.create_optimizer's override for 8-bit ones: the weight of every torch.nn.Embedding among the modules keeps
  32-bit state (8-bit embedding state trains worse; Dettmers et al. 2022, "8-bit Optimizers via Block-wise
  Quantization", arXiv:2110.02861, keep the embedding layer's state in 32 bits too). transformers registers it with
  bitsandbytes' process-wide GlobalOptimManager, which keeps every registered module alive and matches later
  optimizers' parameters by position; preflab gives each optimizer a manager of its own holding the same override,
  so the steps are the same and nothing leaks into the next optimizer of the process.

Paged optimizers page their state between GPU and CPU memory with CUDA unified memory: off CUDA bitsandbytes would run
them unpaged, so preflab refuses them there (preflab.optimizer_options.paged_refusal)."""
from __future__ import annotations

import torch

from preflab.errors import ConfigError
from preflab.optimizer_options import bnb_kind, bnb_missing, optim_arg_values, paged_refusal


def bnb_class_and_kwargs(cfg, optim: str) -> tuple[type, dict]:
    """(the bitsandbytes.optim class, its keyword arguments but the parameters) for cfg.optim, as transformers'
    _get_bitsandbytes_optimizer returns them. ConfigError when bitsandbytes is not installed."""
    try:
        import bitsandbytes.optim as bnb_optim
    except ImportError as err:
        raise ConfigError(bnb_missing(optim)) from err
    name, bits, paged = bnb_kind(optim)
    kwargs: dict = {"lr": cfg.learning_rate}
    if name == "AdamW":
        kwargs.update(betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    elif name == "Lion":
        kwargs.update(betas=(cfg.adam_beta1, cfg.adam_beta2))
    elif name == "AdEMAMix":
        args = optim_arg_values(optim, getattr(cfg, "optim_args", None))
        kwargs.update(betas=(args.get("beta1", cfg.adam_beta1), args.get("beta2", cfg.adam_beta2),
                             args.get("beta3", 0.9999)),
                      alpha=args.get("alpha", 5.0), eps=args.get("eps", cfg.adam_epsilon))
        kwargs.update({key: args[key] for key in ("t_alpha", "t_beta3") if key in args})
    kwargs["optim_bits"] = bits
    if name != "RMSprop":
        kwargs["is_paged"] = paged
    return getattr(bnb_optim, name), kwargs


def check_paged_device(cfg, optim: str) -> None:
    """ConfigError for a paged optim where the run will not train on a CUDA GPU (use_cpu, or none visible):
    bitsandbytes would run it unpaged. The run's device, not the parameters': some runs build the optimizer before
    the model moves to the GPU (the parameters stay the same tensors, and bitsandbytes makes the state at the
    first step, on their device then)."""
    if not bnb_kind(optim)[2]:
        return
    if getattr(cfg, "use_cpu", False):
        raise ConfigError(paged_refusal(optim, "use_cpu: true is set"))
    if not torch.cuda.is_available():
        raise ConfigError(paged_refusal(optim, "no CUDA GPU is visible (torch.cuda.is_available() is false)"))


def build_bnb_optimizer(cfg, optim: str, groups: list[dict], params: list, owners) -> torch.optim.Optimizer:
    """bitsandbytes optimizer `optim` over the weight-decay `groups` (preflab.loops.optimizer.weight_decay_groups),
    with the 32-bit override of the nn.Embedding weights among `owners`' modules when it is an 8-bit one."""
    check_paged_device(cfg, optim)
    cls, kwargs = bnb_class_and_kwargs(cfg, optim)
    optimizer = cls(groups, **kwargs)
    optimizer.mng = own_manager()
    if kwargs["optim_bits"] == 8:
        for weight in embedding_weights(owners or (), params):
            optimizer.mng.override_config(weight, key_value_dict={"optim_bits": 32})
    return optimizer


def own_manager():
    """A fresh bitsandbytes GlobalOptimManager, not the process-wide instance (see the module docstring)."""
    from bitsandbytes.optim import GlobalOptimManager

    manager = GlobalOptimManager.__new__(GlobalOptimManager)
    manager.initialize()
    return manager


def embedding_weights(owners, params: list) -> list[torch.Tensor]:
    """The weights of the torch.nn.Embedding modules of `owners` that are among `params`, each once (transformers'
    Trainer.create_optimizer overrides every Embedding of the model it trains; a frozen one is not optimized)."""
    optimized = {id(p) for p in params}
    found, seen = [], set()
    for owner in owners:
        for module in owner.modules():
            if isinstance(module, torch.nn.Embedding) and id(module.weight) in optimized \
                    and id(module.weight) not in seen:
                seen.add(id(module.weight))
                found.append(module.weight)
    return found
