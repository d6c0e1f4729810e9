"""A dependency-free progress bar: redrawn in place on a terminal, plain lines otherwise.

Used by ``Job.wait`` and the command line (``parallelaverage wait`` / ``status``).
:func:`progress_text` formats one line from counts and a rate, so that a one-shot
report (``parallelaverage status``) and a live bar print the same thing.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "progress_text", "format_duration"]


def format_duration(seconds: float) -> str:
    """A duration for people: ``"45 s"``, ``"3 min 20 s"``, ``"2 h 05 min"``, ``"3 d 4 h"``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def progress_text(label: str, done: int, failed: int, total: int, *,
                  rate_per_s: float | None = None, width: int = 30) -> str:
    """One progress line, e.g. ``3_f [######....] 40/100 done, 2 failed, 58 missing, 3.2 runs/s, ETA 18 s``.

    Args:
        label: Shown first (a job name); may be empty.
        done: Runs finished successfully.
        failed: Runs that raised.
        total: All runs of the job.
        rate_per_s: Runs processed (done or failed) per second, if known; with it
            comes an ETA for the missing runs.
        width: Characters of the bar itself.

    Returns:
        The line, without a newline.
    """
    missing = max(total - done - failed, 0)
    fraction = min((done + failed) / total, 1.0) if total else 1.0
    filled = int(width * fraction)
    bar = "#" * filled + "." * (width - filled)
    parts = [f"{done}/{total} done"]
    if failed:
        parts.append(f"{failed} failed")
    if missing:
        parts.append(f"{missing} missing")
    if rate_per_s is not None and rate_per_s > 0:
        parts.append(f"{rate_per_s:.3g} runs/s")
        if missing:
            parts.append(f"ETA {format_duration(missing / rate_per_s)}")
    return f"{label + ' ' if label else ''}[{bar}] {', '.join(parts)}"


class ProgressBar:
    """Runs done / failed / missing out of a total, with rate and ETA.

    On a terminal the bar is redrawn in place (at most every ``redraw_interval_s``,
    cut to the terminal's width so that it never wraps); when the stream is not a
    terminal (a log file, CI) a plain line is printed at most every
    ``line_interval_s`` and at the end.

    The rate counts only the runs processed since the bar was made: waiting for a
    job that is already half done does not show a rate of thousands of runs per second.

    Args:
        total: All runs of the job.
        label: Shown before the bar (a job name).
        stream: Where to draw; standard error by default.
        width: Characters of the bar itself.
        line_interval_s: Seconds between plain lines when not on a terminal.
        redraw_interval_s: Seconds between redraws on a terminal.
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None,
                 width: int = 30, line_interval_s: float = 10.0, redraw_interval_s: float = 0.1) -> None:
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.line_interval_s = line_interval_s
        self.redraw_interval_s = redraw_interval_s
        self._baseline: tuple[float, int] | None = None  # (time, runs processed) at the first update
        self._last_draw = -math.inf
        self._last_text = ""
        self._counts: tuple[int, int] | None = None  # the latest update
        self._drawn: tuple[int, int] | None = None  # the counts last written

    def rate_per_s(self, done: int, failed: int) -> float | None:
        """Runs processed per second since the first update; None before any progress."""
        now = time.monotonic()
        if self._baseline is None:
            self._baseline = (now, done + failed)
            return None
        started, processed = self._baseline
        if done + failed <= processed or now <= started:
            return None
        return (done + failed - processed) / (now - started)

    def update(self, done: int, failed: int = 0) -> None:
        """Show the new counts: drawn when due, and always when the last run finishes."""
        self._last_text = progress_text(self.label, done, failed, self.total,
                                        rate_per_s=self.rate_per_s(done, failed), width=self.width)
        self._counts = (done, failed)
        interval = self.redraw_interval_s if self.tty else self.line_interval_s
        finished = done + failed >= self.total
        if time.monotonic() - self._last_draw >= interval or (finished and self._counts != self._drawn):
            self._draw()

    def close(self) -> None:
        """End the bar with the last counts shown (a newline on a terminal)."""
        if self._counts is not None and self._counts != self._drawn:
            self._draw()
        if self.tty and self._drawn is not None:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        self._last_draw, self._drawn = time.monotonic(), self._counts
        if self.tty:
            columns = shutil.get_terminal_size((100, 24)).columns
            self.stream.write("\r" + self._last_text[: max(columns - 1, 10)] + "\x1b[K")
        else:
            self.stream.write(self._last_text + "\n")
        self.stream.flush()
