"""The listwise batch kind: `preflab train` with a ListBatch objective (rrhf) on ranked lists of k responses.

Rows (jsonl, parquet, hub, ... as for pairs):

    {"prompt": "...", "completions": ["response 1", ..., "response k"], "scores": [s_1, ..., s_k]}

k >= 2 responses per prompt, the same k in every row, one finite score each (higher is better; ties allowed); prompt
and completions both text, or both message lists. RRHF's own data (GanjinZero/RRHF: "query", "responses", "scores")
reads with dataset_columns: {prompt: query, completions: responses}. Pairs-only data
(chosen / rejected, no completions) is refused: it is not a ranked list (write completions: [chosen, rejected],
scores: [1, 0] to rank a pair, or choose a pairwise loss_type).

    rows -> TokenizedList (prompt ids + k completion ids, each through the pairs' tokenizer: boundary check, bos/eos,
    truncation) -> [B * k sequences, group-major] padded -> ListBatch(policy [B, k, T], scores [B, k], ref)

Limits: the padded layout only (prefix sharing is for pairs), no precompute_ref_log_probs and no streaming for list
data (both refused), and no tokenization cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from preflab.data.report import RowProblem, carry_place, place_of, where
from preflab.errors import ConfigError, DataError
from preflab.option_types import is_number
from preflab.runlog import is_main_process


@dataclass
class TokenizedList:
    row_id: int
    prompt_ids: list[int]
    completions: list[list[int]]
    scores: list[float]
    extras: dict = field(default_factory=dict)


def make_list(example, tokenizer, settings, report) -> TokenizedList:
    """A prompt row with `completions` and `scores` columns -> TokenizedList (a RowProblem names the bad field)."""
    from preflab.data.tokenize import _tokenize_one

    extras = dict(example.extras)
    completions, scores = extras.pop("completions", None), extras.pop("scores", None)
    if completions is None:
        paired = "chosen" in extras or "rejected" in extras
        raise RowProblem("no_completions", "completions",
                         "the row has no 'completions' list" + (" (it is a chosen/rejected pair)" if paired else ""),
                         "a listwise loss_type ranks k responses per prompt: give completions: [k responses] and "
                         "scores: [k numbers] (a pair ranks as completions: [chosen, rejected], scores: [1, 0]), or "
                         "choose a pairwise loss_type.")
    if not isinstance(completions, list) or len(completions) < 2:
        raise RowProblem("bad_completions", "completions", "completions must be a list of at least 2 responses",
                         "Give k >= 2 responses.")
    if (not isinstance(scores, list) or len(scores) != len(completions)
            or not all(is_number(s) and math.isfinite(s) for s in scores)):
        raise RowProblem("bad_scores", "scores", f"scores must be a list of {len(completions)} finite numbers (one "
                         f"per completion), got {scores!r}", "Fix the scores column.")
    fields = [f"completions[{i}]" for i in range(len(completions))]
    completions = _checked_completions(example.prompt, completions, fields, scores)
    prompt_ids, ids = _tokenize_one(tokenizer, example.prompt, completions, fields, extras, settings, report)
    return carry_place(TokenizedList(example.row_id, prompt_ids, ids, [float(s) for s in scores], extras), example)


def _checked_completions(prompt, completions: list, fields: list[str], scores: list) -> list:
    """The completions, each checked as a pair's response is (validate.check_text_or_messages: a non-empty string, or
    assistant turns) and in the prompt's form. Two equal completions with different scores are refused: the list
    would rank a response above itself (a pair's chosen == rejected)."""
    from preflab.data.validate import check_text_or_messages

    form = "a list of messages" if isinstance(prompt, list) else "text"
    checked = []
    for name, value in zip(fields, completions):
        if not isinstance(value, (str, list)):
            raise RowProblem("wrong_type", name, f"expected {form} like the prompt, got {type(value).__name__}",
                             "Give every completion in the prompt's form: all strings, or all lists of messages.")
        if isinstance(value, list) != isinstance(prompt, list):
            raise RowProblem("mixed_forms", name, f"is {'a list of messages' if isinstance(value, list) else 'text'} "
                             f"but 'prompt' is {form}", "Use one form per row: all strings, or all lists of messages.")
        checked.append(check_text_or_messages(value, name, response=True))
    for j, value in enumerate(checked):
        for i in range(j):
            if checked[i] == value and scores[i] != scores[j]:
                raise RowProblem("identical", fields[j], f"identical to {fields[i]!r}, with a different score "
                                 f"({scores[j]!r} vs {scores[i]!r})", "Each response is one item of the ranking: "
                                 "drop the copy or give both the same score.")
    return checked


def _tokenize_lists(cfg, tokenizer, examples, source: str):
    from preflab.data.tokenize import ExampleTokenizer

    if cfg.truncation_mode == "keep_end" and cfg.max_length is not None:
        raise ConfigError(f"truncation_mode: keep_end with max_length={cfg.max_length} keeps the end of each sequence "
                          "prompt + completion (TRL 1.16), cutting the prompt differently before completions of "
                          "different lengths, but the k completions of a listwise row share one prompt. Use "
                          "truncation_mode: keep_start (or unset it), or max_prompt_length with a max_length that "
                          "fits every completion.")

    tok = ExampleTokenizer("prompts", tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                           truncation_mode=cfg.truncation_mode, on_bad_row=cfg.on_bad_row, source=source,
                           max_completion_length=cfg.max_completion_length)
    tok.make = make_list  # the prompts' tokenizer with this kind's row maker (counts, on_bad_row, messages)
    items = [x for x in map(tok, examples) if x is not None]
    tok.report.check()
    k = {len(x.completions) for x in items}
    if len(k) > 1:
        first = len(items[0].completions)
        bad = next(x for x in items if len(x.completions) != first)
        file, line = place_of(bad)
        raise DataError(f"{where(file or source, bad.row_id, line)}: completions holds {len(bad.completions)} responses, row "
                        f"{items[0].row_id} {first}; every row of a listwise dataset needs the same k.")
    return items, tok.report


def prepare_lists(cfg, tokenizer):
    """(train TokenizedList list, eval list, report dict) from dataset_name (and eval_dataset_name / eval_fraction)."""
    from preflab.data.eval_set import train_and_eval
    from preflab.data.rows import load_rows

    if cfg.streaming:
        raise ConfigError(f"loss_type {cfg.loss_type!r} trains on ranked lists, which streaming does not read; set "
                          "streaming: false.")
    if cfg.precompute_ref_log_probs and cfg.objective().needs_reference:
        raise ConfigError(f"loss_type {cfg.loss_type!r}: precompute_ref_log_probs caches pairs' reference "
                          "log-probs, not lists'; set precompute_ref_log_probs: false.")
    if not cfg.dataset_name:
        raise ConfigError("dataset_name is empty; give rows with prompt, completions and scores.")
    from preflab.data.configured_source import training_source

    rows, row_report = load_rows(training_source(cfg), split=cfg.dataset_split, kind="prompt",
                                 on_bad_row=cfg.on_bad_row)
    from preflab.data.report import refuse_empty

    refuse_empty(row_report, "dataset_name", cfg.dataset_name)  # nothing read: its split and file(s) named
    if not rows:
        raise DataError(f"dataset_name={cfg.dataset_name!r} ({row_report.source}) holds no rows.")
    rows, eval_rows, _ = train_and_eval(cfg, rows, lambda name, split: load_rows(name, split=split, kind="prompt",
                                                                                 on_bad_row=cfg.on_bad_row))
    train, tok_report = _tokenize_lists(cfg, tokenizer, rows, row_report.source)
    report = {"train_rows": row_report.to_dict(), "train_tokenize": tok_report.to_dict()}
    evals, eval_said = [], ""
    if eval_rows:
        evals, eval_report = _tokenize_lists(cfg, tokenizer, eval_rows, cfg.eval_dataset_name or row_report.source)
        report["eval_tokenize"], eval_said = eval_report.to_dict(), eval_report.summary()
        if not evals:  # else evaluation would silently not run
            which = (f"eval_dataset_name={cfg.eval_dataset_name}" if cfg.eval_dataset_name else
                     f"eval_fraction={cfg.eval_fraction}")
            raise DataError(f"the eval set ({which}) has no usable lists: {eval_said}. Fix its rows (or "
                            "max_length), or drop the eval set.")
    if evals and train and len(evals[0].completions) != len(train[0].completions):
        raise DataError(f"the eval rows hold {len(evals[0].completions)} completions each, the training rows "
                        f"{len(train[0].completions)}; use the same k.")
    if is_main_process():  # the rows skipped or cut, as every other loader says them
        print(f"preflab: data: {row_report.summary()}; {tok_report.summary()}")
        if eval_said:
            print(f"preflab: data (eval): {eval_said}")
    return train, evals, report


class ListKind:
    name = "lists"

    @staticmethod
    def prepare(cfg, tokenizer):
        return prepare_lists(cfg, tokenizer)

    @staticmethod
    def collate(items, pad_id: int, layout: str):
        """[item_1's k completions, item_2's, ...] padded; extras scores [B, k]. Always the padded layout."""
        from preflab.data.layout import padded

        seqs = [(x.prompt_ids, c) for x in items for c in x.completions]
        extras = {"scores": torch.tensor([x.scores for x in items], dtype=torch.float32)}
        return padded(seqs, pad_id=pad_id, row_ids=[x.row_id for x in items], extras=extras)

    @staticmethod
    def count_tokens(items) -> int:
        return sum(len(x.prompt_ids) + len(c) for x in items for c in x.completions)

    @staticmethod
    def split(policy, ref, extras):
        from preflab.objectives.base import ListBatch, SequenceLogps

        extras = dict(extras)
        scores = extras.pop("scores").to(policy.token_logps.device)
        b, k = scores.shape
        view = lambda s: None if s is None else SequenceLogps(s.token_logps.view(b, k, -1),  # noqa: E731
                                                              s.mask.view(b, k, -1))
        return ListBatch(view(policy), scores, view(ref), None, extras)

    @staticmethod
    def eval_metrics(batch) -> dict:
        return {}
