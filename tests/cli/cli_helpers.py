"""Helpers of the command-line tests: run ``python -m parallelaverage`` as users do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def cli(*args: str, cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the command in a real subprocess, from ``cwd`` (never the source checkout,
    so that the installed package is the one tested)."""
    return subprocess.run([sys.executable, "-m", "parallelaverage", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout_s)


def cli_json(*args: str, cwd: Path) -> Any:
    """Run a ``--json`` command that must succeed; its parsed output."""
    done = cli(*args, "--json", cwd=cwd)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``parallelaverage: error: ...`` line of a failed command (and nothing else)."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{done.stderr}"
    assert lines[0].startswith("parallelaverage: error: "), lines[0]
    assert "Traceback" not in done.stderr
    return lines[0]
