"""The state file of a multi-stage recipe (RecipeStateFile: every recipe of preflab.recipes) and the
stage runner of `task: raft_ladder` / `task: themis` (RecipeState): resume an interrupted recipe.

Each stage is an ordinary preflab run in `output_dir/<stage>/` that ends with its weights as safetensors. The state
file is written when the recipe opens it, before its first stage runs (with the recipe_params, so that a resume of a
run interrupted in its first stage is checked too), and after each stage with its record (the numbers the summary
needs). On `resume_from_checkpoint: true` a finished stage is skipped and its saved weights are loaded; an
interrupted stage (its folder exists, it is not in the state) continues from its newest complete checkpoint when the
recipe asks for that (`RecipeState.stage(..., checkpoints=True)`: the stage's own resume, exact as any preflab run's)
and is otherwise removed and run again from its start, so the result equals an uninterrupted run. An existing state
without resume is refused (never overwritten), and so is a resume with other recipe_params than the run that wrote
the state.

Under a multi-process launch (`accelerate launch --num_processes N`) the state file is written by the main process
only; a recipe that runs on several processes forms the process group first (start_processes) and writes its own
files through main_writes (preflab.recipes refuses the recipes that cannot).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from preflab.errors import ConfigError
from preflab.home_paths import home_expanded


# the state file's key holding the recipe_params with their local paths absolute where the run was started (written
# only where some are): a resume from another directory naming the same files another way is no change of params
LAUNCH_PATHS_KEY = "params_local_paths"
# the state file's key holding the recipe_params naming a file or folder inside the recipe's run folder (the state
# file's folder), relative to it (preflab.launch_paths.run_paths_record; written only where some are): a resume of
# the moved run folder (`mv RUN RUN2`) naming RUN2/users.jsonl for RUN/users.jsonl is no change of params
RUN_PATHS_KEY = "params_run_paths"


class RecipeStateFile:
    """A recipe's state file (`<recipe>_state.json`): {"params": the recipe_params, ...the recipe's own records}.

    Opening refuses an existing file without resume (never overwritten) and a resume whose params differ from the
    saved ones in any key but `may_change` (those take the new values), unless `allow_change` (the run's
    allow_config_change, as a plain run's resume in preflab.resume_check: a note names the changes, the finished stages
    keep what they trained with and the rest run with the new params); `save()` writes it atomically. A new file is
    written at once: a run interrupted before its first stage ended is then refused without resume, and its resume is
    checked against these params (before, the file appeared only after the first stage, so a resume under other
    params went on with the interrupted stage's checkpoints). Under a process group every process has looked for the
    file before the main process writes it (every_process; False for a recipe that runs on the main process only,
    whose other processes have ended)."""

    def __init__(self, path: str | Path, params: dict, resume: bool, initial: dict | None = None,
                 may_change: tuple = (), every_process: bool = True, allow_change: bool = False, note=print):
        self.path = Path(path)
        params = json.loads(json.dumps(_compared(params)))  # tuples become lists, as they come back from the file
        if self.path.exists() and not resume:
            raise ConfigError(f"{self.path} exists: set resume_from_checkpoint=true to continue that run, or use a "
                              "new output_dir.")
        from preflab.launch_paths import absolutized, same_local_paths, same_run_path

        local = absolutized("recipe_params", params)  # its local paths absolute (preflab.launch_paths)
        run_dir = os.path.abspath(self.path.parent)
        inside = _run_paths(params, run_dir)
        if not self.path.exists():
            self.data = {"params": params, **(initial if initial is not None else {"stages": {}})}
            if local != params:
                self.data[LAUNCH_PATHS_KEY] = local
            if inside:
                self.data[RUN_PATHS_KEY] = inside
            if every_process:  # every process of a process group opens it: none may find the file written below
                all_arrive()
                main_writes(self.save)
            else:  # this process alone runs the recipe (icpl under a launch: preflab.recipes.MAIN_PROCESS_ONLY)
                self.save()
            return
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"resume: {self.path} cannot be read ({e}); use a new output_dir.") from e
        saved = self.data.get("params") if isinstance(self.data, dict) else None
        if not isinstance(saved, dict):
            raise ConfigError(f"resume: {self.path} holds no recipe_params (not written by this version of "
                              "preflab); use a new output_dir.")
        from preflab.runlog import is_main_process

        recorded = self.data.get(LAUNCH_PATHS_KEY) if isinstance(self.data.get(LAUNCH_PATHS_KEY), dict) else {}
        moved = {"run_paths": self.data.get(RUN_PATHS_KEY)}  # the launch record's form (launch_paths.run_path)
        changed = sorted(k for k in set(params) | set(saved) if k not in may_change
                         and home_expanded(saved.get(k)) != home_expanded(params.get(k))
                         and not (k in recorded and k in params and same_local_paths(recorded[k], params[k]))
                         and not same_run_path(k, saved.get(k), params.get(k), moved, run_dir))
        if changed and allow_change:  # as a plain run's resume (preflab.resume_check.check_resume_config)
            if is_main_process():
                note(f"preflab: note: resuming with changed recipe_params (allow_config_change: true): "
                     f"{_show(changed, saved, params)}; the finished stages keep what they trained with.")
            changed = []
        if changed == ["stage_options"]:  # the top-level options of preflab.recipe_options, not recipe_params
            raise ConfigError(f"resume: the top-level options {params.get('stage_options') or {}} differ from the "
                              f"interrupted run's ({saved.get('stage_options') or {}}, {self.path}); its finished "
                              "stages trained with those: resume with them, set allow_config_change: true to go on "
                              "with the new ones anyway, or use a new output_dir.")
        if changed:
            allowed = f" (only {list(may_change)} may change)" if may_change else ""
            raise ConfigError(f"resume: recipe_params {changed} differ from the interrupted run's ({self.path}); "
                              f"resume with the same recipe_params{allowed}, set allow_config_change: true to go on "
                              "with the new ones anyway, or use a new output_dir.")
        self.data["params"] = params
        self.data.pop(LAUNCH_PATHS_KEY, None)
        self.data.pop(RUN_PATHS_KEY, None)
        if local != params:
            self.data[LAUNCH_PATHS_KEY] = local
        if inside:
            self.data[RUN_PATHS_KEY] = inside

    def save(self) -> None:
        """Written by the main process (every rank holds the same state; the others never read the file mid-run)."""
        from preflab.runlog import is_main_process

        if not is_main_process():
            return
        from preflab.atomic_file import write_text_file

        write_text_file(self.path, json.dumps(self.data, indent=1))  # a failed write leaves no .tmp file behind


def _run_paths(params: dict, run_dir: str) -> dict:
    """The recipe_params naming an existing file or folder inside the recipe's run folder `run_dir`, relative to it
    (preflab.launch_paths.run_paths_record over the params' own names: a data_file the user keeps in the run
    folder), so a resume of the moved folder compares them by the same rule as its stages' paths."""
    from preflab.launch_paths import run_paths_record

    return run_paths_record(params, os.getcwd(), run_dir, names=[k for k, v in params.items() if isinstance(v, str)])


def _show(keys: list, saved: dict, params: dict) -> str:
    return ", ".join(f"{k} ({saved.get(k)!r} -> {params.get(k)!r})" for k in keys)


def _compared(params: dict) -> dict:
    """`params` with its `stage_options` (the top-level options that reach the stages, preflab.recipe_options) cut to
    those that change what a stage computes (dtype, disable_dropout, precompute_ref_log_probs, ...): a resume may
    change attention, chunk_tokens, logging and the like, as a plain run's may (preflab.resume_check.HARMLESS).
    Without such options the key is left out, so a state written before stage_options existed still matches."""
    params = dict(params)
    from preflab.resume_check import HARMLESS

    meaning = {k: v for k, v in (params.pop("stage_options", None) or {}).items() if k not in HARMLESS}
    return {**params, "stage_options": meaning} if meaning else params


class RecipeState:
    def __init__(self, output_dir: str | Path, file_name: str, params: dict, resume: bool,
                 allow_change: bool = False):
        self.out = Path(output_dir)
        self.file = RecipeStateFile(self.out / file_name, params, resume, allow_change=allow_change)
        self.state = self.file.data

    def stage(self, name: str, run: Callable[..., dict], load: Callable[[Path], None],
              checkpoints: bool = False) -> dict:
        """Run stage `name` (`run(folder) -> record`) and save the state, or, when it finished earlier,
        `load(folder)` its weights and return its saved record. checkpoints=True: the stage's run saves checkpoints
        (save_steps) and resumes from them; it is called as `run(folder, resume)`, resume True when an interrupted
        run of the stage left a complete checkpoint in `folder` (resume_or_clean), to be passed on as the stage
        config's resume_from_checkpoint."""
        folder = self.out / name
        if name in self.state["stages"]:
            load(folder)
            return self.state["stages"][name]
        # interrupted: continued from its checkpoint or run again from its start. Decided by the main process for all:
        # a process that looked later would see the folder the main process's run just made
        try:
            if checkpoints:
                record = run(folder, main_result(lambda: resume_or_clean(folder)))
            else:
                if main_result(folder.exists):
                    main_writes(lambda: shutil.rmtree(folder))
                record = run(folder)
        except KeyboardInterrupt as err:  # Ctrl-C / SIGTERM: what a resume does with this stage (cli.interrupted_message)
            err.preflab_stage_resumes = checkpoints
            raise
        record = json.loads(json.dumps(record))  # the same record whether run now or loaded on resume
        self.state["stages"][name] = record
        self.file.save()
        return record


def check_stop_after_stage(value, stages) -> None:
    """recipe_params.stop_after_stage of a recipe that can stop after a stage: None or one of `stages` (the names it
    stops after), else a ConfigError listing them, before any stage runs (a name the recipe has not never matched:
    the whole recipe ran)."""
    if value not in (None, *stages):
        raise ConfigError(f"recipe_params.stop_after_stage must be one of {tuple(stages)} or null, got {value!r}.")


def resume_or_clean(stage_dir: Path) -> bool:
    """True when an interrupted stage's folder holds a complete checkpoint to resume from (the newest intact one,
    preflab.checkpoint.resume_checkpoint); otherwise the folder is removed and the stage starts over."""
    from preflab.checkpoint import resume_checkpoint

    if stage_dir.exists() and resume_checkpoint(stage_dir, warn=lambda *a, **k: None) is not None:
        return True
    shutil.rmtree(stage_dir, ignore_errors=True)
    return False


def load_safetensors_into(model, path: str | Path) -> None:
    """Load saved weights into `model`, strictly: the file holds exactly the model's state_dict keys (persistent
    buffers included; non-persistent ones such as rotary inv_freq are in neither) with the same shapes. A file that
    does not fit (a stage saved by a run with other recipe_params) raises ConfigError naming it."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise ConfigError(f"{path} does not fit the recipe's model (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}, other shapes {shapes[:3]}); use a new output_dir.")
    model.load_state_dict(state)


def start_processes() -> int:
    """The number of processes of this launch (1 for a plain run). Under `accelerate launch --num_processes N` the
    process group is formed here, before the recipe writes anything (gloo on CPU: the recipes' stages run with
    use_cpu, and their Accelerators join this group), so the recipe's own files can be written by the main process
    while the others wait (main_writes). FSDP and DeepSpeed are refused (data parallel only)."""
    from preflab.launch_env import deepspeed_asked, fsdp_version_asked, launched_world_size

    if launched_world_size() == 1:
        return 1
    engine = "FSDP" if fsdp_version_asked() is not None else "DeepSpeed" if deepspeed_asked() else None
    if engine:  # the recipe evaluates its models on the main process, outside any engine's wrapper
        raise ConfigError(f"a recipe on several processes runs data parallel only: {engine} asked by the accelerate "
                          "config, but the recipe evaluates its models on the main process outside the engine. "
                          "Launch it with examples/accelerate/ddp.yaml.")
    from accelerate import PartialState

    return PartialState(cpu=True).num_processes


def per_process_batch(global_batch: int, task: str) -> int:
    """The recipe's batch of `global_batch` rows split over the launch's processes (the process group is formed
    here), so N processes train on the global batch of the one-process recipe; one that does not divide is refused."""
    processes = start_processes()
    if global_batch % processes:
        raise ConfigError(f"task {task}: its batch of {global_batch} rows does not split over {processes} processes; "
                          f"launch a number of processes that divides {global_batch}.")
    return global_batch // processes


def main_result(compute: Callable[[], object]) -> object:
    """`compute()` on the main process only, its (picklable) result sent to every process; without a process group
    just `compute()`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return compute()
    from preflab.rank_agreement import main_only
    from preflab.runlog import is_main_process

    box = [None]
    if is_main_process():
        with main_only():  # the main alone: an agreement inside compute() (a generator's) has no other rank to meet
            box = [compute()]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def end_processes() -> None:
    """The end of a recipe that called start_processes: its process group is closed (its stages leave it open). The
    stages' DDP wrappers still waiting for the garbage collector are freed first: a DDP reducer freed after its gloo
    group was destroyed can hang in the group's destructor."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        from accelerate import PartialState

        PartialState().destroy_process_group()


def finish_recipe(out, summary: dict) -> dict:
    """A recipe's last step, on every process: the main process writes `summary` to out/summary.json
    (preflab.runlog.write_summary) while the others wait for it, then the process group start_processes opened is
    closed (end_processes). Returns `summary`, the recipe's result."""
    from preflab.runlog import write_summary

    main_writes(lambda: write_summary(out, summary))
    end_processes()
    return summary


def all_arrive() -> None:
    """Every process of the process group waits here for the others (a no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def main_writes(write: Callable[[], object]) -> None:
    """`write()` on the main process while every other process waits for it (preflab.rank_agreement.ranks_agree,
    nothing to wait for without a process group): when the write fails (a full disk), every process raises the same
    RankFailure with the main's error (an OSError's text names its file), where a barrier left the others waiting
    until the launcher killed them."""
    from preflab.rank_agreement import ranks_agree
    from preflab.runlog import is_main_process

    with ranks_agree("the main process could not write the recipe's files"):
        if is_main_process():
            write()
