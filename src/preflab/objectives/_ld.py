"""TRL's `ld_alpha` (LD-DPO; Liu et al., 2024, "LD-DPO: length desensitization", arXiv:2409.06411) on every TRL DPO
loss type of a config, as a wrapper (a helper module, not an objective).

TRL 1.16's DPOTrainer weights the summed log-probs themselves, policy and reference alike, before any loss type
reads them:

    S_ld(y) = sum_{t <= l_s} lp_t + ld_alpha * sum_{t > l_s} lp_t,   l_s = min(|y_w|, |y_l|)

so `loss_type: [sigmoid, apo_zero]` with `ld_alpha: 0.5` trains both parts on S_ld, and `loss_type: ipo` with it
trains IPO on S_ld. Only its `sft` term reads the per-token log-probs unweighted. preflab's DPO takes `ld_alpha`
itself (preflab.objectives.dpo.ld_weighted); before this wrapper the other parts of a list ran unweighted (silently
unlike TRL) and a lone ipo / apo_zero / ... refused the option.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from preflab.errors import ConfigError
from preflab.objectives.dpo import ld_weighted

# TRL 1.16 DPOConfig.loss_type values whose loss reads the (LD-weighted) summed log-probs; sft reads the per-token
# log-probs unweighted. cdpo: TRL <= 0.28's sigmoid with label_smoothing (preflab's translation of that config).
TRL_LD_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                     "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "cdpo")
UNWEIGHTED = ("sft",)


def _class(name):
    from preflab.objectives import _class_for

    return _class_for(name)


def _names(loss_type) -> list:
    return list(loss_type) if isinstance(loss_type, (list, tuple)) else [loss_type]


def _is_trl_part(name) -> bool:
    """Whether `name` is (an alias of) one of TRL's DPO loss types; a user's objective ('file.py:Class') is not."""
    if not isinstance(name, str) or ":" in name:
        return False
    try:
        return _class(name) in {_class(n) for n in TRL_LD_LOSS_TYPES + UNWEIGHTED}
    except ConfigError:
        return False


def takes_ld_alpha(loss_type) -> bool:
    """Whether every part of `loss_type` is one of TRL's DPO loss types (TRL reads ld_alpha for all of them)."""
    return all(_is_trl_part(n) for n in _names(loss_type))


@dataclass(frozen=True)
class LDWeighted:
    """`inner` trained on the LD-weighted batch (metrics too: TRL's logps/* and rewards/* are the weighted sums)."""

    inner: object
    ld_alpha: float

    def __getattr__(self, name):  # batch_type, needs_reference, token_needs, extras, ... are the inner objective's
        if name == "inner" or name.startswith("__"):  # not set yet (copy, pickle): no lookup through `inner`
            raise AttributeError(name)
        return getattr(self.inner, name)

    def row_extras(self) -> dict:
        return self.inner.row_extras()

    def __call__(self, batch):
        return self.inner(ld_weighted(batch, self.ld_alpha))


def with_ld_alpha(build, loss_type, params: dict):
    """The objective `build(loss_type, params)` makes, with TRL's ld_alpha applied to each part that is a TRL DPO
    loss type (sft left unweighted, as TRL); a lone DPO keeps taking ld_alpha itself. A part that is not one of TRL's
    DPO loss types is refused: LD weighting of its log-probs is not defined by TRL, and leaving it out would train
    the list unlike the config says."""
    ld_alpha = params.get("ld_alpha")
    names = _names(loss_type)
    from preflab.objectives.dpo import DPO

    if ld_alpha is None:  # TRL's default, which a saved DPOConfig of every loss type carries (user trial 27: a
        # dumped DPOConfig(loss_type="ipo") failed with "IPO has no parameter 'ld_alpha'"): no weighting to apply
        return build(loss_type, {k: v for k, v in params.items() if k != "ld_alpha"})
    if len(names) == 1 and isinstance(names[0], str) and _class(names[0]) is DPO:
        return build(loss_type, params)
    others = [n for n in names if not _is_trl_part(n)]
    if others:
        raise ConfigError(f"ld_alpha (TRL's LD-DPO weighting of the summed log-probs) applies to TRL's DPO loss types "
                          f"({', '.join(TRL_LD_LOSS_TYPES[:-1])}; sft unweighted); loss_type part {others[0]!r} is not "
                          "one. Remove ld_alpha, or that part.")
    if not (isinstance(ld_alpha, (int, float)) and 0 <= ld_alpha <= 1):
        raise ConfigError(f"ld_alpha must be a number in [0, 1], got {ld_alpha!r}.")
    objective = build(loss_type, {k: v for k, v in params.items() if k != "ld_alpha"})
    unweighted = {_class(n) for n in UNWEIGHTED}

    def wrap(part):
        return part if type(part) in unweighted else LDWeighted(part, float(ld_alpha))

    if hasattr(objective, "parts"):  # a WeightedSum
        return dataclasses.replace(objective, parts=tuple(wrap(p) for p in objective.parts))
    return wrap(objective)
