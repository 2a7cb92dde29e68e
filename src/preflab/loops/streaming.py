"""Streaming training data (streaming: true): rows are read, checked, tokenized and batched as the steps need them.

    train:
      streaming: true                  # TRL: dataset_streaming
      streaming_shuffle_buffer: 10000  # 0: source order
      max_steps: 5000                  # required: a stream has no length

Sources: a .jsonl / .csv / .parquet file or a directory of them (read row by row; a .json file holding one JSON
array is parsed whole, so use JSON lines for big data), a save_to_disk directory (memory-mapped), a hub name
(`datasets.load_dataset(name, split=..., streaming=True)`), or from Python `Trainer(cfg, train_data=...)` with a
`datasets.IterableDataset` / `Dataset`, a list of row dicts, or a function returning a fresh iterable of row dicts
(a plain generator can be read only once: one pass, and no resume).

Order and exactness. Global step s takes the next G = per_device_train_batch_size x processes x
gradient_accumulation_steps examples of the stream; micro-batch m of rank r is its slice [(m*world + r)*b, ...),
the slicing of preflab.loops.batches.BatchPlan. Every rank reads (and tokenizes) the whole stream and keeps its own
slices, so 2 processes x b equal 1 process x 2b exactly, and a stream without shuffling whose rows are in the order
of the ordinary run's permutation gives that run's weights. When a pass ends, its incomplete last global batch is
left out (counted) and the next pass (epoch) starts, shuffled with the next seed.

Resume: every checkpoint records the stream's position and data report (preflab.data.stream.ExampleStream.state);
a resumed run re-reads the source up to it, skipping the rows already trained on without checking or tokenizing
them, and ends with the weights of the uninterrupted run.

Not with streaming (refused in the config check): eval_fraction (give eval_dataset_name; the eval set is read
whole), precompute_ref_log_probs (it scores the whole training set), eval_strategy: epoch (a stream has no epoch
length); tasks other than dpo and sft.
"""
from __future__ import annotations

from dataclasses import dataclass

from preflab.data.report import DataReport, RowReport, TokenizeReport
from preflab.data.stream import ExampleStream
from preflab.errors import ConfigError, DataError
from preflab.loops.batches import order_seed

@dataclass
class StreamPlan:
    """The BatchPlan of a streaming run: the same global batch and slicing, no epoch length (transformers counts
    max_steps as one epoch of an iterable dataset; the logged `epoch` is step / max_steps)."""

    per_device: int
    world: int
    grad_accum: int
    max_steps: int
    stream: ExampleStream | None = None

    @property
    def global_batch(self) -> int:
        return self.per_device * self.world * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return self.max_steps

    @property
    def unused_rows_per_epoch(self) -> int:
        """Examples left out at the ends of passes so far (each pass's incomplete last global batch)."""
        return self.stream.unused_examples if self.stream is not None else 0

    def slices(self, window: list, rank: int) -> list[list]:
        """This rank's micro-batches of one global batch (BatchPlan.indices' slicing)."""
        b = self.per_device
        return [window[(m * self.world + rank) * b:(m * self.world + rank + 1) * b] for m in range(self.grad_accum)]


