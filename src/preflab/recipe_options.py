"""The one function that builds a recipe stage's config (stage_config), from the top-level options that reach the
stages of a recipe (`task: <recipe>`, preflab.recipes).

A recipe is a whole program: it builds its own tiny model, its data and the config of each stage (learning rates,
batch sizes, steps, lengths: its design; its knobs are its recipe_params). The STAGE_OPTIONS say how a stage runs,
not what it trains: set at the top level, one reaches every training stage of the recipe (stage_config), provided
every one of those stages' trainers reads it (STAGE_READS over RECIPE_STAGES). Any other top-level option set away
from its default is refused before anything runs (recipe_option_errors), naming the option, the recipe and why.
Before, all of them were accepted and dropped: `attention: dense` on raft_ladder trained with segment attention.

The tables and the refusal live in preflab.recipe_stages, below preflab.config (TrainConfig.check runs the refusal);
stage_config builds a TrainConfig, so it sits above it. The tables' names are importable from here too.
"""
from __future__ import annotations

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.recipe_stages import (RECIPE_STAGES, STAGE_OPTIONS, STAGE_READS, accepted_options,  # noqa: F401
                                   recipe_option_errors, stage_options)


def stage_config(task: str, stage: dict, options: dict | None):
    """The TrainConfig of one training stage of recipe `task`: the recipe's own `stage` options, then the user's
    top-level `options` (stage_options of the run's config; None or {} from Python). Every recipe builds its stages'
    configs here, so an option accepted for a recipe reaches each of its stages."""
    kind = stage.get("task", "dpo")
    if kind not in RECIPE_STAGES[task]:  # the table that decides which options a recipe accepts would be wrong
        raise ConfigError(f"internal: task {task} built a stage of task {kind}, which preflab.recipe_options."
                          f"RECIPE_STAGES does not list for it ({RECIPE_STAGES[task]}).")
    options = dict(options or {})
    unknown = sorted(set(options) - set(accepted_options(task)))
    if unknown:
        raise ConfigError(f"task {task}: {unknown} do not reach its stages (preflab.recipe_options); remove them.")
    return config_from_dict({**stage, **options})
