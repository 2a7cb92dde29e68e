"""Recipes that are whole programs rather than one training run: `preflab train` with `task: <recipe>` and the
recipe's own options under `recipe_params`.

    task: icpl          preflab.reward_design.recipe.run_icpl_recipe       (ICPL, seed #47)
    task: raft_ladder   preflab.ladder.recipe.run_raft_ladder              (RAFT + DPO ladder programs, seed #43)
    task: themis        preflab.reward_models.themis_toy.run_themis_arithmetic  (Themis, seed #44)
    task: otc           preflab.tool_use.otc.run_otc                       (OTC tool-efficiency GRPO, seed #41)
    task: itool         preflab.tool_use.itool.run_itool                   (iTool: MCTS step pairs + SimPO, seed #37)
    task: dstc          preflab.tool_use.dstc.run_dstc                     (DSTC self-generated code x tests, seed #25)
    task: fspo          preflab.reward_models.fspo.run_fspo                (FSPO few-shot episodes + DPO/IPO, seed #15)
    task: pro_orchestrator  preflab.online.pro_recipe.run_pro               (PRO prompt-aware reward weights, seed #12)

Each writes summary.json with `metric_name`, `metric_before`, `metric_after` (and the baseline it names).
Under a multi-process launch (WORLD_SIZE > 1) the recipes of ONE_PROCESS are refused before anything runs, and those
of MAIN_PROCESS_ONLY run once, on the main process, while the other processes end at once (the result is the
one-process run's; a note says so).
"""
from __future__ import annotations

import importlib
import inspect

from preflab.errors import ConfigError, nearest
from preflab.option_types import is_number
from preflab.recipe_names import RECIPE_TASKS

# where each recipe's program lives, imported when it runs (recipe_function); the task names alone are
# preflab.recipe_names' (the config layer's, below these programs, which build their stages' configs through it)
RECIPES = {"icpl": "preflab.reward_design.recipe:run_icpl_recipe",
           "raft_ladder": "preflab.ladder.recipe:run_raft_ladder",
           "themis": "preflab.reward_models.themis_toy:run_themis_arithmetic",
           "otc": "preflab.tool_use.otc:run_otc",
           "itool": "preflab.tool_use.itool:run_itool",
           "dstc": "preflab.tool_use.dstc:run_dstc",
           "fspo": "preflab.reward_models.fspo:run_fspo",
           "pro_orchestrator": "preflab.online.pro_recipe:run_pro"}
if tuple(RECIPES) != RECIPE_TASKS:  # a recipe the config layer would refuse, or a task with no program
    raise ImportError(f"preflab.recipes.RECIPES {tuple(RECIPES)} and preflab.recipe_names.RECIPE_TASKS "
                      f"{RECIPE_TASKS} must name the same recipes, in the same order.")

# stage_options: preflab.recipe_options; allow_config_change: a resume with other recipe_params goes on (with a note)
_COMMON = ("output_dir", "seed", "quiet", "resume", "stage_options", "allow_config_change")
# recipes that cannot run on several processes (`accelerate launch --num_processes N`), and why (none today)
ONE_PROCESS: dict[str, str] = {}
# recipes with nothing to run data parallel: under a launch of several processes the main process runs them (as a
# plain run would) and the others end at once, rather than each rerunning the recipe into the same files; and why
MAIN_PROCESS_ONLY = {
    "icpl": "it trains no model: each iteration is the code model's samples, a handful of sandboxed reward programs "
            "on a bandit and one rating (a person's, with rater: human), none of which splits over processes",
}


def recipe_function(task: str):
    module, name = RECIPES[task].split(":")
    return getattr(importlib.import_module(module), name)


def check_recipe_params(task: str, params: dict) -> None:
    """Unknown recipe_params keys, and values of the wrong type for the recipe function's type hints, are a
    ConfigError listing the recipe's options (checked before anything runs); a number written as text (YAML's 3e-4)
    becomes a float in `params`."""
    signature = inspect.signature(recipe_function(task)).parameters
    accepted = [p for p in signature if p not in _COMMON]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        hints = "".join(nearest(k, accepted) for k in unknown)
        if "sft_lr_scale" in unknown:  # a knob of the recipes that warm up with SFT before DPO: why not this one
            from preflab.recipe_sft_lr import refusal_hint

            hints += refusal_hint(task)
        raise ConfigError(f"recipe_params {unknown} are not options of task {task!r}.{hints} Its options: "
                          f"{accepted}.")
    for k, v in params.items():  # YAML reads 3e-4 as a string; the top-level options take it as a number too
        if isinstance(v, str) and _annotation(signature[k].annotation)[0] == "float":
            try:
                params[k] = float(v)
            except ValueError:
                pass
    wrong = [f"recipe_params.{k}={v!r} is not {_TYPE_WORDS[kind]}" + (" or null" if optional else "")
             for k, v in params.items() for kind, optional in [_annotation(signature[k].annotation)]
             if kind is not None and not (v is None and optional) and not _fits(v, kind)]
    if wrong:
        raise ConfigError(f"task {task!r}: " + "; ".join(wrong) + " (its default: "
                          + ", ".join(f"{k}={signature[k].default!r}" for k in params
                                      if any(w.startswith(f"recipe_params.{k}=") for w in wrong)) + ").")


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "tuple": "a list"}


