"""Render an ExperimentResult to a PNG (matplotlib, Agg backend): one subplot per panel, titled, labelled,
with a legend; log scales where the panel asks for them."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from preflab.lab.results import ExperimentResult, Panel  # noqa: E402

STYLES = ["-", "--", "-.", ":"]


def _lines(ax, panel: Panel) -> None:
    for k, (label, (x, y)) in enumerate(panel.curves.items()):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if panel.logy:  # exact zeros (converged to machine precision) are drawn at the floor
            y = np.maximum(y, 1e-17)
        ax.plot(x, y, panel.styles.get(label, STYLES[(k // 10) % len(STYLES)]), label=label, linewidth=1.8,
                marker="o" if len(x) <= 12 else None, markersize=4)
    for k, (label, value) in enumerate(panel.reference.items()):
        ax.axhline(value, color="gray", linestyle=STYLES[(k + 1) % len(STYLES)], linewidth=1.0, label=label)
    if panel.logx:
        ax.set_xscale("log")
    if panel.logy:
        ax.set_yscale("log")


def _bars(ax, panel: Panel) -> None:
    n = max(1, len(panel.curves))
    width = 0.8 / n
    x = np.arange(len(panel.categories))
    for k, (label, heights) in enumerate(panel.curves.items()):
        ax.bar(x + (k - (n - 1) / 2) * width, heights, width, label=label)
    for k, (label, value) in enumerate(panel.reference.items()):
        ax.axhline(value, color="gray", linestyle=STYLES[(k + 1) % len(STYLES)], linewidth=1.0, label=label)
    ax.set_xticks(x, [str(c) for c in panel.categories])
    if panel.logy:
        ax.set_yscale("log")


def render(result: ExperimentResult, path: Path) -> Path:
    n = len(result.panels)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    width = 10.0 if cols == 1 else 7.2 * cols
    fig, axes = plt.subplots(rows, cols, figsize=(width, 5.0 * rows + 1.0), squeeze=False)
    for ax, panel in zip(axes.flat, result.panels):
        (_bars if panel.kind == "bars" else _lines)(ax, panel)
        ax.set_title(panel.title, fontsize=10.5)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    chars = int(width * 13)
    fig.suptitle("\n".join(textwrap.wrap(result.title, int(width * 9))), fontsize=12.5, fontweight="bold")
    theory = textwrap.wrap("Theory: " + result.theory, chars)
    fig.text(0.5, 0.005, "\n".join(theory), ha="center", va="bottom", fontsize=8.5, style="italic")
    fig.tight_layout(rect=(0, 0.025 * (len(theory) + 1) / rows, 1, 0.96))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
