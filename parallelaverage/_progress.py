"""A dependency-free progress bar: redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Runs done / failed out of a total, with rate and ETA.

    On a terminal the bar is redrawn in place; when the stream is not a terminal (a
    log file, CI) a plain line is printed at most every ``line_interval_s`` and at the end.
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None,
                 width: int = 30, line_interval_s: float = 10.0) -> None:
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.monotonic()
        self.line_interval_s = line_interval_s
        self._last_line = -float("inf")
        self._last_text = ""

    def _text(self, done: int, failed: int) -> str:
        elapsed = time.monotonic() - self.started
        fraction = (done + failed) / self.total if self.total else 1.0
        filled = int(self.width * fraction)
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = self.total - done - failed
        eta = f", ETA {remaining / rate:.0f} s" if rate > 0 and remaining else ""
        fails = f", {failed} failed" if failed else ""
        return (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{done}/{self.total} runs{fails}, {rate:.1f} runs/s{eta}")

    def update(self, done: int, failed: int = 0) -> None:
        text = self._text(done, failed)
        if self.tty:
            self.stream.write("\r" + text)
            self.stream.flush()
        elif time.monotonic() - self._last_line >= self.line_interval_s:
            self.stream.write(text + "\n")
            self._last_line = time.monotonic()
        self._last_text = text

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
        elif self._last_text:
            self.stream.write(self._last_text + "\n")
        self.stream.flush()
