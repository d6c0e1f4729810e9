"""The progress of a job's runs: tqdm's bar on a terminal, its widget in Jupyter, plain lines in logs."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import struct
import subprocess
import sys
import termios

import pytest

from parallelaverage import _progress
from parallelaverage._progress import RunsBar, runs_meter


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("parallelaverage._progress.time.monotonic", lambda: now[0])
    return now


def test_runs_meter():
    assert runs_meter("3_f", 40, 2, 100, elapsed_s=13.1, rate_per_s=3.2) == \
        "3_f:  42%|####2     | 42/100 runs [00:13<00:18,  3.20run/s, 2 failed]"
    assert runs_meter("3_f (completed)", 10, 0, 10) == "3_f (completed): 100%|##########| 10/10 runs"
    assert runs_meter("", 3, 1, 10, elapsed_s=5, rate_per_s=0.5) == " 40%|####      | 4/10 runs [00:05<00:12,  2.00s/run, 1 failed]"
    # the rate counts the runs processed since ``initial`` only
    assert runs_meter("x", 70, 0, 100, elapsed_s=10, initial=50).endswith("[00:10<00:15,  2.00run/s]")


def test_plain_lines_when_not_a_terminal(clock):
    log = io.StringIO()
    bar = RunsBar(100, label="1_f", stream=log, line_interval_s=10)
    assert bar.lines
    bar.update(50)            # the first line: already half done before we started waiting
    clock[0] += 1
    bar.update(60)            # within the interval: not printed
    clock[0] += 10
    bar.update(70, 5)         # printed: 25 runs in 11 s since the bar started
    bar.close()               # the last counts were printed: nothing more
    assert log.getvalue().splitlines() == [
        "1_f:  50%|#####     | 50/100 runs",
        "1_f:  75%|#######5  | 75/100 runs [00:11<00:10,  2.27run/s, 5 failed]",
    ]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_the_last_counts_are_always_shown(clock):
    log = io.StringIO()
    with RunsBar(10, stream=log, line_interval_s=60) as bar:
        bar.update(0)
        clock[0] += 1
        bar.update(10)        # finished: shown at once, interval or not
        bar.update(10)
    assert log.getvalue().splitlines() == [
        "  0%|          | 0/10 runs", "100%|##########| 10/10 runs [00:01<00:00, 10.00run/s]"]
    stopped = io.StringIO()   # a job that stopped with runs missing: its counts at close
    with RunsBar(10, stream=stopped, line_interval_s=60) as bar:
        bar.update(0)
        clock[0] += 1
        bar.update(3, 1)
    assert stopped.getvalue().splitlines()[-1] == " 40%|####      | 4/10 runs [00:01<00:01,  4.00run/s, 1 failed]"


@contextlib.contextmanager
def terminal(columns: int):
    """A pseudo-terminal of ``columns`` columns: a stream to draw on, and what it shows."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    shown = bytearray()
    with os.fdopen(follower, "w") as stream:
        def read() -> str:
            stream.flush()
            while select.select([leader], [], [], 0.2)[0]:
                shown.extend(os.read(leader, 65536))
            return shown.decode().replace("\r\n", "\n")
        try:
            yield stream, read
        finally:
            os.close(leader)


@pytest.mark.parametrize("columns", [60, 0])
def test_tqdm_redraws_in_place_on_a_terminal(clock, columns):
    with terminal(columns) as (screen, shown):
        bar = RunsBar(1000, label="12_simulate", stream=screen, redraw_interval_s=0.1)
        assert not bar.lines
        for done in range(0, 1001, 100):
            bar.update(done)
            clock[0] += 0.05  # every other update is within the redraw interval
        bar.close()
        drawn = shown()
    frames = [f for f in drawn.split("\r") if f.strip()]
    assert drawn.endswith("\n") and drawn.count("\n") == 1
    assert 5 <= len(frames) <= 9, frames
    assert frames[-1].startswith("12_simulate: 100%|") and "1000/1000 runs" in frames[-1]
    if columns:
        assert all(len(f.rstrip("\n")) <= columns for f in frames), "cut to the terminal width"
    else:  # a terminal that says it has no columns (some CI): whole lines rather than nothing
        assert frames[-1].rstrip().endswith("run/s]")  # tqdm pads a frame shorter than the last one


def test_the_widget_in_jupyter(monkeypatch):
    """In a Jupyter kernel (standard error is no terminal there) tqdm.auto's class draws: a widget."""
    drawn = []

    class Widget:
        def __init__(self, **options):
            drawn.append(("made", options["total"], options["initial"], options["desc"]))
            self.desc, self.n = options["desc"], options["initial"]

        def set_description_str(self, desc, refresh=True):
            self.desc = desc

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

        def refresh(self):
            drawn.append(("drawn", self.n, self.postfix))

        def close(self):
            drawn.append(("closed",))

    monkeypatch.setattr(_progress, "_in_notebook", lambda: True)
    monkeypatch.setattr(_progress, "_bar_class", lambda: Widget)
    with RunsBar(10, label="1_f", stream=io.StringIO(), redraw_interval_s=0) as bar:
        assert not bar.lines
        bar.update(4)
        bar.update(9, 1)
    assert drawn == [("made", 10, 4, "1_f"), ("drawn", 4, ""), ("drawn", 10, "1 failed"), ("closed",)]


def test_a_notebook_shows_tqdm_s_widget(tmp_path):
    """A real Jupyter kernel (ipykernel, driven by nbclient) waits for a real job: the bar is
    a widget, not lines on standard error. Skipped without them, except under CI=true."""
    try:
        import nbformat
        from nbclient import NotebookClient
        import ipywidgets  # noqa: F401 - the kernel's tqdm needs it for the widget
    except ImportError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the notebook test cannot run: {error}", pytrace=False)
        pytest.skip(f"needs ipykernel, ipywidgets and nbclient (the test extra): {error}")
    cells = [
        f"import os, time, parallelaverage as pa\nos.chdir({str(tmp_path)!r})\n"
        "def slow(x):\n    time.sleep(0.1)\n    return x\n",
        "f = pa.parallel_average(N_runs=8, N_tasks=2, queuing_system='local')(slow)\nprint(pa.wait(f)(1.0))",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    # the kernel starts in tmp_path: from the repository's root it would import the
    # source tree (no compiled extensions there), not the installed package
    NotebookClient(notebook, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = notebook.cells[1].outputs
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) == 1 and widgets[0]["data"]["text/plain"].startswith("1_slow:"), outputs
    assert not [o for o in outputs if o.get("name") == "stderr"], outputs  # no lines besides
    assert "AveragedResult(job='1_slow', runs=8" in "".join(o.get("text", "") for o in outputs)


def test_neither_importing_parallelaverage_nor_the_ranks_load_tqdm():
    code = ("import sys, parallelaverage, parallelaverage.worker; parallelaverage.wait; parallelaverage.Job;"
            "import parallelaverage.cli; assert 'tqdm' not in sys.modules, 'tqdm was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
