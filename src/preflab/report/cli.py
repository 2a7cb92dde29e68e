"""`preflab report RUN_DIR [RUN_DIR ...] [--out report.html]`: one HTML report; several runs are overlaid. A folder
holding runs (`preflab demo`'s output) is a report of those runs with the folder's result. `--table` prints the runs
side by side in the terminal instead (preflab.report.compare)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="self-contained HTML report of one run, or several runs overlaid")
    p.add_argument("run_dirs", nargs="+", help="output_dir of one or more `preflab train` runs, or a folder "
                                              "holding runs (e.g. `preflab demo`'s output)")
    p.add_argument("--out", help="HTML file (default: RUN_DIR/report.html, or ./report.html for several runs)")
    p.add_argument("--title", help="report title")
    p.add_argument("--table", action="store_true",
                   help="print the runs side by side (settings, final held-out metrics, eval.json metrics, the "
                        "settings that differ) instead of writing the HTML report")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from preflab.errors import PreflabError

    from preflab.report.html import write_report

    if args.table:
        from preflab.report.compare import compare_table
        from preflab.report.runs import collect_runs, load_run, unique_names

        if args.out or args.title:
            raise PreflabError("--table prints to the terminal: --out and --title are for the HTML report.")
        paths, _ = collect_runs([Path(p) for p in args.run_dirs])
        print(compare_table([load_run(p, name) for p, name in zip(paths, unique_names(paths))]))
        return 0
    out = args.out or (str(Path(args.run_dirs[0]) / "report.html") if len(args.run_dirs) == 1 else "report.html")
    path = write_report(args.run_dirs, out, title=args.title)
    print(f"preflab report: wrote {path}")
    return 0
