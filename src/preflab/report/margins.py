"""Per-pair implicit reward margins saved at eval steps, for the report's start/end histograms.

The trainer logs batch means only; a histogram needs every pair. The hook for the training loop, at each eval:

    margins = []
    for batch in eval_batches:                      # PairBatch of policy and reference log-probs
        margins += margins_histogram_data(batch, beta)
    append_pair_margins(output_dir, step, margins)  # one JSON line in output_dir/pair_margins.jsonl

margin = beta [(S_theta(y_w) - S_ref(y_w)) - (S_theta(y_l) - S_ref(y_l))], the DPO implicit reward margin
(Rafailov et al. 2023, arXiv:2305.18290, Eq. 5); without a reference, beta (S_theta(y_w) - S_theta(y_l)).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from preflab.objectives.base import PairBatch

MARGINS_FILE = "pair_margins.jsonl"


def margins_histogram_data(batch: PairBatch, beta: float) -> list[float]:
    """[B] per-pair implicit reward margins of a batch, as plain floats."""
    margin = batch.policy_chosen.sum.double() - batch.policy_rejected.sum.double()
    if batch.has_reference:
        margin = margin - (batch.ref_chosen.sum.double() - batch.ref_rejected.sum.double())
    return (beta * margin).detach().cpu().tolist()


def append_pair_margins(run_dir: str | Path, step: int, margins: list[float]) -> Path:
    """Append {"step", "margins"} to run_dir/pair_margins.jsonl (rows of a re-run step replace older ones when
    read). Non-finite margins are stored as null."""
    path = Path(run_dir) / MARGINS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [m if math.isfinite(m) else None for m in map(float, margins)]
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": int(step), "margins": clean}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def read_pair_margins(run_dir: str | Path) -> dict[int, list[float]]:
    """{step: finite margins} from run_dir/pair_margins.jsonl ({} when absent); the last row of a step wins."""
    return read_pair_margins_counted(run_dir)[0]


def read_pair_margins_counted(run_dir: str | Path) -> tuple[dict[int, list[float]], dict[int, int]]:
    """({step: finite margins}, {step: margins left out as non-finite (null, NaN, inf)}) from
    run_dir/pair_margins.jsonl; the report says the second, so a histogram of fewer pairs is never silent."""
    path = Path(run_dir) / MARGINS_FILE
    out: dict[int, list[float]] = {}
    dropped: dict[int, int] = {}
    if not path.is_file():
        return out, dropped
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            step, values = int(row["step"]), [None if m is None else float(m) for m in row["margins"]]
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line after a kill: skip it
        out[step] = [m for m in values if m is not None and math.isfinite(m)]
        dropped[step] = len(values) - len(out[step])
    return out, {k: v for k, v in dropped.items() if v}
