"""Read and validate rows: source -> examples + a `DataReport` (DESIGN.md, data path step 1).

    examples, report = load_rows("train.jsonl", kind="pairwise", on_bad_row="skip")

Kinds and the row forms each accepts (TRL's dataset conventions, ANCHORS.md §3.2):
- "pairwise" -> `PairExample`: standard {"prompt", "chosen", "rejected"} strings; conversational (lists of
  messages; `chosen`/`rejected` are the turns after the prompt: the assistant's reply, or as in TRL 1.16 any turns,
  a multi-turn continuation with user turns included, form `*_multiturn`, see `multiturn_form`); implicit prompt
  (no `prompt`: the shared start of `chosen` and `rejected` becomes the prompt, see `validate.split_implicit_*`); MAPL
  intra-sample rows {"prompt_chosen", "prompt_rejected", "completion"} (one response y, the prompt x_w it fits
  better and the prompt x_l it fits worse; preflab.data.mapl builds them) -> a PairExample with `rejected_prompt` (form "intra_*"), which
  only objectives that compare prompts accept (`accepts_intra_rows`: rc_dpo, rc_bt).
- "unpaired" -> `UnpairedExample`: KTO rows {"prompt", "completion", "label": bool}; a pairwise row becomes one
  desirable (chosen) and one undesirable (rejected) example with the same `row_id`, as TRL's KTO does.
- "prompt" -> `PromptExample`: {"prompt"} for online loops; a pairwise row without `prompt` gives its implicit
  prompt. With prompt_optional (a run with environment_factory, TRL 1.16's rule beside an environment) a row without
  a `prompt` key reads with one empty user message as its prompt (form "no_prompt"; `prompt_from_reset(example)` is
  True): the environment's reset gives its text.
Every other column is kept in `extras`; `required_extras` (an objective's per-row extras, see
`Objective.row_extras`) must be numeric in every row. A bad row raises `DataError` naming the file, the row and
the field, or with `on_bad_row="skip"` is counted by reason in the report; `kept + sum(skipped) == total` always holds.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial

from preflab.data.examples import Example, PairExample, PromptExample, UnpairedExample
from preflab.data.phrases import PHRASE_COLUMNS, check_both_or_neither, check_differing_phrase, derives_phrase_ids
from preflab.data.report import BadRowPolicy, DataReport, RowProblem, keep_place, keep_read_from
from preflab.data.sources import DEFAULT_MAX_ROW_BYTES, open_reader
from preflab.data.validate import (check_different, check_label, check_messages, check_no_media,
                                   check_numeric_extra, check_same_form, check_text, check_text_or_messages,
                                   is_assistant_reply, split_implicit_messages, split_implicit_text)
from preflab.errors import ConfigError, nearest

KINDS = ("pairwise", "unpaired", "prompt")
PAIR_FIELDS = ("prompt", "chosen", "rejected")
UNPAIRED_FIELDS = ("prompt", "completion", "label")
INTRA_FIELDS = ("prompt_chosen", "prompt_rejected", "completion")  # MAPL intra-sample rows (preflab.data.mapl)
INTRA_FIX = ("A MAPL intra row is {\"prompt_chosen\": x_w, \"prompt_rejected\": x_l, \"completion\": y} (y fits x_w "
             "better than x_l); build them with `python -m preflab.data.mapl`.")

__all__ = ["load_rows", "PairExample", "UnpairedExample", "PromptExample", "DataReport", "KINDS", "NO_PROMPT_MESSAGES",
           "prompt_from_reset"]


def load_rows(source, *, split: str = "train", kind: str = "pairwise", on_bad_row: str = "error",
              column_map: dict[str, str] | None = None, limit: int | None = None,
              max_row_bytes: int | None = DEFAULT_MAX_ROW_BYTES,
              required_extras: Mapping[str, tuple] | Iterable[str] = (),
              prompt_optional: bool = False) -> tuple[list[Example], DataReport]:
    """Read `source` and validate every row as `kind`.

    source: a .jsonl/.json/.parquet/.csv file, a directory (save_to_disk output or data files), a hub dataset
        name, a `datasets.Dataset`/`DatasetDict` or a list of dicts; or a RowReader already opened on one (read as
        it was opened: split, limit and max_row_bytes are its own).
    split: the split of a DatasetDict, hub dataset or directory of split-named files.
    kind: "pairwise" | "unpaired" | "prompt".
    on_bad_row: "error" (raise `DataError` on the first bad row) | "skip" (count it in the report).
    column_map: {your column: preflab field}, e.g. {"question": "prompt", "good": "chosen", "bad": "rejected"}.
    limit: read at most this many rows.
    max_row_bytes: a row larger than this is bad (`row_too_large`) and is not parsed further.
    required_extras: extra columns every row must hold as numbers ({name: (low, high)} or names), e.g.
        `get_objective("sem_dpo").row_extras()`; numeric CSV text becomes floats.
    prompt_optional: pairwise rows may have no prompt (reward models, which score whole texts as TRL's
        RewardTrainer does): an empty `prompt`, or text `chosen` / `rejected` without a shared start, read with the
        prompt "" (form `standard_no_prompt`) instead of being bad rows. Prompt rows (environment_factory runs): a
        row without a `prompt` key reads with NO_PROMPT_MESSAGES as its prompt (form "no_prompt"), marked so that
        prompt_from_reset(example) is True (a null `prompt` is still a missing field).
    Returns (examples, report); examples keep source order, each with its 0-based source `row_id`.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is not one of {KINDS}.{nearest(str(kind), KINDS)}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit={limit!r} must be a non-negative integer or None.")
    reader = open_reader(source, split=split, limit=limit, max_row_bytes=max_row_bytes)
    report = DataReport(source=reader.name, kind=kind)
    build = row_builder(kind, report, on_bad_row, column_map, required_extras, prompt_optional)
    examples: list[Example] = []
    for raw in reader:
        examples.extend(build(raw))
    report.blank_lines = reader.blank_lines
    keep_read_from(report, reader)  # the split and files an "is empty" error names (refuse_empty)
    report.examples = len(examples)
    report.check()
    return examples, report


