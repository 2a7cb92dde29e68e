"""lr_scheduler_type and lr_scheduler_kwargs: the schedules preflab has, the keyword arguments each takes (the names
and defaults of transformers' get_scheduler(name, ..., scheduler_specific_kwargs=...)), and their checks, run with
the config's before any model is loaded. The factors themselves are preflab.loops.optimizer's.

    schedule_kwargs_errors("polynomial", {"power": 2.0}, learning_rate=1e-5)  -> []  (one line per problem)
    schedule_kwargs("polynomial", {"power": 2.0})  -> {"lr_end": 1e-7, "power": 2.0}  (defaults filled in)
"""
from __future__ import annotations

import json

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
}

# transformers' schedules preflab does not have, and why
REFUSED_SCHEDULES = {
    "reduce_lr_on_plateau": "transformers steps it with the eval metric at each evaluation instead of every "
                            "optimizer step (a ReduceLROnPlateau, not a per-step schedule); preflab's schedules are "
                            "per-step factors, checkpointed and re-applied on resume as such. Use cosine_with_min_lr "
                            "or warmup_stable_decay",
    "greedy": "transformers' GreedyLR adapts the rate to the loss; preflab's schedules are per-step factors. Use "
              "cosine_with_min_lr or warmup_stable_decay",
}

SHAPES = ("linear", "cosine", "1-sqrt")  # warmup_stable_decay's warmup_type / decay_type


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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

    for key in ("num_cycles", "power", "lr_end", "min_lr", "min_lr_rate", "warmup_lr_rate", "min_lr_ratio"):
        if key in kwargs and kw[key] is not None and not (_number(kw[key]) and kw[key] >= 0):
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
    if kind == "polynomial" and _number(learning_rate) and not learning_rate > kw["lr_end"]:
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
