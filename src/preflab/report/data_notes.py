"""What a run left out of its data, from summary.json's data report, for the notes at the top of `preflab report`.

The run says it once on the terminal as it starts (`preflab: data: ...`); the report, read later and often by
someone else, showed none of it: a reward run whose pairs longer than max_length were dropped (TRL's filter) or
a DPO run whose responses were cut looked like a run on the whole file. One line per set with something left out:
rows / examples skipped by reason (of how many), prompts and responses cut, and per run the examples each epoch
does not reach (`unused_rows_per_epoch`) and the reward rows without a margin (`margin_missing`).
"""
from __future__ import annotations

SETS = (("train_rows", "training rows"), ("train_tokenize", "training examples (tokenized)"),
        ("eval_rows", "eval rows"), ("eval_tokenize", "eval examples (tokenized)"))


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def data_notes(summary: dict) -> list[str]:
    """One note per data set of `summary["data"]` that skipped or cut something, then the run-wide counts."""
    data = summary.get("data") if isinstance(summary, dict) else None
    if not isinstance(data, dict):
        return []
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
    return notes
