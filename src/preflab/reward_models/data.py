"""Pairwise rows for reward models: load_rows -> (context rendering) -> tokenize_pairs, with the data report.

Rows are TRL's preference rows {prompt?, chosen, rejected} with the optional columns `margin` (float, used by the
loss), `context` (rendered into the prompt, see `preflab.reward_models.context`) and `subset` (evaluation groups).
"""
from __future__ import annotations

import math
import numbers


from preflab.data.eval_set import train_and_eval
from preflab.data.overlap import overlap_notes, overlap_report
from preflab.data.report import BadRowPolicy, RowProblem, refuse_empty, training_skipped
from preflab.data.rows import load_rows
from preflab.data.tokenize import rejected_prompt_of, tokenize_pairs, tokenize_parallel
from preflab.errors import ConfigError, DataError, PreflabError
from preflab.reward_models.context import CONTEXT_FIELD, CONTEXT_TEMPLATE, has_context, with_context


def tokenize_reward_pairs(examples, tokenizer, *, max_length: int | None = 1024,
                          max_prompt_length: int | None = None, truncation_mode: str | None = None,
                          on_bad_row: str = "error", source: str = "", context_template: str | None = None,
                          max_completion_length: int | None = None, num_proc: int | None = None):
    """(tokenized pairs, report). Each side's ids are those of prompt + response tokenized as one text (TRL
    RewardTrainer's `tokenizer(prompt + response + eos)`, what a plain `tokenizer(...)` gives at inference), the
    prompt/response boundary placed at their common prefix. Contexts are rendered when `context_template` is
    given; when any row has a `margin`, every pair gets a float margin (0 where absent or null), so no batch
    silently drops the column. num_proc: tokenizing processes (TRL's dataset_num_proc; the same pairs and report).
    max_length: a pair whose chosen or rejected sequence (prompt + response) is longer is dropped, as TRL's
    RewardTrainer filters it out, and counted under `longer_than_max_length` in the report (never cut: a cut
    response would be scored at its cut); a DataError when it drops every pair.
    A row whose context `max_prompt_length` would cut (keep_end or unset truncation_mode keeps the prompt's end, cutting
    its start, where the template puts the context) is a bad row (`context_truncated`): the model would be trained on it without its context."""
    if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1):
        raise ConfigError(f"max_length={max_length!r} must be a positive integer or None.")  # not passed on below
    has_contexts = bool(context_template) and has_context(examples)
    if context_template:
        examples = with_context(examples, context_template)
    pairs, report, _ = tokenize_parallel("pairs", examples, tokenizer, num_proc=num_proc or 1, max_length=None,
                                         max_prompt_length=max_prompt_length, truncation_mode=truncation_mode,
                                         on_bad_row=on_bad_row, source=source,
                                         max_completion_length=max_completion_length, joint_only=True)
    if has_contexts and max_prompt_length is not None and truncation_mode != "keep_start":
        pairs = _check_contexts_kept(examples, pairs, report, tokenizer, max_prompt_length, on_bad_row)
    pairs = _check_margins(pairs, report, on_bad_row)
    if context_template:
        pairs = _check_context_text(pairs, report, on_bad_row)
    pairs = _drop_longer_than(pairs, report, max_length, source)
    if any(pair.extras.get("margin") is not None for pair in pairs):  # absent or null margin = 0 (counted and said:
        # missing_margins; TRL's collator fails on a null margin)
        for pair in pairs:
            pair.extras["margin"] = float(pair.extras.get("margin") or 0.0)
    return pairs, report


LONGER_THAN_MAX_LENGTH = "longer_than_max_length"


def pair_length(pair) -> int:
    """The longer of the pair's two sequences: prompt + chosen, (own) prompt + rejected (what TRL's filter reads)."""
    return max(len(pair.prompt_ids) + len(pair.chosen_ids), len(rejected_prompt_of(pair)) + len(pair.rejected_ids))


