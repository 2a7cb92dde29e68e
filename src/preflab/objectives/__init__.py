"""Objectives: one module per method, found by module name (DESIGN.md principle 3).

    get_objective("simpo", beta=2.0)                       # module preflab/objectives/simpo.py
    get_objective("sigmoid")                               # TRL alias -> dpo (aliases live in each module)
    get_objective(["sigmoid", "sft"], loss_weights=[1, 1]) # TRL's weighted multi-loss
    get_objective("mypkg.losses:MyLoss", tau=1.0)          # an objective outside the package (or my_losses.py:MyLoss)

Each module defines `OBJECTIVE = <class>`. Modules whose name starts with "_", `base`, `cli` and `contract` (the
contract's checks, `check_objective`, for any objective) are not objectives.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass

import torch

from preflab.errors import ConfigError, PreflabError
from preflab.objectives._registry import (LEGACY, NOT_OBJECTIVES, _aliases, _module_names,  # noqa: F401
                                          list_objectives, objective_class, resolve_name)
from preflab.objectives._wpo import WPOWeighted  # TRL's use_weighting
from preflab.objectives.base import (
    ListBatch,
    Objective,
    ObjectiveOutput,
    PairBatch,
    SequenceLogps,
    UnpairedBatch,
    _class_for,
    check_gradient_extras,
    check_modality,
    check_online_only,
    check_params,
    check_unset_params,
    logratios,
    objective_parts,
    reward_metrics,
)
from preflab.objectives.contract import check_objective, example_batch

__all__ = [
    "get_objective", "list_objectives", "objective_class", "objective_info", "Objective", "ObjectiveOutput",
    "PairBatch", "UnpairedBatch", "ListBatch", "SequenceLogps", "WeightedSum", "check_modality", "check_online_only",
    "check_gradient_extras", "WPOWeighted", "check_objective", "example_batch", "objective_parts", "logratios",
    "reward_metrics",
]


def part_names(loss_types) -> tuple[str, ...]:
    """The name of each part of a loss_type list, as its `loss/<name>` metric says it: a built-in objective as given
    (name or alias), a user's class ('file.py:Class', 'module:Class' or the class itself) by its class name, not
    its path. Two parts with one name are a ConfigError (one metric would overwrite the other)."""
    names = tuple(n.rpartition(":")[2] if isinstance(n, str) else n.__qualname__ for n in loss_types)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"loss_type {[str(n) for n in loss_types]}: more than one part is named {twice[0]!r} (each "
                          f"part logs loss/<name>); give each part once, or rename one of the classes.")
    return names


def get_objective(name, **params) -> Objective:
    """Build an objective by name (or alias, or 'module:Class' / 'file.py:Class', or an Objective subclass itself)
    with its hyper-parameters.

    A list of names builds a WeightedSum (TRL's `loss_type=[...]` with `loss_weights`); each parameter goes to
    every component that has a field of that name.
    """
    if isinstance(name, (list, tuple)):
        if len(name) == 1 and params.get("loss_weights") is None:
            params.pop("loss_weights", None)
            return get_objective(name[0], **params)
        weights = params.pop("loss_weights", None) or [1.0] * len(name)
        if len(weights) != len(name):
            raise ConfigError(f"loss_weights has {len(weights)} entries for {len(name)} loss types {list(name)}.")
        classes = [_class_for(n) for n in name]
        used = set()
        parts = []
        for cls in classes:
            fields = {f.name for f in dataclasses.fields(cls)}
            mine = {k: v for k, v in params.items() if k in fields}
            check_unset_params(cls, mine)
            used |= set(mine)
            parts.append(cls(**mine))
        unused = set(params) - used
        if unused:
            raise ConfigError(f"no objective in {list(name)} takes parameter(s) {sorted(unused)}.")
        return WeightedSum(tuple(parts), tuple(float(w) for w in weights), part_names(name))
    if params.get("loss_weights") is not None:
        return get_objective([name], **params)
    params.pop("loss_weights", None)
    cls = _class_for(name)
    check_params(cls, params)
    return cls(**params)


def objective_info(name: str) -> dict:
    """What `preflab objectives` prints: parameters with defaults, reference, extras, batch kind, paper."""
    cls = _class_for(name)
    checked = cls.checked_against
    if ":" in name:  # a user's class: not registered (no alias names it), and a built-in parent's record is not its own
        checked = vars(cls).get("checked_against", "")
    return {
        "name": name,
        "aliases": [] if ":" in name else list(cls.aliases),
        "params": cls.params(),
        "needs_reference": cls.needs_reference,
        "required_extras": list(cls.required_extras),
        "gradient_extras": (list(cls.gradient_extras) if isinstance(cls.gradient_extras, tuple)
                            else "depends on its parameters"),
        "produced_extras": list(getattr(cls, "produced_extras", ())),
        "extras_producer": getattr(cls, "extras_producer", ""),
        "token_needs": list(cls.token_needs),
        "batch": cls.batch_type.__name__,
        "modality": cls.modality,
        "paper": cls.paper,
        "checked_against": checked or "not recorded",
        "tags": {k: list(v) for k, v in cls.tags.items()},
        "summary": ((importlib.import_module(cls.__module__).__doc__ or "").strip().splitlines() or [""])[0],
    }


@dataclass(frozen=True)
class WeightedSum:
    """sum_k w_k * objective_k (TRL's `loss_type=[...]`, `loss_weights=[...]`): per-example losses add up with
    the weights.

    Metrics: the first part's (with their counts and difference rules), `loss/<name>` for each part, and of each
    later part only the metrics it declares as its own in `Objective.metric_panels` (spo_degree's `loss/degree`,
    `degree/accuracy`; no TRL loss type declares any, so `[sigmoid, sft]` logs what TRL logs), each with its count
    (ObjectiveOutput.metric_counts), so the step averages it as when that part runs alone. A later part's other
    metrics (its rewards/*, logps/*) describe the same batch under another loss and are not logged. A declared
    difference (metric_differences) is kept when both its terms are declared, else refused. Two parts logging one
    name is refused (`declared_metrics` at construction, `__call__` against the first part's actual
    metrics): no metric silently replaces another."""

    parts: tuple
    weights: tuple
    names: tuple

    def __post_init__(self):
        kinds = {p.batch_type for p in self.parts}
        if len(kinds) != 1:
            raise ConfigError(f"cannot combine objectives of different batch kinds: {list(self.names)}.")
        owning = [n for p, n in zip(self.parts, self.names) if isinstance(p, torch.nn.Module)]
        if owning:  # the trainer trains (optimizer, clipping, checkpoints) the parameters of a lone objective only
            raise ConfigError(f"loss_type {list(self.names)}: {owning[0]!r} trains parameters of its own (e.g. "
                              "SparsePO's token masks), which preflab trains only when it is the run's one loss_type; "
                              "in a weighted sum they would stay at their initial values. Use it alone.")
        self.declared_metrics  # checked here, at construction (the parts are frozen: computed once)

    @functools.cached_property
    def declared_metrics(self) -> dict:
        """{later part's name: the metrics it declares (metric_panels) and a weighted sum logs}. ConfigError where
        one is also another part's declared metric or a `loss/<part>` key. Computed once (cached_property writes the
        instance's __dict__, which the frozen dataclass allows), not at every micro-batch's __call__."""
        owner = {f"loss/{name}": f"the weighted sum (part {name!r}'s loss)" for name in self.names}
        out = {}
        for name, part in zip(self.names, self.parts):
            keys = _panel_metrics(part)
            for key in keys:
                if key in owner:
                    raise ConfigError(f"loss_type {list(self.names)}: part {name!r} declares {key!r} (metric_panels), "
                                      f"which {owner[key]} logs too; one would replace the other. Rename the metric "
                                      "in one of the objectives (its compute() and metric_panels), or the part.")
                owner[key] = f"part {name!r}"
            out[name] = keys
        del out[self.names[0]]  # the first part logs all its metrics
        return out

    @property
    def batch_type(self):
        return self.parts[0].batch_type

    @property
    def needs_reference(self) -> bool:
        return any(p.needs_reference for p in self.parts)

    @property
    def modality(self) -> str:
        return self.parts[0].modality

    @property
    def uses_mismatched_completions(self) -> bool:
        return any(getattr(p, "uses_mismatched_completions", False) for p in self.parts)

    @property
    def required_extras(self) -> tuple:
        return tuple(dict.fromkeys(k for p in self.parts for k in p.required_extras))

    def row_extras(self) -> dict:
        """Every part's per-row extras (the first part that declares a range for a name wins)."""
        out: dict = {}
        for part in self.parts:
            for name, bounds in part.row_extras().items():
                out.setdefault(name, bounds)
        return out

    @property
    def token_needs(self) -> tuple:
        return tuple(dict.fromkeys(k for p in self.parts for k in p.token_needs))

    @property
    def gradient_extras(self) -> tuple:
        return tuple(dict.fromkeys(k for p in self.parts for k in p.gradient_extras))

    def __call__(self, batch) -> ObjectiveOutput:
        outs = [p(batch) for p in self.parts]
        losses = sum(w * o.losses for w, o in zip(self.weights, outs))
        metrics = dict(outs[0].metrics)
        counts, differences = dict(outs[0].metric_counts), dict(outs[0].metric_differences)
        extrema = dict(outs[0].metric_extrema)
        for (name, keys), o in zip(self.declared_metrics.items(), outs[1:]):
            clash = sorted(set(keys) & set(outs[0].metrics))
            if clash:
                raise PreflabError(f"loss_type {list(self.names)}: part {name!r} declares {clash[0]!r} "
                                   f"(metric_panels), which part {self.names[0]!r} logs too; one would replace the "
                                   "other. Rename the metric in one of the objectives.")
            absent = [k for k in keys if k not in o.metrics]
            if absent:
                raise PreflabError(f"loss_type {list(self.names)}: part {name!r} declares {absent[0]!r} "
                                   "(metric_panels) but its compute() does not return it; return it or remove it "
                                   "from metric_panels (preflab.objectives.check_objective checks this).")
            rules = {k: ab for k, ab in o.metric_differences.items() if k in keys}
            lacking = sorted(k for k, ab in rules.items() if not set(ab) <= set(keys))
            if lacking:  # the step recomputes a - b from the averaged a and b: both must be logged
                raise PreflabError(f"loss_type {list(self.names)}: part {name!r} declares {lacking[0]!r}, the "
                                   f"difference {list(rules[lacking[0]])} (metric_differences), but not both of "
                                   "those metrics; declare them in its metric_panels too.")
            metrics.update({k: o.metrics[k] for k in keys})
            counts.update({k: o.metric_counts[k] for k in keys if k in o.metric_counts})
            extrema.update({k: o.metric_extrema[k] for k in keys if k in o.metric_extrema})
            differences.update(rules)
        for name, o in zip(self.names, outs):
            metrics[f"loss/{name}"] = o.loss.detach()
        return ObjectiveOutput(loss=sum(w * o.loss for w, o in zip(self.weights, outs)), losses=losses,
                               metrics=metrics, metric_counts=counts, metric_differences=differences,
                               metric_extrema=extrema)


def _panel_metrics(part) -> tuple:
    """The metric names `part` declares as its own (Objective.metric_panels), in order, once each."""
    return tuple(dict.fromkeys(k for _, _, keys in getattr(part, "metric_panels", ()) for k in keys))
