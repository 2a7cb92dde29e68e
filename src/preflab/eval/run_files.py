"""What a run directory says about itself: the task of the run whose output it is (run_task, and refuse_other_task:
which `preflab eval --task` evaluates it, read from the run's saved config by preflab.models.run_config's one rule)
and the tokenizer saved beside its weights (tokenizer_near). Read by preflab eval (preflab.eval.loading), the reward
model loaders (preflab.reward_models.heads) and the VLM / diffusion evaluators; it imports no trainer, so each of them
can.
"""
from __future__ import annotations

from pathlib import Path

from preflab.errors import PreflabError
from preflab.models.load import load_tokenizer
from preflab.models.run_config import run_config

# `preflab eval --task X` -> the run tasks it evaluates (the first names the task in the messages)
EVAL_TASKS = {"dpo": ("dpo", "sft", "online"), "reward": ("reward",), "vlm": ("vlm",), "diffusion": ("diffusion",)}


def eval_task_of_run(saved: dict) -> str | None:
    """The `preflab eval --task` that evaluates the run whose saved config is `saved`: distill for a distillation run
    (task: sft with teacher_model_name_or_path: preflab.loops.distill_eval), else the EVAL_TASKS key whose run tasks
    hold its task (dpo for task: dpo / sft / online); None where no --task evaluates it as it trained (no task saved,
    an image-text online run, the preference game, a recipe)."""
    task = None if saved.get("task") is None else str(saved["task"])
    if task == "sft" and saved.get("teacher_model_name_or_path"):
        return "distill"
    if task == "online" and saved.get("online_task") in ("vision_dataset", "game"):
        return None
    return next((t for t, tasks in EVAL_TASKS.items() if task in tasks), None)


def run_task(path: str | Path) -> str | None:
    """The `task` of the run whose output folder `path` is (its run_config: a folder that is no checkpoint is not given
    its parent's), or None where no config of its own says."""
    task = run_config(path).get("task")
    return None if task is None else str(task)


def refuse_other_task(path: str | Path, given: str, saved: dict | None = None) -> None:
    """A PreflabError (a ConfigError) before anything is loaded when `path` is the output of a run that `preflab eval
    --task given` does not evaluate (run_task), naming the run's task and the command that evaluates it: a DPO run
    given `--task reward` reached transformers, which printed its missing-key lists before the refusal of a
    random reward head. A folder of no known run (run_task None, a recipe's own folder) is left to the loader; an
    image-text online run (online_task: vision_dataset) is refused by refuse_run_without_a_policy. saved: the run's
    config (run_config(path)) where the caller has read it."""
    from preflab.errors import ConfigError

    saved = run_config(path) if saved is None else saved
    task = None if saved.get("task") is None else str(saved["task"])
    refuse_run_without_a_policy(path, task, saved)
    fitting = next((t for t, tasks in EVAL_TASKS.items() if task in tasks), None)
    if fitting is None or fitting == given:
        return
    accepted = EVAL_TASKS[given]
    runs = accepted[0] if len(accepted) == 1 else f"{', '.join(accepted[:-1])} or {accepted[-1]}"
    how = "--data ...` (no --task)" if fitting == "dpo" else f"--task {fitting} --data ...`"
    raise ConfigError(f"{path} is a task: {task} run; --task {given} evaluates task: {runs} runs. Evaluate it with "
                      f"`preflab eval {path} {how}.")


