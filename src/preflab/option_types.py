"""The type check of one option's value, as a config file or a run's config.yaml gives it (preflab.config for every
TrainConfig field, preflab.model_part_options for the options a checkpoint's model is rebuilt with), and is_number,
the "a number, not a bool" test that option tables, recipe params and the report's summary readers share, and
weight_value (a reward weight's finite float, for the config table and the online Judge). It imports
nothing of preflab but its error, so every layer can ask it from below the models."""
from __future__ import annotations

import math
import numbers
import typing
from typing import Any

from preflab.errors import ConfigError

def is_number(value) -> bool:
    """True for an int or a float that is not a bool: bool subclasses int, so `isinstance(True, (int, float))` holds,
    but a YAML `true` given for a number option, or a summary.json flag beside its numbers, is not a number. NaN and
    infinities count (callers that need a finite value check math.isfinite too)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def weight_value(weight: Any) -> float | None:
    """The finite float a reward weight stands for, or None when it stands for none: a number (not a bool), or number
    text as TRL's argument parser reads a list item (`"0.5"` is 0.5). NaN and infinities are None: the combined reward
    is nansum_k w_k r_k, so a NaN weight turned its judge's every score into NaN and nansum left the judge out of
    every reward without a word (`reward_weights=[1.0,nan]` on the command line gives the text 'nan')."""
    if isinstance(weight, bool) or not isinstance(weight, (numbers.Real, str)):  # numpy floats too
        return None
    try:
        value = float(weight)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_BOOL_TEXT = {**dict.fromkeys(("yes", "true", "t", "y", "1"), True),
              **dict.fromkeys(("no", "false", "f", "n", "0"), False)}  # transformers.hf_argparser.string_to_bool


def check_type(name: str, value: Any, hint) -> Any:
    """Coerce ints to floats where a float is expected, and number text to the number where a float or an int is
    expected (an option that takes text too keeps it); anything else of the wrong type is a ConfigError.

    Number text is read as TRL's TrlParser reads a YAML config's values: they become argparse defaults, and argparse
    converts a text default with the option's type, so `beta: "0.2"` is 0.2 and `max_steps: "2"` is 2 there, while
    `max_steps: "2.5"` is refused (int("2.5") fails). Before, "2" for an int option was refused here while "0.2" for a
    float option was read. Boolean text likewise: TRL's parser (transformers' HfArgumentParser) gives a bool option
    the type string_to_bool, which reads yes/true/t/y/1 and no/false/f/n/0 in any case, so `bf16: "false"` is False
    there; other text is refused."""
    if value is None:
        if type(None) in typing.get_args(hint) or hint is Any:
            return value
        raise ConfigError(f"{name} may not be null.")
    if hint is Any:
        return value
    allowed = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    origins = [typing.get_origin(a) or a for a in allowed]
    if float in origins and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in origins and isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if int in origins and str not in origins and isinstance(value, str):  # as argparse's type=int on text
        try:
            return int(value)
        except ValueError:
            pass
    if bool in origins and str not in origins and isinstance(value, str):  # as HfArgumentParser's string_to_bool
        if value.lower() in _BOOL_TEXT:
            return _BOOL_TEXT[value.lower()]
        raise ConfigError(f"{name} must be bool, got {value!r} (str); as text, TRL's parser reads true/false, "
                          "yes/no, t/f, y/n and 1/0 (any case).")
    if any(isinstance(value, o) and not (o is int and isinstance(value, bool)) for o in origins):
        return value
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in origins)
    raise ConfigError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__}).")
