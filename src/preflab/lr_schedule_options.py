"""lr_scheduler_type and lr_scheduler_kwargs: the schedules preflab has (reduce_lr_on_plateau among them: stepped by
the eval metric, checked by plateau_conflicts), the keyword arguments each takes (the names
and defaults of transformers' get_scheduler(name, ..., scheduler_specific_kwargs=...)), and their checks, run with
the config's before any model is loaded. The factors themselves are preflab.loops.optimizer's.

    schedule_kwargs_errors("polynomial", {"power": 2.0}, learning_rate=1e-5)  -> []  (one line per problem)
    schedule_kwargs("polynomial", {"power": 2.0})  -> {"lr_end": 1e-7, "power": 2.0}  (defaults filled in)
"""
from __future__ import annotations

import json

from preflab.option_types import is_number

# lr_scheduler_type -> {keyword: transformers' default}; None where transformers has no value (see _REQUIRED)
SCHEDULE_KWARGS: dict[str, dict] = {
    "linear": {},
    "cosine": {"num_cycles": 0.5},
    "constant": {},
    "constant_with_warmup": {},
    "cosine_with_restarts": {"num_cycles": 1},
    "polynomial": {"lr_end": 1e-7, "power": 1.0},
    "inverse_sqrt": {"timescale": None},
    "cosine_with_min_lr": {"num_cycles": 0.5, "min_lr": None, "min_lr_rate": None},
    "cosine_warmup_with_min_lr": {"num_cycles": 0.5, "min_lr": None, "min_lr_rate": None, "warmup_lr_rate": None},
    "warmup_stable_decay": {"num_decay_steps": None, "num_stable_steps": None, "warmup_type": "linear",
                            "decay_type": "cosine", "min_lr_ratio": 0.0, "num_cycles": 0.5},
    # torch.optim.lr_scheduler.ReduceLROnPlateau's arguments (transformers passes lr_scheduler_kwargs to it as given)
    "reduce_lr_on_plateau": {"mode": "min", "factor": 0.1, "patience": 10, "threshold": 1e-4,
                             "threshold_mode": "rel", "cooldown": 0, "min_lr": 0.0, "eps": 1e-8},
}

PLATEAU = "reduce_lr_on_plateau"  # stepped by the eval metric, not per optimizer step (preflab.loops.optimizer)

# transformers' schedules preflab does not have, and why
REFUSED_SCHEDULES = {
    "greedy": "transformers' GreedyLR adapts the rate to the loss; preflab's schedules are per-step factors. Use "
              "cosine_with_min_lr or warmup_stable_decay",
}

SHAPES = ("linear", "cosine", "1-sqrt")  # warmup_stable_decay's warmup_type / decay_type


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parsed_kwargs(value):
    """A JSON string (transformers' TrainingArguments takes '{"min_lr": 1e-6}' from its command line) as a dict,
    with string values read as transformers reads them ('true' -> True, '3' -> 3, '0.5' -> 0.5); anything else as
    given."""
    if not (isinstance(value, str) and value.strip().startswith("{")):
        return value
    loaded = json.loads(value)
    for key, item in loaded.items():
        if isinstance(item, str) and item.lower() in ("true", "false"):
            loaded[key] = item.lower() == "true"
        elif isinstance(item, str) and item.isdigit():
            loaded[key] = int(item)
        elif isinstance(item, str) and item.replace(".", "", 1).isdigit():
            loaded[key] = float(item)
    return loaded


def schedule_kwargs(kind: str, kwargs: dict | None) -> dict:
    """The keyword arguments of schedule `kind`: transformers' defaults, overridden by `kwargs`."""
    return {**SCHEDULE_KWARGS.get(kind, {}), **(kwargs or {})}


def schedule_kwargs_errors(kind: str, kwargs, learning_rate: float) -> list[str]:
    """One line per problem of lr_scheduler_kwargs for lr_scheduler_type `kind` (an unknown kind is the option
    table's error): not a mapping, a key the schedule does not take (named with the keys it does take), a value of
    the wrong type or range, a required key missing (warmup_stable_decay's num_decay_steps; cosine_with_min_lr's
    min_lr or min_lr_rate), lr_end not below learning_rate (polynomial)."""
    if kind not in SCHEDULE_KWARGS:
        return []
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        return [f"lr_scheduler_kwargs must be a mapping of keyword: value, got {type(kwargs).__name__} {kwargs!r}."]
    accepted = SCHEDULE_KWARGS[kind]
    takes = ", ".join(accepted) if accepted else "none"
    out = [f"lr_scheduler_kwargs key {key!r} is not an option of lr_scheduler_type {kind!r} (it takes: {takes}); "
           "remove it." for key in kwargs if key not in accepted]
    if out:
        return out
    kw = schedule_kwargs(kind, kwargs)

    def bad(key: str, want: str) -> None:
        out.append(f"lr_scheduler_kwargs {key}={kw[key]!r} for lr_scheduler_type {kind!r} must be {want}.")

    if kind == PLATEAU:
        _check_plateau_kwargs(kw, bad)
        return out
    for key in ("num_cycles", "power", "lr_end", "min_lr", "min_lr_rate", "warmup_lr_rate", "min_lr_ratio"):
        if key in kwargs and kw[key] is not None and not (is_number(kw[key]) and kw[key] >= 0):
            bad(key, "a number >= 0")
    for key in ("timescale", "num_decay_steps", "num_stable_steps"):
        if key in kwargs and kw[key] is not None and not (_whole(kw[key]) and kw[key] >= (1 if key == "timescale"
                                                                                            else 0)):
            bad(key, "a whole number >= 1" if key == "timescale" else "a whole number >= 0")
    if out:
        return out
    if kind in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        given = [k for k in ("min_lr", "min_lr_rate") if kw[k] is not None]
        if len(given) != 1:
            out.append(f"lr_scheduler_type {kind!r} needs exactly one of min_lr (the final rate) or min_lr_rate (the "
                       f"final rate / learning_rate) in lr_scheduler_kwargs" + (", not both." if given else "."))
    if kind == "polynomial" and is_number(learning_rate) and not learning_rate > kw["lr_end"]:
        out.append(f"lr_scheduler_kwargs lr_end={kw['lr_end']!r} must be below learning_rate={learning_rate!r} "
                   "(polynomial decays from learning_rate to lr_end).")
    if kind == "warmup_stable_decay":
        if kw["num_decay_steps"] is None:
            out.append("lr_scheduler_type 'warmup_stable_decay' needs num_decay_steps in lr_scheduler_kwargs (the "
                       "steps of the final decay).")
        for key in ("warmup_type", "decay_type"):
            if kw[key] not in SHAPES:
                bad(key, "one of " + " | ".join(SHAPES))
        if kw["min_lr_ratio"] > 1:
            bad("min_lr_ratio", "at most 1")
    return out


