"""The launch check: a rank whose MPI world is smaller than its launch runs nothing.

Hand-made environments for :func:`world_mismatch`, then real worker processes: a
singleton told it is one of 3 (as under ``srun --mpi=none``), and a real ``mpiexec``
launch that inherits a stale SLURM variable. The same under SLURM, with the Open MPI
wheel under ``srun --mpi=pmi2``, is in ``tests/slurm``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from parallelaverage import parallel_average, wait
from parallelaverage._launch_check import world_mismatch
from parallelaverage.backends.base import worker_argv

THIS = sys.modules[__name__]
MPICH = "MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25 20:45:26 UTC 2026\n"
OPEN_MPI = "Open MPI v5.0.11, package: Open MPI user Distribution, ident: 5.0.11, repo rev: v5.0.11\n"
# what each launch sets, as seen on the test cluster (tests/slurm) with 3 tasks
SRUN_PMI2 = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "3", "SLURM_MPI_TYPE": "pmi2", "PMI_SIZE": "3",
             "PMI_RANK": "1", "SLURM_PROCID": "1"}
SRUN_NONE = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "1"}
HYDRA_IN_JOB = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1", "PMI_SIZE": "3", "PMI_RANK": "2",
                "MPI_LOCALNRANKS": "3"}  # hydra's one proxy per node is the srun step
PRTERUN_IN_JOB = {"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "2", "SLURM_NTASKS": "3"}


@pytest.mark.parametrize("environ, library", [
    (SRUN_PMI2, MPICH), (HYDRA_IN_JOB, MPICH), (PRTERUN_IN_JOB, OPEN_MPI), ({}, MPICH), ({}, ""),
    ({"SLURM_NTASKS": "8"}, MPICH),  # the job's task count says nothing about this launch
    ({"PMI_SIZE": "", "SLURM_STEP_NUM_TASKS": "x3"}, MPICH),  # unreadable: ignored
])
def test_a_world_as_large_as_its_launch_is_fine(environ, library):
    assert world_mismatch(3, environ, library) is None


def test_a_world_larger_than_a_variable_is_fine():
    """Hydra under srun: SLURM_STEP_NUM_TASKS counts proxies, fewer than the ranks."""
    assert world_mismatch(3, {"SLURM_STEP_NUM_TASKS": "1"}, MPICH) is None
    assert world_mismatch(3, {"SLURM_STEP_NUM_TASKS": "1"}, "") is None


def test_open_mpi_under_srun_pmi2_names_the_plugin_and_the_fixes():
    message = world_mismatch(1, SRUN_PMI2, OPEN_MPI)
    assert message == (
        "srun --mpi=pmi2 started 3 processes (PMI_SIZE=3), but MPI put this one in a world of 1: the MPI "
        "library (Open MPI v5.0.11) does not speak that launcher's process-management interface, so each "
        "process would run every run on its own. No run was started. Fix: pass launcher='mpiexec' (your "
        "MPI's own mpiexec starts the ranks), or mpi='pmix' (the plugin Open MPI speaks, if SLURM has it); "
        "'srun --mpi=list' shows the plugins this cluster offers."
    )


def test_mpich_under_srun_without_a_plugin():
    message = world_mismatch(1, SRUN_NONE, MPICH)
    assert message is not None
    assert message.startswith("srun without an MPI plugin (--mpi=none) started 3 processes "
                              "(SLURM_STEP_NUM_TASKS=3), but MPI put this one in a world of 1: "
                              "the MPI library (MPICH 5.0.2) does not speak")
    assert "Fix: pass launcher='mpiexec' (your MPI's own mpiexec starts the ranks), or mpi='pmi2' " in message


def test_an_unknown_library_gets_both_plugins_named():
    message = world_mismatch(2, {**SRUN_NONE, "SLURM_STEP_NUM_TASKS": "4"}, "")
    assert message is not None
    assert "world of 2: the MPI library does not speak" in message
    assert "mpi='pmi2' for MPICH or mpi='pmix' for Open MPI" in message


def test_another_mpi_s_mpiexec_is_named():
    """MPICH's mpi4py started by Open MPI's mpiexec (or the reverse): use the library's own."""
    message = world_mismatch(1, PRTERUN_IN_JOB, MPICH)
    assert message is not None and message.startswith("Open MPI's mpiexec started 3 processes (OMPI_COMM_WORLD_SIZE=3)")
    assert "Fix: start the ranks with the mpiexec of the MPI library mpi4py was built with" in message
    message = world_mismatch(1, {"PMI_SIZE": "2"}, OPEN_MPI)
    assert message is not None and message.startswith("an MPICH-style mpiexec started 2 processes (PMI_SIZE=2)")


@pytest.mark.parametrize("library, stale, fresh", [
    # a caller that itself ran under another launch passes its variables on: the
    # variables of the library's own launcher come first
    (MPICH, {"OMPI_COMM_WORLD_SIZE": "8"}, {"PMI_SIZE": "2"}),
    (OPEN_MPI, {"PMI_SIZE": "8"}, {"OMPI_COMM_WORLD_SIZE": "2"}),
    (MPICH, {"SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_ID": "0"}, {"PMI_SIZE": "2"}),
    (OPEN_MPI, {"SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_ID": "0"}, {"OMPI_COMM_WORLD_SIZE": "2"}),
])
def test_the_variable_of_the_library_s_own_launcher_wins(library, stale, fresh):
    assert world_mismatch(2, {**stale, **fresh}, library) is None
    assert world_mismatch(1, {**stale, **fresh}, library) is not None


# ----------------------------------------------------------------- real worker processes
def test_a_singleton_in_a_larger_launch_writes_the_reason_and_runs_nothing(tmp_path):
    """As under srun --mpi=none: python alone (an MPI world of 1) told that 3 were started.

    The job directory holds no payload: a worker that went on would fail to read it."""
    launch_no = tmp_path / "attempts" / "1"
    launch_no.mkdir(parents=True)
    env = {**os.environ, "SLURM_STEP_NUM_TASKS": "3", "SLURM_STEP_ID": "0", "SLURM_PROCID": "2"}
    for name in ("PMI_SIZE", "PMI_RANK", "PMI_FD", "PMI_PORT", "OMPI_COMM_WORLD_SIZE", "SLURM_MPI_TYPE"):
        env.pop(name, None)
    done = subprocess.run(worker_argv(sys.executable, tmp_path, 1), capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    fatal = (launch_no / "fatal-r0.txt").read_text()
    assert fatal.startswith("srun without an MPI plugin (--mpi=none) started 3 processes (SLURM_STEP_NUM_TASKS=3), "
                            "but MPI put this one in a world of 1")
    assert "No run was started. Fix: pass launcher='mpiexec'" in fatal
    assert f"[parallelaverage] {fatal}\n" in done.stderr
    assert sorted(p.name for p in launch_no.iterdir()) == ["fatal-r0.txt"]  # no rank file, no snapshot


def test_a_real_launch_is_not_fooled_by_an_inherited_srun_variable(tmp_path, monkeypatch):
    """The caller runs inside a SLURM step of 8 tasks; its local mpiexec launch of 2 ranks
    inherits SLURM_STEP_NUM_TASKS=8, but the launcher's own variable says 2."""
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    monkeypatch.setenv("SLURM_STEP_ID", "0")

    @parallel_average(N_runs=6, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def sizes():
        from mpi4py import MPI

        return float(MPI.COMM_WORLD.Get_size())

    result = wait(sizes)()
    assert result.data == 2.0 and sorted(result.successful_run_ids) == list(range(6))
