"""What every `preflab eval` task prints and refuses alike: the terminal summary (format_summary, HEADLINE) and the
refusal of the options a routed task does not read (refuse_unread_options, TASK_READS). The command itself (its
parser and the policy eval) is preflab.eval_cli.cli; --task reward / vlm / diffusion run in the rooms that own them
(preflab.reward_models.cli, preflab.loops.vlm_eval, preflab.loops.diffusion_eval), which build on this one."""
from __future__ import annotations

from preflab.errors import ConfigError

# With tied pairs (alpha = 0.5) alignment_gap is R* - R under the tie rule (preflab.eval.ranking.ranking_report):
# the two *_with_ties lines (present only then) are printed beside it, so the gap is the difference of two lines shown
# (before, R and R* by order were the only ones printed and the gap could not be read off them).
HEADLINE = ("ranking_accuracy", "ranking_accuracy_norm", "ranking_accuracy_with_ties", "reference_ranking_accuracy",
            "rewards/accuracies", "idealized_ranking_accuracy", "idealized_ranking_accuracy_with_ties",
            "alignment_gap", "difficulty/ref_incorrect_fraction",
            "difficulty/hard_fraction", "logps_drift/chosen", "logps_drift/rejected",
            "logps_drift/suppression_rate", "dispersion/unseen_log_mass_drift", "win_rate", "win_rate/ci_low",
            "win_rate/ci_high")
UNPAIRED_HEADLINE = ("unpaired/auroc", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                     "logps/rejected")  # preflab.eval.unpaired


# what each routed task reads besides CHECKPOINT, --data, --data-config, --data-columns, --task and --out (the rest
# would be ignored)
TASK_READS = {
    "reward": {"split", "limit", "batch_size", "max_length"},
    "diffusion": {"reference", "no_reference", "reward_fn", "win_rate_prompts", "confidence", "batch_size",
                  "split", "user_embeddings"},
    "vlm": {"reference", "no_reference", "batch_size", "split"},
    "distill": {"reference", "no_reference", "batch_size", "split", "limit"},  # --reference: another teacher
}


def refuse_unread_options(args, task: str) -> None:
    """`preflab eval --task reward|diffusion` reads only TASK_READS[task]: an option set to anything but its
    default that the task does not read is refused, naming it (never accepted and ignored). --split not given stays
    None: every task reads the policy eval's default ('test' where the data has one, else 'train', with a note:
    preflab.eval.run.open_eval_split)."""
    defaults = getattr(args, "option_defaults", {})
    always = {"checkpoint", "data", "data_config", "data_columns", "task", "out"}
    unread = [dest for dest, default in defaults.items()
              if dest not in always | TASK_READS[task] and getattr(args, dest, default) != default]
    if unread:
        names = ", ".join("--" + dest.replace("_", "-") for dest in unread)
        reads = ", ".join("--" + dest.replace("_", "-") for dest in sorted(TASK_READS[task]))
        raise ConfigError(f"preflab eval --task {task} does not use {names} (it reads {reads}, --data-config, "
                          f"--data-columns, --out); remove "
                          f"{'it' if len(unread) == 1 else 'them'}.")
    if getattr(args, "data", "") is None:  # --held-out rebuilds a DPO-family run's pairs only (the policy eval)
        raise ConfigError(f"preflab eval --task {task} needs --data (the held-out rows to evaluate).")
    refuse_out_of_range(args, TASK_READS[task])


# the counts of `preflab eval` (at least 1 when given) and --confidence (in (0, 1)); every task checks them here
COUNTS = ("batch_size", "limit", "win_rate_prompts", "max_new_tokens", "max_length", "max_prompt_length")


def refuse_out_of_range(args, read) -> None:
    """A count among `read` below 1, or a --confidence outside (0, 1), is a ConfigError naming the option, before
    anything loads. The routed tasks (reward, diffusion, vlm) did not check: `--task diffusion --confidence 1.5`
    was a StatisticsError traceback after both pipelines had sampled, `--win-rate-prompts 0` a tokenizer
    IndexError, and `--win-rate-prompts -2` silently judged all prompts but the last two."""
    if "confidence" in read and not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {args.confidence}.")
    for option in COUNTS:
        value = getattr(args, option, None) if option in read else None
        if value is not None and value < 1:
            raise ConfigError(f"--{option.replace('_', '-')} must be at least 1, got {value}.")


def format_summary(result: dict, extra: tuple = (), more: tuple = ()) -> str:
    """A few lines for the terminal: the headline metrics (then `extra`, a task's own metric keys the headline
    lacks: `--task vlm` and `--task diffusion`; then `more`, lines a task writes itself: a DPA model's
    per-direction accuracies on one line, a ppd eval's per-user lines), then the notes, what was skipped, and where eval.json is (`path`).
    Every eval task prints through here, so its notes come after the whole metric block."""
    metrics = result.get("metrics", {})
    unpaired = "num_completions" in result
    count = (f"{result['num_completions']} unpaired completions ({result.get('num_desirable')} desirable)" if unpaired
             else f"{result.get('num_pairs')} pairs")
    if "num_rated_rows" in result:  # a DPA attribute model (--task reward): rated rows and direction pairs
        count = f"{result['num_rated_rows']} rated rows, {count}"
    lines = [f"preflab eval: {count}" + (f", beta={result['beta']}" if result.get("beta") is not None else "")]
    headline = UNPAIRED_HEADLINE if unpaired else HEADLINE
    own = tuple(k for k in extra if k not in headline)
    shown = [(key, metrics.get(key)) for key in headline + own + tuple(k for k in metrics
                                                                     if k.startswith("reward_model/"))]
    shown = [(key, value) for key, value in shown if isinstance(value, (int, float))]
    width = max([38] + [len(key) for key, _ in shown])  # one column, however long a key (DPA's per-attribute)
    lines += [f"  {key:{width}s} {value:.4f}" for key, value in shown]
    win = result.get("win_rate")
    if isinstance(win, dict) and win.get("n"):  # the verdicts behind win_rate: how much of it is ties' halves
        from preflab.eval.winrate import outcome_counts

        lines.append(f"  {'win_rate verdicts':{width}s} {outcome_counts(win)}")
    lines += list(more)
    lines += [f"  note: {n}" for n in result.get("notes", [])]
    lines += [f"  skipped {k}: {why}" for k, why in result.get("missing", {}).items()]
    if result.get("path"):
        lines.append(f"  wrote {result['path']}")
    return "\n".join(lines)
