"""Pairwise rows for reward models: load_rows -> (context rendering) -> tokenize_pairs, with the data report.

Rows are TRL's preference rows {prompt?, chosen, rejected} with the optional columns `margin` (float, used by the
loss), `context` (rendered into the prompt, see `preflab.reward_models.context`) and `subset` (evaluation groups).
"""
from __future__ import annotations

import math
import numbers


from preflab.data.report import BadRowPolicy, RowProblem
from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.errors import PreflabError
from preflab.reward_models.context import CONTEXT_TEMPLATE, has_context, with_context


def tokenize_reward_pairs(examples, tokenizer, *, max_length: int | None = 1024,
                          max_prompt_length: int | None = None, truncation_mode: str = "keep_end",
                          on_bad_row: str = "error", source: str = "", context_template: str | None = None,
                          max_completion_length: int | None = None):
    """(tokenized pairs, report). Contexts are rendered when `context_template` is given; when any row has a
    `margin`, every pair gets a float margin (0 where absent or null), so no batch silently drops the column."""
    if context_template:
        examples = with_context(examples, context_template)
    pairs, report = tokenize_pairs(examples, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                                   truncation_mode=truncation_mode, on_bad_row=on_bad_row, source=source,
                                   max_completion_length=max_completion_length)
    pairs = _check_margins(pairs, report, on_bad_row)
    if any(pair.extras.get("margin") is not None for pair in pairs):  # absent or null margin = 0 (TRL)
        for pair in pairs:
            pair.extras["margin"] = float(pair.extras.get("margin") or 0.0)
    return pairs, report


def _check_margins(pairs: list, report, on_bad_row: str) -> list:
    """The pairs whose `margin` is absent, null or a finite number; another margin (a string, NaN, inf, a bool)
    is a bad row (DataError, or skipped and counted under `bad_margin` with on_bad_row: skip)."""
    policy, kept = BadRowPolicy(on_bad_row, report), []
    for pair in pairs:
        value = pair.extras.get("margin")
        if value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)
                             and math.isfinite(value)):
            kept.append(pair)
            continue
        policy.handle(RowProblem("bad_margin", "margin", f"the margin {value!r} is not a finite number",
                                 "Give a number (null or no margin means 0)."), pair.row_id)
        report.kept -= 1
    return kept


def load_reward_pairs(cfg, tokenizer) -> tuple[list, list, dict, str | None]:
    """(train pairs, eval pairs, report, context template or None) for `cfg.dataset_name` (+ eval set/fraction).

    The context template is used when any training row carries a `context`."""
    if not cfg.dataset_name:
        raise PreflabError("dataset_name is empty; give a hub name, a save_to_disk directory or a data file.")
    rows, row_report = load_rows(cfg.dataset_name, split=cfg.dataset_split, kind="pairwise",
                                 on_bad_row=cfg.on_bad_row)
    eval_rows, eval_row_report = [], None
    if cfg.eval_dataset_name:
        eval_rows, eval_row_report = load_rows(cfg.eval_dataset_name, split=cfg.eval_split, kind="pairwise",
                                 on_bad_row=cfg.on_bad_row)
    elif cfg.eval_fraction > 0:
        from preflab.data.holdout import split_eval_fraction

        rows, eval_rows = split_eval_fraction(rows, cfg.eval_fraction, cfg.seed)
    template = CONTEXT_TEMPLATE if has_context(rows) else None
    settings = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                    max_completion_length=cfg.max_completion_length, truncation_mode=cfg.truncation_mode, on_bad_row=cfg.on_bad_row, context_template=template)
    train, tok_report = tokenize_reward_pairs(rows, tokenizer, source=cfg.dataset_name, **settings)
    report = {"train_rows": row_report.to_dict(), "train_tokenize": tok_report.to_dict(),
              "skipped": dict(row_report.to_dict().get("skipped", {}))}
    evals = []
    if eval_rows:
        evals, eval_tok = tokenize_reward_pairs(eval_rows, tokenizer,
                                                source=cfg.eval_dataset_name or cfg.dataset_name, **settings)
        report["eval_tokenize"] = eval_tok.to_dict()
    print(f"preflab: data: {row_report.summary()}; {tok_report.summary()}")
    if eval_rows:  # the eval set's own skips and cuts, said like the training set's
        if eval_row_report is not None:
            report["eval_rows"] = eval_row_report.to_dict()
        print(f"preflab: eval data: {eval_row_report.summary() + '; ' if eval_row_report else ''}"
              f"{eval_tok.summary()}")
    return train, evals, report, template
