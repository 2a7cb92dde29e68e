"""`preflab lab list` and `preflab lab run NAME [--out DIR] [--quick]`: run a named lab experiment and write
NAME.png (one line per method against iteration) and NAME.json (the numbers) into DIR."""
from __future__ import annotations

import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("lab", help="exact tabular experiments compared with the answer theory gives")
    lab = p.add_subparsers(dest="lab_command", metavar="{list,run}")
    lst = lab.add_parser("list", help="list the named experiments")
    lst.set_defaults(func=cmd_list)
    run = lab.add_parser("run", help="run one experiment; writes NAME.png and NAME.json")
    run.add_argument("name", help="experiment name (see `preflab lab list`)")
    run.add_argument("--out", default="lab_results", help="output directory (default: ./lab_results)")
    run.add_argument("--quick", action="store_true", help="fewer iterations (what the tests run)")
    run.set_defaults(func=cmd_run)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def cmd_list(args) -> int:
    from preflab.lab.registry import list_experiments

    for exp in list_experiments():
        print(f"{exp.name:18s} {exp.summary}")
    return 0


def cmd_run(args) -> int:
    import torch

    from preflab.lab.plots import render
    from preflab.lab.registry import run_experiment

    from preflab.errors import ConfigError

    out = Path(args.out)
    blocked = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:  # checked before the experiment runs, not after
        raise ConfigError(f"--out {args.out}: {blocked} is a file, not a folder; {args.name}.png and "
                          f"{args.name}.json go into a folder. Give a folder path.")
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = run_experiment(args.name, quick=args.quick)
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / f"{args.name}.png", out / f"{args.name}.json"
    render(result, png)
    result.write_json(js)
    print(f"{result.title}\n  theory: {result.theory}\n  wrote {png} and {js} ({time.perf_counter() - start:.1f}s)")
    return 0
