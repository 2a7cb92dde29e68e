"""The report's first table: did the run do what it is for, held-out, before vs after, beside the baseline.

The curves answer it too, but only to a reader who knows which of ten panels and which of their dashed lines to
read; an engineer opening a report wants the answer first. Per run, for the held-out metrics its task is judged by
(HEADLINE_KEYS), the value at the first and at the last eval step of metrics.jsonl, and the baseline where the run
measured one: a DPO-family run's eval_reference_ranking_accuracy, the ranking accuracy R of the reference model it
started from (Chen et al. 2024, arXiv:2405.19534: DPO often leaves R where the reference had it). The first eval
step is the starting model only with eval_on_start (step 0); the table says the step of each value.

A summary.json "X_before" / "X_after" pair (an online demo task's true reward, a recipe's metric) is a before vs
after measured by the run itself: those rows come first, before over after. A recipe's "before" is often not the
starting model (RAFT's is the model after its SFT stage, Themis's a reward model trained without tool traces): its
summary.json "baseline" sentence says what it is and is shown with it; every number it gives to compare with
(metric_untrained, metric_optimum, control_*_after) is in the baseline column, so a result its control beats is
never shown alone (docs/tools.md).
"""
from __future__ import annotations

from preflab.report.runs import RunData

# task -> ((eval key, what it is, baseline key or None), ...), the first row being what the task is judged by
HEADLINE_KEYS = {
    "dpo": (("eval_ranking_accuracy", "ranking accuracy R, held-out", "eval_reference_ranking_accuracy"),
            ("eval_rewards/accuracies", "implicit reward accuracy, held-out", None),
            ("eval_loss", "loss, held-out", None)),
    "sft": (("eval_loss", "loss (token NLL), held-out", None),
            ("eval_mean_token_accuracy", "next-token accuracy, held-out", None)),
    "reward": (("eval_accuracy", "pairwise accuracy r(chosen) > r(rejected), held-out", None),
               ("eval_margin", "mean r(chosen) - r(rejected), held-out", None),
               ("eval_loss", "loss, held-out", None)),
    "diffusion": (("eval_rewards/accuracies", "implicit reward accuracy, held-out", None),
                  ("eval_loss", "loss, held-out", None)),
    "online": (("eval_true_reward", "true reward, greedy, held-out", None),
               ("eval_win_rate_vs_reference", "win rate vs reference, held-out", None),
               ("eval_reward", "judges' reward, greedy, held-out", None),
               ("eval_tv_to_equilibrium", "total variation to the regularised equilibrium (game)", None),
               ("eval_duality_gap", "duality gap (game)", None)),
}
HEADLINE_KEYS["vlm"] = HEADLINE_KEYS["dpo"]


def _at(run: RunData, key: str, which: int) -> tuple[float, float] | None:
    """(step, value) of `key` at its first (which=0) or last (which=-1) logged step."""
    steps, values = run.series(key)
    return (steps[which], values[which]) if steps else None


