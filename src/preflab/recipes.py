"""Recipes that are whole programs rather than one training run: `preflab train` with `task: <recipe>` and the
recipe's own options under `recipe_params`.

    task: icpl          preflab.reward_design.recipe.run_icpl_recipe       (ICPL, seed #47)
    task: raft_ladder   preflab.ladder.recipe.run_raft_ladder              (RAFT + DPO ladder programs, seed #43)
    task: themis        preflab.reward_models.themis_toy.run_themis_arithmetic  (Themis, seed #44)
    task: otc           preflab.tool_use.otc.run_otc                       (OTC tool-efficiency GRPO, seed #41)
    task: itool         preflab.tool_use.itool.run_itool                   (iTool: MCTS step pairs + SimPO, seed #37)
    task: dstc          preflab.tool_use.dstc.run_dstc                     (DSTC self-generated code x tests, seed #25)

Each writes summary.json with `metric_name`, `metric_before`, `metric_after` (and the baseline it names).
"""
from __future__ import annotations

import importlib
import inspect

from preflab.errors import ConfigError

RECIPES = {"icpl": "preflab.reward_design.recipe:run_icpl_recipe",
           "raft_ladder": "preflab.ladder.recipe:run_raft_ladder",
           "themis": "preflab.reward_models.themis_toy:run_themis_arithmetic",
           "otc": "preflab.tool_use.otc:run_otc",
           "itool": "preflab.tool_use.itool:run_itool",
           "dstc": "preflab.tool_use.dstc:run_dstc"}
_COMMON = ("output_dir", "seed", "quiet", "resume")


def recipe_function(task: str):
    module, name = RECIPES[task].split(":")
    return getattr(importlib.import_module(module), name)


def check_recipe_params(task: str, params: dict) -> None:
    """Unknown recipe_params keys are a ConfigError listing the recipe's options (checked before anything runs)."""
    accepted = [p for p in inspect.signature(recipe_function(task)).parameters if p not in _COMMON]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"recipe_params {unknown} are not options of task {task!r}; its options: {accepted}.")


def run_recipe(cfg) -> dict:
    check_recipe_params(cfg.task, cfg.recipe_params)
    fn = recipe_function(cfg.task)
    accepted = inspect.signature(fn).parameters
    common = {"output_dir": cfg.output_dir, "seed": cfg.seed, "quiet": cfg.disable_tqdm,
              "resume": cfg.resume_from_checkpoint not in (None, False, "", "false")}
    if common["resume"] and "resume" not in accepted:  # never silently rerun a recipe from scratch
        raise ConfigError(f"task {cfg.task!r} cannot resume (its recipe has no resume): drop "
                          "resume_from_checkpoint, or rerun it from scratch in a new output_dir.")
    return fn(**{k: v for k, v in common.items() if k in accepted}, **cfg.recipe_params)
