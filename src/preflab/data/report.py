"""Bad-row bookkeeping shared by the data stages: every row is either kept or skipped with a reason.

A stage raises `RowProblem(reason, field, detail, fix)` for one bad row. `BadRowPolicy.handle` then either
raises a `DataError` that names the file, the row index and the field (``on_bad_row="error"``), or counts the
row under its reason in the stage's report (``on_bad_row="skip"``). Nothing is dropped silently: each report
keeps ``kept + sum(skipped.values()) == total``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from preflab.errors import ConfigError, DataError, nearest

ON_BAD_ROW = ("error", "skip")
MAX_SKIPPED_EXAMPLES = 20


class RowProblem(Exception):
    """One bad row: a short `reason` key (counted in reports), the `field` at fault (or None), what is wrong
    (`detail`) and what to do about it (`fix`)."""

    def __init__(self, reason: str, field: str | None, detail: str, fix: str = ""):
        super().__init__(detail)
        self.reason, self.field, self.detail, self.fix = reason, field, detail, fix


def check_on_bad_row(value: str) -> str:
    """Validate the `on_bad_row` setting ("error" or "skip")."""
    if value not in ON_BAD_ROW:
        raise ConfigError(f"on_bad_row={value!r} is not one of {ON_BAD_ROW}.{nearest(str(value), ON_BAD_ROW)}")
    return value


def where(source: str, row_id: int, line: int | None = None) -> str:
    """'train.jsonl row 17 (line 18)': the place named in every data message."""
    place = f"{source} row {row_id}" if source else f"row {row_id}"
    return place + (f" (line {line})" if line is not None else "")


PLACE_ATTR = "source_place"


def keep_place(item, raw):
    """`item` (an example built from the RawRow `raw`) remembering the file and line of its row, so that a problem
    found later (at tokenization) names them as a row-level error does. Kept as a plain attribute, not a dataclass
    field: equality, fingerprints, the tokenization cache key and duplicate checks ignore where a row came from.
    Returns `item`."""
    setattr(item, PLACE_ATTR, (raw.file, raw.line))
    return item


def carry_place(item, source_item):
    """`item` (made from `source_item`, e.g. a tokenized example) with `source_item`'s place; returns `item`."""
    if hasattr(source_item, PLACE_ATTR):
        setattr(item, PLACE_ATTR, place_of(source_item))
    return item


def place_of(item) -> tuple[str | None, int | None]:
    """(file, line) that `keep_place` gave `item`; (None, None) for an item built without its row's place."""
    return getattr(item, PLACE_ATTR, (None, None))


def row_error(problem: RowProblem, source: str, row_id: int, line: int | None = None,
              field_name: str | None = None, skippable: bool = True) -> DataError:
    """The `DataError` for one bad row; it also carries `.source`, `.row_id`, `.field` and `.reason`.
    skippable=False: the reader has no `on_bad_row`, so the message does not offer it."""
    name = field_name if field_name is not None else problem.field
    head = where(source, row_id, line) + (f", field {name!r}" if name else "")
    fix = f" {problem.fix}" if problem.fix else ""
    then = " Fix the row or set on_bad_row: skip." if skippable else "" if problem.fix else " Fix the row."
    err = DataError(f"{head}: {problem.detail}.{fix}{then}")
    err.source, err.row_id, err.field, err.reason, err.line = source, row_id, name, problem.reason, line
    return err