def row_builder(kind: str, report: DataReport, on_bad_row: str = "error", column_map: dict[str, str] | None = None,
                required_extras: Mapping[str, tuple] | Iterable[str] = (), prompt_optional: bool = False) -> Callable:
    """build(raw_row) -> the row's examples ([] for a bad row that on_bad_row says to skip), counting the row in
    `report` (total, kept or skipped by reason, its form). One row at a time: load_rows and streaming
    (preflab.data.stream) read rows through it."""
    column_map = dict(column_map or {})
    policy = BadRowPolicy(on_bad_row, report, field_names={v: k for k, v in column_map.items()})
    make = partial(_BUILDERS[kind], prompt_optional=True) if prompt_optional and kind != "unpaired" else \
        _BUILDERS[kind]
    extra_bounds = dict(required_extras) if isinstance(required_extras, Mapping) else {
        name: (None, None) for name in required_extras}
    first_depths: dict[str, tuple[int, int, object]] = {}  # extra -> (list depth, row id, value) of its first row

    def made(raw):
        row = _rename(raw.data, column_map)
        if kind != "prompt":  # scored rows (a prompt row's other columns may feed an online judge)
            check_no_media(row)
        made, form = make(raw.row_id, row)
        _check_extras(made, extra_bounds)
        _check_extra_depths(made, extra_bounds, first_depths, raw.row_id)
        return made, form

    def build(raw) -> list[Example]:
        for _, (made_examples, form) in policy.accepted((raw,), made):
            report.forms[form] = report.forms.get(form, 0) + 1
            if repeats_prompt(made_examples):
                report.prompt_repeated += 1
                if report.prompt_repeated_first is None:
                    report.prompt_repeated_first = raw.row_id
            return [keep_place(example, raw) for example in made_examples]
        return []

    return build


REPEATED_PROMPT_MIN_CHARS = 16  # a shorter prompt ("Hi") may open a response by chance


def repeats_prompt(examples: list[Example]) -> bool:
    """True when a row's text responses all begin with its whole text prompt (at least REPEATED_PROMPT_MIN_CHARS
    characters, whitespace aside): an implicit-prompt dataset (Anthropic/hh-rlhf's full transcripts) given a
    `prompt` column as well. Each response would then hold the prompt a second time, and the model learn to repeat
    it; TRL trains such rows as they are, so they are counted and said, not refused."""
    responses = [r for ex in examples for r in (getattr(ex, "chosen", None), getattr(ex, "rejected", None),
                                                getattr(ex, "completion", None)) if r is not None]
    prompt = examples[0].prompt if examples else None
    if not isinstance(prompt, str) or len(prompt.strip()) < REPEATED_PROMPT_MIN_CHARS or not responses or any(
            ex.prompt != prompt for ex in examples):
        return False
    return all(isinstance(r, str) and r.lstrip().startswith(prompt.strip()) for r in responses)


