"""The progress of a job's runs, drawn by tqdm where someone watches and written as lines in logs.

``Job.watch`` (so ``Job.wait`` and the ``wait`` action) and the command line
(``parallelaverage wait``, ``status``) show runs processed (done or failed) out of the
job's total, in tqdm's format::

    3_f:  42%|####2     | 42/100 runs [00:13<00:18,  3.21run/s, 2 failed]

Where it goes:

* in Jupyter, tqdm.auto's notebook widget (decided first: a kernel's standard error
  is not a terminal);
* on a terminal, tqdm's bar, redrawn in place;
* anywhere else (a log file, CI, a pipe), a plain line every ``line_interval_s`` and
  at the end. tqdm itself would write a ``\\r``-separated frame every 0.1 s there: one
  line that grows by megabytes an hour (or nothing, with ``disable=None``).

tqdm is imported on first use: importing parallelaverage, and the MPI ranks, never
load it. :func:`runs_meter` formats one line the same way, for one-shot reports.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["RunsBar", "runs_meter"]

#: tqdm's default layout, with the unit after the counts.
_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} runs [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
#: For a job that no longer runs: no time, no rate.
_FORMAT_STOPPED = "{l_bar}{bar}| {n_fmt}/{total_fmt} runs{postfix}"


def _postfix(failed: int) -> str | None:
    return f"{failed} failed" if failed else None


def runs_meter(label: str, done: int, failed: int, total: int, *, elapsed_s: float | None = None,
               rate_per_s: float | None = None, initial: int = 0, ncols: int | None = None) -> str:
    """One progress line in tqdm's format (ASCII), e.g. ``3_f:  42%|####2     | 42/100 runs [00:13<00:18,  3.21run/s, 2 failed]``.

    Args:
        label: Shown first (a job name); may be empty.
        done: Runs finished successfully.
        failed: Runs that failed.
        total: All runs of the job.
        elapsed_s: Seconds the runs have been watched (or the launch has run); None
            for a job that no longer runs: the line then has no time and no rate.
        rate_per_s: Runs processed per second, if known; else tqdm computes it from
            ``elapsed_s`` and the runs processed since ``initial``.
        initial: Runs processed before ``elapsed_s`` began.
        ncols: Width of the whole line; None for a bar of 10 characters.

    Returns:
        The line, without a newline.
    """
    from tqdm.std import tqdm

    return tqdm.format_meter(
        done + failed, total, elapsed_s or 0.0, ncols=ncols, prefix=label, ascii=True, unit="run",
        rate=rate_per_s, bar_format=_FORMAT if elapsed_s is not None else _FORMAT_STOPPED,
        postfix=_postfix(failed), initial=initial)


def _in_notebook() -> bool:
    """Whether tqdm.auto draws widgets here (a Jupyter kernel with ipywidgets)."""
    import tqdm.auto  # noqa: F401 - chooses the class of tqdm.autonotebook, quietly
    import tqdm.autonotebook
    import tqdm.std

    return tqdm.autonotebook.tqdm is not tqdm.std.tqdm


def _bar_class() -> type:
    """tqdm.auto's class, told the rate and elapsed time when the caller knows them better."""
    from tqdm.auto import tqdm

    class _Bar(tqdm):
        monitor_interval = 0  # no monitor thread: RunsBar redraws on every update that is due
        known: dict[str, Any] = {}

        @property
        def format_dict(self) -> dict[str, Any]:
            drawn = {**super().format_dict, **self.known}
            if (drawn.get("ncols") or 0) <= 0:  # a terminal of 0 columns (some CI pseudo-terminals): no cut
                drawn["ncols"] = None
            return drawn

    return _Bar


class RunsBar:
    """The progress of one job's runs: a notebook widget, a terminal bar or log lines.

    The rate counts only the runs processed since the first :meth:`update` (waiting
    for a job that is half done does not show thousands of runs per second), unless
    the caller passes the rate it knows.

    Args:
        total: All runs of the job.
        label: Shown first (the job name).
        stream: Where a terminal bar or the lines go; standard error by default.
        line_interval_s: Seconds between lines when ``stream`` is not a terminal.
        redraw_interval_s: Seconds between redraws of a terminal bar.
        position: This bar's line among several drawn at once (``status --watch``).
    """

    def __init__(self, total: int, label: str = "", *, stream: TextIO | None = None,
                 line_interval_s: float = 10.0, redraw_interval_s: float = 0.1, position: int | None = None) -> None:
        self.total, self.label, self.position = total, label, position
        self.stream = stream if stream is not None else sys.stderr
        self.line_interval_s, self.redraw_interval_s = line_interval_s, redraw_interval_s
        self.lines = not _in_notebook() and not bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None  # the tqdm bar, made at the first update
        self._started: tuple[float, int] | None = None  # (time, runs processed) at the first update
        self._counts: tuple[int, int] | None = None  # the latest (done, failed)
        self._known: dict[str, Any] = {}
        self._shown: tuple[int, int] | None = None  # the counts last drawn
        self._shown_at = -float("inf")

    def update(self, done: int, failed: int = 0, *, rate_per_s: float | None = None,
               elapsed_s: float | None = None) -> None:
        """Show the new counts: drawn when due, and always when the last run is processed.

        Args:
            done: Runs finished successfully.
            failed: Runs that failed.
            rate_per_s: The rate, when the caller knows it better (a launch's rate).
            elapsed_s: The time shown, when the caller knows it better (since the launch).
        """
        now = time.monotonic()
        if self._started is None:
            self._started = (now, done + failed)
        self._counts = (done, failed)
        self._known = {k: v for k, v in (("rate", rate_per_s), ("elapsed", elapsed_s)) if v is not None}
        interval = self.line_interval_s if self.lines else self.redraw_interval_s
        finished = done + failed >= self.total and self._counts != self._shown
        if now - self._shown_at >= interval or finished:
            self._draw(now)

    def close(self) -> None:
        """End with the last counts shown (a terminal bar is left on its line)."""
        if self._counts is not None and self._counts != self._shown:
            self._draw(time.monotonic())
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.lines:
            self.stream.flush()

    def __enter__(self) -> RunsBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _draw(self, now: float) -> None:
        if self._counts is None or self._started is None:
            return
        done, failed = self._counts
        self._shown, self._shown_at = self._counts, now
        started_at, initial = self._started
        if self.lines:
            # the first line has no time to show yet (nor has a job that had stopped already)
            elapsed = self._known.get("elapsed", now - started_at if now > started_at else None)
            line = runs_meter(self.label, done, failed, self.total, initial=initial, elapsed_s=elapsed,
                              rate_per_s=self._known.get("rate"))
            self.stream.write(line + "\n")
            self.stream.flush()
            return
        if self._bar is None:
            self._bar = _bar_class()(
                total=self.total, initial=done + failed, desc=self.label, unit="run", bar_format=_FORMAT,
                smoothing=0, dynamic_ncols=True, file=self.stream, position=self.position, leave=True)
        if self._bar.desc != self.label:
            self._bar.set_description_str(self.label, refresh=False)
        self._bar.known = self._known
        self._bar.n = done + failed
        self._bar.set_postfix_str(_postfix(failed) or "", refresh=False)
        self._bar.refresh()
