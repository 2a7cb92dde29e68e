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


def _version() -> str:
    from preflab import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except PreflabError as err:
        print(f"preflab: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