class StreamedBatches:
    """Global batch of step s from the stream, asked for in step order (the last one is kept, so asking twice for
    the same step, as building a lazily sized objective does, reads nothing more). check(source, items), when given,
    is called on each global batch as it is read: preflab.loops.prepare.embedding_ids_check, the check the ordinary
    run makes of its whole tokenized data (before, a streamed row holding a token id past the model's embedding
    stopped the step with torch's "IndexError: index out of range in self", naming no row)."""

    def __init__(self, stream: ExampleStream, plan: StreamPlan, check=None):
        self.stream, self.plan, self.check = stream, plan, check
        self._step, self._window, self._start = -1, [], 0
        self.examples_given = 0  # position in the stream of the next global batch (MicroBatch.index)

    def window(self, step: int) -> tuple[list, int]:
        """(the global batch of `step`, the stream position of its first example)."""
        if step == self._step:
            return self._window, self._start
        if step != self._step + 1:
            raise DataError(f"streaming: step {step} was asked for after step {self._step}; a stream is read in "
                            "step order (resume restores the position).")
        self._start = self.examples_given
        self._window = self.stream.next_batch(self.plan.global_batch)
        if self.check is not None:
            try:
                self.check(self.stream.name, self._window)
            except DataError as err:  # said with when: a stream is checked as it is read, not before training
                raise DataError(f"{err} (streaming: rows are checked as they are read; this one was read for "
                                f"optimizer step {step + 1}, after {step} step(s) trained.)") from None
        self._step, self.examples_given = step, self.examples_given + len(self._window)
        return self._window, self._start

    def state(self) -> dict:
        return {**self.stream.state(), "step": self._step, "examples_given": self.examples_given}

    def restore(self, state: dict, step: int) -> None:
        if not isinstance(state, dict):
            raise DataError("this checkpoint holds no stream position (it was not written by a streaming: true "
                            "run); resume it with streaming: false, or start the streaming run afresh.")
        if int(state.get("step", -2)) != step - 1:
            raise DataError(f"the checkpoint's stream position is after step {int(state.get('step', -2)) + 1}, not "
                            f"step {step}; the checkpoint is inconsistent.")
        self.stream.restore(state)
        self._step, self._window, self.examples_given = step - 1, [], int(state.get("examples_given", 0))


# ---------------------------------------------------------------------------------------------- row pipelines
class _Pipeline:
    """raw row -> tokenized examples, counted in named reports (see ExampleStream)."""

    def __init__(self, build, reports: dict[str, RowReport], overlap=None, recall=None):
        self._build, self._reports, self.overlap, self._recall = build, reports, overlap, recall

    def __call__(self, raw) -> list:
        return self._build(raw)

    def reports(self) -> dict:
        return {**self._reports, **({"overlap": self.overlap} if self.overlap is not None else {})}

    def load_reports(self, saved: dict) -> None:
        for name, report in self._reports.items():
            loaded = type(report).from_dict(saved.get(name, {}))
            report.__dict__.update(loaded.__dict__)
        if self.overlap is not None:
            self.overlap.load(saved.get("overlap", {}))

    def end_first_pass(self) -> None:
        if self.overlap is not None:
            self.overlap.end_first_pass()

    def recall(self, raw) -> None:
        """A first-pass row a resume skips: its examples' digests are noted again (not counted: the saved report
        counted them)."""
        if self._recall is not None:
            self._recall(raw)


def preference_pipeline(cfg, tokenizer, kind_name: str, source: str, eval_prompts: list | None = None):
    """Rows -> PairExample / UnpairedExample (preflab.data.rows) -> TokenizedPair / TokenizedUnpaired, with the
    settings of the ordinary run (preflab.loops.prepare); repeated examples, eval prompts seen in training and
    labels counted over the first pass (StreamOverlap; eval_prompts: the eval set's prompt digests, shared)."""
    from preflab.data.overlap import StreamOverlap
    from preflab.data.rows import row_builder
    from preflab.data.tokenize import ExampleTokenizer
    from preflab.loops.prepare import check_intra_rows, token_settings

    row_kind = {"pairs": "pairwise", "unpaired": "unpaired"}[kind_name]
    rows = DataReport(source=source, kind=row_kind)
    build_rows = row_builder(row_kind, rows, cfg.on_bad_row, required_extras=cfg.objective().row_extras())
    extra = {"max_completion_length": cfg.max_completion_length} if cfg.max_completion_length else {}
    extra.update(token_settings(cfg, kind_name))
    tokenize = ExampleTokenizer(kind_name, tokenizer, max_length=cfg.max_length,
                                max_prompt_length=cfg.max_prompt_length, truncation_mode=cfg.truncation_mode,
                                on_bad_row=cfg.on_bad_row, source=source, **extra)

    objective = cfg.objective()
    overlap = StreamOverlap(eval_prompts=eval_prompts if eval_prompts is not None else [])
    rebuild = row_builder(row_kind, DataReport(source=source, kind=row_kind), "skip",
                          required_extras=cfg.objective().row_extras())  # recall: rows that were read before

    def build(raw) -> list:
        examples = build_rows(raw)
        check_intra_rows(objective, examples, source, cfg.loss_type)  # MAPL intra rows: only losses that read them
        rows.examples += len(examples)
        overlap.see(examples)
        items = [item for item in map(tokenize, examples) if item is not None]
        if kind_name == "unpaired":
            overlap.count_labels(items)
        return items

    return _Pipeline(build, {"rows": rows, "tokenize": tokenize.report}, overlap,
                     lambda raw: overlap.see(rebuild(raw), count=False))


