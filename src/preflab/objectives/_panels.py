"""The panels an objective declares for its own metrics (`Objective.metric_panels`): what a declaration may hold.

    metric_panels = (("Panel title", "y label", ("my/metric", ...)), ...)
    declared_panels(objective)      every part's panels, in order (a weighted sum's too); ConfigError when malformed
    panel_problem(title, y, names)  what is wrong with one panel, or None

`preflab report` draws each panel from the run's metric_panels.json (preflab.report.panel_data), which it reads as
untrusted input with the same checks: title, y label and metric names printable strings of 1 to MAX_TEXT characters
(a panel title, not a paragraph; no newline or control character), 1 to MAX_METRICS metrics a panel, at most
MAX_PANELS panels. The training run, `check_objective` and `preflab lab check` refuse a declaration outside them, so
an objective's panels are never dropped at report time.
"""
from __future__ import annotations

from preflab.errors import ConfigError
from preflab.objectives.base import objective_parts

MAX_PANELS, MAX_METRICS, MAX_TEXT = 32, 16, 200


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
    panels = []
    for part in () if objective is None else objective_parts(objective):
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
