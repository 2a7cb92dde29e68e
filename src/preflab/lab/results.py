"""What a lab experiment returns: panels of curves (for the plot) and the numbers (for the JSON)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Panel:
    """One subplot. kind "lines": curves maps label -> (x, y); kind "bars": categories on x, curves maps
    label -> heights (one bar per category). `reference` draws horizontal lines: label -> y value; `styles`
    overrides a curve's color / line style (label -> format string such as "C0--")."""

    title: str
    xlabel: str
    ylabel: str
    curves: dict = field(default_factory=dict)
    kind: str = "lines"
    categories: list = field(default_factory=list)
    logx: bool = False
    logy: bool = False
    reference: dict = field(default_factory=dict)
    styles: dict = field(default_factory=dict)  # optional label -> matplotlib format, e.g. "C0--"


@dataclass
class ExperimentResult:
    name: str
    title: str
    theory: str                      # the answer theory gives, in one or two sentences
    panels: list = field(default_factory=list)
    numbers: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return _plain(asdict(self))

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _plain(obj):
    """numpy / tuples -> JSON-safe lists and floats (non-finite floats -> None)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