def _check_plateau_kwargs(kw: dict, bad) -> None:
    """ReduceLROnPlateau's own ranges (torch would refuse factor >= 1 or an unknown mode only once the run builds
    it); bad(key, want) records one line per problem."""
    checks = (("mode", lambda v: v in ("min", "max"), "min or max"),
              ("factor", lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)"),
              ("patience", lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
              ("threshold", lambda v: is_number(v) and v >= 0, "a number >= 0"),
              ("threshold_mode", lambda v: v in ("rel", "abs"), "rel or abs"),
              ("cooldown", lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
              ("min_lr", lambda v: is_number(v) and v >= 0, "a number >= 0"),
              ("eps", lambda v: is_number(v) and v >= 0, "a number >= 0"))
    for key, ok, want in checks:
        if not ok(kw[key]):
            bad(key, want)


def constant_warmup_conflicts(cfg) -> list[str]:
    """lr_scheduler_type constant with warmup_steps / warmup_ratio: transformers' get_scheduler builds "constant"
    without num_warmup_steps (get_constant_schedule: factor 1 from the first step) and says nothing, so the warmup
    the config asks for never happens. Refused (as reduce_lr_on_plateau's warmup is), naming the two fixes."""
    warmup = [f"{k}={getattr(cfg, k)}" for k in ("warmup_steps", "warmup_ratio") if getattr(cfg, k)]
    if cfg.lr_scheduler_type != "constant" or not warmup:
        return []
    return [f"{' and '.join(warmup)} with lr_scheduler_type: constant: that schedule has no warmup (transformers' "
            "get_scheduler builds it without one and leaves the warmup unread, so TRL would train at the full rate "
            "from the first step); set lr_scheduler_type: constant_with_warmup to warm up, or remove the warmup."]


def plateau_conflicts(cfg) -> list[str]:
    """reduce_lr_on_plateau as transformers runs it (Trainer._evaluate: after each evaluation during training,
    ReduceLROnPlateau.step(eval_<metric_for_best_model>); TrainingArguments: metric_for_best_model defaults to
    "loss", an eval strategy is required). Refused where it would never step or would step the wrong way: no
    evaluation during training (no eval_steps / eval_strategy steps or epoch; no eval set: data.eval_set and the
    driver's step_on_evaluation refuse it where the run reads its data); warmup (transformers'
    get_scheduler builds the plateau scheduler without one and drops the warmup unread); a mode that disagrees with
    greater_is_better (mode min on a greater-is-better metric cuts the rate while the metric improves)."""
    if cfg.lr_scheduler_type != PLATEAU:
        return []
    out = []
    if not (cfg.eval_steps or cfg.eval_strategy in ("steps", "epoch")):  # the eval set: data.eval_set, the driver
        out.append("lr_scheduler_type: reduce_lr_on_plateau steps the rate with the eval metric at each evaluation "
                   "during training, but this run evaluates only at its end; set eval_strategy: steps with eval_steps "
                   "(and an eval set), or choose another lr_scheduler_type.")
    warmup = [f"{k}={getattr(cfg, k)}" for k in ("warmup_steps", "warmup_ratio") if getattr(cfg, k)]
    if warmup:
        out.append(f"{' and '.join(warmup)}: lr_scheduler_type: reduce_lr_on_plateau has no warmup (transformers "
                   "builds it without one and leaves the warmup unread); remove the warmup.")
    mode = schedule_kwargs(PLATEAU, cfg.lr_scheduler_kwargs if isinstance(cfg.lr_scheduler_kwargs, dict)
                           else None)["mode"]
    if cfg.greater_is_better is not None and mode == ("min" if cfg.greater_is_better else "max"):
        want = "max" if cfg.greater_is_better else "min"
        out.append(f"lr_scheduler_type: reduce_lr_on_plateau with mode {mode!r} on metric_for_best_model "
                   f"{cfg.metric_for_best_model!r} (greater_is_better: {cfg.greater_is_better}) would cut the rate "
                   f"while the metric improves; set lr_scheduler_kwargs: {{mode: {want}}}.")
    return out
