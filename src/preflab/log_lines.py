"""Progress in a log file: plain lines at most every LOG_LINE_SECONDS and at the end, where a terminal gets a bar.

A tqdm bar redraws itself with carriage returns. On a terminal that is one line updated in place; in a scheduler's
log file or a pipe it is one endless "line" holding every redraw, which a log reader can neither tail nor grep
(user trial 26). Every bar preflab shows follows one rule, kept here:

- a terminal (the stream's isatty()) or a notebook (tqdm.auto picked its widget) keeps the bar;
- any other stream gets one plain line `DESC: [step ]N/TOTAL (P%), R UNIT/s, ETA E s, POSTFIX` when
  LOG_LINE_SECONDS have passed since the last line, and one at the end (the last step; a bar closed before its
  total: its count then), never a carriage return.

LogLines is the rule; preflab.runlog.Progress (the training bar) prints through it, and bar_class() gives the tqdm
class for a bar another library draws (vLLM's generation in an online round: its `use_tqdm` takes a tqdm class).
"""
from __future__ import annotations

import functools
import sys
import time

from tqdm.auto import tqdm
from tqdm.std import tqdm as std_tqdm

LOG_LINE_SECONDS = 30.0  # on a stream that is no terminal: one line at most this often, and one at the end


def draws_plain_lines(stream) -> bool:
    """`stream` is no terminal and the bars are no notebook widgets (a notebook's stderr is no terminal either)."""
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty()) and "notebook" not in tqdm.__module__


class LogLines:
    """The plain progress lines of one bar on a stream that is no terminal. desc: what progresses ("train");
    counted: the word before the count ("step "); unit: what the rate counts per second ("steps", "it");
    initial: the count it starts at (a resumed run's step), so the rate counts only this process's progress.
    clock: seconds (time.perf_counter; a test passes its own)."""

    def __init__(self, total: int | None, initial: int = 0, stream=None, clock=time.perf_counter, desc: str = "",
                 counted: str = "", unit: str = "it"):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.initial, self.clock = total, initial, clock
        self.desc, self.counted, self.unit = desc, counted, unit
        self.start = self.last_time = clock()
        self.last_count: int | None = None  # the count the last line said

    def update(self, count: int, post: str = "") -> None:
        """Say `count` when LOG_LINE_SECONDS have passed since the last line, or when it reached the total; a count
        already said is not said again (tqdm redisplays on refresh())."""
        if count == self.last_count:
            return
        now = self.clock()
        reached = self.total is not None and count >= self.total
        if reached or now - self.last_time >= LOG_LINE_SECONDS:
            self._say(count, post, now)

    def end(self, count: int, post: str = "") -> None:
        """The line at the end: `count` unless the last line already said it."""
        if count != self.last_count:
            self._say(count, post, self.clock())

    def _say(self, count: int, post: str, now: float) -> None:
        self.last_time, self.last_count = now, count
        rate = (count - self.initial) / max(now - self.start, 1e-9)
        if self.total is None:
            head = f"{self.desc}: {self.counted}{count}, {rate:.3g} {self.unit}/s"
        else:
            eta = (self.total - count) / rate if rate > 0 else 0.0
            head = (f"{self.desc}: {self.counted}{count}/{self.total} ({100 * count / max(self.total, 1):.0f}%), "
                    f"{rate:.3g} {self.unit}/s, ETA {eta:.0f} s")
        print(f"{head}, {post}" if post else head, file=self.stream, flush=True)


class LogLineBar(std_tqdm):
    """A tqdm (same constructor, update, n, postfix, format_dict, close: what a library's loop reads) whose display
    is LogLines: tqdm counts and times, display() says a line when the rule lets it, close() says the end. It never
    writes tqdm's own bar, carriage return or closing newline (its status printer is dropped after the constructor,
    which tqdm's close takes for a GUI bar and leaves alone). clock: LogLines'."""

    def __init__(self, *args, clock=time.perf_counter, **kwargs):
        self._lines = None  # tqdm's constructor displays once; the lines start after it
        super().__init__(*args, **kwargs)
        if self.disable:  # tqdm(disable=True) sets up no stream: nothing to say
            return
        self.sp = None
        self._lines = LogLines(self.total, self.n, self.fp, clock, self.desc or "progress", unit=self.unit)

    def _post(self) -> str:
        return str(self.postfix or "").lstrip(", ")

    def display(self, msg=None, pos=None):
        if self._lines is not None and msg is None:
            self._lines.update(self.n, self._post())
        return True

    def clear(self, nolock=False):
        """Nothing to clear: a line once said stays (tqdm.write calls this on every open bar)."""

    def close(self):
        if self._lines is not None and not self.disable:
            self._lines.end(self.n, self._post())
        super().close()


def bar_class(stream=None, clock=time.perf_counter):
    """The tqdm class a bar another library draws should use on `stream` (sys.stderr by default): tqdm.auto's on a
    terminal or in a notebook, else LogLineBar (plain lines). E.g. vLLM's LLM.generate(use_tqdm=bar_class())."""
    stream = sys.stderr if stream is None else stream
    if draws_plain_lines(stream):
        return functools.partial(LogLineBar, file=stream, clock=clock)
    return functools.partial(tqdm, file=stream)
