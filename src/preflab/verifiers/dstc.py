"""DSTC: preference pairs from self-generated code and tests (minimax selection + code–test concatenation).

Liu, Zhang, Liu, Liu, Yang, Wang, 2024, "DSTC: Direct Preference Learning with Only Self-Generated Tests and Code
to Improve Code LMs", arXiv:2411.13611. No code was released; the selection rule below is preflab's methods notes
§25 (recalled from the paper, **unverified** against its text).

Given I candidate programs and J assert-style tests from the same model, execute all I×J in the sandbox:
M_ij = 1 iff program i passes test j within the time limit (a timeout or crash is 0). Then

    chosen code    y⁺ = argmax_i Σ_j M_ij        chosen test    z⁺ = argmin_{j: M_{y⁺j}=1} Σ_i M_ij
    rejected code  y⁻ = argmin_i Σ_j M_ij        rejected test  z⁻ = argmax_{j: M_{y⁻j}=0} Σ_i M_ij

(the chosen code with the most selective test it passes; the rejected code with the most commonly passed test it
fails), ties broken by the lowest index. A prompt is skipped when all row sums are equal or either candidate set
is empty. Responses concatenate code and test: chosen = y⁺ + "\\n\\n" + z⁺, rejected = y⁻ + "\\n\\n" + z⁻,
for DPO ({prompt, chosen, rejected}) or KTO ({prompt, completion, label}).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from preflab.errors import DataError
from preflab.sandbox import run_tests


@dataclass(frozen=True)
class MinimaxSelection:
    """Indices into the code and test lists: (chosen code, chosen test), (rejected code, rejected test)."""

    chosen_code: int
    chosen_test: int
    rejected_code: int
    rejected_test: int


def minimax_select(matrix) -> MinimaxSelection | None:
    """The DSTC minimax pick on a pass matrix M [I codes, J tests] of 0/1, or None when the prompt is skipped."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.size == 0 or not np.isin(m, (0, 1)).all():
        raise DataError(f"minimax_select needs a non-empty 2-D 0/1 matrix [codes, tests], got shape {m.shape}.")
    m = m.astype(np.int64)
    rows, cols = m.sum(axis=1), m.sum(axis=0)
    if (rows == rows[0]).all():
        return None
    best, worst = int(np.argmax(rows)), int(np.argmin(rows))  # argmax/argmin return the first index on ties
    passed, failed = np.flatnonzero(m[best] == 1), np.flatnonzero(m[worst] == 0)
    if passed.size == 0 or failed.size == 0:
        return None
    chosen_test = int(passed[np.argmin(cols[passed])])
    rejected_test = int(failed[np.argmax(cols[failed])])
    return MinimaxSelection(best, chosen_test, worst, rejected_test)


def execution_matrix(codes: list[str], tests: list[str], *, timeout_s: float = 2.0, max_workers: int = 1,
                     **sandbox_kwargs) -> np.ndarray:
    """M [I, J] of 0/1: run every code against every test in `preflab.sandbox` (one process per pair)."""
    if not codes or not tests:
        raise DataError(f"execution_matrix needs at least one code and one test (got {len(codes)}, {len(tests)}).")
    return np.array([[int(o.passed) for o in run_tests(code, tests, timeout_s=timeout_s, max_workers=max_workers,
                                                        **sandbox_kwargs)] for code in codes], dtype=np.int64)


def dstc_pair(prompt: str, codes: list[str], tests: list[str], *, matrix=None, fmt: Literal["dpo", "kto"] = "dpo",
              separator: str = "\n\n", **run_kwargs) -> list[dict]:
    """Preference rows for one prompt: [] when skipped, else one DPO row or two KTO rows.

    `matrix` skips execution (e.g. when it was computed elsewhere); otherwise `run_kwargs` go to
    `execution_matrix` (timeout_s, max_workers, memory_mb, ...)."""
    m = execution_matrix(codes, tests, **run_kwargs) if matrix is None else np.asarray(matrix)
    if m.shape != (len(codes), len(tests)):
        raise DataError(f"dstc: matrix shape {m.shape} does not match {len(codes)} codes x {len(tests)} tests.")
    pick = minimax_select(m)
    if pick is None:
        return []
    chosen = codes[pick.chosen_code] + separator + tests[pick.chosen_test]
    rejected = codes[pick.rejected_code] + separator + tests[pick.rejected_test]
    if fmt == "dpo":
        return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    if fmt == "kto":
        return [{"prompt": prompt, "completion": chosen, "label": True},
                {"prompt": prompt, "completion": rejected, "label": False}]
    raise DataError(f"dstc: fmt={fmt!r}; use 'dpo' or 'kto'.")


def build_dstc_dataset(rows: list[dict], *, fmt: Literal["dpo", "kto"] = "dpo", **run_kwargs) -> list[dict]:
    """Rows {prompt, codes: [str], tests: [str], optional matrix} -> DPO or KTO rows (skipped prompts give none).

    Rows without a precomputed `matrix` are executed in the sandbox with `run_kwargs`."""
    out: list[dict] = []
    for i, row in enumerate(rows):
        missing = {"prompt", "codes", "tests"} - set(row)
        if missing:
            raise DataError(f"dstc: row {i} lacks {sorted(missing)}; each row needs prompt, codes and tests.")
        out.extend(dstc_pair(row["prompt"], row["codes"], row["tests"], matrix=row.get("matrix"), fmt=fmt,
                             **run_kwargs))
    return out
