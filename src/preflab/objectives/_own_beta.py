"""The beta a preference run trains with when its config does not set one (a helper module, not an objective).

TrainConfig's `beta` default is 0.1, TRL 1.16 DPOConfig's (and CPOConfig's, KTOConfig's). For TRL's own loss types
that default is the drop-in behaviour and stays: `loss_type: nca_pair` (or simpo, alphapo: CPOConfig's loss types,
whose preflab classes declare the SimPO / AlphaPO papers' 2.0 / 2.5) without beta trains at 0.1 as TRL does. The
objectives TRL does not have are preflab's implementations of a paper (or preflab's own), and their class default is
that paper's or its released code's value: asft 1.0 (Wang et al. 2024, arXiv:2409.10571; 0.1 is the tempered
variant), tpo_tree 0.5 (Liao et al. 2024, arXiv:2410.12854, `tpo_train.py`), rpo 0.5 (Liu et al. 2024,
arXiv:2405.16436, the average recipe `OpenRLHF/train_rpo.sh`, whose eta 0.2 is rpo's default too), sppo and gpo
0.001 (Wu et al. 2024, arXiv:2405.00675; arXiv:2410.02197; their scripts: targets (p - 1/2)/beta are 100x larger
than at 0.1), f_sft 1.0 (preflab's own family, scale 1). Passing them the run's 0.1 trained another method than the
paper's without a word, so an unset beta takes the objective's own default (resolve_unset_beta), said once at the
start and recorded as the run's beta (config.yaml, which `preflab eval`, the report and a resume read).

task: online takes the same rule for its recipe's objective (preflab.online_recipes.recipe_loss_type: `trainer:
sppo` trains sppo, `gpo` gpo, `tpo` tpo_tree), so `trainer: sppo` and offline `loss_type: sppo` agree: 0.001, 0.001
and 0.5 when unset. Those recipes read beta only through their objective (sppo / gpo: the regression targets
(p - 1/2)/beta, s/beta against the refreshed pi_t; tpo: the list scores beta R_i against pi_0); their reference sync,
the demo task's held-out evaluation and the sampling read no beta, and `preflab eval` / the report read config.yaml's.
Not in online_task: game: there beta is also the game's own KL strength, the one value its equilibrium pi*_beta and
duality gap are measured at for every game trainer (sppo there keeps 0.1 and the start says so; at 0.001 the
exact-probability G3 game's last iterate collapses onto one answer and the average iterate's duality gap is 16x
larger, 0.095 against 0.006 at 0.1).

A loss_type list (TRL's multi-loss, weighted): beta is one value for every part with a beta field. When those parts'
own defaults agree (TRL parts count 0.1) that value is used; when they disagree, 0.1 is kept and a note names each
part's own default (choose one with `beta`). A user's objective ('file.py:Class') is left at 0.1 here (its own note:
preflab.config._user_beta_default_notes).
"""
from __future__ import annotations

import dataclasses

from preflab.errors import ConfigError
from preflab.objectives._ld import TRL_LD_LOSS_TYPES
from preflab.option_types import is_number

RUN_DEFAULT_BETA = 0.1  # TrainConfig.beta's default = TRL 1.16 DPOConfig.beta

# TRL 1.16's loss types (DPOConfig, KTOConfig, CPOConfig, GRPOConfig / RLOOConfig's trainers): 0.1 (or their TRL
# config's own default, set by preflab.config_trl.apply_trl_defaults) is TRL's behaviour for them
TRL_LOSS_TYPES = TRL_LD_LOSS_TYPES + ("sft", "kto", "apo_zero_unpaired", "cpo", "simpo", "alphapo", "orpo", "grpo",
                                      "rloo")

# the tasks whose beta is only their objective's (task: diffusion has its own rule, preflab.config.
# _diffusion_beta_default; task: online's loss_type is its recipe's objective, preflab.online_recipes.recipe_loss_type)
TASKS = ("dpo", "vlm", "online")
GAME = "game"  # online_task: game, where beta is the game's KL strength too (module docstring): 0.1 kept


def _names(loss_type) -> list:
    return list(loss_type) if isinstance(loss_type, (list, tuple)) else [loss_type]


def _module(name):
    """The objective module name of a loss_type name, None for a user's objective or an unknown name (the config's
    own check reports that)."""
    from preflab.objectives import resolve_name
    from preflab.objectives._registry import LEGACY

    if not isinstance(name, str) or ":" in name:
        return None
    if name in LEGACY:  # its renaming warning is said once, where the objective is built
        return LEGACY[name][0]
    try:
        return resolve_name(name)
    except ConfigError:
        return None


def own_betas(loss_type) -> dict | None:
    """{part name: its own default beta} for each part of `loss_type` with a beta field (TRL's loss types: 0.1);
    None when a part is a user's objective or unknown."""
    from preflab.objectives import objective_class

    trl = {_module(n) for n in TRL_LOSS_TYPES} - {None}
    out = {}
    for name in _names(loss_type):
        module = _module(name)
        if module is None:
            return None
        default = next((f.default for f in dataclasses.fields(objective_class(module)) if f.name == "beta"), None)
        if is_number(default):
            out[str(name)] = RUN_DEFAULT_BETA if module in trl else float(default)
    return out


def resolve_unset_beta(task, loss_type, online_task=None) -> float | None:
    """The beta a run of `task` / `loss_type` trains with when beta is not set, if it is not 0.1: the single own
    default of the parts with a beta field (module docstring), else None (0.1 is kept; so in the online game)."""
    if task not in TASKS or (task == "online" and online_task == GAME):
        return None
    betas = own_betas(loss_type)
    values = set((betas or {}).values())
    if len(values) != 1:
        return None
    value = values.pop()
    return value if value != RUN_DEFAULT_BETA else None


def unset_beta_note(task, loss_type, online_task=None) -> str | None:
    """What the run's start says when beta is not set and an objective's own default differs from 0.1: the value
    used, or for a list whose parts disagree or in the online game, that 0.1 is kept."""
    if task not in TASKS:
        return None
    betas = own_betas(loss_type) or {}
    if task == "online" and online_task == GAME:
        own = ", ".join(f"{n}'s own default ({b})" for n, b in betas.items() if b != RUN_DEFAULT_BETA)
        return (f"beta: 0.1 (beta is not set; in online_task: game beta is the game's KL strength, at which its "
                f"equilibrium pi*_beta and duality gap are measured for every trainer, so {own} is not used; set "
                "beta to choose).") if own else None
    chosen = resolve_unset_beta(task, loss_type)
    if chosen is not None:
        names = ", ".join(n for n in betas)
        return (f"beta: {chosen} ({names}'s own default; beta is not set, so not TRL's 0.1; set beta to "
                "override).")
    if len(set(betas.values())) > 1:
        own = ", ".join(f"{n} {b}" for n, b in betas.items())
        return (f"beta: 0.1 (beta is not set and the parts of loss_type disagree on their own default: {own}; "
                "the run's 0.1 is used for every part; set beta to choose).")
    return None
