"""The dependency-free progress bar: plain lines in logs, in-place redraws on a terminal."""

from __future__ import annotations

import io
import re

import pytest

from parallelaverage._progress import ProgressBar, format_duration, progress_text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (59.4, "59 s"), (61, "1 min 01 s"), (3600, "1 h 00 min"), (7325, "2 h 02 min"),
    (90000, "1 d 1 h"), (float("inf"), "?"), (-1, "?"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_progress_text():
    assert progress_text("3_f", 40, 2, 100, rate_per_s=3.2, width=10) == \
        "3_f [####......] 40/100 done, 2 failed, 58 missing, 3.2 runs/s, ETA 18 s"
    assert progress_text("", 10, 0, 10, width=4) == "[####] 10/10 done"
    assert progress_text("x", 0, 0, 0, width=2) == "x [##] 0/0 done"  # no division by zero


def test_plain_lines_when_not_a_terminal(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("parallelaverage._progress.time.monotonic", lambda: clock[0])
    log = io.StringIO()
    bar = ProgressBar(100, label="1_f", stream=log, width=10, line_interval_s=10)
    bar.update(50)            # the first line: already half done before we started waiting
    clock[0] += 1
    bar.update(60)            # within the interval: not printed
    clock[0] += 10
    bar.update(70, 5)         # printed: 25 runs in 11 s since the bar started
    bar.close()               # the last counts were printed: nothing more
    lines = log.getvalue().splitlines()
    assert lines == ["1_f [#####.....] 50/100 done, 50 missing",
                     "1_f [#######...] 70/100 done, 5 failed, 25 missing, 2.27 runs/s, ETA 11 s"]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_the_last_counts_are_always_shown(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("parallelaverage._progress.time.monotonic", lambda: clock[0])
    log = io.StringIO()
    bar = ProgressBar(10, stream=log, width=4, line_interval_s=60)
    bar.update(0)
    clock[0] += 1
    bar.update(10)            # finished: shown at once, interval or not
    bar.update(10)
    bar.close()
    assert log.getvalue().splitlines() == ["[....] 0/10 done, 10 missing", "[####] 10/10 done, 10 runs/s"]
    stopped = io.StringIO()   # a job that stopped with runs missing: its counts at close
    bar = ProgressBar(10, stream=stopped, width=4, line_interval_s=60)
    bar.update(0)
    bar.update(3, 1)
    bar.close()
    assert stopped.getvalue().splitlines()[-1].startswith("[#...] 3/10 done, 1 failed, 6 missing")


def test_redraws_in_place_on_a_terminal(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("parallelaverage._progress.time.monotonic", lambda: clock[0])
    monkeypatch.setenv("COLUMNS", "60")
    screen = Terminal()
    bar = ProgressBar(1000, label="12_simulate", stream=screen, width=20, redraw_interval_s=0.1)
    for done in range(0, 1001, 100):
        bar.update(done)
        clock[0] += 0.05      # every other update is within the redraw interval
    bar.close()
    drawn = screen.getvalue()
    frames = drawn.split("\r")[1:]
    assert drawn.endswith("\n") and drawn.count("\n") == 1
    assert 5 <= len(frames) <= 7, frames
    assert all(len(re.sub(r"\x1b\[K", "", f.rstrip("\n"))) <= 59 for f in frames), "cut to the terminal width"
    assert frames[-1].startswith("12_simulate [####################] 1000/1000")
