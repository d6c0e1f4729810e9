"""The MPI engine under real mpiexec processes, 1 to 4 ranks (more ranks than cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallelaverage.backends.mpiexec import find_mpiexec, mpi_flavour, mpiexec_command

PROGRAMS = Path(__file__).parent / "programs"


def run_mpi(n_tasks: int, program: str, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    command, env = mpiexec_command(n_tasks, [sys.executable, str(PROGRAMS / program), *args])
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, **env}
    )


@pytest.mark.parametrize("n_tasks", [1, 2, 3, 4])
def test_engine_invariants_hold_on_every_rank(n_tasks):
    result = run_mpi(n_tasks, "engine_invariants.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ENGINE-OK {n_tasks}" in result.stdout


def test_flavour_of_the_active_mpi_is_known():
    assert mpi_flavour(find_mpiexec()) in ("mpich", "openmpi")
