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


@pytest.mark.parametrize("n_tasks", [1, 2, 3, 4])
def test_weighted_allreduce_is_exact_on_every_rank(n_tasks):
    """Weights zero, 5e-324, 1e-300, 1e300 and mixed, a rank of zero weights, offsets
    1e9 + 1e-6 N(0, 1): every estimate within 1e-13 of the exact (rational) value, on
    both merge paths, with the same bits on every rank."""
    result = run_mpi(n_tasks, "weighted_allreduce.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"WEIGHTED-OK {n_tasks}" in result.stdout


@pytest.mark.parametrize("n_tasks", [1, 2, 3, 4])
def test_every_accumulator_merges_exactly_on_every_rank(n_tasks):
    """Moments, Covariance, Batches (the jackknife), Histogram and LogBinning through
    mpi.allreduce against the exact oracle: weights tiny, huge, zero on a whole rank,
    ranks without samples; the same bits on every rank; one collective for all of them
    equal to one each."""
    result = run_mpi(n_tasks, "accumulators_allreduce.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ACCUMULATORS-OK {n_tasks}" in result.stdout
