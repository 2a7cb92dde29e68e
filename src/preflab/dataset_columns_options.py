"""The `dataset_columns` option: which dataset column each preflab field is read from, checked before any data is read.

    dataset_columns: {prompt: question, chosen: good, rejected: bad}   # preflab field <- your dataset's column

Direction: the KEY is the preflab field (the name preflab's readers look for), the VALUE is the column as the
dataset names it. The mapping applies to every source the run reads (dataset_name, eval_dataset_name, rows given
from Python) and to `preflab eval --data` of the run (its saved config.yaml, or `--data-columns`); the renaming
itself is preflab.data.columns.

A module of the config layer (beside preflab.config): the readers in preflab.data import the field list from here,
and the config check (TrainConfig._conflicts) refuses a mapping here before any row is read.
"""
from __future__ import annotations

OPTION = "dataset_columns"
DIRECTION = "preflab field: your dataset's column"

# every column name a preflab reader looks for, with the readers that look for it (the error for an unknown field
# lists them); an objective's own per-row extras (Objective.row_extras, e.g. sem_dpo's similarity) are added per run
READER_FIELDS: dict[str, str] = {
    "prompt": "pairs, KTO, SFT, online prompts, ranked lists, VLM, diffusion captions",
    "chosen": "pairs, reward models, VLM, diffusion (the preferred image)",
    "rejected": "pairs, reward models, VLM, diffusion (the other image)",
    "completion": "KTO unpaired rows, SFT prompt-completion rows, MAPL intra rows",
    "label": "KTO unpaired rows (true: desirable)",
    "messages": "SFT conversations",
    "text": "SFT plain text (dataset_text_field names another column instead)",
    "completions": "ranked lists (listwise loss_types)",
    "scores": "ranked lists (listwise loss_types)",
    "margin": "reward-model pairs (TRL RewardTrainer's per-pair margin)",
    "prompt_chosen": "MAPL intra rows",
    "prompt_rejected": "MAPL intra rows",
    "images": "VLM rows", "image": "VLM rows", "videos": "VLM rows", "rejected_images": "VLM rows",
    "caption": "diffusion (Pick-a-Pic)", "jpg_0": "diffusion (Pick-a-Pic)", "jpg_1": "diffusion (Pick-a-Pic)",
    "label_0": "diffusion (Pick-a-Pic)", "ps_score_0": "diffusion (Pick-a-Pic)", "ps_score_1": "diffusion (Pick-a-Pic)",
    "caption_0": "diffusion (per-image captions)", "caption_1": "diffusion (per-image captions)",
    "caption_chosen": "diffusion (per-image captions)", "caption_rejected": "diffusion (per-image captions)",
    "chosen_image": "diffusion", "rejected_image": "diffusion",
    "preference_prob": "diffusion", "chosen_score": "diffusion", "rejected_score": "diffusion",
}


def objective_fields(cfg) -> tuple[str, ...]:
    """The per-row extras the run's objective reads by name (task: dpo; e.g. sem_dpo's `similarity`): columns a
    mapping may name too. () where the task trains no row objective or the objective is itself invalid (that is
    reported by its own check)."""
    if getattr(cfg, "task", None) != "dpo":
        return ()
    from preflab.errors import PreflabError

    try:
        return tuple(cfg.objective().row_extras())
    except PreflabError:
        return ()


def columns_problems(columns, valid_fields, option: str = OPTION) -> list[str]:
    """One line per problem of a mapping {preflab field: dataset column}: not a mapping of names, an unknown field
    (listing the valid ones), two fields read from one column."""
    if columns is None:
        return []
    if not isinstance(columns, dict):
        return [f"{option} must be a mapping {{{DIRECTION}}}, e.g. {{prompt: question, chosen: good, rejected: bad}}; "
                f"got {type(columns).__name__} {columns!r}."]
    out = []
    bad = [(k, v) for k, v in columns.items() if not (isinstance(k, str) and k.strip() and isinstance(v, str) and
                                                       v.strip())]
    if bad:
        out.append(f"{option}: {bad[0][0]!r}: {bad[0][1]!r} is not a pair of non-empty names ({DIRECTION}).")
    unknown = [k for k in columns if isinstance(k, str) and k not in valid_fields]
    if unknown:
        from preflab.errors import nearest

        first, value = unknown[0], columns[unknown[0]]
        hint = (f" It reads as written the other way round: write {{{value}: {first}}} (the field first)."
                if value in valid_fields else f"{nearest(first, tuple(valid_fields))} If {first!r} is your "
                f"dataset's column, write it as the value: {{FIELD: {first}}}.")
        out.append(f"{option}: {', '.join(repr(k) for k in unknown)} {'is' if len(unknown) == 1 else 'are'} not a "
                   f"preflab field. The keys are the fields preflab reads ({DIRECTION}): "
                   f"{', '.join(sorted(valid_fields))}.{hint}")
    seen: dict[str, str] = {}
    for field, column in columns.items():
        if not isinstance(column, str):
            continue
        if column in seen:
            out.append(f"{option}: {seen[column]!r} and {field!r} are both read from the column {column!r}; each field "
                       "needs its own column.")
        seen.setdefault(column, field)
    return out


def dataset_columns_conflicts(cfg) -> list[str]:
    """TrainConfig.check's lines for dataset_columns (columns_problems with the run's fields)."""
    columns = getattr(cfg, OPTION, None)
    if not columns:
        return [] if columns in (None, {}) else columns_problems(columns, READER_FIELDS)
    return columns_problems(columns, {**READER_FIELDS, **dict.fromkeys(objective_fields(cfg), "the objective")})