def sft_pipeline(cfg, tokenizer, source: str):
    from preflab.loops.sft_rows import sft_row_builder

    rows, tokens = DataReport(source=source, kind="sft"), TokenizeReport(source=source)
    return _Pipeline(sft_row_builder(cfg, tokenizer, rows, tokens), {"rows": rows, "tokenize": tokens})


# ---------------------------------------------------------------------------------------------- sources
def _row_source(cfg, rows):
    """(open_rows, name): a fresh RowReader per pass over dataset_name, or over `rows` given from Python."""
    from preflab.data.configured_source import data_source, mapped, training_source
    from preflab.data.sources import RowReader

    if rows is None:
        if not cfg.dataset_name:
            raise ConfigError("dataset_name is empty; give a hub name, a directory or a data file to stream.")
        source = training_source(cfg)
        opened = RowReader(source, split=cfg.dataset_split, streaming=True)  # resolves the source (errors now)
        return lambda: RowReader(source, split=cfg.dataset_split, streaming=True), opened.name
    data_source(rows, getattr(cfg, "dataset_config", None))  # a configuration of rows from Python: refused
    if callable(rows) and not hasattr(rows, "__iter__"):
        return lambda: RowReader(mapped(cfg, rows()), split=cfg.dataset_split), "<rows>"
    if iter(rows) is rows:  # an iterator (a generator): it can be read once
        passes = [0]

        def once():
            passes[0] += 1
            if passes[0] > 1:
                raise DataError("the training rows were given as an iterator (a generator), which can be read only "
                                "once, and the run needs a second pass (or a resume); pass a function that returns "
                                "a new iterator, a list or a datasets.IterableDataset, or lower max_steps.")
            return RowReader(mapped(cfg, rows), split=cfg.dataset_split)

        return once, "<rows>"
    return lambda: RowReader(mapped(cfg, rows), split=cfg.dataset_split), RowReader(rows, split=cfg.dataset_split).name


def open_stream(cfg, tokenizer, kind, rows=None) -> tuple[ExampleStream, dict]:
    """(the stream of training examples, the data report dict so far). kind: the batch kind (pairs, unpaired,
    sft); rows: the row source given from Python (see the module docstring), else cfg.dataset_name."""
    open_rows, name = _row_source(cfg, rows)
    if kind.name == "sft":
        if tokenizer.eos_token_id is None:
            from preflab.data.tokenize import no_eos_message

            raise ConfigError(no_eos_message(tokenizer))
        from preflab.loops.sft_rows import note_assistant_template

        note_assistant_template(cfg, tokenizer)  # once per run, not per pass
        make = lambda: sft_pipeline(cfg, tokenizer, name)  # noqa: E731
    else:
        eval_prompts: list = []  # one list for every pass's pipeline (eval_examples fills it)
        make = lambda: preference_pipeline(cfg, tokenizer, kind.name, name, eval_prompts)  # noqa: E731
    stream = ExampleStream(open_rows, make, seed=order_seed(cfg), shuffle_buffer=cfg.streaming_shuffle_buffer or 0,
                           name=name)
    return stream, stream_report(stream)


def stream_report(stream: ExampleStream) -> dict:
    """The data report of a streaming run: the first pass's row and tokenize reports (rows read so far; the whole
    source once first_pass_complete) and the stream's position (rows_per_pass, rows_read_total: every pass)."""
    reports = stream.pipeline.reports()
    overlap = {"overlap": reports["overlap"].report()} if "overlap" in reports else {}
    from preflab.data.report import training_skipped

    parts = {"train_rows": reports["rows"].to_dict(), "train_tokenize": reports["tokenize"].to_dict()}
    return {**parts, "skipped": training_skipped(parts), **overlap,
            "streaming": {"passes_started": stream.pass_index + 1, "first_pass_complete": stream.pass_index > 0,
                          "rows_per_pass": stream.rows_per_pass, "rows_read_total": stream.rows_read_total(),
                          "rows_read_in_pass": stream.rows_read,
                          "unused_examples": stream.unused_examples, "shuffle_buffer": stream.shuffle_buffer}}


