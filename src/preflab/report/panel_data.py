"""The panels a run's objective declares for its own metrics (`Objective.metric_panels`), written into the run
directory by the training run and read back by `preflab report`.

    declared_panels(objective)              [(title, y label, (metric, ...)), ...]; ConfigError when malformed
    write_panel_data(output_dir, objective) RUN_DIR/metric_panels.json (the trainer, with config.yaml)
    read_panel_data(run_dir)                (panels, note): panels None when the file is absent or bad

    metric_panels.json = {"format": 1, "panels": [{"title": ..., "ylabel": ..., "metrics": [...]}, ...]}

Why data: a report never imports code a run names (the run directory may be someone else's), so it cannot ask a
user's class (`loss_type: my_losses.py:MyLoss`) for its metric_panels; the training run has that class imported
already and writes them down. Every part of a weighted sum (`loss_type: [ipo, spo_degree]`) contributes its panels:
the first part logs all its metrics and WeightedSum logs a later part's declared ones under their own names
(WeightedSum.declared_metrics). A run written before this file has none: the report then resolves the run's built-in
loss_type names instead (preflab.report.plots.objective_panels).

The file is untrusted input to the report: at most MAX_BYTES are read; a panel's title, y label and metric names
must be printable strings of 1 to MAX_TEXT characters, 1 to MAX_METRICS names a panel, at most MAX_PANELS panels.
Anything else is one note naming the file and the first bad entry, and none of the file's panels are drawn.
"""
from __future__ import annotations

import json
from pathlib import Path

from preflab.errors import ConfigError

FILE = "metric_panels.json"
FORMAT = 1
MAX_PANELS, MAX_METRICS, MAX_TEXT, MAX_BYTES = 32, 16, 200, 64 * 1024


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text_problem(value) -> str | None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT or not value.isprintable():
        return f"is not a printable string of 1 to {MAX_TEXT} characters ({_show(value)})"
    return None


def panel_problem(title, ylabel, metrics) -> str | None:
    """What is wrong with one declared panel (title, y label, metric names), or None."""
    for field, value in (("title", title), ("y label", ylabel)):
        problem = _text_problem(value)
        if problem:
            return f"its {field} {problem}"
    if not isinstance(metrics, (list, tuple)) or not 1 <= len(metrics) <= MAX_METRICS:
        return f"its metrics are not a list of 1 to {MAX_METRICS} metric names ({_show(metrics)})"
    for metric in metrics:
        problem = _text_problem(metric)
        if problem:
            return f"its metric name {problem}"
    return None


def declared_panels(objective) -> list[tuple[str, str, tuple[str, ...]]]:
    """The panels `objective` declares (every part's, in order, for a weighted sum); [] for None (a run without an
    objective, e.g. a reward model). A malformed declaration is a ConfigError naming the class, before training."""
    parts = getattr(objective, "parts", None) or ([] if objective is None else [objective])
    panels = []
    for part in parts:
        declared = getattr(part, "metric_panels", ())
        where = f"{type(part).__name__}.metric_panels"
        if not isinstance(declared, (list, tuple)):
            raise ConfigError(f"{where} is {_show(declared)}; give a tuple of (title, y label, (metric, ...)).")
        for i, panel in enumerate(declared, 1):
            problem = ("it is not a (title, y label, (metric, ...)) triple"
                       if not isinstance(panel, (list, tuple)) or len(panel) != 3 else panel_problem(*panel))
            if problem:
                raise ConfigError(f"{where}, panel {i}: {problem}. `preflab report` draws these panels; fix the "
                                  "declaration (docs/extending.md).")
            panels.append((panel[0], panel[1], tuple(panel[2])))
    if len(panels) > MAX_PANELS:
        raise ConfigError(f"the objective declares {len(panels)} metric_panels; at most {MAX_PANELS} are drawn by "
                          "`preflab report`. Merge some of them.")
    return panels


def write_panel_data(output_dir, objective) -> Path:
    """RUN_DIR/metric_panels.json: the panels `preflab report` draws for the objective's own metrics."""
    path = Path(output_dir) / FILE
    data = {"format": FORMAT, "panels": [{"title": t, "ylabel": y, "metrics": list(m)}
                                         for t, y, m in declared_panels(objective)]}
    tmp = path.with_name(FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return path


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
