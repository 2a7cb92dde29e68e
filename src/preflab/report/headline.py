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

import math

from preflab.option_types import is_number
from preflab.objectives.base import IMPLICIT_REWARD
from preflab.report.metric_meanings import meaning as logged_meaning, reward_accuracy_meaning
from preflab.report.runs import RunData

# task -> ((eval key, what it is, baseline key or None), ...), the first row being what the task is judged by
HEADLINE_KEYS = {
    "dpo": (("eval_ranking_accuracy", "ranking accuracy R, held-out", "eval_reference_ranking_accuracy"),
            ("eval_rewards/accuracies", "implicit reward accuracy, held-out", None),
            ("eval_loss", "loss, held-out", None)),
    "sft": (("eval_loss", "loss (token NLL; with a teacher: the divergence to it), held-out", None),
            ("eval_mean_token_accuracy", "next-token accuracy, held-out", None)),
    "reward": (("eval_accuracy", "pairwise accuracy r(chosen) > r(rejected), held-out", None),
               ("eval_margin", "mean r(chosen) - r(rejected), held-out", None),
               ("eval_loss", "loss, held-out", None)),
    "diffusion": (("eval_rewards/accuracies", "implicit reward accuracy, held-out", None),
                  ("eval_loss", "loss, held-out", None)),
    "online": (("eval_true_reward", "true reward, greedy, held-out", None),
               ("eval_win_rate_vs_reference", "win rate vs reference (a tie counts 1/2), held-out", None),
               ("eval_reward", "judges' reward, greedy, held-out", None),
               ("eval_tv_to_equilibrium", "total variation to the regularised equilibrium (game)", None),
               ("eval_duality_gap", "duality gap (game)", None)),
}
HEADLINE_KEYS["vlm"] = HEADLINE_KEYS["dpo"]
# a DPA attribute reward model (task: reward, reward_head: multi_objective) regresses ratings: it logs eval_mse,
# no pairwise accuracy (preflab.reward_models.multi_objective)
ATTRIBUTE_HEADLINE_KEYS = (("eval_mse", "mean squared rating error over every rated attribute (lower is better), "
                            "held-out", None),)


def headline_keys(config: dict) -> tuple:
    """The HEADLINE_KEYS of a run's config.yaml: its task's, a DPA attribute model's (ATTRIBUTE_HEADLINE_KEYS) for
    task: reward with reward_head: multi_objective."""
    task = str(config.get("task", "dpo"))
    if task == "reward" and config.get("reward_head") == "multi_objective":
        return ATTRIBUTE_HEADLINE_KEYS
    return HEADLINE_KEYS.get(task, ())


def _at(run: RunData, key: str, which: int) -> tuple[float, float] | None:
    """(step, value) of `key` at its first (which=0) or last (which=-1) logged step."""
    steps, values = run.series(key)
    return (steps[which], values[which]) if steps else None


def summary_pairs(summary: dict) -> list[tuple[str, str]]:
    """The (X_before, X_after) key pairs of a summary.json whose both values are numbers, in key order."""
    return [(k, k[:-len("_before")] + "_after") for k in sorted(summary)
            if k.endswith("_before") and is_number(summary[k])
            and is_number(summary.get(k[:-len("_before")] + "_after"))]


def comparisons(summary: dict, name: str) -> list[tuple[str, float]]:
    """What a recipe gives to compare `name`_after with (docs/tools.md: a result its control beats is never shown
    alone): for "metric", every other number metric_* (metric_untrained, metric_optimum, metric_first_round_best)
    and control_after, or else control_<metric_name>_after (OTC's control_tool_productivity_after: its metric row
    showed no control); for any name, control_<name>_after (the same steps spent another way)."""
    found = []
    if name == "metric":
        found += [(k[len("metric_"):].replace("_", " "), summary[k]) for k in sorted(summary)
                  if k.startswith("metric_") and k not in ("metric_before", "metric_after") and is_number(summary[k])]
        control = summary.get("control_after")
        if not is_number(control) and isinstance(summary.get("metric_name"), str):
            control = summary.get(f"control_{summary['metric_name']}_after")
        found += [("control", control)] if is_number(control) else []
    key = f"control_{name}_after"
    return found + ([("control", summary[key])] if is_number(summary.get(key)) else [])