def first_pass_scope(rows_read: int, shuffle_buffer: int) -> str:
    """What the counts of an unfinished first pass cover: in source order, its first rows; through a shuffle buffer,
    the rows drawn from it so far, which are not the source's first ones (the rows still in the buffer were read
    but not checked, so a bad row among them is not counted yet)."""
    if shuffle_buffer > 1:
        return (f"the {rows_read} rows drawn so far through the shuffle buffer of {shuffle_buffer}, not the source's "
                f"first {rows_read}; the first pass did not end")
    return f"the first {rows_read} rows read; the first pass did not end"


def stream_notes(stream: ExampleStream, n_eval: int, objective=None) -> list[str]:
    """The data lines of a streaming run at its end, as the ordinary run prints them at its start (preflab.loops.
    prepare): the first pass's row and tokenize counts (the rows read so far while it is under way) and its notes:
    mixed forms, repeated examples, eval prompts seen in training, one label only and KTO's label weights out of
    balance (unpaired; `objective`: the run's objective)."""
    from preflab.data.overlap import overlap_notes
    from preflab.loops.prepare import kto_weight_note, one_label_note

    reports = stream.pipeline.reports()
    rows = reports["rows"]
    scope = ("first pass, whole source; later passes read the same rows and are not counted again"
             if stream.pass_index > 0 else first_pass_scope(stream.rows_read, stream.shuffle_buffer))
    lines = [f"data: streaming, counts of one pass ({scope}): {rows.summary()}; {reports['tokenize'].summary()}"]
    notes = [rows.mixed_forms_note(), rows.split_pairs_note()]
    overlap = reports.get("overlap")
    if overlap is not None:
        notes += overlap_notes(overlap.report(), n_eval)
        if rows.kind == "unpaired":
            notes.append(one_label_note(overlap.desirable, overlap.desirable + overlap.undesirable, rows.source))
            notes.append(kto_weight_note(objective, overlap.desirable,
                                         overlap.desirable + overlap.undesirable, rows.source))
    return lines + [f"note: data: {note}" for note in notes if note]


def eval_examples(cfg, tokenizer, kind, stream: ExampleStream | None = None) -> tuple[list, dict]:
    """The eval set of a streaming run (eval_dataset_name, read whole as in the ordinary run) and its report; its
    prompts go to `stream`'s first-pass overlap count (eval prompts seen in training)."""
    if not cfg.eval_dataset_name:
        return [], {}
    from preflab.data.configured_source import eval_source, naming_eval_data

    if kind.name == "sft":
        from preflab.loops.sft_rows import _read

        with naming_eval_data(cfg):
            items, rows, tokens = _read(eval_source(cfg), cfg.eval_split, cfg, tokenizer, "eval_dataset_name")
        return items, {"eval_rows": rows.to_dict(), "eval_tokenize": tokens.to_dict()}
    from preflab.data.rows import load_rows
    from preflab.loops.prepare import _tokenize, check_intra_rows

    row_kind = {"pairs": "pairwise", "unpaired": "unpaired"}[kind.name]
    with naming_eval_data(cfg):
        rows, report = load_rows(eval_source(cfg), split=cfg.eval_split, kind=row_kind, on_bad_row=cfg.on_bad_row,
                                 required_extras=cfg.objective().row_extras())
    check_intra_rows(cfg.objective(), rows, report.source, cfg.loss_type)  # as the ordinary run's eval set
    from preflab.data.report import refuse_empty

    refuse_empty(report, "eval_dataset_name", cfg.eval_dataset_name)  # its split and file(s) named
    overlap = getattr(stream.pipeline, "overlap", None) if stream is not None else None
    if overlap is not None:
        from preflab.data.overlap import prompt_digests

        overlap.eval_prompts.extend(prompt_digests(rows))
    items, tok = _tokenize(kind.name, rows, tokenizer, cfg, report.source)
    return items, {"eval_rows": report.to_dict(), "eval_tokenize": tok.to_dict()}
