"""What a run left out of its data, from summary.json's data report, for the notes at the top of `preflab report`.

The run says it once on the terminal as it starts (`preflab: data: ...`); the report, read later and often by
someone else, showed none of it: a reward run whose pairs longer than max_length were dropped (TRL's filter) or
a DPO run whose responses were cut looked like a run on the whole file. One line per set with something left out:
rows / examples skipped by reason (of how many), prompts and responses cut, and per run the examples each epoch
does not reach (`unused_rows_per_epoch`) and the reward rows without a margin (`margin_missing`); for an online
run, the completions the judges scored cut off, empty or not at all, and the steps that trained nothing.
"""
from __future__ import annotations

SETS = (("train_rows", "training rows"), ("train_tokenize", "training examples (tokenized)"),
        ("eval_rows", "eval rows"), ("eval_tokenize", "eval examples (tokenized)"),
        # an online run's prompt rows and their tokenization (preflab.online.run): training and held-out prompts
        ("prompt_rows", "prompt rows"), ("prompt_tokenize", "training prompts (tokenized)"),
        ("eval_prompt_tokenize", "held-out eval prompts (tokenized)"))


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def data_notes(summary: dict) -> list[str]:
    """One note per data set of `summary["data"]` that skipped or cut something, then the run-wide counts."""
    data = summary.get("data") if isinstance(summary, dict) else None
    if not isinstance(data, dict):
        return online_notes(summary)
    notes = []
    for key, label in SETS:
        part = data.get(key)
        if not isinstance(part, dict):
            continue
        skipped = {str(k): _count(v) for k, v in (part.get("skipped") or {}).items() if _count(v)}
        pieces = []
        if skipped:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
            pieces.append(f"{sum(skipped.values())} of {part.get('total')} left out ({reasons})")
        for side in ("prompt", "response"):
            if _count(part.get(f"{side}_truncated")):
                pieces.append(f"{part[f'{side}_truncated']} with the {side} truncated")
        if pieces:
            source = f" of {part['source']}" if part.get("source") else ""
            notes.append(f"data: {label}{source}: " + "; ".join(pieces))
    unused = _count(summary.get("unused_rows_per_epoch"))
    if unused:
        notes.append(f"data: {unused} training examples per epoch are not trained on in that epoch (every step takes "
                     "a full global batch; unused_rows_per_epoch)")
    if _count(data.get("margin_missing")):
        notes.append(f"data: {data['margin_missing']} reward rows without a margin beside rows with one were trained "
                     "with margin 0 (margin_missing)")
    return notes + online_notes(summary)


# summary.json "online" counts (preflab.online.run) -> what the report says of them; the run prints each once
ONLINE_COUNTS = (("truncated_completions", "reached max_completion_length without EOS, so the judges scored cut-off "
                  "text (completions/clipped_ratio)"),
                 ("empty_completions", "were empty (completions/empty)"),
                 ("judge_dropped", "got no score from the judges and were left out of training (judge/dropped)"))


def tool_use_note(online: dict) -> str | None:
    """The note of a run trained with tools (summary.json online.tool_calls, online.tool_failures: the training
    rounds' totals) whose completions never called one, or whose every call failed: the tools= were offered and the
    metrics stay 0 (tools/call_frequency) or 1 (tools/failure_frequency) without a word, and the run trained as plain
    GRPO on its completions. None otherwise, and for a run without the counts (no tools)."""
    calls, failures, rounds = online.get("tool_calls"), online.get("tool_failures"), online.get("rounds")
    if not isinstance(calls, int) or isinstance(calls, bool):
        return None
    if calls == 0:
        return (f"tools: no completion of the {rounds} training round(s) called a tool (online.tool_calls 0, "
                "tools/call_frequency 0), so the run trained as it would without tools; check that the chat template "
                "shows the tools to the model and that it writes calls the response parser reads")
    if failures == calls:
        return (f"tools: every one of the {calls} tool calls of the training rounds failed (online.tool_failures, "
                "tools/failure_frequency 1): each observation was an error; the rounds' tool results held no answer")
    return None