def summary_rows(summary: dict, measured_by: str = "measured by the run (summary.json)",
                 when: tuple[str, str] = ("before training", "after training")) -> list[dict]:
    """The headline rows of a summary.json's X_before / X_after pairs (summary_pairs), before over after, with what
    the summary gives to compare with (comparisons); `measured_by` is the meaning and `when` the labels of before
    and after of a row whose summary does not say what its "before" is."""
    rows = []
    # a recipe says what its "before" is (summary.json "baseline": often another stage or model, not the start)
    told = summary.get("baseline") if isinstance(summary.get("baseline"), str) else None
    for before, after in summary_pairs(summary):
        name = before[:-len("_before")]
        if name == "metric" and isinstance(summary.get("metric_name"), str):
            name = f"metric ({summary['metric_name']})"
        rows.append({"metric": name, "meaning": f"summary.json; before: {told}" if told else measured_by,
                     "before": ("before, see meaning" if told else when[0], summary[before]),
                     "after": (when[1], summary[after]),
                     "baseline": comparisons(summary, before[:-len("_before")]) or None})
    return rows


def with_eval_meaning(row: dict, config: dict, seen_prompts: str = "") -> dict:
    """A summary.json before / after row (summary_rows) whose number the run also logs as one of its task's eval
    keys (the game's duality_gap_before / _after and eval_duality_gap, the demo's true_reward and eval_true_reward,
    an eval set's eval_reward) says what that number is, as the eval row it replaces would ("duality gap (game);
    measured by the run (summary.json)"), its ", held-out" replaced by `seen_prompts` (eval_set_seen_clause) where
    that is given. Before, those rows read only "measured by the run (summary.json)"."""
    meanings = {key: what for key, what, _ in headline_keys(config)}
    meaning = meanings.get(f"eval_{row['metric']}") or meanings.get(row["metric"])  # an eval set's eval_reward
    if not meaning:
        return row
    meaning = meaning.replace(", held-out", seen_prompts) if seen_prompts else meaning
    return {**row, "meaning": f"{meaning}; {row['meaning']}"}


def gpm_meaning(meaning: str) -> str:
    """A reward-run headline meaning for a GPM head (Zhang et al. 2024, arXiv:2410.02197), which has no scalar reward
    r(y): its eval_accuracy counts s(chosen, rejected) > 0 and its eval_margin is the mean s, s = v_c^T R^T v_r
    (P(chosen > rejected) = sigmoid(s / tau)); before, both read as BT's r(chosen) - r(rejected)."""
    return (meaning.replace("pairwise accuracy r(chosen) > r(rejected)", "pairwise accuracy s(chosen, rejected) > 0 "
                            "(GPM score)")
            .replace("mean r(chosen) - r(rejected)", "mean GPM score s(chosen, rejected); P = sigmoid(s / tau)"))


def eval_set_seen_clause(summary: dict) -> str:
    """", on the run's eval set: K of its N examples have a prompt the run trained on (prompts not held-out)" when the
    run's data report (summary.json data.overlap.eval_prompts_in_train, of data.eval_tokenize.total) counts any, else
    "". It replaces the headline's ", held-out": a run whose eval_dataset_name is its training file was told so in a
    note when it started, yet its report called every eval number held-out."""
    data = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    overlap = data.get("overlap") if isinstance(data.get("overlap"), dict) else {}
    seen = overlap.get("eval_prompts_in_train")
    if not is_number(seen) or seen <= 0:
        return ""
    # of the eval examples the overlap was counted on: those given to tokenization (its "total", before a pair
    # past max_length is dropped)
    total = (data.get("eval_tokenize") or {}).get("total") if isinstance(data.get("eval_tokenize"), dict) else None
    of = f" of its {total:g}" if is_number(total) else ""
    return (f", on the run's eval set: {seen:g}{of} examples have a prompt the run trained on (prompts not "
            "held-out)")


