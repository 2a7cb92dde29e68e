"""The `preflab` command: train | eval | lab | bench | report | demo | objectives | plan | push | sample.

Each subcommand lives in the module that owns it, which exposes `register(subparsers)`; this file only wires them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from preflab.errors import (EXIT_CRASH, EXIT_INTERRUPTED, EXIT_OUTPUT_DIR_BUSY, EXIT_REFUSED, EXIT_TERMINATED,
                            EXIT_WRITE_FAILED, ConfigError, PreflabError, exit_status)
from preflab.quiet import kept_as_found, quiet_bitsandbytes_cpu_kernel
from preflab.stop_signal import Terminated, install_sigterm_handler

# subcommand -> module exposing register(subparsers); a module that is missing is skipped
SUBCOMMANDS = {
    "train": "preflab.loops.cli",
    "eval": "preflab.eval_cli.cli",
    "report": "preflab.report.cli",
    "lab": "preflab.lab.cli",
    "demo": "preflab.demo.cli",
    "objectives": "preflab.objectives.cli",
    "plan": "preflab.plan",
    "push": "preflab.hub_push",
    "sample": "preflab.loops.sample_cli",
}
# (command, task) pairs run by another room than the command's own: reward models build on loops/ and eval/, so
# those rooms never import reward_models/ and the import graph between rooms stays acyclic. A command's parser
# may set `task_of(args)` (train: the config's task) or a `task` argument (eval --task).
TASK_ROUTES = {
    ("train", "reward"): "preflab.reward_models.cli:train_task",
    ("train", "online"): "preflab.online.cli:train_task",
    ("train", "dpo+online_kl"): "preflab.online.hypo_offline:train_task",  # loss_type: hypo (loops.cli.route_of)
    ("eval", "reward"): "preflab.reward_models.cli:eval_task",
    ("eval", "diffusion"): "preflab.loops.diffusion_eval:eval_task",
    ("eval", "vlm"): "preflab.loops.vlm_eval:eval_task",
    ("eval", "distill"): "preflab.loops.distill_eval:eval_task",
}


EXIT_STATUS_HELP = f"""exit status (docs/reliability.md, "Running under a scheduler"):
  0    done (with resume_from_checkpoint: auto, a finished run started again trains nothing)
  {EXIT_CRASH}    a crash: an error that is not preflab's (a traceback is printed)
  {EXIT_REFUSED}    refused: the config, data or command line is wrong; the same command fails again
  {EXIT_WRITE_FAILED}   a file could not be written (full disk, quota, read-only folder); rerun once there is room
  {EXIT_OUTPUT_DIR_BUSY}   output_dir is in use by another live preflab run (its PID is named); rerun once it has ended
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_TERMINATED}  SIGTERM; a run in its training steps saves the step under way first (save_steps > 0).
       resume_from_checkpoint: auto lets the same command start the run and continue it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preflab",
        description="Preference optimization for generative models (DPO family, reward models, online loops, lab).",
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"preflab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and module.startswith(err.name):
                continue
            raise
        mod.register(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that key=value overrides may also follow the options (`preflab plan CONFIG --world-size 8
    use_peft=true`): argparse gives a positional list only its first run of values, so later ones come back unknown;
    for a command with `overrides` they are appended in order, anything else is still an error."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        overrides = [e for e in extra if ("=" in e or e.startswith("~")) and not e.startswith("-")]  # key=value, ~key
        if isinstance(getattr(args, "overrides", None), list) and len(overrides) == len(extra):
            args.overrides = args.overrides + extra
        else:
            command = _command_parser(parser, getattr(args, "command", None))
            dashed = [e for e in extra if e.startswith("--")]
            hint = ""
            if dashed and hasattr(args, "overrides"):  # TRL's CLI style (`trl dpo --beta 0.1`)
                hint = _dashed_option_hint(dashed[0])
            elif dashed:
                hint = _close_option_hint(command, dashed[0])
            command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def _command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The subcommand's own parser (its usage line names the command's options: `preflab report --output x` showed
    the top-level `usage: preflab [-h] [--version] COMMAND ...`), else the top-level one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def _close_option_hint(command: argparse.ArgumentParser, flag: str) -> str:
    """"; did you mean --out?" for a --flag close to one of the command's own options (`preflab report --output x`:
    argparse said only "unrecognized arguments"), else ""."""
    import difflib

    name = flag.split("=", 1)[0]
    options = [o for action in command._actions for o in action.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _dashed_option_hint(flag: str) -> str:
    """What to write instead of `--name VALUE`: `name=VALUE` for an option a config takes (preflab's or TRL's name);
    for anything else (`--dry-run`), that it is no option, and where the options and a plan of the run are."""
    from preflab.config_options import OPTIONS
    from preflab.config_trl import NO_EFFECT, REFUSED, RENAMED

    name = flag[2:].split("=", 1)[0]
    if name in OPTIONS or name in RENAMED or name in NO_EFFECT or name in REFUSED:
        return (f"; training options are key=value overrides, not --options: write {name}=VALUE instead of "
                f"{flag.split('=', 1)[0]} VALUE")
    return (f"; {flag.split('=', 1)[0]} is not an option (`preflab train --help` lists them, as key=value "
            "overrides). Without training: `preflab plan CONFIG` checks the config and estimates the memory per "
            "process from the model's config; the data is read and checked at the start of `preflab train`.")


def _version() -> str:
    from preflab import __version__

    return __version__


# TRL 1.16's other commands (trl/cli/commands) -> how preflab does that (`preflab dpo | kto | reward | sft` are
# `preflab train` with the command's setting: preflab.loops.cli.TRL_TRAIN_COMMANDS)
TRL_OTHER_COMMANDS = {
    "grpo": "`preflab train x.yaml` with task: online and trainer: grpo (or dapo, dr_grpo, ...: a saved GRPOConfig "
            "with task: online trains the recipe its loss_type names)",
    "rloo": "`preflab train x.yaml` with task: online and trainer: rloo",
    "distillation": "`preflab train x.yaml` with task: sft and teacher_model_name_or_path (docs/distillation.md)",
    "env": "`preflab --version` and `pip show preflab torch transformers`",
    "vllm-serve": "nothing: preflab generates with vLLM in its own process (generation_backend: vllm)",
}


def trl_command_argv(argv: list[str]) -> list[str]:
    """`preflab dpo --config x.yaml ...` (TRL's `trl dpo`; also kto, reward, sft) -> `preflab train --trl-command dpo
    --config x.yaml ...`; TRL's other commands are refused naming what preflab runs instead (user trial 27: before,
    argparse's "invalid choice: 'dpo'")."""
    from preflab.loops.cli import TRL_TRAIN_COMMANDS

    if argv and argv[0] in TRL_TRAIN_COMMANDS:
        return ["train", "--trl-command", argv[0], *argv[1:]]
    if argv and argv[0] in TRL_OTHER_COMMANDS:
        raise ConfigError(f"preflab has no `{argv[0]}` command (TRL's `trl {argv[0]}`); use "
                          f"{TRL_OTHER_COMMANDS[argv[0]]}. docs/configuration.md: 'Coming from TRL'.")
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = trl_command_argv(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as err:
        print(f"preflab: error: {err}", file=sys.stderr)
        return 2
    args = _parse(parser, argv)
    expand_home_args(args)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    restore_sigterm = install_sigterm_handler()  # preflab.stop_signal: a checkpoint within the grace period
    had_group = _process_group_open()
    try:
        check_launched_command(args.command)
        with kept_as_found():  # warning filters, transformers' verbosity and progress bars: as found after the command
            quiet_bitsandbytes_cpu_kernel()  # every command that loads peft (train, eval, sample, ...)
            return int(_handler(args)(args) or 0)
    except PreflabError as err:
        message = error_message(err, group_open=_process_group_open())
        if message:
            close_progress_bars()  # the error on its own line, not glued to the end of the bar's (a log file)
            print(message, file=sys.stderr)
        _close_process_group(had_group, err)
        return exit_status(err)  # 2: change the config or data; 74: a failed write; 75: output_dir busy (EXIT_*)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: what is kept, not a traceback through torch (the run's
        # lock is already released)
        from preflab.runlog import is_main_process

        if is_main_process():  # once, not once per rank of a launcher that forwarded the signal to every rank
            close_progress_bars()  # the message on its own line, not glued to the end of the bar's
            print(interrupted_message(err, args), file=sys.stderr)
        _close_process_group(had_group, err)
        return EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
    except Exception as err:  # not preflab's: a library's error or a bug. Under a launcher, its traceback is printed
        # as Python would and the process group this command opened is closed before the exit (exit status 1)
        if had_group or not _process_group_open():
            raise
        sys.excepthook(type(err), err, err.__traceback__)  # what Python prints for it (torch's: each line [rankN])
        _close_process_group(had_group, err)
        return EXIT_CRASH
    finally:
        restore_sigterm()


# the command-line arguments that name a file or folder (positional and --options, by argparse dest)
HOME_ARGS = ("checkpoint", "config", "path", "output", "run_dirs", "source", "policies", "accelerate_config", "data",
             "generator", "model", "out", "output_dir", "reference", "reward_model", "run", "prompts",
             "user_embeddings")


def expand_home_args(args) -> None:
    """A leading "~" of a path argument becomes the home folder, as preflab.config.expand_home does for the config's
    path options: a quoted '~/run' reaches the command unexpanded (`preflab eval '~/run'` said "~/run is not a
    directory")."""
    from preflab.home_paths import home_expanded

    for dest in HOME_ARGS:
        value = getattr(args, dest, None)
        if isinstance(value, (str, list)):
            setattr(args, dest, home_expanded(value))


def check_launched_command(command: str) -> None:
    """Only `preflab train` splits its work over the processes of a launcher (accelerate launch, torchrun). Any other
    command under one would run whole in every process: `preflab eval` computed every pair on each rank and each
    rank wrote the same eval.json (2 processes: the work twice, the output printed twice, one file written by both);
    `lab`, `demo` and `report` the same. Refused, saying to run it without the launcher."""
    if command == "train" or "WORLD_SIZE" not in os.environ:
        return
    from preflab.launch_env import launched_world_size

    processes = launched_world_size()
    if processes > 1:
        raise ConfigError(
            f"preflab {command} runs in one process: under this launcher (WORLD_SIZE={processes}) each of the "
            f"{processes} processes would run all of it and write the same files. Run `preflab {command} ...` "
            "without accelerate launch / torchrun (only `preflab train` splits its work over processes).")


def error_message(err: PreflabError, *, group_open: bool) -> str | None:
    """The `preflab: error:` line this process prints, or None for a process that stays quiet (it still exits 2).

    Under a launcher every rank runs the command, so an error common to all ranks would be printed once per rank.
    The rule never hides a failure that only some ranks have:
    - the main process (accelerate's, else RANK 0) always prints `preflab: error: ...`;
    - another rank stays quiet only for a ConfigError raised before the processes were joined (no process group
      open yet) on rank 0's machine (LOCAL_RANK == RANK: the launchers number a machine's ranks contiguously, the
      first machine's from 0): such an error depends on nothing but the command line, the config file and the files
      and environment every rank of that machine shares, so rank 0 raises and prints the same one;
    - every other error on another rank (data, a step, a ConfigError raised once the run had started, or on
      another machine, whose files, a local model folder say, may differ) may be that rank's alone, so it is
      printed, prefixed `[rank N]`.
    """
    from preflab.runlog import is_main_process

    if is_main_process():
        return f"preflab: error: {err}"
    if isinstance(err, ConfigError) and not group_open and _on_rank_zeros_machine():
        return None
    return f"[rank {_rank()}] preflab: error: {err}"


def _on_rank_zeros_machine() -> bool:
    rank, local_rank = os.environ.get("RANK"), os.environ.get("LOCAL_RANK")
    return rank is not None and rank == local_rank


def _rank() -> str:
    try:
        from accelerate.state import PartialState

        if PartialState._shared_state:
            return str(PartialState().process_index)
    except ImportError:  # pragma: no cover - accelerate is a core dependency
        pass
    return os.environ.get("RANK", "?")


def _process_group_open() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _close_process_group(had_group: bool, err: BaseException) -> None:
    """After a run stopped with an error `err` (it skipped accelerate's end_training), close the process group it
    opened: a gloo / NCCL group still alive at interpreter exit can abort the process (SIGABRT, "terminate called
    without an active exception"), turning a clean error exit into a crash under the launcher. The error's
    tracebacks go first (drop_tracebacks; its message is already printed): their frames hold the stopped run, whose
    DDP wrapper holds the group, so end_processes frees the wrapper before the group closes instead of leaving it to
    interpreter exit. A group that was open before main() (the caller's) is left alone."""
    if not had_group:
        from preflab.recipe_state import end_processes

        drop_tracebacks(err)
        end_processes()


def drop_tracebacks(err: BaseException) -> None:
    """Clear the traceback of `err` and of every exception it chains (__cause__, __context__): the frames they keep
    alive (and the objects those frames hold) are freed."""
    todo, seen = [err], set()
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        todo += [exc.__cause__, exc.__context__]


def close_progress_bars() -> None:
    """Close every open tqdm bar (its last state and a newline are written): a Ctrl-C / SIGTERM message printed
    while the training bar was open ran on from the bar's last character (`... tok/s=7668]preflab: terminated
    (SIGTERM). ...`), and the bar was redrawn under it when it closed at exit."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def interrupted_message(err: BaseException, args=None) -> str:
    """What an interrupted run keeps: the latest finished checkpoint of its output_dir (TrainingRun.train puts
    the folder on the exception), or that there is none, in the words a failed run uses
    (preflab.checkpoint.what_is_kept). Inside a recipe (preflab.recipes.run_recipe puts
    `preflab_recipe` on it) the recipe's own resume is what continues the run: its finished stages are kept, and the
    interrupted stage continues from its checkpoint or starts again (RecipeState.stage puts `preflab_stage_resumes`).
    Interrupted before the loop (a `preflab train` still loading its data and models: an online run builds its
    policy and evaluates its start first), what its output_dir keeps, from the config the command read (args); any
    other command (eval, report, ...) has no checkpoints to speak of. Before, both were told "Finished checkpoints are
    kept: resume_from_checkpoint: true continues from the latest one", where there often was none."""
    what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
    out = getattr(err, "preflab_output_dir", None)
    recipe = getattr(err, "preflab_recipe", None)
    if recipe is not None:
        return _recipe_interrupted_message(what, recipe, out, getattr(err, "preflab_stage_resumes", None))
    from preflab.checkpoint import what_is_kept

    if out is None:
        if getattr(args, "command", "train") != "train":
            return f"preflab: {what}."
        cfg = getattr(args, "_preflab_config", None)  # preflab.loops.cli.config_from_args keeps it there
        if cfg is None:
            return f"preflab: {what} while reading the config; nothing was started."
        return f"preflab: {what} before the run's first step (while it loaded its data and models). " + what_is_kept(
            cfg.output_dir)

    if getattr(err, "checkpointed", False):  # SIGTERM inside the steps: the loop saved the step it stopped at
        from preflab.checkpoint import checkpoint_step, latest_checkpoint

        latest = latest_checkpoint(out)
        return (f"preflab: {what}. Saved {latest} (step {checkpoint_step(latest)}) before stopping: no step is lost. "
                "Run the same command again with resume_from_checkpoint: auto (or true) to continue from it.")
    return f"preflab: {what}. {what_is_kept(out)}"


def _recipe_interrupted_message(what: str, recipe: tuple, stage, resumes) -> str:
    """A recipe interrupted (in one of its stages, `stage`): rerun with resume_from_checkpoint=true; the stage
    continues from its newest finished checkpoint when the recipe resumes its stages (resumes True), else it starts
    again (resumes False); None: the recipe decides (its own state file, docs/tools.md)."""
    task, out = recipe
    said = (f"preflab: {what}. The recipe (task: {task}) keeps its finished stages in {out}: rerun the same command "
            "with resume_from_checkpoint=true to continue from them.")
    if stage is None or resumes is None:
        return said
    from preflab.checkpoint import checkpoint_step, latest_checkpoint

    latest = latest_checkpoint(stage) if resumes else None
    if latest is not None:
        return f"{said} The interrupted stage {stage} continues from {latest} (step {checkpoint_step(latest)})."
    why = "no checkpoint of it was finished" if resumes else "this recipe reruns an interrupted stage from its start"
    return f"{said} The interrupted stage {stage} starts again at step 0 ({why})."


def _handler(args):
    """args.func, or the TASK_ROUTES handler of (command, task)."""
    task = args.task_of(args) if getattr(args, "task_of", None) else getattr(args, "task", None)
    route = TASK_ROUTES.get((args.command, task))
    if route is None:
        return args.func
    module, name = route.split(":")
    return getattr(importlib.import_module(module), name)


if __name__ == "__main__":
    sys.exit(main())