def summary_pairs(summary: dict) -> list[tuple[str, str]]:
    """The (X_before, X_after) key pairs of a summary.json whose both values are numbers, in key order."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return [(k, k[:-len("_before")] + "_after") for k in sorted(summary)
            if k.endswith("_before") and number(summary[k]) and number(summary.get(k[:-len("_before")] + "_after"))]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def comparisons(summary: dict, name: str) -> list[tuple[str, float]]:
    """What a recipe gives to compare `name`_after with (docs/tools.md: a result its control beats is never shown
    alone): for "metric", every other number metric_* (metric_untrained, metric_optimum, metric_first_round_best)
    and control_after; for any name, control_<name>_after (the same steps spent another way)."""
    found = []
    if name == "metric":
        found += [(k[len("metric_"):].replace("_", " "), summary[k]) for k in sorted(summary)
                  if k.startswith("metric_") and k not in ("metric_before", "metric_after") and _number(summary[k])]
        found += [("control", summary["control_after"])] if _number(summary.get("control_after")) else []
    key = f"control_{name}_after"
    return found + ([("control", summary[key])] if _number(summary.get(key)) else [])


def headline_rows(run: RunData) -> list[dict]:
    """One dict per headline number of `run`: metric, meaning, before / after as (step or source, value), baseline
    as a list of (source, value) or None, and first_step where before is an eval step."""
    rows, summary = [], run.summary
    # a recipe says what its "before" is (summary.json "baseline": often another stage or model, not the start)
    told = summary.get("baseline") if isinstance(summary.get("baseline"), str) else None
    for before, after in summary_pairs(summary):
        name = before[:-len("_before")]
        if name == "metric" and isinstance(summary.get("metric_name"), str):
            name = f"metric ({summary['metric_name']})"
        rows.append({"metric": name, "meaning": f"summary.json; before: {told}" if told else
                     "measured by the run (summary.json)",
                     "before": ("before, see meaning" if told else "before training", summary[before]),
                     "after": ("after training", summary[after]),
                     "baseline": comparisons(summary, before[:-len("_before")]) or None})
    for key, meaning, base in HEADLINE_KEYS.get(str(run.config.get("task", "dpo")), ()):
        first, last = _at(run, key, 0), _at(run, key, -1)
        if last is None or f"{key[len('eval_'):]}_after" in run.summary:  # said above, measured by the run
            continue
        baseline = _at(run, base, -1) if base else None
        rows.append({"metric": key, "meaning": meaning, "after": (f"step {last[0]:g}", last[1]),
                     "baseline": [("the reference model", baseline[1])] if baseline else None,
                     **({"before": (f"step {first[0]:g}", first[1]), "first_step": first[0]}
                        if first[0] != last[0] else {"before": None})})
    return rows + eval_json_rows(run)


# eval.json metrics (`preflab eval`) -> (what it is, baseline key in the same metrics or None)
EVAL_JSON_KEYS = (("ranking_accuracy", "ranking accuracy R (preflab eval)", "reference_ranking_accuracy"),
                  ("reward_model/accuracy", "reward model pairwise accuracy (preflab eval)", None),
                  ("implicit_accuracy", "implicit reward accuracy of the pipeline (preflab eval --task diffusion)",
                   None),
                  ("reward/policy", "mean --reward-fn score of the trained pipeline's samples (preflab eval)",
                   "reward/reference"))


def eval_json_rows(run: RunData) -> list[dict]:
    """The eval.json numbers a run is judged by: its ranking accuracy beside the reference's, a reward model's
    accuracy, a diffusion pipeline's implicit accuracy and --reward-fn score beside the reference pipeline's, and
    the win rate against the reference (with its interval). The rows say "eval.json, N pairs"; its
    notes (e.g. that --data was the training data, so not held-out) are in the report's evaluation section."""
    metrics = run.eval.get("metrics") if isinstance(run.eval, dict) else None
    if not isinstance(metrics, dict):
        return []
    win = run.eval.get("win_rate")
    where = f"eval.json, {run.eval.get('num_pairs')} pairs"
    sampled = f"eval.json, {win['n']} prompts" if isinstance(win, dict) and win.get("n") else "eval.json"
    rows = [{"metric": key, "meaning": meaning + "; see its notes below", "before": None,
             "after": (sampled if key == "reward/policy" else where, metrics[key]),   # scored samples, not pairs
             "baseline": [("the reference model", metrics[base])] if base and _number(metrics.get(base)) else None}
            for key, meaning, base in EVAL_JSON_KEYS if _number(metrics.get(key))]
    if isinstance(win, dict) and _number(win.get("win_rate")) and win.get("n"):
        rows.append({"metric": "win_rate", "before": None, "baseline": None,
                     "after": (f"eval.json, {win['n']} prompts, interval {win.get('ci_low'):.3g} to "
                               f"{win.get('ci_high'):.3g}" if _number(win.get("ci_low")) and
                               _number(win.get("ci_high")) else f"eval.json, {win['n']} prompts", win["win_rate"]),
                     "meaning": "win rate of the policy's generations against the reference's (preflab eval; 0.5: "
                                "as good as the reference)"})
    return rows