def _check_extras(examples: list[Example], bounds: dict[str, tuple]) -> None:
    """Each required extra is a number or list of numbers within its bounds. RRPO's phrase columns: both or neither
    (then they are derived from the texts at tokenization, data.phrases.derived_phrase_columns); given ids that are
    all 0 are the bad row `no_differing_phrase`."""
    phrases = all(name in bounds for name in PHRASE_COLUMNS)
    for ex in examples:
        if phrases:
            check_both_or_neither(ex.extras)
        derived = phrases and derives_phrase_ids(ex.extras)
        for name, (low, high) in bounds.items():
            if not (derived and name in PHRASE_COLUMNS):
                ex.extras[name] = check_numeric_extra(ex.extras.get(name), name, low, high)
        if phrases and not derived:  # RRPO: a pair with no differing phrase is a bad row
            check_differing_phrase(*(_flat(ex.extras[name]) for name in PHRASE_COLUMNS))


def list_depth(value) -> int:
    """How deeply a (checked) extra value nests lists: 0 for a number, 1 for [numbers], 2 for [[numbers]], ...;
    an empty list counts as one level."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


def _check_extra_depths(examples: list[Example], bounds: dict, first: dict, row_id: int) -> None:
    """A required extra holds the same kind of value in every row: numbers in all, or lists (of the same nesting) in
    all, as the first row that held it. A row that differs cannot join a batch with the others (stack_extras would
    leave the column out, and the objective stop mid-run saying the batch lacks it), so it is a bad row now, naming
    the first row's value. `first` ({name: (depth, row_id, value)}) is the reader's memory across rows."""
    for name in bounds:
        for ex in examples:
            if name in PHRASE_COLUMNS and derives_phrase_ids(ex.extras):
                continue  # derived at tokenization, always a list (data.phrases)
            value = ex.extras[name]
            depth = list_depth(value)
            seen = first.setdefault(name, (depth, row_id, value))
            if seen[0] != depth:
                raise RowProblem(
                    "invalid_extra", name, f"{_kind_of(value)} where row {seen[1]} holds {_kind_of(seen[2])}",
                    f"Every row's {name!r} must be of one kind (all numbers, or all lists nested alike) to form a "
                    f"batch; fix this row or row {seen[1]}.")


def _kind_of(value) -> str:
    depth, shown = list_depth(value), repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    kind = "a number" if depth == 0 else "a list" if depth == 1 else f"a list nested {depth} deep"
    return f"{kind} ({shown})"


def _flat(value) -> list:
    """The numbers of a (nested) list extra, or [value] for one number."""
    out, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            out.append(item)
    return out


def _rename(row: dict, column_map: dict[str, str]) -> dict:
    if not column_map:
        return row
    out = {k: v for k, v in row.items() if k not in column_map}
    for old, new in column_map.items():
        if old in row:
            if new in out:
                raise ConfigError(f"column_map renames {old!r} to {new!r}, but the data also has a {new!r} column. "
                                  "Drop one of them from column_map or from the data.")
            out[new] = row[old]
    return out


def _extras(row: dict, used: tuple[str, ...]) -> dict:
    return {k: v for k, v in row.items() if k not in used}


def _pair_parts(row: dict, prompt_optional: bool = False) -> tuple[object, object, object, str]:
    """(prompt, chosen, rejected, form) for a pairwise row, validated; prompt_optional: see load_rows."""
    prompt, chosen, rejected = (row.get(k) for k in PAIR_FIELDS)
    other = _other_form(row) if chosen is None and rejected is None else None
    if other is not None:
        raise RowProblem("missing_field", "chosen", f"missing: the row is {other[0]}, not a preference pair",
                         f"Pairwise objectives and reward models need 'chosen' and 'rejected'. {other[1]}")
    if chosen is None:
        raise RowProblem("missing_field", "chosen", missing_detail(row, "chosen"),
                         "A pairwise row needs 'chosen' and 'rejected'." + (NO_PAIR_COLUMNS_FIX if not
                                                                             {"chosen", "rejected"} & set(row) else ""))
    if rejected is None:
        raise RowProblem("missing_field", "rejected", missing_detail(row, "rejected"),
                         "A pairwise row needs 'chosen' and 'rejected'.")
    if _text_prompt_over_conversations(prompt, chosen, rejected):
        return _conversations_with_text_prompt(prompt, chosen, rejected)
    check_same_form({"chosen": chosen, "rejected": rejected, "prompt": prompt})
    conversational = isinstance(chosen, list)
    form = "conversational" if conversational else "standard"
    if "prompt" in row and prompt == "" and prompt_optional and not conversational:
        chosen, rejected = check_text(chosen, "chosen"), check_text(rejected, "rejected")
        check_different(chosen, rejected)
        return "", chosen, rejected, "standard_no_prompt"
    if "prompt" in row:  # present (a null prompt is a missing field, not an implicit prompt)
        prompt = check_text_or_messages(prompt, "prompt")
        chosen = check_text_or_messages(chosen, "chosen")  # conversations: any turns, as TRL (`multiturn_form`)
        rejected = check_text_or_messages(rejected, "rejected")
        check_different(chosen, rejected)
        return prompt, chosen, rejected, multiturn_form(form, chosen, rejected)
    if conversational:  # implicit prompt: full conversations
        chosen, rejected = check_messages(chosen, "chosen"), check_messages(rejected, "rejected")
        check_different(chosen, rejected)
        prompt, chosen_turns, rejected_turns = split_implicit_messages(chosen, rejected)
        _refuse_unread_prompt_column(row, " ".join(str(m.get("content")) for m in prompt))
        return prompt, chosen_turns, rejected_turns, multiturn_form(form + "_implicit", chosen_turns, rejected_turns)
    chosen, rejected = check_text(chosen, "chosen"), check_text(rejected, "rejected")
    check_different(chosen, rejected)
    try:
        prompt, chosen_text, rejected_text = split_implicit_text(chosen, rejected)
    except RowProblem as problem:
        if not prompt_optional or problem.reason != "no_common_prompt":
            raise
        _refuse_unread_prompt_column(row, "")
        return "", chosen, rejected, "standard_no_prompt"  # the whole texts are scored, as TRL's RewardTrainer does
    _refuse_unread_prompt_column(row, prompt)
    return prompt, chosen_text, rejected_text, form + "_implicit"


# a row with neither column: columns named otherwise are read with dataset_columns; columns that must be built
# (Stanford SHP's human_ref_A / human_ref_B / labels) need a map first; on_bad_row: skip would skip every such row
NO_PAIR_COLUMNS_FIX = (" The row has neither column: if the data names them otherwise, say which column is which with "
                       "the option dataset_columns (preflab field: your column), e.g. dataset_columns: {chosen: good, "
                       "rejected: bad} (preflab eval: --data-columns chosen=good,rejected=bad); columns that must be "
                       "computed (SHP's human_ref_A / human_ref_B / labels) need ds.map before training.")


def missing_detail(row: dict, name: str) -> str:
    """Why `name` is missing from `row`, with the row's columns and the one that is `name` written another way
    (a CSV header "prompt, chosen, rejected" gives ' chosen'; an export gives 'Chosen'), which the bare "missing"
    hid: the user saw a column the message said was absent."""
    if name in row:
        return "missing (null)"
    import difflib

    columns = [str(k) for k in row]
    close = [k for k in columns if k.strip().lower() == name] or difflib.get_close_matches(name, columns, 1, 0.75)
    listed = ", ".join(repr(c) for c in columns[:12]) + (", ..." if len(columns) > 12 else "")
    return f"missing (the row's columns: {listed})" + (
        f"; is {close[0]!r} meant as {name!r}? Rename the column, or read it with dataset_columns: "
        f"{{{name}: {close[0]}}}" if close else "")


PROMPT_LIKE_COLUMNS = ("prompt", "question", "query", "instruction", "input")  # compared lower-case


def _refuse_unread_prompt_column(row: dict, implicit_prompt: str) -> None:
    """A row without `prompt` takes the shared start of chosen and rejected as its prompt (TRL's implicit form). A
    text column that names a prompt another way ('question', 'Prompt', 'instruction', ...) and is not part of that
    start would never be read: the pair would train without its question ("The answer is" -> " 4"), as TRL does
    silently. Refused; a column whose text the implicit prompt holds (full transcripts beside it) is fine."""
    for key, value in row.items():
        if key != "prompt" and key.lower() in PROMPT_LIKE_COLUMNS and isinstance(value, str) and value.strip() \
                and value.strip() not in implicit_prompt:
            raise RowProblem("unread_prompt_column", key, f"looks like the prompt, but the row has no 'prompt' column, "
                             f"so the shared start of 'chosen' and 'rejected' ({implicit_prompt[:40]!r}) would be the "
                             f"prompt and {key!r} never read", f"Read it as the prompt with dataset_columns: {{prompt: "
                             f"{key}}} (or rename it to 'prompt'), or drop the column if chosen and rejected hold the "
                             "prompt themselves.")


def _text_prompt_over_conversations(prompt, chosen, rejected) -> bool:
    """A text `prompt` beside `chosen` / `rejected` conversations that hold the prompt turns themselves (they open
    with a non-assistant message): HuggingFaceH4/ultrafeedback_binarized's rows. TRL's maybe_extract_prompt ignores
    such a prompt and takes the conversations' shared turns (extract_prompt)."""
    return (isinstance(prompt, str) and isinstance(chosen, list) and isinstance(rejected, list)
            and all(v and isinstance(v[0], dict) and v[0].get("role") not in ("assistant", None)
                    for v in (chosen, rejected)))


def _conversations_with_text_prompt(prompt: str, chosen: list, rejected: list) -> tuple[object, object, object, str]:
    """(prompt turns, chosen turns, rejected turns, form) of a text prompt over full conversations, as TRL: the
    shared turns are the prompt. The text prompt must be the last user turn of those turns (else the row says which
    it is), so that a prompt column that disagrees with the conversations is never dropped silently."""
    chosen, rejected = check_messages(chosen, "chosen"), check_messages(rejected, "rejected")
    check_different(chosen, rejected)
    turns, chosen_turns, rejected_turns = split_implicit_messages(chosen, rejected)
    users = [m.get("content") for m in turns if m.get("role") == "user"]
    if not users or not isinstance(users[-1], str) or users[-1].strip() != prompt.strip():
        raise RowProblem("mixed_forms", "prompt", f"is text ({prompt[:60]!r}) but 'chosen' and 'rejected' are whole "
                         "conversations whose last shared user turn is " + (repr(users[-1][:60]) if users and
                                                                             isinstance(users[-1], str) else "absent"),
                         "Give the prompt as the conversations' shared turns (a list of messages), or drop the "
                         "'prompt' column to take the shared turns as the prompt.")
    return turns, chosen_turns, rejected_turns, multiturn_form("conversational_implicit_text_prompt", chosen_turns,
                                                                rejected_turns)


def multiturn_form(form: str, *responses) -> str:
    """`form` + "_multiturn" when a conversational response is more than the assistant's own reply
    (validate.is_assistant_reply): a multi-turn continuation (assistant, user, assistant, ...), a response that opens
    with a user or tool turn, or one with a system turn. TRL 1.16's DPO, KTO and reward trainers train every token
    the chat template renders after the prompt, the user's and the tools' turns included, and preflab does the same
    (token ids equal to TRL's: tests/data/test_multiturn_trl_parity.py); the form name puts the count of such rows in
    the data line, so it is not silent."""
    chats = [r for r in responses if isinstance(r, list)]
    return form + "_multiturn" if chats and not all(is_assistant_reply(r) for r in chats) else form


def _other_form(row: dict) -> tuple[str, str] | None:
    """(name, what to do) of the TRL row form of a row without a pair (unpaired, prompt-completion, language
    modeling), or None."""
    tokenized = [k for k in ("chosen_ids", "rejected_ids", "chosen_input_ids", "rejected_input_ids",
                             "prompt_input_ids", "prompt_ids") if k in row]
    if tokenized:
        return (f"a pre-tokenized row ({', '.join(tokenized)}: TRL's processed form)", "preflab tokenizes the "
                "text itself (and checks the prompt/response boundary, bos and eos): give the text columns prompt, "
                "chosen and rejected, e.g. tokenizer.decode of the ids.")
    if "response_a" in row and "criteria_x" in row:
        return ("an RPR context row (prompt, response_a, response_b, criteria_x, criteria_y)", "Expand each into two "
                "context rows (criteria_x: a > b, criteria_y: b > a) with preflab.reward_models.context."
                "expand_rpr_rows and train those with task: reward (the `context` column conditions the reward).")
    # a ranked list (loops.listwise: prompt, completions, scores; RRHF's own data names them query, responses, scores)
    listed = next((k for k in ("completions", "responses") if isinstance(row.get(k), list)), None)
    if listed is not None and "scores" in row:
        renamed = (" (RRHF's own columns: dataset_columns: {prompt: query, completions: responses})"
                   if listed == "responses" else "")
        return (f"a ranked list ({listed} + scores: the listwise form)", "Train ranked lists with a listwise "
                f"loss_type (rrhf; `preflab objectives` marks it ListBatch){renamed}, or write pairs from each list "
                "(chosen: a higher-scored response, rejected: a lower-scored one) for a pairwise loss_type or a "
                "reward model.")
    if "completion" in row and "label" in row:
        return ("TRL's unpaired preference form (prompt, completion, label)", "Train unpaired rows with loss_type: "
                "kto (or apo_zero_unpaired), or write each prompt's pair as one row.")
    if "completion" in row:
        return "TRL's prompt-completion form (prompt, completion)", "Train completions with task: sft."
    if "text" in row or "messages" in row:
        return "TRL's language-modeling form (text or messages)", "Train it with task: sft."
    return None


def is_intra_row(row: dict) -> bool:
    """A MAPL intra-sample row: `prompt_chosen` or `prompt_rejected` has a value (or is present in a row without
    prompt / chosen / rejected values). A null column does not count: a table mixing ordinary pairs and intra rows
    (parquet, a hub dataset) has every column in every row."""
    if any(row.get(k) is not None for k in ("prompt_chosen", "prompt_rejected")):
        return True
    return ("prompt_chosen" in row or "prompt_rejected" in row) and all(row.get(k) is None for k in PAIR_FIELDS)


def _intra_parts(row: dict) -> tuple[object, object, object, str]:
    """(x_w, x_l, y, form) of a MAPL intra row, validated."""
    clash = [k for k in PAIR_FIELDS if row.get(k) is not None]
    if clash:
        raise RowProblem("mixed_row_forms", clash[0], "present beside prompt_chosen / prompt_rejected: the row is "
                         "both an ordinary pair and a MAPL intra row", "Write one form per row. " + INTRA_FIX)
    for name in INTRA_FIELDS:
        if row.get(name) is None:
            raise RowProblem("missing_field", name, "missing", INTRA_FIX)
    x_w, x_l, y = (row[k] for k in INTRA_FIELDS)
    check_same_form({"prompt_chosen": x_w, "prompt_rejected": x_l, "completion": y})
    x_w = check_text_or_messages(x_w, "prompt_chosen")
    x_l = check_text_or_messages(x_l, "prompt_rejected")
    y = check_text_or_messages(y, "completion", response=True)
    if x_w == x_l:
        raise RowProblem("identical", "prompt_rejected", "identical to 'prompt_chosen'",
                         "An intra row needs two different prompts; drop or fix the row.")
    return x_w, x_l, y, "intra_" + ("conversational" if isinstance(y, list) else "standard")


def _build_pairwise(row_id: int, row: dict, prompt_optional: bool = False) -> tuple[list[PairExample], str]:
    if is_intra_row(row):
        x_w, x_l, y, form = _intra_parts(row)
        return [PairExample(row_id, x_w, y, y, _extras(row, INTRA_FIELDS + PAIR_FIELDS), rejected_prompt=x_l)], form
    prompt, chosen, rejected, form = _pair_parts(row, prompt_optional)
    return [PairExample(row_id, prompt, chosen, rejected, _extras(row, PAIR_FIELDS))], form


def _refuse_intra(row: dict, kind: str) -> None:
    if is_intra_row(row):
        field = "prompt_chosen" if "prompt_chosen" in row else "prompt_rejected"
        raise RowProblem("intra_row_not_supported", field, f"a MAPL intra row (two prompts, one completion) cannot be "
                         f"read as a {kind} row", "Train intra rows with task: dpo and loss_type: rc_dpo, or with "
                         "task: reward (reward_head: bt, the Rc-BT loss).")


def _build_unpaired(row_id: int, row: dict) -> tuple[list[UnpairedExample], str]:
    _refuse_intra(row, "unpaired (KTO)")
    if "completion" not in row and "label" not in row and ("chosen" in row or "rejected" in row):
        prompt, chosen, rejected, form = _pair_parts(row)
        extras = _extras(row, PAIR_FIELDS)
        return [UnpairedExample(row_id, prompt, chosen, True, extras),
                UnpairedExample(row_id, prompt, rejected, False, dict(extras))], "pairwise_" + form
    prompt, completion = row.get("prompt"), row.get("completion")
    if prompt is None:
        raise RowProblem("missing_field", "prompt", missing_detail(row, "prompt"), "An unpaired row needs 'prompt', "
                         "'completion' and 'label' (or 'chosen' and 'rejected').")
    if completion is None:
        raise RowProblem("missing_field", "completion", missing_detail(row, "completion"), "An unpaired row needs "
                         "'prompt', 'completion' and 'label' (or 'chosen' and 'rejected').")
    check_same_form({"prompt": prompt, "completion": completion})
    prompt = check_text_or_messages(prompt, "prompt")
    completion = check_text_or_messages(completion, "completion")  # conversations: any turns (`multiturn_form`)
    label = check_label(row.get("label"))
    form = multiturn_form("conversational" if isinstance(completion, list) else "standard", completion)
    return [UnpairedExample(row_id, prompt, completion, label, _extras(row, UNPAIRED_FIELDS))], form


NO_PROMPT_MESSAGES = ({"role": "user", "content": ""},)  # TRL 1.16's prompt of a row without one, beside an environment
_FROM_RESET_ATTR = "_preflab_prompt_from_reset"  # a plain attribute, as keep_place's: equality and fingerprints ignore it


def prompt_from_reset(example) -> bool:
    """Whether a prompt row was read without a `prompt` key (load_rows(kind="prompt", prompt_optional=True)): its
    prompt is NO_PROMPT_MESSAGES and the environment's reset gives its text."""
    return bool(getattr(example, _FROM_RESET_ATTR, False))


def _build_prompt(row_id: int, row: dict, prompt_optional: bool = False) -> tuple[list[PromptExample], str]:
    _refuse_intra(row, "prompt (online)")
    if "prompt" not in row and "chosen" in row and "rejected" in row:
        prompt, _, _, form = _pair_parts(row)
        return [PromptExample(row_id, prompt, _extras(row, PAIR_FIELDS))], form
    if "prompt" not in row and prompt_optional:  # environment_factory (TRL: x.get("prompt", [empty user message]))
        example = PromptExample(row_id, [dict(m) for m in NO_PROMPT_MESSAGES], _extras(row, ("prompt",)))
        setattr(example, _FROM_RESET_ATTR, True)
        return [example], "no_prompt"
    if row.get("prompt") is None:
        fix = _prompt_row_fix(row) + (" Beside environment_factory a row may leave the 'prompt' key out (reset then "
                                      "gives its prompt, TRL's rule); a null one is not read so (TRL fails on it)."
                                      if prompt_optional else "")
        raise RowProblem("missing_field", "prompt", missing_detail(row, "prompt"), fix)
    prompt = check_text_or_messages(row.get("prompt"), "prompt")
    form = "conversational" if isinstance(prompt, list) else "standard"
    return [PromptExample(row_id, prompt, _extras(row, ("prompt",)))], form


def _prompt_row_fix(row: dict) -> str:
    """What a prompt row (online_task: dataset) without 'prompt' is told: the column it needs, and the column that
    looks like it ('question', 'instruction', ..., or a 'messages' conversation), which the bare "Add a non-empty
    string 'prompt'" left unsaid (and a prompt may be a list of messages too)."""
    like = [k for k in row if k != "prompt" and (str(k).lower() in PROMPT_LIKE_COLUMNS or k == "messages")]
    fix = "A prompt row needs 'prompt': text, or a list of messages (TRL's GRPO / online DPO datasets)."
    if like:
        fix += (f" Read {like[0]!r} as the prompt with dataset_columns: {{prompt: {like[0]}}} (or rename it)" +
                (" (a 'messages' column is TRL's language-modeling form: as the prompt it must hold the prompt turns "
                 "only)" if like[0] == "messages" else "") + ".")
    return fix


_BUILDERS: dict[str, Callable] = {"pairwise": _build_pairwise, "unpaired": _build_unpaired, "prompt": _build_prompt}
