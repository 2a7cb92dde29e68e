"""A leading "~" (or "~user") of a path becomes the home folder, as a shell expands it (os.path.expanduser): a value
from a YAML file, a quoted override, TrainConfig(...) or a saved config.yaml reaches Python unexpanded. One rule for
the config's path options (preflab.config.expand_home), the ones nested in its mappings and lists (reward_funcs'
`~/rm` or `~/rewards.py:fn`, recipe_params / objective_params files and models), the CLI's path arguments
(preflab.cli.expand_home_args) and a resume's comparison of a saved config with the current one (preflab.resume_check,
preflab.recipe_state: a config.yaml written before `~` was expanded holds the literal form)."""
from __future__ import annotations

import os


def home_expanded(value):
    """`value` with every string that starts with "~" expanded, inside lists, tuples and dict values too (the keys
    and everything else unchanged). A hub name, builtin:..., module:attr or verifier:<name> never starts with "~"."""
    if isinstance(value, str):
        return os.path.expanduser(value) if value.startswith("~") else value
    if isinstance(value, (list, tuple)):
        return type(value)(home_expanded(v) for v in value)
    if isinstance(value, dict):
        return {k: home_expanded(v) for k, v in value.items()}
    return value
