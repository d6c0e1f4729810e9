"""``parallelaverage view``: starts the web viewer, or says in one line why it cannot."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
import threading
import types
import urllib.request

import pytest
from pa_testing import default_sigint

from parallelaverage.cli import main


def test_view_without_the_viewer_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "parallelaverage.viewer", None)  # makes the import fail
    assert main(["--path", str(tmp_path), "view"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("parallelaverage: error: the web viewer is not available")


def test_view_passes_path_port_and_open(tmp_path, monkeypatch):
    # the viewer's own behaviour is tested with it; here only what the command hands over
    calls = []
    monkeypatch.setitem(sys.modules, "parallelaverage.viewer",
                        types.SimpleNamespace(serve=lambda **kwargs: calls.append(kwargs)))
    assert main(["view", "--path", str(tmp_path), "--port", "8765", "--open"]) == 0
    assert main(["--path", str(tmp_path), "view"]) == 0
    assert calls == [{"path": str(tmp_path), "port": 8765, "open_browser": True},
                     {"path": str(tmp_path), "open_browser": False}]


@pytest.mark.skipif(importlib.util.find_spec("parallelaverage.viewer") is None,
                    reason="this installation has no parallelaverage.viewer")
def test_view_serves_the_page_with_its_token(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "parallelaverage", "view", "--port", "0"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    watchdog = threading.Timer(60, process.kill)  # a viewer that never prints its URL fails, not hangs
    watchdog.start()
    try:
        url = None
        for line in process.stdout:
            match = re.search(r"https?://127\.0\.0\.1:\d+/\S*", line)
            if match:
                url = match.group(0)
                break
        assert url and "token" in url, "the viewer prints its URL with the access token"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
    finally:
        watchdog.cancel()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)


def test_library_warnings_and_logs_become_single_lines(tmp_path, monkeypatch, capsys):
    # the boundary of main(), around a command that warns and logs as library code does
    import logging
    import warnings

    from parallelaverage import errors as _jobs
    from parallelaverage.cli import commands as _cli_commands

    def noisy(args):
        warnings.warn("[parallelaverage] 2 / 10 runs failed; the first error:\nTraceback ...\nValueError: x",
                      _jobs.RunsFailedWarning)
        warnings.warn("a plain warning")
        logging.getLogger("parallelaverage.jobdb").warning("waiting for the lock %s", "db.lock")
        return 0

    monkeypatch.setitem(_cli_commands._RUN, "list", noisy)
    assert main(["--path", str(tmp_path), "list"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "[parallelaverage] 2 / 10 runs failed; the first error",
        "[parallelaverage] a plain warning",
        "[parallelaverage] waiting for the lock db.lock",
    ]
    assert not logging.getLogger("parallelaverage").handlers, "main() leaves logging as it found it"


def test_unexpected_errors_are_one_line_with_a_way_to_the_traceback(tmp_path, monkeypatch, capsys):
    from parallelaverage.cli import commands as _cli_commands

    def broken(args):
        raise KeyError("boom")

    monkeypatch.setitem(_cli_commands._RUN, "list", broken)
    assert main(["--path", str(tmp_path), "list"]) == 1
    err = capsys.readouterr().err
    assert err == "parallelaverage: error: KeyError: 'boom' (set PARALLELAVERAGE_TRACEBACK=1 to see the traceback)\n"
    monkeypatch.setenv("PARALLELAVERAGE_TRACEBACK", "1")
    with pytest.raises(KeyError):
        main(["--path", str(tmp_path), "list"])
