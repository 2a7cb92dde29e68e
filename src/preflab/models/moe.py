"""Mixture-of-experts facts of a model that TRL 1.16's router loss reads: whether it is added and with which
coefficient, and the router's shape (preflab.scoring.router_loss computes the loss itself).

TRL's rule (DPOTrainer / KTOTrainer / SFTTrainer / GRPOTrainer __init__): the loss is added when the text config
has an `output_router_logits` attribute, whatever its value (MoE configs default it to False, and TRL asks for the
router logits in its forward), and the coefficient is not 0; the coefficient is the trainer option, else the model
config's `router_aux_loss_coef` (0.0 when it has none)."""
from __future__ import annotations

from torch import nn

from preflab.errors import ConfigError
from preflab.models.attention import unwrap

# the online trainers TRL 1.16 runs as its GRPOTrainer (and RLOOTrainer), which add a mixture-of-experts policy's
# router load-balancing loss (router_aux_loss_coef x aux_loss of each training forward; preflab.online.run
# OnlineRun._router_coef); the others add none, as TRL's OnlineDPOTrainer adds none (models.load.moe_aux_loss_note)
ROUTER_LOSS_TRAINERS = ("grpo", "bnpo", "dapo", "dr_grpo", "gspo", "cispo", "sapo", "luspo", "vespo", "rloo")


def text_config(model: nn.Module):
    """The config of the model's language part (a VLM's text config), through DDP / PEFT wrappers; None without."""
    config = getattr(unwrap(model), "config", None)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def router_loss_coef(model: nn.Module, option: float | None = None) -> float | None:
    """The coefficient of the router loss for `model`, None when TRL 1.16 would add none (dense model, or a
    coefficient of 0). option: the run's router_aux_loss_coef (None: the model config's, 0.0 when it declares none).
    ConfigError when the option sets a coefficient for a model that has no routers (TRL raises there too)."""
    text = text_config(model)
    moe = text is not None and hasattr(text, "output_router_logits")
    if option and not moe:
        raise ConfigError(f"router_aux_loss_coef is set to {option} but {type(unwrap(model)).__name__} is not a "
                          "mixture-of-experts model that returns its router logits (its config has no "
                          "output_router_logits), so there is no load-balancing loss to weight; remove the option.")
    coef = (getattr(text, "router_aux_loss_coef", 0.0) or 0.0) if option is None else option
    return float(coef) if moe and coef != 0.0 else None


def router_shape(model: nn.Module) -> tuple[int, int]:
    """(number of experts E, experts per token k) from the model's text config, as TRL 1.16 reads them
    (num_experts, num_experts_per_tok); ConfigError naming the missing field otherwise."""
    text = text_config(model)
    missing = [name for name in ("num_experts", "num_experts_per_tok")
               if not isinstance(getattr(text, name, None), int)]
    if missing:
        raise ConfigError(f"{getattr(text, 'model_type', type(unwrap(model)).__name__)}: its config has no integer "
                          f"{' or '.join(missing)}, which the router's load-balancing loss needs (TRL reads the same "
                          "fields); set router_aux_loss_coef: 0 to train without that loss.")
    return text.num_experts, text.num_experts_per_tok
