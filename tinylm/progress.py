"""Progress bars that read well both live in a terminal and in a log file.

A terminal keeps tqdm's live bar. Any other stream (CI, nohup, a scheduler's log
file) gets one plain line per interval instead: tqdm redraws with '\\r' several
times a second, which a log keeps as thousands of redraws on one line. Must not
import the rest of tinylm: every stage uses it.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm
from tqdm.notebook import tqdm_notebook

INTERVAL_ENV = "TINYLM_PROGRESS_INTERVAL"
DEFAULT_LOG_INTERVAL = 30.0  # seconds between lines in a log: a 7-minute run writes about 15


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs), writing a line per TINYLM_PROGRESS_INTERVAL seconds (default 30) when its
    stream is not a terminal. Explicit mininterval/maxinterval still win."""
    stream = kwargs.get("file") or sys.stderr
    # a notebook draws a widget, not text, so it needs neither treatment
    if issubclass(tqdm, tqdm_notebook) or _is_terminal(stream):
        return tqdm(iterable, **kwargs)
    interval = float(os.environ.get(INTERVAL_ENV, DEFAULT_LOG_INTERVAL))
    kwargs.setdefault("mininterval", interval)
    # tqdm's monitor thread forces a redraw after maxinterval without one; it must not outpace mininterval
    kwargs.setdefault("maxinterval", max(interval, kwargs["mininterval"]))
    if kwargs.get("leave") is False:
        # a bar a terminal erases when done is scaffolding: a log hears of it only once it has lasted an interval
        kwargs.setdefault("delay", kwargs["mininterval"])
    kwargs["file"] = LineWriter(stream)
    kwargs["dynamic_ncols"] = False  # a log file has no width to follow
    return tqdm(iterable, **kwargs)


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LineWriter:
    """A stream for tqdm that turns each redraw ('\\r' + bar + padding) into a line of its own.

    tqdm ends a finished bar with a bare '\\n' and moves between nested bars with '\\n' and the cursor-up
    escape; neither means anything in a log, so lines without text are dropped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\x1b[A", "").replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False
