"""The `preflab` command: train | eval | lab | bench | report | demo | objectives.

Each subcommand lives in the module that owns it, which exposes `register(subparsers)`; this file only wires them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from preflab.errors import PreflabError

# subcommand -> module exposing register(subparsers); a module that is missing is skipped
SUBCOMMANDS = {
    "train": "preflab.loops.cli",
    "eval": "preflab.eval.cli",
    "report": "preflab.report.cli",
    "lab": "preflab.lab.cli",
    "demo": "preflab.demo.cli",
    "objectives": "preflab.objectives.cli",
    "plan": "preflab.plan",
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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preflab",
        description="Preference optimization for generative models (DPO family, reward models, online loops, lab).",
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
        if isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = args.overrides + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _version() -> str:
    from preflab import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(_handler(args)(args) or 0)
    except PreflabError as err:
        print(f"preflab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback through torch (the run's lock is already released)
        print("preflab: interrupted. Finished checkpoints are kept: resume_from_checkpoint: true continues from the "
              "latest one.", file=sys.stderr)
        return 130


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
