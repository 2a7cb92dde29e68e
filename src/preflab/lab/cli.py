"""`preflab lab list` and `preflab lab run NAME [--out DIR] [--quick]`: run a named lab experiment and write
NAME.png (one line per method against iteration) and NAME.json (the numbers) into DIR. `preflab lab check
FILE.py:Class`: the checks preflab runs on a user's objective (preflab.lab.check), with a verdict and exit status."""
from __future__ import annotations

import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("lab", help="exact tabular experiments compared with the answer theory gives")
    lab = p.add_subparsers(dest="lab_command", metavar="{list,run,check}")
    lst = lab.add_parser("list", help="list the named experiments")
    lst.set_defaults(func=cmd_list)
    run = lab.add_parser("run", help="run one experiment; writes NAME.png and NAME.json")
    run.add_argument("name", help="experiment name (see `preflab lab list`)")
    run.add_argument("--out", default="lab_results", help="output directory (default: ./lab_results)")
    run.add_argument("--quick", action="store_true", help="fewer iterations (what the tests run)")
    run.set_defaults(func=cmd_run)
    check = lab.add_parser("check", help="check your objective (FILE.py:Class): the objective contract, and on "
                                         "request a reduction and DPO's closed-form optimum; exit 0 if all pass, "
                                         "1 if not")
    check.add_argument("objective", help="path/to/file.py:Class, package.module:Class, or a built-in name")
    check.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="a parameter of the objective (repeat for several), e.g. --param beta=0.5")
    check.add_argument("--reduces-to", metavar="NAME", help="also check that its per-example losses equal objective "
                       "NAME's (same shared parameters, e.g. beta) on the example batch, e.g. dpo")
    check.add_argument("--kl-optimum", action="store_true", help="also check that its population minimiser on the "
                       "bandit B4 is pi_ref exp(r / beta) / Z, DPO's optimum")
    check.set_defaults(func=cmd_check)
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
    if not out.exists() and out.suffix.lower() in (".json", ".png"):
        # `preflab eval --out` takes a .json path; here `--out result.json` made a folder named result.json
        raise ConfigError(f"--out {args.out} names a file, but --out is the folder {args.name}.png and "
                          f"{args.name}.json go into: give --out {out.parent / out.stem} (or an existing folder).")
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = run_experiment(args.name, quick=args.quick)
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / f"{args.name}.png", out / f"{args.name}.json"
    render(result, png)
    result.write_json(js)
    print(f"{result.title}\n  theory: {result.theory}\n  wrote {png} and {js} ({time.perf_counter() - start:.1f}s)")
    return 0


def cmd_check(args) -> int:
    from preflab.config import parse_override
    from preflab.lab.check import check_user_objective

    params = dict(parse_override(item) for item in args.param)
    passed, failure = check_user_objective(args.objective, params, args.reduces_to, args.kl_optimum)
    print(f"preflab lab check {args.objective}" + (f" ({', '.join(args.param)})" if args.param else ""))
    for line in passed:
        print(f"  ok    {line}")
    if failure is not None:
        print(f"  FAIL  {failure}")
        print("verdict: FAILED")
        return 1
    print(f"verdict: passed ({len(passed)} checks)")
    return 0

