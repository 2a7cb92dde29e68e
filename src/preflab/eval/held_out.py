"""`preflab eval RUN --held-out`: exactly the rows a run's `eval_fraction` held out of its training data.

The rows are rebuilt by the rule the run split by, not a second copy of it: the run's dataset_name (with its
dataset_config, dataset_columns and dataset_split) is read as preflab.eval.run.policy_training_rows reads it for the
overlap check (preflab.eval.run.run_training_rows; bad rows skipped and counted, as `on_bad_row: skip` skipped
them in training), and data.holdout.hold_out_rows, the function preflab.loops.prepare.prepare_examples holds out
with, picks the held-out source rows (or whole parent_id groups) with the run's seed. Because the unit positions are
drawn over the rows kept after skipping, a split that counted skipped rows would hold out other rows.

    rows, said = held_out_rows(cfg)   # the held-out rows' raw dicts (the run's own column names), a note
"""
from __future__ import annotations

from preflab.errors import ConfigError


def refuse_no_held_out(cfg: dict, run: str) -> None:
    """ConfigError, with the reason and what to pass instead, for a run whose eval rows were not held out of its
    training data by eval_fraction: no saved config, an eval_dataset_name (its eval set is a file: --data it), no
    eval_fraction, or a run that is not a preference-pair run (task sft / online / reward read other rows)."""
    if not cfg:
        raise ConfigError(f"--held-out rebuilds the rows a run's eval_fraction held out from its config.yaml, and "
                          f"{run} has none; pass --data with held-out pairs.")
    if cfg.get("eval_dataset_name"):
        split = cfg.get("eval_split") or "test"
        raise ConfigError(f"--held-out: {run} evaluated on eval_dataset_name={cfg['eval_dataset_name']} (split "
                          f"{split}), not on rows held out of its training data; pass --data "
                          f"{cfg['eval_dataset_name']} --split {split} instead.")
    if not cfg.get("eval_fraction"):
        raise ConfigError(f"--held-out: {run} had no eval_fraction (config.yaml), so it held out no rows of its "
                          "training data; pass --data with held-out pairs.")
    if cfg.get("task") not in (None, "dpo"):
        raise ConfigError(f"--held-out rebuilds the preference pairs a DPO-family run held out; {run} is a "
                          f"task: {cfg.get('task')} run. Pass --data with held-out rows.")
    extras = run_row_extras(cfg)
    if extras and cfg.get("on_bad_row") == "skip":
        raise ConfigError(f"--held-out: {run}'s objective reads the row columns {extras} and it skipped bad rows "
                          "(on_bad_row: skip), so a row skipped for one of them shifted its split, which --held-out "
                          "(reading preference pairs as the overlap check does) cannot rebuild; pass --data with "
                          "held-out pairs.")


def run_row_extras(cfg: dict) -> list[str]:
    """The row columns the run's loss_type requires of every training row (Objective.row_extras, which
    preflab.loops.prepare checks while reading): a row without them was skipped under on_bad_row: skip. A user's
    objective class (file.py:Class) is not loaded here: none assumed."""
    from preflab.objectives import objective_class, resolve_name

    names = cfg.get("loss_type") or "sigmoid"
    extras: set[str] = set()
    for name in names if isinstance(names, list) else [names]:
        if isinstance(name, str) and ":" not in name:
            extras |= set(objective_class(resolve_name(name)).row_extras())
    return sorted(extras)


def held_out_rows(cfg: dict, run: str = "the run") -> tuple[list[dict], str]:
    """(the raw rows eval_fraction held out of the run of saved config `cfg`, in source order, as dicts with the
    data's own column names: `preflab eval` renames them by the run's dataset_columns as it renames --data; a note
    naming them). Refused (refuse_no_held_out) where the run held none out, or its training data cannot be read.
    The training data is read once: its rows' raw dicts are kept (RowReader's keep) by the read that validates and
    splits them, where a second read picked the held-out ones (which rows are held out is known only after the
    split, so every read row's dict is kept while this runs: the data's size once more in memory)."""
    from preflab.data.holdout import hold_out_rows
    from preflab.eval.run import policy_training_rows
    from preflab.models.run_config import run_seed

    refuse_no_held_out(cfg, run)
    held: list = []

    def keep_and_note_held(rows, fraction, seed):
        kept, out, _ = hold_out_rows(rows, fraction, seed)
        held.extend(out)
        return kept

    raw: dict[int, dict] = {}  # every row as the data holds it, by row id, from the one read of the training data
    training = policy_training_rows(cfg, hold_out=keep_and_note_held, keep_raw=raw)
    if training.rows is None:
        raise ConfigError(f"--held-out: {training.why.split(', so ')[0]}; pass --data with held-out pairs.")
    ids = {r.row_id for r in held}
    rows = [data for row_id, data in raw.items() if row_id in ids]  # in source order, as the data holds them
    said = (f"--held-out: the {len(rows)} rows the run held out of {training.whose} (eval_fraction="
            f"{cfg['eval_fraction']}, seed {run_seed(cfg)}, rows it skipped "
            f"not counted), rebuilt as the run split them; {len(training.rows)} rows were kept for training")
    return rows, said
