"""`preflab report RUN [RUN ...] --table`: the runs side by side in the terminal, one column per run.

    print(compare_table([load_run(p) for p in paths]))

Rows: what each run trained (task, loss_type, beta, seed, steps), its final held-out metrics (summary.json's
final_metrics, the run's last eval: TABLE_FINAL_KEYS) and its eval.json metrics (`preflab eval`: TABLE_EVAL_KEYS),
each value as the run wrote it, "-" where a run has none. Under the table: the config keys other than the objective's
that differ between the runs (COMPARE_IGNORED: a seed or a data file that differs makes the columns no comparison of
objectives), and report.metric_meanings' note where the objectives log different quantities under rewards/* and
logps/*. The HTML report (`preflab report RUN ...`) has the same final-metrics and eval.json tables, the curves and
the whole config diff.
"""
from __future__ import annotations

import math

from preflab.option_types import is_number
from preflab.report.metric_meanings import meaning_note
from preflab.report.runs import RunData

# the run's final held-out metrics (summary.json final_metrics), in this order
TABLE_FINAL_KEYS = ("eval_loss", "eval_ranking_accuracy", "eval_ranking_accuracy_norm",
                    "eval_reference_ranking_accuracy", "eval_rewards/accuracies", "eval_rewards/margins",
                    "eval_logps/chosen", "eval_logps/rejected", "eval_logps_drift/chosen", "eval_logps_drift/rejected")
# eval.json's metrics (`preflab eval`: one rule for every run, DPO's implicit reward against the run's reference)
TABLE_EVAL_KEYS = ("ranking_accuracy", "ranking_accuracy_norm", "reference_ranking_accuracy", "rewards/accuracies",
                   "rewards/margins", "idealized_ranking_accuracy", "alignment_gap", "logps_drift/chosen",
                   "logps_drift/rejected")
# config keys that are expected to differ between runs compared by objective (the rest are listed when they differ)
COMPARE_IGNORED = {"output_dir", "loss_type", "loss_weights", "beta", "objective_params", "rpo_alpha", "run_name",
                   "logging_dir", "hub_model_id"}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not is_number(value):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.4g}"


def table_rows(runs: list[RunData]) -> list[tuple[str, list]]:
    """(row label, one value per run) of the table: the runs' settings, their final metrics ("final KEY"), their
    eval.json metrics ("eval.json KEY"); a metric row only where some run has it."""
    rows: list[tuple[str, list]] = [
        ("task", [r.config.get("task", "dpo") if r.config else None for r in runs]),
        ("loss_type", [r.config.get("loss_type") for r in runs]),
        ("beta", [r.config.get("beta") for r in runs]),
        ("objective_params", [r.config.get("objective_params") or None for r in runs]),
        ("seed", [r.config.get("seed") for r in runs]),
        ("global_step", [r.summary.get("global_step") for r in runs]),
    ]
    finals = [r.summary.get("final_metrics") if isinstance(r.summary.get("final_metrics"), dict) else {}
              for r in runs]
    for key in TABLE_FINAL_KEYS:
        if any(key in f for f in finals):
            rows.append((f"final {key}", [f.get(key) for f in finals]))
    evals = [r.eval.get("metrics") if isinstance(r.eval.get("metrics"), dict) else {} for r in runs]
    if any(evals):
        rows.append(("eval.json pairs", [r.eval.get("num_pairs") for r in runs]))
        rows.append(("eval.json data", [r.eval.get("data") for r in runs]))
    for key in TABLE_EVAL_KEYS:
        if any(key in e for e in evals):
            rows.append((f"eval.json {key}", [e.get(key) for e in evals]))
    return rows


def differing_settings(runs: list[RunData]) -> list[str]:
    """'seed: a 0, b 1' for each config key outside COMPARE_IGNORED whose value differs between the runs."""
    keys = sorted({k for r in runs for k in r.config} - COMPARE_IGNORED)
    out = []
    for key in keys:
        values = [r.config.get(key) for r in runs]
        if len({repr(v) for v in values}) > 1:
            out.append(f"{key}: " + ", ".join(f"{r.name} {v!r}" for r, v in zip(runs, values)))
    return out


def compare_table(runs: list[RunData]) -> str:
    """The table as text, with the notes under it (module docstring)."""
    rows = [("run", [r.name for r in runs])] + table_rows(runs)
    cells = [[label] + [_cell(v) for v in values] for label, values in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    differ = differing_settings(runs)
    notes = (["settings that differ besides the objective (the columns compare more than objectives): "
              + "; ".join(differ)] if differ else
             ["every setting but the objective (loss_type, beta, objective_params, rpo_alpha) is the same"])
    scored = {(str(r.eval.get("data")), r.eval.get("num_pairs")) for r in runs if r.eval}
    if len(scored) > 1:   # eval.json rows from different data: that row group compares nothing
        notes.append("the eval.json metrics were computed on different data: " + "; ".join(
            f"{r.name} {r.eval.get('data')} ({r.eval.get('num_pairs')} pairs)" for r in runs if r.eval))
    note = meaning_note(runs)
    if note:
        notes.append(note)
    missing = [f"{r.name}: {m}" for r in runs for m in r.missing if m.startswith(("no summary.json", "no eval.json",
                                                                                   "no config.yaml"))]
    return "\n".join(lines + [f"note: {n}" for n in notes + missing])