def _annotation(annotation) -> tuple[str | None, bool]:
    """('int' | 'float' | 'bool' | 'str' | 'tuple' | None, whether None is allowed) of a recipe option's type hint
    (a string under `from __future__ import annotations`); None: not checked here."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in text.split("|")]
    kinds = [p for p in parts if p in _TYPE_WORDS]
    return (kinds[0] if len(kinds) == 1 and len(parts) - ("None" in parts) == 1 else None), "None" in parts


def _fits(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return is_number(value)
    return isinstance(value, str) if kind == "str" else isinstance(value, (list, tuple))


def check_processes(task: str, processes: int) -> None:
    """A recipe of ONE_PROCESS under a launch of several processes: ConfigError with the reason and what to do."""
    if processes > 1 and task in ONE_PROCESS:
        raise ConfigError(f"task {task!r} runs as one process, not {processes} (WORLD_SIZE={processes}): "
                          f"{ONE_PROCESS[task]}. Run it without a launcher: `preflab train CONFIG.yaml`.")


def run_recipe(cfg) -> dict:
    from preflab.launch_env import launched_world_size
    from preflab.runlog import is_main_process

    processes = launched_world_size()
    check_processes(cfg.task, processes)
    check_recipe_params(cfg.task, cfg.recipe_params)
    if processes > 1 and cfg.task in MAIN_PROCESS_ONLY:
        import os

        if os.environ.get("RANK", "0") != "0":  # the launcher's rank: no process group is formed for this recipe
            return {}  # the launcher waits for the main process; the summary is the main process's to print
        print(f"preflab: task {cfg.task!r} runs on the main process only; the other {processes - 1} process(es) of "
              f"this launch have ended: {MAIN_PROCESS_ONLY[cfg.task]}. The result equals `preflab train "
              "CONFIG.yaml` without a launcher.")
    if cfg.resume_from_checkpoint == "auto":  # the recipes keep their own state files (docs/tools.md)
        raise ConfigError(f"resume_from_checkpoint: auto is for runs that keep checkpoint-N folders; task "
                          f"{cfg.task!r} keeps its own state: set resume_from_checkpoint: true to continue it, or "
                          "leave it out to start afresh.")
    fn = recipe_function(cfg.task)
    accepted = inspect.signature(fn).parameters
    from preflab.recipe_stages import stage_options

    common = {"output_dir": cfg.output_dir, "seed": cfg.seed, "quiet": cfg.disable_tqdm,
              "resume": cfg.resume_from_checkpoint not in (None, False, "", "false"),
              "stage_options": stage_options(cfg),  # checked by TrainConfig: each reaches every stage
              "allow_config_change": bool(cfg.allow_config_change)}
    if common["stage_options"] and "stage_options" not in accepted:  # RECIPE_STAGES lists stages it does not have
        raise ConfigError(f"internal: task {cfg.task!r} takes no stage_options, but preflab.recipe_options accepts "
                          f"{sorted(common['stage_options'])} for it.")
    if common["resume"] and "resume" not in accepted:  # never silently rerun a recipe from scratch
        raise ConfigError(f"task {cfg.task!r} cannot resume (its recipe has no resume): drop "
                          "resume_from_checkpoint, or rerun it from scratch in a new output_dir.")
    if common["allow_config_change"] and "allow_config_change" not in accepted:  # never accepted and dropped
        raise ConfigError(f"internal: task {cfg.task!r} takes no allow_config_change; remove it.")
    try:
        summary = fn(**{k: v for k, v in common.items() if k in accepted}, **cfg.recipe_params)
    except KeyboardInterrupt as err:  # Ctrl-C / SIGTERM: the message names the recipe's resume, not only the stage's
        err.preflab_recipe = (cfg.task, str(cfg.output_dir))
        raise
    from pathlib import Path

    # the resolved config beside summary.json, as every run (`preflab report`), written once: the options the recipe
    # reads (recipe_config_options), not every option at a default it never reads
    if is_main_process() and Path(cfg.output_dir).is_dir():
        from preflab.launch_paths import save_run_config  # with launch.json: its relative paths' absolute ones
        from preflab.recipe_stages import recipe_config_options

        options, comment = recipe_config_options(cfg)
        save_run_config(cfg, cfg.output_dir, options=options, comment=comment)
    return summary