@dataclass
class RowReport:
    """Counts shared by the data reports: rows seen, kept, and skipped by reason (with up to 20 examples)."""

    source: str = ""
    total: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[dict] = field(default_factory=list)

    def record_skip(self, problem: RowProblem, row_id: int, line: int | None = None,
                    field_name: str | None = None) -> None:
        """Count one skipped row under its reason; keep the first `MAX_SKIPPED_EXAMPLES` as examples."""
        self.skipped[problem.reason] = self.skipped.get(problem.reason, 0) + 1
        if len(self.skipped_examples) < MAX_SKIPPED_EXAMPLES:
            entry = {"row_id": row_id, "field": field_name if field_name is not None else problem.field,
                     "reason": problem.reason, "detail": problem.detail}
            if line is not None:
                entry["line"] = line
            self.skipped_examples.append(entry)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def check(self) -> None:
        """Assert that every row is accounted for (kept or skipped with a reason)."""
        if self.kept + self.n_skipped != self.total:
            raise AssertionError(f"data report does not add up: kept {self.kept} + skipped {self.n_skipped} "
                                 f"!= total {self.total} ({self.source})")

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field, for the run summary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        """Rebuild a report from `to_dict()` output (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def _skip_text(self) -> str:
        if not self.skipped:
            return "0 skipped"
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{self.n_skipped} skipped ({reasons})"


class BadRowPolicy:
    """Applies `on_bad_row` to a `RowProblem`: raise a `DataError`, or count the row as skipped in `report`."""

    def __init__(self, on_bad_row: str, report: RowReport, field_names: dict[str, str] | None = None):
        self.mode = check_on_bad_row(on_bad_row)
        self.report = report
        self.field_names = field_names or {}  # preflab name -> the user's column name (from column_map)

    def display_field(self, name: str | None, columns: dict[str, str] | None = None) -> str | None:
        """The field as the user's file spells it: 'chosen[1].role' -> 'good[1].role' under a column_map, or under
        dataset_columns (`columns`: {preflab field: dataset column}, the row's RawRow.mapped_columns)."""
        names = {**self.field_names, **(columns or {})}
        if not name or not names:
            return name
        root = name.split("[", 1)[0].split(".", 1)[0]
        return names.get(root, root) + name[len(root):]

    def handle(self, problem: RowProblem, row_id: int, line: int | None = None, source: str | None = None,
               columns: dict[str, str] | None = None) -> None:
        shown = self.display_field(problem.field, columns)
        if self.mode == "error":
            raise row_error(problem, self.report.source if source is None else source, row_id, line, shown)
        self.report.record_skip(problem, row_id, line, shown)

    def handle_item(self, problem: RowProblem, item) -> None:
        """`handle` for a problem found after reading (at tokenization): names the item's row, and its file and line
        where the reader gave them (`keep_place`)."""
        file, line = place_of(item)
        self.handle(problem, item.row_id, line, source=file)

    def accepted(self, reader, build):
        """(raw row, build(raw)) for every row of `reader` that reads and builds; a row whose reading or `build`
        raises a RowProblem is handled here (DataError, or skipped and counted). Counts total and kept rows, and,
        once `reader` (a RowReader) is read to its end, the blank lines it skipped (a report with blank_lines), so
        that every reader's "is empty" error and summary count them (refuse_empty)."""
        for raw in reader:
            self.report.total += 1
            try:
                if raw.problem is not None:
                    raise raw.problem
                built = build(raw)
            except RowProblem as problem:
                self.handle(problem, raw.row_id, raw.line, source=raw.file,
                            columns=getattr(raw, "mapped_columns", None))
                continue
            self.report.kept += 1
            yield raw, built
        if hasattr(reader, "blank_lines") and hasattr(self.report, "blank_lines"):
            self.report.blank_lines = reader.blank_lines
        keep_read_from(self.report, reader)


def first_skipped_note(*reports) -> str:
    """" First skipped: line L, field 'F': REASON (DETAIL)." for the first skipped row the reports kept an example
    of (RowReport.skipped_examples, in the order given), or '': what an error that no row was usable shows, so the
    reader sees why (e.g. the rows are TRL's unpaired form, not pairs) and not only a count by reason."""
    def examples(report) -> list:  # a RowReport, or its to_dict() (a run's data report keeps those)
        if report is None:
            return []
        return (report.get("skipped_examples") if isinstance(report, dict) else report.skipped_examples) or []

    first = next((examples(r)[0] for r in reports if examples(r)), None)
    if first is None:
        return ""
    at = f"line {first['line']}" if first.get("line") else f"row {first['row_id']}"
    return f" First skipped: {at}, field {first['field']!r}: {first['reason']} ({first['detail']})."


READ_FROM = "read_from"  # plain attribute of a report: (what was read, the files read); see keep_read_from


def keep_read_from(report, reader):
    """Give `report` its reader's split and data files (RowReader.read_from, .files) as a plain attribute, not a
    dataclass field: summary.json's data report stays as it was; only an "is empty" error (refuse_empty) names
    them. A reader without them (rows in memory) leaves the report as it is. Returns `report`."""
    if report is not None and callable(getattr(reader, "read_from", None)):
        setattr(report, READ_FROM, (reader.read_from(), [str(f) for f in reader.files]))
    return report


# what to do about an empty source, by the option that named it (refuse_empty); {it}: the file(s) read, or "it"
EMPTY_FIXES = {"dataset_name": "Fill {it}, or point dataset_name at data with rows.",
               "eval_dataset_name": "Fill {it}, point eval_dataset_name at data with rows, or set eval_strategy: no "
                                    "(no evaluation).",
               "--data": "Fill {it}, or give --data a source with rows (or --split another split of it)."}


def refuse_empty(report, option: str | None = None, name=None) -> None:
    """DataError when the source `option`=`name` (None: the report's source alone; "--data": preflab eval's) holds no
    rows at all (an empty file), said as such: the run's later "no training rows are left ...: every row was
    skipped" blamed skipping when nothing was read. It names the split and the file(s) read where the reader gave
    them (keep_read_from: a folder's 'test' split is its test.jsonl, not the folder) and says what to do; the blank
    lines the reader skipped are counted in it."""
    if report is not None and report.total == 0:
        if option and option.startswith("--"):
            head = f"{option} {report.source}"
        else:
            head = f"{option}={name!r} ({report.source})" if option else report.source
        raise empty_error(head, *getattr(report, READ_FROM, ("", [])), getattr(report, "blank_lines", 0), option)


def empty_error(head: str, read: str = "", files=(), blank: int = 0, option: str | None = None) -> DataError:
    """The DataError "HEAD is empty: its split 'test' (file F) holds no rows (B blank lines). FIX" for a source
    `head` that holds no rows; read and files: RowReader.read_from() and .files ("" and none: "it holds no
    rows"); FIX: what to do, by the option that named the source (EMPTY_FIXES), naming the file(s) read as
    "that file" / "those files" where `read` named them."""
    what = f"its {read} holds no rows" if read else "it holds no rows"
    named = read.endswith(")")
    it = "that file" if named and len(files) == 1 else "those files" if named and len(files) > 1 else "it"
    fix = EMPTY_FIXES.get(option, "Fill {it}, or point to data with rows.").format(it=it)
    return DataError(f"{head} is empty: {what}" + (f" ({blank} blank lines)" if blank else "") + f". {fix}")


@dataclass
class DataReport(RowReport):
    """What `load_rows` read: rows seen / kept / skipped by reason, the forms found (e.g. 'standard',
    'conversational_implicit'), the number of examples produced (pairwise rows read as unpaired give two
    each) and blank JSONL lines ignored."""

    kind: str = "pairwise"
    examples: int = 0
    forms: dict[str, int] = field(default_factory=dict)
    blank_lines: int = 0
    column_gaps: dict[str, dict] = field(default_factory=dict)  # online prompt rows: preflab.online.tasks
    prompt_repeated: int = 0  # rows whose responses all begin with the whole prompt (preflab.data.rows.repeats_prompt)
    prompt_repeated_first: int | None = None

    def summary(self) -> str:
        """One line, e.g. 'train.jsonl (pairwise): 100 rows, 97 kept, 3 skipped (empty_field: 2, identical: 1)'."""
        forms = ", ".join(f"{k} {v}" for k, v in sorted(self.forms.items()))
        line = f"{self.source or '<rows>'} ({self.kind}): {self.total} rows, {self.kept} kept, {self._skip_text()}"
        if forms:
            line += f"; forms: {forms}"
        if self.examples != self.kept:
            line += f"; {self.examples} examples"
        if self.blank_lines:  # not rows, but a blank line in the middle of a file may be a row lost in an edit
            line += f"; {self.blank_lines} blank line(s) ignored"
        return line

    def repeated_prompt_note(self) -> str | None:
        """A note when some rows' responses all begin with their whole prompt (counted by load_rows); None if none."""
        if not self.prompt_repeated:
            return None
        return (f"{self.source or '<rows>'}: in {self.prompt_repeated} of {self.kept} row(s) (first: row "
                f"{self.prompt_repeated_first}) every response begins with the whole prompt, so the prompt is trained "
                "a second time as part of each response (full transcripts with a 'prompt' column too?). Drop the "
                "'prompt' column to take the responses' shared start as the prompt, or cut the prompt from the "
                "responses.")

    def split_pairs_note(self) -> str | None:
        """A note when an unpaired (KTO) read mixes unpaired rows with pairwise rows: each pair is split into a
        desirable (chosen) and an undesirable (rejected) example, which is what TRL does to a paired dataset as a
        whole (KTOTrainer's unpair_preference_dataset), but TRL reads a dataset in one form only: with both forms in
        one table it unpairs every row or none, by the first row's columns. None when the rows are of one form."""
        pairs = sum(v for k, v in self.forms.items() if k.startswith("pairwise_"))
        unpaired = sum(v for k, v in self.forms.items() if not k.startswith("pairwise_"))
        if self.kind != "unpaired" or not (pairs and unpaired):
            return None
        return (f"{self.source or '<rows>'} mixes {unpaired} unpaired row(s) (prompt, completion, label) with "
                f"{pairs} pairwise row(s) (chosen, rejected): each pair was split into a desirable (chosen) and an "
                f"undesirable (rejected) example ({2 * pairs} examples). TRL's KTOTrainer reads one form per dataset "
                "(a paired one is unpaired as a whole with unpair_preference_dataset); give one form unless the mix "
                "is meant.")

    def mixed_forms_note(self, use: str = "trained on") -> str | None:
        """A note when the rows mix text and conversational forms (each row is valid, but only the conversational
        ones go through the chat template, so the model sees two formats); None otherwise. use: what is done with
        the rows ("trained on"; `preflab eval`: "evaluated on")."""
        conversational = sum(v for k, v in self.forms.items() if "conversational" in k)
        text = sum(v for k, v in self.forms.items() if "standard" in k)
        if not (conversational and text):
            return None
        return (f"{self.source or '<rows>'} mixes {text} text row(s) and {conversational} conversational row(s): "
                f"only the conversational ones get the chat template, so the model is {use} two formats. "
                "Give every row in one form unless that is meant.")

    def form_kinds(self) -> set[str]:
        """{'text', 'conversational'}: the row forms this report counted (conversational: chat-templated)."""
        return {"conversational" if "conversational" in k else "text" for k, v in self.forms.items() if v}

    def eval_forms_note(self, eval_report: "DataReport | None") -> str | None:
        """A note when the eval set is in one form and the training rows in the other (text vs conversational): the
        eval rows then go through the chat template while the training rows do not (or the reverse), so the eval
        metrics measure a format the policy was not trained on. None otherwise (a set that mixes both forms gets
        `mixed_forms_note`)."""
        if eval_report is None:
            return None
        train, evals = self.form_kinds(), eval_report.form_kinds()
        if len(train) != 1 or len(evals) != 1 or train == evals:
            return None
        how = {"text": "text (no chat template)", "conversational": "conversational (chat template)"}
        return (f"the training rows of {self.source or '<rows>'} are {how[next(iter(train))]} and the eval rows of "
                f"{eval_report.source or '<rows>'} {how[next(iter(evals))]}, so the eval metrics measure a format "
                "the policy is not trained on. Give both sets in one form unless that is meant.")


@dataclass
class TokenizeReport(RowReport):
    """What tokenization did: examples seen / kept / skipped by reason. Among the kept rows: how many had their
    prompt or a response truncated, needed the separate-tokenization boundary ('boundary_merged') or the
    common-prefix cut ('boundary_shifted'), or already ended in EOS; token totals and maxima."""

    prompt_truncated: int = 0
    response_truncated: int = 0
    boundary_merged: int = 0
    boundary_shifted: int = 0
    eos_already_present: int = 0
    # KTO: kept examples whose mismatched (KL) sequence, prompt + another example's uncut completion, max_length
    # cuts with any partner (kl_truncated_always) / with the longest completion (kl_truncated: at most this many;
    # the partner is drawn per micro-batch), see preflab.data.tokenize.count_kl_truncated
    kl_truncated: int = 0
    kl_truncated_always: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0
    max_prompt_tokens: int = 0
    max_response_tokens: int = 0
    from_cache: bool = False

    def summary(self, shifted_note: bool = True) -> str:
        """One line with the kept/skipped counts, truncations and boundary fallbacks. shifted_note=False leaves
        'boundary shifted' out (reward models: their ids are the joint tokenization, the boundary is not used)."""
        parts = [f"{self.source or '<examples>'}: tokenized {self.total}, {self.kept} kept, {self._skip_text()}",
                 f"prompt truncated {self.prompt_truncated}", f"response truncated {self.response_truncated}"]
        if self.boundary_merged:  # data.boundary: where and why this differs from TRL
            parts.append(f"boundary merged {self.boundary_merged} (a token spans the prompt/response boundary: the "
                         "prompt keeps its own ids and the response is tokenized on its own; TRL 1.16 instead moves "
                         "the prompt's last tokens into the response)")
        if self.boundary_shifted and shifted_note:
            parts.append(f"boundary shifted {self.boundary_shifted} (the prompt's last tokens are scored as part of "
                         "the response, as TRL 1.16 does)")
        if self.kl_truncated:
            parts.append(f"KL sequences truncated {self.kl_truncated_always} to {self.kl_truncated} (KTO: a prompt + "
                         "another example's completion over max_length, cut as TRL 1.16 cuts them; how many depends "
                         "on the completion each prompt is paired with)")
        if self.eos_already_present:
            parts.append(f"eos already present {self.eos_already_present}")
        return "; ".join(parts) + (" (from cache)" if self.from_cache else "")


def training_skipped(report: dict) -> dict[str, int]:
    """summary.json's data["skipped"]: the training rows and examples a run left out, by reason, summed over its
    reading (`train_rows`) and tokenizing (`train_tokenize`) stages. One rule for every task: before, a reward,
    SFT or streaming run's total left out what tokenizing dropped (a reward pair past max_length, a prompt that
    fills max_length), so it disagreed with the parts beside it."""
    out: dict[str, int] = {}
    for key in ("train_rows", "train_tokenize"):
        for reason, count in ((report.get(key) or {}).get("skipped") or {}).items():
            out[reason] = out.get(reason, 0) + int(count)
    return out
