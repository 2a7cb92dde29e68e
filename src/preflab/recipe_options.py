"""The one function that builds a recipe stage's config (stage_config) from the top-level options that reach the
stages of a recipe (`task: <recipe>`, preflab.recipes): every recipe builds its stages' configs here, so an option
accepted for a recipe reaches each of its stages.

Which options those are (STAGE_OPTIONS, STAGE_READS over RECIPE_STAGES), and the refusal of the others
(recipe_option_errors, run by TrainConfig.check), are preflab.recipe_stages': they sit below preflab.config, and
stage_config, which builds a TrainConfig, above it. Their names are importable from here too.
"""
from __future__ import annotations

import os

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.launch_paths import RECIPE_RUN_DIR
from preflab.recipe_stages import (RECIPE_STAGES, STAGE_OPTIONS, STAGE_READS, accepted_options,  # noqa: F401
                                   recipe_option_errors, stage_options)


def stage_config(task: str, stage: dict, options: dict | None, *, run_dir):
    """The TrainConfig of one training stage of recipe `task`: the recipe's own `stage` options, then the user's
    top-level `options` (stage_options of the run's config; None or {} from Python). Every recipe builds its stages'
    configs here, so an option accepted for a recipe reaches each of its stages. run_dir: the recipe's output_dir,
    kept on the config as preflab.launch_paths.RECIPE_RUN_DIR (not an option): the stage's paths inside it (the data
    files the recipe writes there) are recorded relative to it, so the run folder moved (`mv RUN RUN2`) resumes as
    it would have where it was."""
    kind = stage.get("task", "dpo")
    if kind not in RECIPE_STAGES[task]:  # the table that decides which options a recipe accepts would be wrong
        raise ConfigError(f"internal: task {task} built a stage of task {kind}, which preflab.recipe_options."
                          f"RECIPE_STAGES does not list for it ({RECIPE_STAGES[task]}).")
    options = dict(options or {})
    unknown = sorted(set(options) - set(accepted_options(task)))
    if unknown:
        raise ConfigError(f"task {task}: {unknown} do not reach its stages (preflab.recipe_options); remove them.")
    # the recipe's own stage options are not the user's; its checkpoints (save_steps) are its design: counted as
    # chosen, so no stage says TRL's save_steps default to a user who cannot set it (trl_save_default_note); so is its
    # length (trl_epochs_default_note)
    cfg = config_from_dict({"save_steps": 0, "num_train_epochs": 1.0, **stage, **options},
                           written=set(options) | {"save_steps", "num_train_epochs"})
    setattr(cfg, RECIPE_RUN_DIR, os.path.abspath(run_dir))
    return cfg