def saved_run_note(path: str | Path, saved: dict | None = None) -> str | None:
    """The note `preflab eval` prints before it evaluates the run at `path` (None: nothing to say) when its saved
    config (saved: run_config(path) where the caller has read it) holds keys this preflab's TrainConfig has no field
    for, and so does not read (written by another preflab version, or edited by hand), naming them; and when the
    preflab version the run recorded (recorded_version) is not this one, naming both. Not a refusal: the eval still
    runs, but options it cannot read may have changed what the run trained or how it is to be scored."""
    import dataclasses

    from preflab import __version__
    from preflab.config import TrainConfig
    from preflab.models.run_config import STATE_FILE, run_config_file

    saved = run_config(path) if saved is None else saved
    said = []
    unknown = sorted(set(map(str, saved)) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        where = run_config_file(path) or Path(path) / STATE_FILE
        said.append(f"{where} has option(s) this preflab {__version__} does not know, so the eval does not read them: "
                    f"{', '.join(unknown)} (written by another preflab version, or by hand)")
    version, source = recorded_version(path)
    if version is not None and version != __version__:
        said.append(f"the run was trained with preflab {version} (recorded in {source}); this is preflab "
                    f"{__version__}, which may read its options and score it differently")
    return "; ".join(said) + "." if said else None


def recorded_version(path: str | Path) -> tuple[str | None, Path | None]:
    """(the preflab version the run at `path` recorded, the file it is in), or (None, None): a checkpoint's
    trainer_state.json "preflab_version" (preflab.resume_check.checkpoint_identity), else the finished run's
    summary.json "environment" "preflab" (preflab.runlog.environment)."""
    import json

    from preflab.models.run_config import STATE_FILE

    for name, keys in ((STATE_FILE, ("preflab_version",)), ("summary.json", ("environment", "preflab"))):
        file = Path(path) / name
        try:
            value = json.loads(file.read_text()) if file.is_file() else None
        except (OSError, ValueError):
            continue
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            return str(value), file
    return None, None


def note_saved_run(path: str | Path, saved: dict | None = None) -> None:
    """saved_run_note's note, on stderr, where there is one."""
    import sys

    note = saved_run_note(path, saved)
    if note:
        print(f"preflab: note: {note}", file=sys.stderr)


def refuse_run_without_a_policy(path: str | Path, task: str | None, saved: dict) -> None:
    """A ConfigError for a run whose folder `preflab eval` has no model to evaluate as that run trained it: the
    preference game (online_task: game: a K-answer distribution, no text and no tokenizer; the eval said "no tokenizer
    found ... save the tokenizer") and a recipe's top folder (its summary.json holds the recipe's own before / after;
    the eval said "holds no model"), which names the stage folders that hold a model run; and an image-text GRPO run
    (online_task: vision_dataset, Vision-R1): its policy answers images, which the text policy eval cannot feed (it
    stopped on the reference, "a hub name ... hf download", or with --no-reference in transformers'
    AutoModelForCausalLM error), and `--task vlm` scores pairs with the run's own pairwise objective, which a GRPO run
    has not (the report told users to run that command, which was refused)."""
    from preflab.errors import ConfigError
    from preflab.recipe_names import RECIPE_TASKS

    if task == "online" and saved.get("online_task") == "vision_dataset":
        raise ConfigError(vision_grpo_eval_refusal(path))

    if task == "online" and saved.get("online_task") == "game":
        raise ConfigError(f"{path} is an online_task: game run (a preference game over K answers, no text): preflab "
                          "eval has no text policy to evaluate there. Its result is in its summary.json "
                          "(policy_distribution, tv_to_equilibrium, duality_gap), and `preflab report "
                          f"{path}` draws it.")
    if task in RECIPE_TASKS and not (Path(path) / "config.json").is_file():
        stages = sorted(p.name for p in Path(path).iterdir() if (p / "config.json").is_file()
                        and (p / "config.yaml").is_file()) if Path(path).is_dir() else []
        where = (f"; evaluate one of its stage runs ({', '.join(str(Path(path) / n) for n in stages)})" if stages else
                 "")
        start = Path(path) / "start"  # preflab.recipe_start.START_DIR: the model the recipe built and started from
        started = (f" Its starting model, as the recipe built it, is {start} (`preflab eval {start} --data ...`; "
                   "a stage's eval takes it, or the earlier stage it trained from, as its reference by default)."
                   if (start / "config.json").is_file() else "")
        raise ConfigError(f"{path} is a task: {task} recipe run: its folder holds the recipe's summary.json "
                          f"(metric_before / metric_after, what the recipe measures), not one model{where}. "
                          f"`preflab report {path}` shows the recipe's result.{started}")


def vision_grpo_eval_refusal(path: str | Path) -> str:
    """Why `preflab eval` has nothing for an online_task: vision_dataset run and where its measure is (also the report's
    note on such a run, preflab.report.runs). path: the run's folder or one of its checkpoint-N (whose policy loads
    from the run's folder once it has finished)."""
    folder = Path(path).parent if Path(path).name.startswith("checkpoint-") else Path(path)
    return (f"{path} is an image-text GRPO run (task: online, online_task: vision_dataset): preflab eval has no "
            "evaluation for it (the policy eval feeds text to a text model; --task vlm scores preference pairs with "
            "the run's pairwise objective, and a GRPO run has none), and the run itself evaluates nothing held-out. "
            "What it measured is the judges' reward on its training prompts: `reward` and `rewards/<judge>/mean` in "
            f"metrics.jsonl, drawn by `preflab report {folder}`. Its trained policy and processor load with "
            "transformers' AutoModelForImageTextToText.from_pretrained / AutoProcessor.from_pretrained"
            f"({str(folder)!r}) to generate on held-out images yourself.")


def tokenizer_near(path: Path, fallback_name: str | None, trust_remote_code: bool):
    """The tokenizer saved with the model in `path`: beside its weights, or for a checkpoint folder in its run's folder
    one level up (preflab.models.run_config.run_file_folder: a model saved inside another run's folder does not take
    that run's), else `fallback_name`'s (the base model its saved config names), with a warning where the parent's
    tokenizer was passed over; with neither, a PreflabError saying where it looked."""
    import warnings

    from preflab.models.run_config import is_checkpoint_folder, parent_file_not_read, run_file_folder

    folder = run_file_folder(path, "tokenizer_config.json")
    if folder is not None:
        return load_tokenizer(str(folder), trust_remote_code)
    passed_over = parent_file_not_read(path, "tokenizer_config.json")
    if fallback_name:
        if passed_over:
            warnings.warn(f"preflab: {passed_over}; using the tokenizer of its base model {fallback_name} (its "
                          "config.yaml's model_name_or_path). If the model was trained with another tokenizer, save "
                          f"that one in {path} (tokenizer.save_pretrained).", stacklevel=2)
        return load_tokenizer(fallback_name, trust_remote_code)
    looked = f"{path} or its run's folder {path.parent}" if is_checkpoint_folder(path) else f"{path}"
    where = passed_over or f"no tokenizer (tokenizer_config.json) found in {looked}"
    raise PreflabError(f"{where}; save the tokenizer the model was trained with beside its weights "
                       f"(tokenizer.save_pretrained({path})).")