def online_notes(summary: dict) -> list[str]:
    """An online run's completions the judges scored cut off, empty or not at all, and its steps that trained
    nothing (a round without examples: online.empty_steps; every completion of every prompt rewarded alike:
    online.no_signal_rounds). A run whose curves look normal may have learned from little of what it generated."""
    online = summary.get("online") if isinstance(summary, dict) else None
    if not isinstance(online, dict):
        return []
    total = online.get("completions")
    pieces = [f"{online[key]} {what}" for key, what in ONLINE_COUNTS if _count(online.get(key))]
    notes = [f"generation: of {total} completions, " + "; ".join(pieces)] if pieces else []
    notes += [note] if (note := tool_use_note(online)) else []
    if _count(online.get("empty_steps")):
        notes.append(f"generation: {online['empty_steps']} step(s) had no training examples (a round without pairs or "
                     "groups) and were zero-gradient (online.empty_steps)")
    if _count(online.get("no_signal_rounds")):
        notes.append(f"generation: {online['no_signal_rounds']} of {online.get('rounds')} rounds gave every completion of "
                     "every prompt the same reward: every advantage 0, so they trained no policy term (at most a KL term or "
                     "entropy bonus; online.no_signal_rounds)")
    missing = online.get("judge_not_applicable")  # {judge: scored completions it returned None / NaN for}
    if isinstance(missing, dict):
        shown = [f"'{name}' {n}" for name, n in missing.items() if _count(n)]
        if shown:
            scored = total - online.get("judge_dropped", 0) if _count(total) else None
            notes.append(f"judges: of {scored} scored completions, some judges returned None or NaN (not applicable): "
                         f"{', '.join(shown)}; their rewards are the other judges' weighted sum "
                         "(online.judge_not_applicable)")
    partial = online.get("partial_last_round")
    if isinstance(partial, dict) and _count(partial.get("steps_trained")):
        notes.append(f"generation: the last round ({partial.get('round')}) trained {partial['steps_trained']} of its "
                     f"{partial.get('round_steps')} steps: max_steps ended the run mid-round (online.partial_last_round)")
    return notes


def held_out_generation_notes(rows: list[dict]) -> list[str]:
    """An online dataset run's held-out eval (metrics.jsonl eval rows, preflab.online.run.OnlineRun.evaluate): at
    the last eval step that logged them, the fraction of greedy held-out answers cut at max_completion_length
    (eval_completions/clipped_ratio > 0: eval_reward scored cut-off text) and the held-out prompts no judge scored
    (eval_judge/dropped > 0: out of eval_reward and the win rate); with how many eval steps had any, since the
    headline shows the last. The training rounds' counts are online_notes'."""
    def logged(key: str) -> list[tuple[float, float]]:
        return [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))
                and not isinstance(row.get(key), bool) and isinstance(row.get("step"), (int, float))]

    notes = []
    clipped, dropped = logged("eval_completions/clipped_ratio"), logged("eval_judge/dropped")
    some = sum(value > 0 for _, value in clipped)
    if some:
        at, ratio = clipped[-1]
        notes.append(f"held-out eval: greedy held-out answers reached max_completion_length without EOS at {some} of "
                     f"{len(clipped)} eval steps ({ratio:.1%} of them at the last, step {at:g}), so eval_reward "
                     "scored cut-off text there (eval_completions/clipped_ratio)")
    some = sum(value > 0 for _, value in dropped)
    if some:
        at, count = dropped[-1]
        most_at, most = max(dropped, key=lambda x: x[1])
        notes.append(f"held-out eval: the judges gave no score to some held-out prompts at {some} of {len(dropped)} "
                     f"eval steps (at most {most:g}, at step {most_at:g}; {count:g} at the last, step {at:g}); "
                     "those prompts are left out of eval_reward and the win rate (eval_judge/dropped)")
    return notes