def headline_rows(run: RunData) -> list[dict]:
    """One dict per headline number of `run`: metric, meaning, before / after as (step or source, value), baseline
    as a list of (source, value) or None, and first_step where before is an eval step. An eval row's "after" is
    the value at the last step that logged the metric: nan where that eval logged it non-finite (null), never an
    older finite value passed off as the run's end (the notes above the curves say which steps)."""
    seen_prompts = eval_set_seen_clause(run.summary)
    rows = [with_eval_meaning(r, run.config, seen_prompts) for r in summary_rows(run.summary)]
    for key, meaning, base in headline_keys(run.config):
        meaning = meaning.replace(", held-out", seen_prompts) if seen_prompts else meaning
        meaning = gpm_meaning(meaning) if run.config.get("reward_head") == "gpm" else meaning
        meaning = reward_accuracy_meaning(run, meaning) if key == "eval_rewards/accuracies" else meaning
        if key == "eval_win_rate_vs_reference" and is_number(run.summary.get("win_rate_vs_reference_ties")):
            meaning += (f"; the final policy: {run.summary['win_rate_vs_reference_ties']} of "
                        f"{run.summary.get('win_rate_vs_reference_prompts')} prompts tied (summary.json "
                        "win_rate_vs_reference_ties)")
        first, last = _at(run, key, 0), _at(run, key, -1)
        broken = [s for s in run.null_steps(key) if last is None or s > last[0]]
        if broken:   # the run's last eval of `key` was non-finite (a diverged run): that is its after
            last = (broken[-1], math.nan)
            first = first or last
        if last is None or any(f"{k}_after" in run.summary for k in (key[len('eval_'):], key)):  # said above,
            # measured by the run (true_reward_after; an online dataset run's eval_reward_after)
            continue
        baseline = _at(run, base, -1) if base else None
        row = {"metric": key, "meaning": meaning, "after": (f"step {last[0]:g}", last[1]),
               "baseline": [("the reference model", baseline[1])] if baseline else None,
               **({"before": (f"step {first[0]:g}", first[1]), "first_step": first[0]}
                  if first[0] != last[0] else {"before": None}),
               "steps": {"before": first[0] if first[0] != last[0] else None, "after": last[0]}}
        if last[0] == 0:  # its only eval is step 0 (eval_on_start): the starting model, a before with no after yet
            row.update(before=row["after"], after=None, first_step=0.0, steps={"before": 0.0, "after": None})
        rows.append(row)
    return rows + eval_json_rows(run)


def late_before_note(rows: list[dict]) -> str | None:
    """The note for headline rows (headline_rows) whose "before" is a first eval step after training had started,
    so not the starting model; None when there is none. Where other rows' "before" is the starting model (a
    summary.json pair the run measured before training, e.g. an online dataset run's eval_reward_before), the note
    names which rows it is about and says those others are the start's, so it holds for each number shown."""
    late = [r for r in rows if r.get("first_step", 0) > 0]
    if not late:
        return None
    first = min(r["first_step"] for r in late)
    started = [r["metric"] for r in rows if isinstance(r.get("before"), tuple) and r["before"][0] == "before training"]
    if not started:
        return (f"its first eval was at step {first:g}, after training had started, so 'before' is not the starting "
                "model; eval_on_start: true evaluates it at step 0")
    return (f"its first eval was at step {first:g}, after training had started, so the 'before' of "
            f"{', '.join(r['metric'] for r in late)} is not the starting model (eval_on_start: true evaluates it at "
            f"step 0); the 'before' of {', '.join(started)} is: the run measured it before training (summary.json)")


# |mean held-out log pi - log pi_ref| (nats per response) below which the policy scores the eval set as the
# reference does: a float32 forward pass of unchanged weights gives exactly 0
UNMOVED_DRIFT = 1e-6


def policy_is_reference_at(run: RunData, step: float) -> bool:
    """Whether at eval step `step` the mean held-out drift log pi - log pi_ref of the chosen and of the rejected
    responses (eval_logps_drift/*) are both below UNMOVED_DRIFT in size: the policy has not moved from the reference
    there (False where the run logged no drift, e.g. a reference-free objective)."""
    drifts = [_value(run, key, step) for key in ("eval_logps_drift/chosen", "eval_logps_drift/rejected")]
    return all(d is not None and abs(d) < UNMOVED_DRIFT for d in drifts)


def _value(run: RunData, key: str, step: float) -> float | None:
    steps, values = run.series(key)
    return values[steps.index(step)] if step in steps else None