def _drop_longer_than(pairs: list, report, max_length: int | None, source: str) -> list:
    """The pairs whose both sequences fit `max_length` (TRL RewardTrainer's filter, `len(chosen_ids) <= max_length
    and len(rejected_ids) <= max_length`); the others are counted under `longer_than_max_length` in `report`
    (whatever on_bad_row says: TRL drops them and the rows are valid). DataError when none fits."""
    if max_length is None or not pairs:
        return pairs
    kept = [pair for pair in pairs if pair_length(pair) <= max_length]
    if not kept:
        longest, shortest = max(map(pair_length, pairs)), min(map(pair_length, pairs))
        raise DataError(f"{source or 'the reward pairs'}: every pair is longer than max_length={max_length} tokens "
                        f"(prompt + response; the longest is {longest} tokens, the shortest {shortest}), so none "
                        f"is left to use (TRL's RewardTrainer drops such pairs). Raise max_length to at least "
                        f"{shortest} (or set it to null), or use shorter rows.")
    for pair in pairs:
        length = pair_length(pair)
        if length > max_length:
            report.record_skip(RowProblem(LONGER_THAN_MAX_LENGTH, None, f"the pair is {length} tokens (prompt + "
                                          f"response), longer than max_length={max_length}"), pair.row_id)
            report.kept -= 1
            report.prompt_tokens -= len(pair.prompt_ids) + (len(pair.rejected_prompt_ids)
                                                            if pair.rejected_prompt_ids is not None else 0)
            report.response_tokens -= len(pair.chosen_ids) + len(pair.rejected_ids)
    report.max_prompt_tokens = max(max(len(p.prompt_ids), len(rejected_prompt_of(p))) for p in kept)
    report.max_response_tokens = max(max(len(p.chosen_ids), len(p.rejected_ids)) for p in kept)
    return kept


def dropped_note(dropped: int, max_length, sets: str = "", option: str = "max_length") -> str | None:
    """The note for pairs dropped as longer than max_length (None when none was); `option`: how the user sets it."""
    if not dropped:
        return None
    return (f"{dropped} pairs{sets} are longer than max_length={max_length} tokens and were dropped "
            f"({LONGER_THAN_MAX_LENGTH}), as TRL's RewardTrainer does; raise {option} (or unset it) to use them.")


def missing_margins(examples) -> int:
    """Rows without a margin (absent or null) among rows of which some have one: they train (and are scored) with
    margin 0. Said, not silent: TRL's RewardTrainer cannot collate a null margin (torch.tensor of None fails), so
    a gap in the column is more likely a data mistake than meant as 0."""
    margins = [ex.extras.get("margin") for ex in examples]
    return sum(m is None for m in margins) if any(m is not None for m in margins) else 0


def missing_margins_note(missing: int, source: str) -> str | None:
    """The note for `missing_margins` (None when every row has a margin, or none has)."""
    if not missing:
        return None
    return (f"{source}: {missing} rows have no margin (null or absent) beside rows that have one; they "
            "are trained and scored with margin 0. Give every row a margin if 0 is not meant.")


def _check_intra_head(cfg, examples, source: str) -> None:
    """MAPL intra rows (one completion under two prompts) train the Rc-BT loss with the Bradley-Terry head,
    -log sigmoid((r(x_w, y) - r(x_l, y)) / tau); other heads compare two responses of one prompt and refuse them."""
    intra = [x for x in examples if x.rejected_prompt is not None]
    if intra and cfg.reward_head != "bt":
        raise DataError(f"{source}: row {intra[0].row_id}: fields prompt_chosen / prompt_rejected: {len(intra)} MAPL "
                        f"intra rows, which reward_head={cfg.reward_head!r} does not read. Use reward_head: bt (on "
                        "these rows it is the Rc-BT loss) or drop those rows.")


