"""Read what a run directory holds for the report, and say what is missing and how to get it.

    RUN_DIR/metrics.jsonl      one row per logged step ("step" + TRL metric names; eval rows use "eval_" keys)
    RUN_DIR/summary.json       final metrics, data report, "environment"
    RUN_DIR/config.yaml        the resolved training config
    RUN_DIR/eval.json          written by `preflab eval` (metrics, win rate, per-pair log-probs)
    RUN_DIR/pair_margins.jsonl per-pair margins at eval steps (preflab.report.margins)
Nothing here trusts the files: YAML is read with safe_load, bad JSON lines are skipped and counted.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from preflab.errors import PreflabError
from preflab.report.margins import read_pair_margins


@dataclass
class RunData:
    name: str
    path: Path
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    config_text: str = ""
    eval: dict = field(default_factory=dict)
    margins: dict[int, list[float]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    bad_lines: int = 0

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of `key` over the run, sorted by step; the last value logged at a step wins."""
        by_step: dict[float, float] = {}
        for row in self.rows:
            value, step = row.get(key), row.get("step")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and isinstance(step, (int, float)):
                by_step[float(step)] = float(value)
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    @property
    def environment(self) -> dict:
        env = self.summary.get("environment")
        return env if isinstance(env, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_run(path: str | Path, name: str | None = None) -> RunData:
    """Everything the report shows for one run directory; `missing` explains each absent part."""
    path = Path(path)
    if not path.is_dir():
        raise PreflabError(f"{path} is not a directory; give the output_dir of a `preflab train` run.")
    run = RunData(name or path.name, path)
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                run.bad_lines += 1
                continue
            if isinstance(row, dict):
                run.rows.append(row)
        if run.bad_lines:
            run.missing.append(f"{run.bad_lines} unreadable line(s) in metrics.jsonl were skipped")
    else:
        run.missing.append("no metrics.jsonl: this is not a finished or running `preflab train` output_dir")
    if metrics.is_file() and not any(k.startswith("eval_") for row in run.rows for k in row):
        run.missing.append("no eval rows in metrics.jsonl: set eval_steps and an eval set (eval_fraction or "
                           "eval_dataset_name) to log held-out ranking accuracy and log-prob drift")
    run.summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    if not run.summary:
        run.missing.append("no summary.json: the run has not finished (final metrics and environment unknown)")
    if (path / "config.yaml").is_file():
        run.config_text = (path / "config.yaml").read_text()
        try:
            loaded = yaml.safe_load(run.config_text)
            run.config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            run.missing.append("config.yaml could not be parsed; shown as text")
    else:
        run.missing.append("no config.yaml")
    run.eval = _read_json(path / "eval.json") if (path / "eval.json").is_file() else {}
    if not run.eval:
        run.missing.append(f"no eval.json: run `preflab eval {path} --data HELDOUT --reference REF` for "
                           "ranking accuracy, idealized ranking accuracy, 3D metrics and win rate")
    run.margins = read_pair_margins(path)
    if not run.margins:
        run.missing.append("no per-pair margins (pair_margins.jsonl): the trainer logs batch means only, so the "
                           "start/end margin histograms are unavailable; preflab.report.margins has the hook")
    return run


def unique_names(paths: list[Path]) -> list[str]:
    """Directory names, lengthened with parents until every run has a distinct name."""
    paths = [Path(p).resolve() for p in paths]
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > max(len(p.parts) for p in paths):
            return names
        depth += 1