def headline_notes(run: RunData, rows: list[dict]) -> list[str]:
    """What the headline's numbers of `run` (its headline_rows) mean where they mislead when read alone:
    - its only eval is the starting model's (step 0): no number after training yet;
    - the policy did not move (policy_is_reference_at its last eval step > 0): every number is the start's;
    - an implicit reward accuracy of 0 where the policy is the reference: each implicit reward beta (log pi -
      log pi_ref) is 0 and TRL's accuracy (chosen reward > rejected reward) counts a tie as wrong, so 0 is the
      definition, not a measurement;
    - a ranking accuracy R (eval rows or eval.json) below the reference model's R: the policy ranks fewer pairs
      right than the model it started from, whatever its implicit reward accuracy (Chen et al. 2024,
      arXiv:2405.19534, which the headline's baseline column is for)."""
    notes, by_metric = [], {r["metric"]: r for r in rows}
    # the eval rows of metrics.jsonl (with their steps); not a summary.json pair named eval_* (an online dataset run's
    # eval_reward_before / _after), which has no steps: reading them stopped `preflab report` with KeyError 'steps'
    evals = [r for r in rows if r["metric"].startswith("eval_") and "steps" in r]
    if evals and all(r["after"] is None for r in evals):
        notes.append("its only eval is at step 0, the starting model (eval_on_start): no held-out number after "
                     "training yet")
    last = max((r["steps"]["after"] for r in evals if r["steps"]["after"] is not None), default=None)
    if last is not None and last > 0 and policy_is_reference_at(run, last):
        lr = run.config.get("learning_rate")
        notes.append(f"the policy did not move: at its last eval (step {last:g}) its held-out log-probs are the "
                     f"reference model's (mean log pi - log pi_ref "
                     f"{_value(run, 'eval_logps_drift/chosen', last):.3g} chosen, "
                     f"{_value(run, 'eval_logps_drift/rejected', last):.3g} rejected), so every eval number above "
                     "is the starting model's: training changed nothing it measures"
                     + (f" (learning_rate {lr:g})" if is_number(lr) else ""))
    acc = by_metric.get("eval_rewards/accuracies")
    tied = [f"{acc['steps'][at]:g}" for at in ("before", "after") if acc[at] and acc[at][1] == 0
            and policy_is_reference_at(run, acc["steps"][at])] if acc else []
    if tied:
        notes.append(f"eval_rewards/accuracies is 0 at step {' and '.join(tied)} by definition, not a measurement: "
                     "the policy there is the reference, so every implicit reward beta (log pi - log pi_ref) is 0, "
                     "and TRL's accuracy (chosen reward > rejected reward) counts each tie as wrong")
    held_out = "eval-set" if eval_set_seen_clause(run.summary) else "held-out"  # prompts it trained on: not held-out
    for key, where in (("eval_ranking_accuracy", held_out), ("ranking_accuracy", "eval.json")):
        row = by_metric.get(key)
        if not row or not row["after"] or not row["baseline"]:
            continue
        (said, after), base = row["after"], row["baseline"][0][1]
        if after < base:
            implicit = (by_metric.get("eval_rewards/accuracies") or {}).get("after") if key.startswith("eval_") \
                and logged_meaning(run, "rewards") in (None, IMPLICIT_REWARD) else None   # SimPO's: not an implicit one
            notes.append(f"{where} ranking accuracy R ({after:.4g}, {said}) is below the reference model's "
                         f"({base:.4g}): the policy ranks fewer pairs right (log pi(chosen) >= log pi(rejected)) "
                         "than the model it started from"
                         + (f", although its implicit reward accuracy is {implicit[1]:.4g} (pairs whose chosen "
                            "log-ratio rose more than the rejected one's, not pairs ranked right)"
                            if implicit and implicit[1] > after else ""))
    return notes


# eval.json metrics (`preflab eval`) -> (what it is, baseline key in the same metrics or None)
EVAL_JSON_KEYS = (("ranking_accuracy", "ranking accuracy R (preflab eval)", "reference_ranking_accuracy"),
                  ("reward_model/accuracy", "reward model pairwise accuracy (preflab eval)", None),
                  ("implicit_accuracy", "implicit reward accuracy of the pipeline (preflab eval --task diffusion)",
                   None),
                  ("reward/policy", "mean --reward-fn score of the trained pipeline's samples (preflab eval)",
                   "reward/reference"),
                  # a DPA attribute model's (preflab.reward_models.attribute_eval)
                  ("reward_model/mse", "DPA attribute model's mean squared rating error over every held-out rating "
                   "(preflab eval; lower is better)", None),
                  ("reward_model/ranking_accuracy", "DPA attribute model's accuracy ranking rated responses to the "
                   "same prompt, every attribute (preflab eval)", None),
                  ("reward_model/direction_accuracy", "DPA attribute model's accuracy on pairs scored along their "
                   "direction (preflab eval)", None))