def _check_contexts_kept(examples, pairs: list, report, tokenizer, max_prompt_length: int, on_bad_row: str) -> list:
    """The pairs whose rendered prompt (context first) fits `max_prompt_length` or that have no context; a longer
    one lost the start of its context to keep_end truncation: a bad row (DataError, or skipped and counted under
    `context_truncated` with on_bad_row: skip)."""
    with_ctx = {ex.row_id for ex in examples if ex.extras.get(CONTEXT_FIELD)}
    full, _ = tokenize_pairs([ex for ex in examples if ex.row_id in with_ctx], tokenizer, max_length=None,
                             on_bad_row="skip", joint_only=True)  # the uncut prompt lengths
    full_length = {pair.row_id: max(len(pair.prompt_ids), len(rejected_prompt_of(pair))) for pair in full}  # intra: x_l
    policy, kept = BadRowPolicy(on_bad_row, report), []
    for pair in pairs:
        length = full_length.get(pair.row_id, 0) if pair.row_id in with_ctx else 0
        if length <= max_prompt_length:
            kept.append(pair)
            continue
        policy.handle(RowProblem(
            "context_truncated", "context", f"the prompt with its context is {length} tokens; max_prompt_length="
            f"{max_prompt_length} (truncation_mode keep_end or unset: the prompt's end is kept) cuts its start, which "
            "holds the context",
            "Raise or unset max_prompt_length, set truncation_mode=keep_start, or shorten the prompt or context."),
            pair.row_id)
        report.kept -= 1
    return kept


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


def _check_context_text(pairs: list, report, on_bad_row: str) -> list:
    """The pairs whose `context` is absent, null or a string; another context (a list, an object, a number) is a bad
    row (DataError naming file, row and field, or skipped and counted under `bad_context` with on_bad_row: skip):
    render_context wrote its Python repr into the prompt (`Context: ['a', 'b']`) and trained on it without a word."""
    policy, kept = BadRowPolicy(on_bad_row, report), []
    for pair in pairs:
        value = pair.extras.get(CONTEXT_FIELD)
        if value is None or isinstance(value, str):
            kept.append(pair)
            continue
        policy.handle(RowProblem("bad_context", CONTEXT_FIELD, f"expected text (a criterion, scenario or user "
                                 f"profile), got {type(value).__name__} {value!r:.80}",
                                 "Give the context as one string (null or \"\" means no context)."), pair.row_id)
        report.kept -= 1
    return kept


def _group_context_rows(rows) -> bool:
    """Context rows without parent_id: give each row the id of its (prompt, response pair), so that eval_fraction
    holds a pair out under all its contexts together (a pair must not be trained on under one context and
    evaluated under another, models-and-loops.md #39; preflab.data.holdout holds parent_id groups out whole).
    Returns whether ids were set (the caller removes them after the split)."""
    if not has_context(rows) or any("parent_id" in ex.extras for ex in rows):
        return False
    ids: dict = {}
    for ex in rows:
        key = (repr(ex.prompt), frozenset((repr(ex.chosen), repr(ex.rejected))))
        ex.extras["parent_id"] = ids.setdefault(key, len(ids))
    return True


def reward_training_rows(cfg: dict):
    """The pairs the reward run of config `cfg` (its saved config.yaml, a dict) trained on, for `preflab eval --task
    reward`'s overlap count (preflab.eval.run.run_training_rows): its dataset_name's pairs read as load_reward_pairs
    reads them (prompt optional), less the rows eval_fraction held out, context rows grouped by their pair as
    there (_group_context_rows)."""
    from preflab.data.holdout import split_eval_fraction
    from preflab.eval.run import run_training_rows

    def kept(rows, fraction, seed):
        grouped = _group_context_rows(rows)
        train = split_eval_fraction(rows, fraction, seed)[0]
        if grouped:
            for ex in rows:
                ex.extras.pop("parent_id")
        return train

    return run_training_rows(cfg, lambda name, split: load_rows(name, split=split, kind="pairwise", on_bad_row="skip",
                                                                prompt_optional=True), hold_out=kept)


