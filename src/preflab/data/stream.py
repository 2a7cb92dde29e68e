"""Streaming rows: read, check and tokenize rows as training consumes them, for data too large to tokenize up front.

    stream = ExampleStream(open_rows, make_pipeline, seed=0, shuffle_buffer=1000)
    batch = stream.next_batch(64)          # the next 64 examples (tokenized items), reading only what it needs
    state = stream.state()                 # JSON: the position and the data report, saved with a checkpoint
    stream.restore(state)                  # re-reads up to the position (rows skipped unparsed by the pipeline)

A pass reads the source once, in source order, or through a seeded shuffle buffer (`shuffle_buffer` rows held at
most; the standard buffer shuffle that `datasets.IterableDataset.shuffle` also uses: fill the buffer, then each
new row takes the place of a uniformly drawn row, which is emitted; at the end of the pass the buffer is emptied in
a random order). Pass p uses `random.Random(f"{seed}:{p}")`, so the order of every pass is fixed by the seed.

Each raw row goes through the pipeline (validation and tokenization, with `on_bad_row` applied exactly as for a
dataset read whole: a bad row raises `DataError` or is counted by reason); a row may give several examples (a
pairwise row read as two KTO examples). `next_batch(n)` returns n examples of one pass: a pass whose last examples
do not fill a batch leaves them out (counted in `unused_examples`, as the ordinary run leaves out an epoch's last
incomplete batch) and the next pass starts over from the first row (the next epoch). A pass that does not fill one
batch is a `DataError`.

The position is (pass, raw rows consumed in that pass, examples of the last row already used). Restoring it
re-reads the pass from its start, skips the consumed rows without checking or tokenizing them, and rebuilds the
last row's remaining examples; the data report counts of the first pass are restored from the saved state, so a
resumed run reports the same counts as an uninterrupted one.

The data report (row, bad-row and tokenize counts) covers the first pass: the rows read so far while it is under
way, the whole source once it has ended (`rows_per_pass`); later passes read the same rows again and are not
counted again (`rows_read_total` counts every row read). A pipeline may also have `end_first_pass()` (called when
the first pass ends) and `recall(raw)` (a row a resume in the first pass skips: noted, not counted again), which
the preference pipeline uses to count repeated rows over the first pass as the whole-data run does
(preflab.data.overlap.StreamOverlap: a digest per example, not the rows, held during the first pass only).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator

from preflab.errors import DataError


def shuffled(rows: Iterable, size: int, rng: random.Random) -> Iterator:
    """`rows` through a shuffle buffer of `size` (at most `size` rows held)."""
    buffer: list = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        i = rng.randrange(size)
        out, buffer[i] = buffer[i], row
        yield out
    rng.shuffle(buffer)
    yield from buffer


class ExampleStream:
    """Examples from a row source, pass after pass (see the module docstring).

    open_rows(): a fresh iterable of raw rows (`preflab.data.sources.RawRow`) for one pass, from the first row.
    make_pipeline(): a fresh pipeline: an object with `__call__(raw) -> list of examples` (bad rows give [] or
        raise `DataError`), `reports()` -> {name: report} and `load_reports({name: dict})`.
    """

    def __init__(self, open_rows: Callable[[], Iterable], make_pipeline: Callable, *, seed: int = 0,
                 shuffle_buffer: int = 0, name: str = "<stream>"):
        self.open_rows, self.make_pipeline = open_rows, make_pipeline
        self.seed, self.shuffle_buffer, self.name = seed, shuffle_buffer, name
        self.pipeline = make_pipeline()  # the first pass's: its reports are the run's data report
        self.unused_examples = 0
        self.rows_per_pass: int | None = None  # rows of one pass, known once the first pass has ended
        self._start_pass(0)

    # ------------------------------------------------------------------ reading
    def _start_pass(self, index: int, pipeline=None) -> None:
        self.pass_index, self.rows_read, self.used_of_row, self.batches_in_pass = index, 0, 0, 0
        self._pending: list = []
        self._source = self.open_rows()
        rows = iter(self._source)
        if self.shuffle_buffer > 1:
            rows = shuffled(rows, self.shuffle_buffer, random.Random(f"{self.seed}:{index}"))
        self._rows = rows
        self._pass_pipeline = pipeline or (self.pipeline if index == 0 else self.make_pipeline())
        if self._pass_pipeline is not self.pipeline:  # a later pass counts nothing: it holds no first-pass digests
            getattr(self._pass_pipeline, "end_first_pass", lambda: None)()

    def _next_example(self):
        """The next example of this pass, or None at its end."""
        while not self._pending:
            try:
                raw = next(self._rows)
            except StopIteration:
                return None
            self.rows_read += 1
            self.used_of_row = 0
            self._pending = list(self._pass_pipeline(raw))
            if self.pass_index == 0:
                self._note_blank_lines()
        self.used_of_row += 1
        return self._pending.pop(0)

    def _note_blank_lines(self) -> None:
        blank = getattr(self._source, "blank_lines", None)
        rows_report = self.pipeline.reports().get("rows")
        if blank is not None and rows_report is not None and hasattr(rows_report, "blank_lines"):
            rows_report.blank_lines = blank

    def next_batch(self, n: int) -> list:
        """The next n examples, all of one pass (see the module docstring)."""
        batch: list = []
        while len(batch) < n:
            example = self._next_example()
            if example is not None:
                batch.append(example)
                continue
            if self.batches_in_pass == 0:
                if self.pass_index == 0 and self.rows_read == 0:
                    from preflab.data.report import empty_error

                    read = getattr(self._source, "read_from", None)  # a RowReader: its split and file(s)
                    raise empty_error(self.name, read() if read else "", getattr(self._source, "files", []),
                                      option="dataset_name")
                raise DataError(f"{self.name}: one pass gives {len(batch)} examples, fewer than one global batch "
                                f"({n} = per_device_train_batch_size x processes x gradient_accumulation_steps); "
                                "lower the batch size or add rows.")
            self.unused_examples += len(batch)
            if self.pass_index == 0:
                self.rows_per_pass = self.rows_read
                getattr(self.pipeline, "end_first_pass", lambda: None)()
            self._start_pass(self.pass_index + 1)
            batch = []
        self.batches_in_pass += 1
        return batch

    # ------------------------------------------------------------------ position
    def rows_read_total(self) -> int | None:
        """Raw rows read over every pass so far (each pass reads the source's rows again); None when a pass after
        the first is under way and the rows per pass are unknown (a resume from an older checkpoint)."""
        if self.pass_index == 0:
            return self.rows_read
        return None if self.rows_per_pass is None else self.pass_index * self.rows_per_pass + self.rows_read

    def state(self) -> dict:
        """The position after the examples given out so far, and the data report (JSON-ready)."""
        return {"pass": self.pass_index, "rows_read": self.rows_read, "used_of_row": self.used_of_row,
                "batches_in_pass": self.batches_in_pass, "unused_examples": self.unused_examples,
                "rows_per_pass": self.rows_per_pass, "reports": {k: r.to_dict() for k, r in self.pipeline.reports().items()}}

    def restore(self, state: dict) -> None:
        """Continue from a position `state()` gave: re-read its pass up to it (rows skipped, not re-checked)."""
        try:
            index, rows, used = int(state["pass"]), int(state["rows_read"]), int(state["used_of_row"])
            batches, unused, reports = int(state["batches_in_pass"]), int(state["unused_examples"]), state["reports"]
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"the saved stream position {state!r} is incomplete ({err}); resume from a checkpoint "
                            "this preflab wrote with streaming: true.") from err
        self.pipeline = self.make_pipeline()
        self.pipeline.load_reports(reports)
        self._start_pass(index)
        recall = getattr(self.pipeline, "recall", None) if index == 0 else None
        raw = None
        for read in range(rows):
            raw = next(self._rows, None)
            if raw is None:
                raise DataError(f"{self.name}: the saved position is row {rows} of pass {index}, but the source "
                                f"now ends after {read} rows; resume with the data the run was trained on.")
            if recall is not None:
                recall(raw)
        if raw is not None:
            # the last row was counted in the saved report: rebuild its examples with a throwaway pipeline
            self._pending = list(self.make_pipeline()(raw))[used:]
            self.rows_read, self.used_of_row = rows, used
        if index == 0:
            self._note_blank_lines()
        self.batches_in_pass, self.unused_examples = batches, unused
        self.rows_per_pass = state.get("rows_per_pass")  # absent in checkpoints of older preflab: unknown
