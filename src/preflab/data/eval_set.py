"""A run's eval set: `eval_dataset_name` read whole, else a seeded `eval_fraction` hold-out of the training items
(preflab.data.holdout: the same positions for a given seed in every run kind), else none. One place for the choice
and for its empty-set checks, so every loader refuses the same cases with the same messages.

    train, evals, eval_report = train_and_eval(cfg, train, lambda name, split: load_rows(name, split=split))
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from preflab.data.holdout import split_eval_fraction
from preflab.data.report import RowReport, refuse_empty
from preflab.errors import ConfigError, DataError
from preflab.runlog import is_main_process

T = TypeVar("T")


def no_eval_set_for_best(where: str) -> ConfigError:
    """save_strategy best in a run without an eval set (`where`: how that showed)."""
    return ConfigError(f"save_strategy: best saves a checkpoint at each evaluation that improves metric_for_best_model, "
                       f"but {where}, so it would save nothing. Set eval_dataset_name or eval_fraction (an eval set), "
                       "or use save_strategy: steps with save_steps.")


def no_eval_set_for_plateau(where: str) -> ConfigError:
    """lr_scheduler_type reduce_lr_on_plateau in a run without an eval set (`where`: how that showed)."""
    return ConfigError(f"lr_scheduler_type: reduce_lr_on_plateau steps the learning rate with the eval metric "
                       f"(metric_for_best_model) at each evaluation, but {where}, so the rate would never change. Set "
                       "eval_dataset_name or eval_fraction (an eval set), or choose another lr_scheduler_type.")


def note_eval_steps_without_eval_set(cfg) -> None:
    """eval_steps > 0 asks for evaluations; without eval_dataset_name or eval_fraction none runs, which was silent:
    a note says so (a config that turns its eval set off with eval_fraction=0 keeps running). So does eval_split
    alone (eval_split_unused): a diffusion run given `dataset_name=DIR eval_split=test` trained with "0 eval
    examples" and no word, as a text or vlm run without eval_steps did; every task calls this one note. Called where a run
    reads its data from cfg. save_strategy best without an eval set would save nothing, reduce_lr_on_plateau would
    never step: a ConfigError."""
    if cfg.eval_dataset_name or cfg.eval_fraction > 0:
        return
    if getattr(cfg, "save_strategy", None) == "best":
        raise no_eval_set_for_best("there is no eval set (no eval_dataset_name, eval_fraction 0)")
    if getattr(cfg, "lr_scheduler_type", None) == "reduce_lr_on_plateau":
        raise no_eval_set_for_plateau("there is no eval set (no eval_dataset_name, eval_fraction 0)")
    if getattr(cfg, "load_best_model_at_end", False):  # before: the run evaluated nothing and kept its last weights
        raise ConfigError("load_best_model_at_end: true, but there is no eval set (no eval_dataset_name, "
                          "eval_fraction 0), so no evaluation ranks the checkpoints and the final model would be the "
                          "last step's. Set eval_dataset_name or eval_fraction, or remove "
                          "load_best_model_at_end.")
    if not is_main_process():
        return
    named = eval_split_unused(cfg)
    if getattr(cfg, "eval_steps", 0):
        print(f"preflab: note: eval_steps={cfg.eval_steps}, but there is no eval set (no eval_dataset_name, "
              "eval_fraction 0), so no evaluation runs; set one of them for eval_* metrics, or eval_steps: 0." + named)
    elif getattr(cfg, "eval_delay", 0):
        print(f"preflab: note: eval_delay={cfg.eval_delay:g}, but there is no eval set (no eval_dataset_name, "
              "eval_fraction 0), so no evaluation runs to delay; set one of them for eval_* metrics, or remove "
              "eval_delay." + named)
    elif getattr(cfg, "generate_during_eval", False):
        print("preflab: note: generate_during_eval: there is no eval set (no eval_dataset_name, eval_fraction 0), so "
              "no evaluation runs and no eval_samples.jsonl is written." + named)
    elif named:  # eval_split alone asks for an evaluation as much as eval_steps does (every task: text, vlm, diffusion)
        print("preflab: note: there is no eval set (no eval_dataset_name, eval_fraction 0), so no evaluation "
              "runs." + named)


def eval_split_unused(cfg) -> str:
    """The sentence (with a leading space) saying that eval_split names a split of eval_dataset_name, not of
    dataset_name, and how to evaluate on dataset_name's split; "" without eval_split. For a run with no eval set
    (note_eval_steps_without_eval_set), where eval_split is read by nothing: TRL's scripts evaluate on
    dataset_test_split only with eval_strategy steps / epoch (preflab.config_trl takes that form as eval_dataset_name
    = dataset_name)."""
    split = getattr(cfg, "eval_split", None)
    if not split:
        return ""
    if not isinstance(cfg.dataset_name, str):
        return f" eval_split={split!r} names a split of eval_dataset_name, which is not set, so it is unused."
    return (f" eval_split={split!r} names a split of eval_dataset_name, not of dataset_name: to evaluate on "
            f"{cfg.dataset_name}'s {split!r} split, set eval_dataset_name: {cfg.dataset_name}.")


def train_and_eval(cfg, items: Sequence[T], read_eval: Callable[[str, str], tuple[list[T], Any]],
                   describe: Callable[[Any], str] | None = None) -> tuple[list[T], list[T], Any]:
    """(training items, eval items, the eval set's report or None).

    cfg.eval_dataset_name set: `read_eval(eval_source(cfg), eval_split)` -> (eval items, report) (the name with its
    configuration: preflab.data.configured_source); a report (RowReport) of no row at all is refuse_empty's
    DataError (naming the split and file(s) read); no eval item is a
    DataError (evaluation would silently not run) saying `describe(report)` (default: the report's summary()).
    Else cfg.eval_fraction > 0: `split_eval_fraction(items, eval_fraction, seed)`, order kept on both sides; a
    hold-out that leaves no training item is a DataError. Else: (items, [], None), with a note when eval_steps > 0
    (note_eval_steps_without_eval_set)."""
    note_eval_steps_without_eval_set(cfg)
    name = cfg.eval_dataset_name
    if name:
        from preflab.data.configured_source import eval_source, naming_eval_data

        with naming_eval_data(cfg):
            evals, report = read_eval(eval_source(cfg), cfg.eval_split)
        if isinstance(report, RowReport):  # nothing read at all: its split and file(s), not "no usable examples"
            refuse_empty(report, "eval_dataset_name", name)
        if not evals:
            said = describe(report) if describe is not None else _summary(report)
            raise DataError(f"the eval set (eval_dataset_name={name}) has no usable examples: {said}. Fix its rows "
                            f"(or max_length" + (f", or eval_split={cfg.eval_split!r}" if cfg.eval_split else "") +
                            "), or drop eval_dataset_name.")
        return list(items), list(evals), report
    if cfg.eval_fraction > 0:
        train, evals = split_eval_fraction(items, cfg.eval_fraction, cfg.seed)
        if items and not train:
            refuse_holding_out_everything(cfg, len(items), "usable training example")
        return train, evals, None
    return list(items), [], None


def refuse_holding_out_everything(cfg, count: int, unit: str) -> None:
    """The DataError for an eval_fraction that holds out every one of the `count` units (rows, examples or
    parent_id groups) of dataset_name: max(1, round(eval_fraction x count)) of them are held out, so a fraction near 1
    or a source of one unit leaves nothing to train on. Before, the DPO-family reader went on and stopped with "no
    training rows are left ...: every row was skipped", blaming rows that were all kept."""
    raise DataError(f"eval_fraction={cfg.eval_fraction} holds out all {count} {unit}(s) of dataset_name="
                    f"{cfg.dataset_name} (at least one is held out), leaving none to train on. Give more rows, lower "
                    "eval_fraction or set eval_fraction: 0, or give the eval set as eval_dataset_name.")


def _summary(report) -> str:
    """The report's one-line summary(), or its counts (a RowReport: source, rows seen, kept, skipped by reason)."""
    if callable(getattr(report, "summary", None)):
        return report.summary()
    if isinstance(report, RowReport):
        return f"{report.source or '<rows>'}: {report.total} rows, {report.kept} kept, {report._skip_text()}"
    return "no rows"