def load_reward_pairs(cfg, tokenizer) -> tuple[list, list, dict, str | None]:
    """(train pairs, eval pairs, report, context template or None) for `cfg.dataset_name` (+ eval set/fraction).

    The context template is used when any training row carries a `context`."""
    if not cfg.dataset_name:
        raise PreflabError("dataset_name is empty; give a hub name, a save_to_disk directory or a data file.")
    from preflab.data.configured_source import training_source

    rows, row_report = load_rows(training_source(cfg), split=cfg.dataset_split, kind="pairwise",
                                 on_bad_row=cfg.on_bad_row, prompt_optional=True)
    refuse_empty(row_report, "dataset_name", cfg.dataset_name)
    grouped = _group_context_rows(rows) if cfg.eval_fraction and not cfg.eval_dataset_name else False
    rows, eval_rows, eval_row_report = train_and_eval(
        cfg, rows, lambda name, split: load_rows(name, split=split, kind="pairwise", on_bad_row=cfg.on_bad_row,
                                                prompt_optional=True))
    if grouped:
        for ex in rows + eval_rows:
            ex.extras.pop("parent_id")
    _check_intra_head(cfg, rows + eval_rows, row_report.source)
    template = CONTEXT_TEMPLATE if has_context(rows) else None
    settings = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                    max_completion_length=cfg.max_completion_length, truncation_mode=cfg.truncation_mode,
                    on_bad_row=cfg.on_bad_row, context_template=template, num_proc=cfg.dataset_num_proc)
    train, tok_report = tokenize_reward_pairs(rows, tokenizer, source=cfg.dataset_name, **settings)
    report = {"train_rows": row_report.to_dict(), "train_tokenize": tok_report.to_dict()}
    report["skipped"] = training_skipped(report)  # read + tokenized (pairs past max_length)
    evals = []
    if eval_rows:
        evals, eval_tok = tokenize_reward_pairs(eval_rows, tokenizer,
                                                source=cfg.eval_dataset_name or cfg.dataset_name, **settings)
        report["eval_tokenize"] = eval_tok.to_dict()
    print(f"preflab: data: {row_report.summary()}; {tok_report.summary(shifted_note=False)}")
    if eval_rows:  # the eval set's own skips and cuts, said like the training set's
        if eval_row_report is not None:
            report["eval_rows"] = eval_row_report.to_dict()
        print(f"preflab: data (eval): {eval_row_report.summary() + '; ' if eval_row_report else ''}"
              f"{eval_tok.summary(shifted_note=False)}")
    dropped = tok_report.skipped.get(LONGER_THAN_MAX_LENGTH, 0) + (
        eval_tok.skipped.get(LONGER_THAN_MAX_LENGTH, 0) if eval_rows else 0)
    note = dropped_note(dropped, cfg.max_length, " (training and eval sets)" if eval_rows else "")
    if note:
        print(f"preflab: note: {note}")
    # eval pairs whose prompt is a training prompt, counted and said as the policy tasks do (preflab.loops.prepare):
    # the report's headline then does not call the eval set held-out (an eval_dataset_name = the training file)
    report["overlap"] = overlap_report(rows, eval_rows)
    for said in overlap_notes(report["overlap"], len(eval_rows), model="the reward model"):
        print(f"preflab: note: data: {said}")
    report["margin_missing"] = missing_margins(rows + eval_rows)
    note = missing_margins_note(report["margin_missing"], row_report.source)
    if note:
        print(f"preflab: note: {note}")
    cut = tok_report.response_truncated + (eval_tok.response_truncated if eval_rows else 0)
    if cut and cfg.max_completion_length is not None:  # preflab's option (TRL's RewardConfig has none): it cuts
        print(f"preflab: note: max_completion_length={cfg.max_completion_length} cut the responses of {cut} pairs "
              "(training and eval sets): a cut response has no eos and its reward is read at the cut; raise it (or "
              "set it to null) to score whole responses.")
    return train, evals, report, template