def trained_on_clause(result: dict) -> str:
    """", P with a prompt the run trained on (M training pairs)" from eval.json's overlap_with_training
    (preflab.eval.run.training_overlap) when either count is non-zero, else "": the headline's held-out numbers
    then say at once that part of them are not held-out."""
    overlap = result.get("overlap_with_training")
    if not isinstance(overlap, dict) or not (overlap.get("prompts") or overlap.get("pairs")):
        return ""
    if "training_rows" in overlap:  # a DPA attribute model's rated rows (preflab.data.overlap.response_overlap_counts)
        return (f", {overlap.get('prompts')} with a prompt the run trained on ({overlap.get('pairs')} with a response "
                "it trained on; not held-out)")
    if "training_sequences" in overlap:  # a task: sft run's (preflab.data.overlap.sft_overlap_counts)
        return (f", {overlap.get('prompts')} with a prompt the run trained on ({overlap.get('pairs')} with a response "
                "it trained on by SFT; not held-out)")
    if overlap.get("pairs") is None:  # an online run's: it trained on its own samples, no pairs (it read "None")
        return f", {overlap.get('prompts')} with a prompt the run trained on (it trained on no pairs; not held-out)"
    # no training pair among them: the pairs are held-out, their prompts are not (the eval's own note says so; the
    # headline said "0 training pairs; not held-out", as if the pairs were not)
    held = "not held-out" if overlap.get("pairs") else "the prompts are not held-out"
    return f", {overlap.get('prompts')} with a prompt the run trained on ({overlap.get('pairs')} training pairs; {held})"


def win_rate_meaning(win: dict) -> str:
    """The headline's meaning of a win rate: with the judge eval.json names, and, where every verdict is a tie, that
    0.5 says the judge told no answer apart (preflab.eval.winrate.win_rate_caveats) rather than "as good"."""
    judge = f", judged by {win['judge']}" if win.get("judge") else ""
    if win.get("n") and win.get("ties") == win.get("n"):
        return (f"win rate of the policy's generations against the reference's (preflab eval{judge}); every verdict "
                "a tie: the judge told no answer apart, so 0.5 is not evidence the policy is as good")
    return (f"win rate of the policy's generations against the reference's (preflab eval{judge}; a tie counts 1/2; "
            "0.5: as good as the reference)")


def eval_json_rows(run: RunData) -> list[dict]:
    """The eval.json numbers a run is judged by: its ranking accuracy beside the reference's, a reward model's
    accuracy, a diffusion pipeline's implicit accuracy and --reward-fn score beside the reference pipeline's, and
    the win rate against the reference (with its interval). The rows say "eval.json, N pairs" (and how many of
    them the run trained on: trained_on_clause); its
    notes (e.g. that --data was the training data, so not held-out) are in the report's evaluation section."""
    metrics = run.eval.get("metrics") if isinstance(run.eval, dict) else None
    if not isinstance(metrics, dict):
        return []
    win = run.eval.get("win_rate")
    rated = f"{run.eval['num_rated_rows']} rated rows, " if "num_rated_rows" in run.eval else ""  # a DPA model's
    where = f"eval.json, {rated}{run.eval.get('num_pairs')} pairs" + trained_on_clause(run.eval)
    sampled = f"eval.json, {win['n']} prompts" if isinstance(win, dict) and win.get("n") else "eval.json"
    rows = [{"metric": key, "meaning": meaning + "; see its notes below", "before": None,
             "after": (sampled if key == "reward/policy" else where, metrics[key]),   # scored samples, not pairs
             "baseline": [("the reference model", metrics[base])] if base and is_number(metrics.get(base)) else None}
            for key, meaning, base in EVAL_JSON_KEYS if is_number(metrics.get(key))]
    if isinstance(win, dict) and is_number(win.get("win_rate")) and win.get("n"):
        from preflab.eval.winrate import outcome_counts

        interval = (f", interval {win.get('ci_low'):.3g} to {win.get('ci_high'):.3g}" if is_number(win.get("ci_low"))
                    and is_number(win.get("ci_high")) else "")
        rows.append({"metric": "win_rate", "before": None, "baseline": None,
                     "after": (f"eval.json, {outcome_counts(win)}{interval}", win["win_rate"]),
                     "meaning": win_rate_meaning(win)})
    return rows
