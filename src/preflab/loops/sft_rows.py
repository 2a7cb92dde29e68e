"""Rows -> tokens -> batches of task: sft: TRL's SFT data forms (text, messages, prompt-completion), their
tokenizing and truncation, the SFT batch kind (SFTKind) and the token statistics its trainer logs. See
preflab.loops.sft (the task, its SFTTrainer) for the forms, the loss and packing.

Below the offline Trainer: its batch kinds (preflab.loops.kinds) and its streamed data (preflab.loops.streaming) read
SFT rows with these, so this module imports no trainer (preflab.loops.sft's SFTTrainer subclasses the offline
Trainer).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from preflab.data.layout import LayoutBatch, padded
from preflab.data.report import BadRowPolicy, DataReport, RowProblem, TokenizeReport, keep_read_from, refuse_empty
from preflab.errors import ConfigError, PreflabError
from preflab.objectives._sft_task import SFTBatch
from preflab.objectives.base import SequenceLogps
from preflab.runlog import is_main_process

SFT_FORMS = ("text", "messages", "prompt_completion", "tokenized")


@dataclass
class TokenizedSFT:
    """One SFT sequence: prompt_ids (>= 1 token, no loss) then completion_ids (the loss tokens). loss_mask (one bool
    per completion token; None: all True) leaves the tokens it marks False out of the loss (assistant_only_loss).
    first_is_label: whether TRL 1.16's labels keep token 0 (text rows, conversations without assistant_only_loss,
    prompt-completion rows with completion_only_loss: false); nothing predicts it in a sequence of its own, but
    packing_strategy: wrapped puts rows after one another (preflab.loops.sft_packing)."""

    row_id: int
    prompt_ids: list[int]
    completion_ids: list[int]
    extras: dict = field(default_factory=dict)
    loss_mask: list[bool] | None = None
    first_is_label: bool = False


def cut_later(cfg) -> bool:
    """packing_strategy bfd_split / wrapped (with packing: true): rows are not cut at max_length when tokenized, the
    packing cuts them (preflab.loops.sft_packing), as TRL 1.16 skips its truncation when it packs."""
    return bool(getattr(cfg, "packing", False)) and getattr(cfg, "packing_strategy", "bfd") != "bfd"


# ---------------------------------------------------------------------------------------------- rows -> tokens
def text_field_row(row: dict, text_field: str) -> dict:
    """TRL's dataset_text_field: a language-modeling row's text is column `text_field`, read here as 'text'. A row
    with both that column and 'text', or with 'text' but not that column, is a bad row naming both (TRL would read
    one and drop the other without a word, or fail with a KeyError); messages and prompt / completion rows pass as
    they are (TRL reads the field for text rows only)."""
    if text_field == "text":
        return row
    if text_field in row:
        if "text" in row:
            raise RowProblem("mixed_forms", "text", f"the row has both the dataset_text_field column {text_field!r} "
                             "and a 'text' column", "Drop the 'text' column, or set dataset_text_field: text.")
        out = {k: v for k, v in row.items() if k != text_field}
        out["text"] = row[text_field]
        return out
    if "text" in row:
        raise RowProblem("missing_field", text_field, f"missing: dataset_text_field is {text_field!r}, and the row "
                         "has a 'text' column instead", f"Rename the column to {text_field!r}, or set "
                         "dataset_text_field: text (the default).")
    return row


def _row_form(row: dict) -> str:
    has = [k for k in ("text", "messages", "prompt", "completion") if k in row]
    if "input_ids" in row:
        if has:
            raise RowProblem("mixed_forms", "input_ids", f"the row holds input_ids and {has}, which is not one SFT "
                             "form", "Give either tokenized rows (input_ids, optional labels / completion_mask / "
                             "assistant_masks) or text rows, not both.")
        return "tokenized"
    if "text" in row and len(has) == 1:
        return "text"
    if "messages" in row and len(has) == 1:
        return "messages"
    if "prompt" in row and "completion" in row and len(has) == 2:
        if _preference_label(row.get("label")):
            raise RowProblem("unpaired_preference_row", "label", f"is {row['label']!r}: the row is TRL's unpaired "
                             "preference form (prompt, completion, label), whose label false marks an undesirable "
                             "completion that SFT would train the model to write",
                             "Train unpaired rows with task: dpo and loss_type: kto; to fine-tune on the desirable "
                             "completions, keep the rows with label true and drop the 'label' column.")
        return "prompt_completion"
    if "chosen" in row and "completion" not in row and set(has) <= {"prompt"}:
        raise RowProblem("missing_field", "completion", "missing: the row is a preference pair (chosen, rejected), "
                         "not an SFT row", "Train pairs with task: dpo; to fine-tune on the chosen responses, rename "
                         "'chosen' to 'completion' (beside 'prompt'), or to 'messages' / 'text' (a row without "
                         "'prompt'), and drop 'rejected' (TRL's SFT forms: text, messages, prompt + completion).")
    if has == ["prompt"]:
        raise RowProblem("missing_field", "completion", "missing: the row has a prompt but no completion",
                         "Give each row a 'completion' (or use `text` / `messages`).")
    if not has:
        raise RowProblem("missing_field", None, f"no SFT field among the columns {sorted(row)[:8]}",
                         "Give each row `text`, `messages`, or `prompt` and `completion` (TRL's SFT forms).")
    raise RowProblem("mixed_forms", has[0], f"the row holds {has}, which is not one SFT form",
                     "Use exactly one of: text | messages | prompt + completion.")


class TokenizedRowError(RowProblem):
    """A tokenized row whose columns the run cannot read without guessing: an error under on_bad_row: skip too (every
    row of such a dataset would be dropped)."""


def _id_list(row: dict, key: str, n: int | None, values=None) -> list[int]:
    column = row[key]
    if not isinstance(column, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                        for v in column):
        raise RowProblem("bad_token_column", key, "must be a list of integers", "Give token ids / 0-1 masks as lists.")
    if n is not None and len(column) != n:
        raise RowProblem("bad_token_column", key, f"has {len(column)} values for {n} input_ids",
                         "Give one value per token.")
    if values is not None and any(v not in values for v in column):
        raise RowProblem("bad_token_column", key, f"holds values other than {sorted(values)}", "Give a 0/1 mask.")
    return list(column)


def tokenized_labels(row: dict, cfg) -> tuple[list[int], list[bool]]:
    """(input_ids, for each token whether it carries loss) of a tokenized row, by TRL 1.16's rule: a `labels` column
    as given (-100: no loss; any other label must be the input id, since preflab's target is the next input token);
    without it, `assistant_masks` and, where completion_only_loss is on, `completion_mask` (a token carries loss where
    every such mask is 1; none: every token). TRL's completion_only_loss default (null) is off for rows without
    prompt / completion, so a completion_mask beside an unwritten completion_only_loss is refused as ambiguous.
    skip_prepare_dataset: mask columns without labels are refused, as TRL refuses them (it would train every token)."""
    if "seq_lengths" in row:
        raise TokenizedRowError("pre_packed_row", "seq_lengths", "is a packed row's column; preflab reads one sequence "
                                "per row", "Give the rows unpacked and set packing: true.")
    ids = _id_list(row, "input_ids", None)
    if len(ids) < 2 or any(v < 0 for v in ids):
        raise RowProblem("bad_token_column", "input_ids", "needs at least 2 token ids, none negative",
                         "Give the sequence's token ids.")
    if "labels" in row:
        labels = _id_list(row, "labels", len(ids))
        wrong = next((t for t, (x, y) in enumerate(zip(ids, labels)) if y not in (-100, x)), None)
        if wrong is not None:
            raise TokenizedRowError("labels_not_input_ids", "labels", f"label {labels[wrong]} at token {wrong} is "
                                    f"neither -100 nor that token's input id {ids[wrong]}", "preflab trains each token "
                                    "to predict the next input token: give labels equal to input_ids or -100.")
        return ids, [y != -100 for y in labels]
    masks = [k for k in ("completion_mask", "assistant_masks") if k in row]
    if masks and getattr(cfg, "skip_prepare_dataset", False):
        raise TokenizedRowError("masks_without_labels", masks[0], "with skip_prepare_dataset: true the mask columns "
                                "are not read (TRL 1.16 refuses them: it would train on every token)",
                                "Add a 'labels' column (-100 for the tokens without loss), or remove "
                                "skip_prepare_dataset.")
    if "completion_mask" in masks and "completion_only_loss" not in getattr(cfg, "written_options", ()):
        raise TokenizedRowError("completion_mask_unread", "completion_mask", "is read only with completion_only_loss: "
                                "true written in the config (TRL's default null trains every token of rows without "
                                "prompt / completion)",
                                "Set completion_only_loss: true (loss where completion_mask is 1) or false (every "
                                "token).")
    used = [_id_list(row, k, len(ids), (0, 1)) for k in masks if k != "completion_mask" or cfg.completion_only_loss]
    return ids, [all(m[t] for m in used) for t in range(len(ids))]


def _preference_label(value) -> bool:
    """A KTO-style desirable/undesirable label (a bool, or its CSV text 'true' / 'false'), as validate.check_label
    reads one; other `label` columns (a category, a score) are left alone."""
    return isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false"))


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _whole_sequence(tokenizer, ids: list[int], add_bos_eos: bool) -> tuple[list[int], list[int]]:
    """(first token, the rest): every token after the first is predicted and carries loss. add_bos_eos: bos where
    the tokenizer adds one to text (data.tokenize.text_bos, as TRL's `tokenizer(text)`), eos at the end."""
    if add_bos_eos:
        from preflab.data.tokenize import text_bos

        bos, eos = text_bos(tokenizer), tokenizer.eos_token_id
        if bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        if ids[-1:] != [eos]:
            ids = ids + [eos]
    if len(ids) < 2:
        raise RowProblem("empty_response_tokens", None, "the sequence has fewer than 2 tokens, so nothing to "
                         "predict", "Give a longer text.")
    return ids[:1], ids[1:]


def _split_at_loss(ids: list[int], mask: list[int], field_name: str) -> tuple[list[int], list[int], list | None]:
    """(prompt, completion, loss_mask) of a sequence whose tokens carry loss where mask is 1: the completion starts
    at the first such token after token 0 (which nothing predicts); loss_mask is None when all of it carries loss."""
    first = next((i for i in range(1, len(ids)) if mask[i]), None)
    if first is None:
        raise RowProblem("no_assistant_tokens", field_name, "with assistant_only_loss: true no token of this row is "
                         "both the assistant's and in the completion, so it has nothing to train on",
                         "Give the row an assistant answer in its completion, or remove assistant_only_loss.")
    loss = [bool(m) for m in mask[first:]]
    return ids[:first], ids[first:], None if all(loss) else loss


def _not_conversational(form: str) -> RowProblem:
    if form == "tokenized":
        return RowProblem("not_conversational", "input_ids", "assistant_only_loss: true needs conversational rows "
                          "(TRL 1.16 raises for a tokenized dataset)", "Remove assistant_only_loss: a tokenized row's "
                          "assistant tokens are its assistant_masks column, read without it.")
    field_name = "text" if form == "text" else "prompt"
    return RowProblem("not_conversational", field_name, "assistant_only_loss: true needs conversational rows, and "
                      f"this row's {field_name} is text (TRL 1.16 raises for a dataset that is not conversational)",
                      "Give the rows as 'messages' (or prompt / completion as lists of messages), or remove "
                      "assistant_only_loss.")


_TOKEN_COUNTS = ("prompt_tokens", "response_tokens", "max_prompt_tokens", "max_response_tokens")


def tokenize_sft_row(row_id: int, row: dict, tokenizer, cfg, report: TokenizeReport) -> tuple[TokenizedSFT, str]:
    """One raw row -> (TokenizedSFT, its form). RowProblem for a bad row. A conversational row's `tools` and
    `chat_template_kwargs` columns reach the chat template, as in TRL 1.16."""
    from preflab.data.assistant_mask import assistant_tokens
    from preflab.data.tokenize import _check_settings, _render, _tokenize_one, special_token_pattern, text_bos
    from preflab.data.validate import (check_messages, check_no_media, check_same_form, check_text,
                                       check_text_or_messages)

    check_no_media(row)
    form = _row_form(row)
    assistant_only = getattr(cfg, "assistant_only_loss", False)
    extras = {k: row[k] for k in ("tools", "chat_template_kwargs") if row.get(k) is not None}
    loss_mask = None
    whole = not assistant_only and (form != "prompt_completion" or not cfg.completion_only_loss)  # TRL labels token 0
    skip_prepare = getattr(cfg, "skip_prepare_dataset", False)
    if skip_prepare and form != "tokenized":
        raise RowProblem("not_tokenized", None, f"is a {form} row, and skip_prepare_dataset: true reads rows as "
                         "they are: input_ids (and labels)", "Tokenize the rows first, or remove "
                         "skip_prepare_dataset.")
    if form == "tokenized":
        if assistant_only:
            raise _not_conversational(form)
        ids, labelled = tokenized_labels(row, cfg)
        whole = labelled[0]
        limit = None if skip_prepare else cfg.max_length
        if limit is not None and not cut_later(cfg) and len(ids) > limit:  # TRL: keep_start
            ids, labelled = ids[:limit], labelled[:limit]
            report.response_truncated += 1
        first = next((t for t in range(1, len(ids)) if labelled[t]), None)
        if first is None:
            raise RowProblem("no_loss_tokens", "labels" if "labels" in row else "input_ids", "no token after the "
                             "first carries loss" + (f" within max_length={limit}" if limit else ""),
                             "Give the row loss tokens (labels other than -100, mask values 1), or raise max_length.")
        prompt, completion = ids[:first], ids[first:]
        loss_mask = None if all(labelled[first:]) else labelled[first:]
    elif form == "text":
        if assistant_only:
            raise _not_conversational(form)
        text = check_text(row["text"], getattr(cfg, "dataset_text_field", "text"))  # the column as the file names it
        prompt, completion = _whole_sequence(tokenizer, _encode(tokenizer, text), True)
    elif form == "messages":
        messages = check_messages(row["messages"], "messages")
        if assistant_only:
            prompt, completion, loss_mask = _split_at_loss(*assistant_tokens(tokenizer, messages, extras,
                                                                             "messages"), "messages")
        else:
            rendered = _render(tokenizer, messages, extras, "messages", generation=False)
            prompt, completion = _whole_sequence(tokenizer, _encode(tokenizer, rendered), False)
    else:
        p = check_text_or_messages(row["prompt"], "prompt")
        c = check_text_or_messages(row["completion"], "completion", response=True)
        check_same_form({"prompt": p, "completion": c})
        if assistant_only and not isinstance(p, list):
            raise _not_conversational(form)
        settings = _check_settings(None, None, "keep_end")
        settings.specials, settings.eos_text = special_token_pattern(tokenizer), tokenizer.eos_token
        settings.bos = text_bos(tokenizer)
        counted = [getattr(report, k) for k in _TOKEN_COUNTS]  # counted once below, after the SFT truncation
        prompt, (completion,) = _tokenize_one(tokenizer, p, [c], ["completion"], extras, settings, report)
        for key, value in zip(_TOKEN_COUNTS, counted):
            setattr(report, key, value)
        if assistant_only:
            ids, mask = assistant_tokens(tokenizer, p + c, extras, "completion")
            if ids != prompt + completion:
                raise RowProblem("template_mask_mismatch", "completion", "the chat template's tokens with the "
                                 "assistant mask differ from the tokens of prompt + completion", "Report this row "
                                 "to preflab with the chat template; meanwhile remove assistant_only_loss.")
            if cfg.completion_only_loss:  # TRL: labels where completion_mask and assistant_masks are both 1
                mask = [0] * len(prompt) + mask[len(prompt):]
            prompt, completion, loss_mask = _split_at_loss(ids, mask, "completion")
        elif not cfg.completion_only_loss:
            prompt, completion = prompt[:1], prompt[1:] + completion
    limit = None if cut_later(cfg) or form == "tokenized" else cfg.max_length
    if limit is not None and len(prompt) + len(completion) > limit:
        room = limit - len(prompt)
        if room < 1:
            what = (f"the {len(prompt)} tokens before the first assistant token leave" if assistant_only else
                    f"the prompt is {len(prompt)} tokens, which leaves")
            raise RowProblem("prompt_fills_max_length", "messages" if form == "messages" else "prompt",
                             f"{what} no room for the completion within max_length={limit}",
                             "Shorten the prompt (the turns before the first assistant answer) or raise max_length.")
        completion = completion[:room]
        if loss_mask is not None:
            loss_mask = loss_mask[:room]
        report.response_truncated += 1
    report.prompt_tokens += len(prompt)
    report.response_tokens += len(completion)
    report.max_prompt_tokens = max(report.max_prompt_tokens, len(prompt))
    report.max_response_tokens = max(report.max_response_tokens, len(completion))
    return TokenizedSFT(row_id, prompt, completion, loss_mask=loss_mask, first_is_label=whole), form


def note_assistant_template(cfg, tokenizer) -> None:
    """assistant_only_loss: check the chat template (ConfigError without {% generation %} markers) and print its note
    (the end-of-turn token left out of the loss) on the main process; once per run: the training read
    (`prepare_sft`) or the stream's opening (preflab.loops.streaming.open_stream) calls it."""
    if getattr(cfg, "assistant_only_loss", False):
        from preflab.data.assistant_mask import check_assistant_template

        note = check_assistant_template(tokenizer)
        if note and is_main_process():
            print(f"preflab: note: {note}")


def sft_row_builder(cfg, tokenizer, rows: DataReport, tokens: TokenizeReport):
    """build(raw_row) -> [TokenizedSFT] ([] for a row on_bad_row says to skip), counting the row in `rows` and
    `tokens`. One row at a time: the whole-dataset read and streaming (preflab.loops.streaming) use it.
    assistant_only_loss: the chat template is checked first (ConfigError without {% generation %} markers; its note
    is `note_assistant_template`'s)."""
    if getattr(cfg, "assistant_only_loss", False):
        from preflab.data.assistant_mask import check_assistant_template

        check_assistant_template(tokenizer)
    policy = BadRowPolicy(cfg.on_bad_row, rows)
    text_field = getattr(cfg, "dataset_text_field", "text")

    def build(raw) -> list[TokenizedSFT]:
        rows.total += 1
        tokens.total += 1
        try:
            if raw.problem is not None:
                raise raw.problem
            item, form = tokenize_sft_row(raw.row_id, text_field_row(raw.data, text_field), tokenizer, cfg,
                                          tokens)
        except RowProblem as problem:
            if isinstance(problem, TokenizedRowError):  # not one bad row: the dataset's columns need a setting
                BadRowPolicy("error", rows).handle(problem, raw.row_id, raw.line, source=raw.file)
            policy.handle(problem, raw.row_id, raw.line, source=raw.file)
            tokens.record_skip(problem, raw.row_id, raw.line)
            return []
        rows.kept += 1
        tokens.kept += 1
        rows.forms[form] = rows.forms.get(form, 0) + 1
        rows.examples += 1
        return [item]

    return build


def _read(source, split: str, cfg, tokenizer, option: str = "dataset_name") -> tuple[list[TokenizedSFT], DataReport,
                                                                                      TokenizeReport]:
    """(tokenized examples, row report, tokenize report) of `split` of `source`, which cfg's `option` names; a source
    without a row is refused naming that option, the split and the file(s) read (refuse_empty)."""
    from preflab.data.sources import RowReader

    reader = RowReader(source, split=split)
    rows = DataReport(source=reader.name, kind="sft")
    tokens = TokenizeReport(source=reader.name)
    build = sft_row_builder(cfg, tokenizer, rows, tokens)
    out = []
    for raw in reader:
        out.extend(build(raw))
    rows.blank_lines, rows.examples = reader.blank_lines, len(out)
    rows.check()
    refuse_empty(keep_read_from(rows, reader), option, getattr(cfg, option))
    return out, rows, tokens


def prepare_sft(cfg, tokenizer):
    """(train TokenizedSFT list, eval list, report) from dataset_name / eval_dataset_name / eval_fraction."""
    if not cfg.dataset_name:
        raise PreflabError("dataset_name is empty; give a hub name, a save_to_disk directory or a data file.")
    if tokenizer.eos_token_id is None:
        from preflab.data.tokenize import no_eos_message

        raise ConfigError(no_eos_message(tokenizer))
    note_assistant_template(cfg, tokenizer)
    from preflab.data.configured_source import training_source

    train, rows, tok = _read(training_source(cfg), cfg.dataset_split, cfg, tokenizer)
    report = {"train_rows": rows.to_dict(), "train_tokenize": tok.to_dict(), "skipped": dict(rows.skipped)}
    from preflab.data.eval_set import train_and_eval

    def read_eval(name, split):
        evals, erows, etok = _read(name, split, cfg, tokenizer, "eval_dataset_name")
        return evals, (erows, etok)

    def said(reports) -> str:
        return f"{reports[0].summary()}; {reports[1].summary()}"

    train, evals, eval_reports = train_and_eval(cfg, train, read_eval, describe=said)
    if eval_reports is not None:
        report.update(eval_rows=eval_reports[0].to_dict(), eval_tokenize=eval_reports[1].to_dict())
    held_out = (len(evals), len(train) + len(evals))  # eval_fraction's split counts rows, before any packing
    packed_note = None
    if cut_later(cfg):  # bfd_split / wrapped: TRL's pack_dataset cuts the rows (eval too: eval_packing follows packing)
        from preflab.loops.sft_packing import pack_examples

        rows_in = len(train)
        train, empty = pack_examples(train, cfg.packing_strategy, cfg.max_length)
        evals, eval_empty = pack_examples(evals, cfg.packing_strategy, cfg.max_length) if evals else (evals, 0)
        report["packing"] = {"strategy": cfg.packing_strategy, "train_rows": rows_in, "train_sequences": len(train),
                             "left_out_without_loss_tokens": empty + eval_empty}
        what = "fragments" if cfg.packing_strategy == "bfd_split" else "chunks"
        packed_note = (f"packing_strategy: {cfg.packing_strategy}: {rows_in} training rows -> {len(train)} {what} of "
                       f"at most max_length={cfg.max_length} tokens" + (
                           f"; {empty + eval_empty} with no loss token left out (train and eval)"
                           if empty + eval_empty else "") + ".")
    if is_main_process():  # the tokenization counts too: truncated examples are said, not only kept in summary.json
        print(f"preflab: data: {rows.summary()}; {tok.summary()}")
        if eval_reports is not None:
            print(f"preflab: data (eval): {said(eval_reports)}")
        elif evals:  # eval_fraction: the hold-out's size (the line above counts train and eval together)
            print(f"preflab: data (eval): eval_fraction={cfg.eval_fraction} holds out {held_out[0]} of the "
                  f"{held_out[1]} tokenized examples (seed {cfg.seed}); {held_out[1] - held_out[0]} train.")
        note = sft_mixed_forms_note(rows)
        if note:
            print(f"preflab: note: data: {note}")
        if packed_note:
            print(f"preflab: data: {packed_note}")
    return train, evals, report


def sft_mixed_forms_note(rows: DataReport) -> str | None:
    """A note when an SFT file mixes `text` rows (trained as they are) with `messages` rows (rendered through the
    chat template): the model learns two formats, as a preference file mixing text and conversational rows does
    (DataReport.mixed_forms_note, which reads the preference forms' names). None otherwise."""
    text, messages = rows.forms.get("text", 0), rows.forms.get("messages", 0)
    if not (text and messages):
        return None
    return (f"{rows.source or '<rows>'} mixes {text} text row(s) and {messages} messages row(s): only the messages "
            "rows get the chat template, so the model is trained on two formats. Give every row in one form unless "
            "that is meant.")


# ---------------------------------------------------------------------------------------------- the batch kind
def collate_sft(items, pad_id: int, packing: bool, max_row_tokens: int | None = None) -> LayoutBatch:
    """Padded rows, or (packing) sequences binned first-fit-decreasing into rows of at most max_row_tokens with
    per-sequence positions and block-diagonal causal masks. Sequence i is items[i] in both layouts."""
    row_ids = [x.row_id for x in items]
    if not packing:
        return _keep_loss_tokens(padded([(x.prompt_ids, x.completion_ids) for x in items], pad_id=pad_id,
                                        row_ids=row_ids), items)
    from preflab.data.packing import first_fit_decreasing
    from preflab.data.prefix import Block, block_rows

    blocks = [Block(x.prompt_ids, [x.completion_ids], [i]) for i, x in enumerate(items)]
    groups = first_fit_decreasing([b.length for b in blocks], max_row_tokens)
    return _keep_loss_tokens(block_rows([[blocks[i] for i in g] for g in groups], len(items), pad_id, row_ids), items)


def _keep_loss_tokens(layout: LayoutBatch, items) -> LayoutBatch:
    """The layout with response_mask False on the completion tokens whose loss_mask is False (assistant_only_loss):
    they stay in the sequence (attended to, counted in num_tokens) but carry no loss and no accuracy. Response
    token l of sequence n is completion_ids[l] of items[n] in both layouts; a new LayoutBatch re-derives the gather
    plan."""
    if all(x.loss_mask is None for x in items):
        return layout
    keep = torch.ones_like(layout.response_mask)
    for n, x in enumerate(items):
        if x.loss_mask is not None:
            keep[n, :len(x.loss_mask)] = torch.tensor(x.loss_mask, dtype=torch.bool)
    return replace(layout, response_mask=layout.response_mask & keep, gather=None)


class SFTKind:
    name = "sft"
    packing = False
    max_row_tokens: int | None = None

    @staticmethod
    def prepare(cfg, tokenizer):
        return prepare_sft(cfg, tokenizer)

    @classmethod
    def collate(cls, items, pad_id: int, layout: str) -> LayoutBatch:
        return collate_sft(items, pad_id, layout in ("packed", "prefix_packed"), cls.max_row_tokens)

    @staticmethod
    def count_tokens(items) -> int:
        """Tokens of the sequences (prompt + completion), padding never counted (TRL's num_tokens)."""
        return sum(len(x.prompt_ids) + len(x.completion_ids) for x in items)

    @staticmethod
    def split(policy, ref, extras) -> SFTBatch:
        return SFTBatch(SequenceLogps(policy.token_logps, policy.mask), {**dict(extras), "_hidden": policy.hidden_flat})

    @staticmethod
    def eval_metrics(batch) -> dict:
        return {}


# ---------------------------------------------------------------------------------------------- the trainer
def correct_tokens(hidden_flat: torch.Tensor, targets: torch.Tensor, head, chunk: int = 1024) -> torch.Tensor:
    """How many positions have argmax over head(hidden) equal to the target (no gradient): a 0-dim int64 tensor on
    the device, summed there (a host read per chunk would stall the step)."""
    right = hidden_flat.new_zeros((), dtype=torch.long)
    with torch.no_grad():
        for s in range(0, hidden_flat.shape[0], chunk):
            right = right + (head(hidden_flat[s:s + chunk]).argmax(-1) == targets[s:s + chunk]).sum()
    return right


def correct_and_entropy(hidden_flat: torch.Tensor, targets: torch.Tensor, head, chunk: int = 1024) -> torch.Tensor:
    """[2] float64 on the device, no gradient: (how many positions have argmax over head(hidden) equal to the
    target, the sum over positions of the predictive entropy -sum_v p_v log p_v), from one head pass per chunk
    (preflab.scoring.lm._token_stats, TRL 1.16's fused-head `is_top1` and `entropy`); summed on the device, no read."""
    from preflab.scoring.lm import _token_stats

    sums = hidden_flat.new_zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, hidden_flat.shape[0], chunk):
            logits = head(hidden_flat[s:s + chunk])
            stats = _token_stats(logits, torch.logsumexp(logits, dim=-1), targets[s:s + chunk])
            sums = sums + stats[:, [2, 1]].double().sum(0)
    return sums
