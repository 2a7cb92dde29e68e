"""The panels a run's objective declares for its own metrics (`Objective.metric_panels`), written into the run
directory by the training run and read back by `preflab report`.

    write_panel_data(output_dir, objective) RUN_DIR/metric_panels.json (the trainer, with config.yaml)
    read_panel_data(run_dir)                (panels, note): panels None when the file is absent or bad

    metric_panels.json = {"format": 1, "panels": [{"title": ..., "ylabel": ..., "metrics": [...]}, ...]}

Why data: a report never imports code a run names (the run directory may be someone else's), so it cannot ask a
user's class (`loss_type: my_losses.py:MyLoss`) for its metric_panels; the training run has that class imported
already and writes them down. Every part of a weighted sum (`loss_type: [ipo, spo_degree]`) contributes its panels:
the first part logs all its metrics and WeightedSum logs a later part's declared ones under their own names
(WeightedSum.declared_metrics). A run written before this file has none: the report then resolves the run's built-in
loss_type names instead (preflab.report.plots.objective_panels).

The file is untrusted input to the report: at most MAX_BYTES are read, and each panel is checked as the training
run checked the declaration (preflab.objectives._panels: printable strings of bounded length, a bounded number of
metrics and panels). Anything else is one note naming the file and the first bad entry, and none of the file's
panels are drawn.
"""
from __future__ import annotations

import json
from pathlib import Path

from preflab.atomic_file import write_text_file
from preflab.objectives._panels import MAX_PANELS, declared_panels, panel_problem

FILE = "metric_panels.json"
FORMAT = 1
MAX_BYTES = 64 * 1024


def write_panel_data(output_dir, objective, panels: list | None = None) -> Path:
    """RUN_DIR/metric_panels.json: the panels `preflab report` draws for the objective's own metrics (`panels`:
    declared_panels(objective) when the caller has it already)."""
    path = Path(output_dir) / FILE
    panels = declared_panels(objective) if panels is None else panels
    data = {"format": FORMAT, "panels": [{"title": t, "ylabel": y, "metrics": list(m)} for t, y, m in panels]}
    return write_text_file(path, json.dumps(data, indent=1))  # no metric_panels.json.tmp left by a failed write


def read_panel_data(run_dir) -> tuple[list | None, str | None]:
    """(panels as (title, y label, (metric, ...)) triples, None) from RUN_DIR/metric_panels.json; (None, None)
    when the run has no such file (written before it existed); (None, note naming the file and what is wrong)
    when it cannot be used."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None, None

    def bad(why: str):
        return None, (f"{path}: {why}; the panels of the objective's own metrics are not drawn (its metrics are in "
                      "the summary table)")

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        return bad(f"cannot be read ({e.strerror or e})")
    if len(raw) > MAX_BYTES:
        return bad(f"is larger than {MAX_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return bad(f"is not valid JSON ({str(e)[:80]})")
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("panels"), list):
        return bad(f'is not {{"format": {FORMAT}, "panels": [...]}}')
    entries = data["panels"]
    if len(entries) > MAX_PANELS:
        return bad(f"holds {len(entries)} panels, more than {MAX_PANELS}")
    panels = []
    for i, entry in enumerate(entries, 1):
        problem = ("it is not an object with title, ylabel and metrics" if not isinstance(entry, dict)
                   else panel_problem(entry.get("title"), entry.get("ylabel"), entry.get("metrics")))
        if problem:
            return bad(f"panel {i}: {problem}")
        panels.append((entry["title"], entry["ylabel"], tuple(entry["metrics"])))
    return panels, None
