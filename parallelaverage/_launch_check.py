"""Did MPI put this rank in the world its launcher started? Checked before any run.

When the launcher and the MPI library do not speak the same process-management
interface (the Open MPI wheel under ``srun --mpi=pmi2``, any MPI under plain ``srun`` or
``srun --mpi=none``), ``MPI_Init`` does not fail: every process starts as a world of its
own, of size 1. Each would then run every run and overwrite the others' files, and the
job would end "completed". The launcher leaves the size of the world it meant in the
environment; a world *smaller* than that is the mismatch.

Which variable says how many processes the launch started, most specific first:

* ``OMPI_COMM_WORLD_SIZE``: Open MPI's ``mpiexec``/``prterun``, for each rank.
* ``PMI_SIZE``: the PMI-1/PMI-2 servers, i.e. MPICH's ``mpiexec`` (hydra) and
  ``srun --mpi=pmi2``; also set when the MPI library ignores it.
* ``SLURM_STEP_NUM_TASKS``: ``srun``, for every task of the step, whatever the plugin.
  Least specific: hydra's ``mpiexec`` inside a job starts one proxy per node with
  ``srun``, so there it counts proxies, fewer than the ranks (never an error, since
  only a *smaller* world is one; and ``PMI_SIZE`` comes first anyway).

The variables of the MPI library's own launcher come first, so that a value inherited
from an outer launch (a caller that itself runs under ``mpiexec``) does not hide the
launcher that started this process. ``PMIX_SIZE`` is not used: Open MPI's ``mpiexec``
(PRRTE) does not set it (seen with the Open MPI 5.0.11 wheel); under ``srun --mpi=pmix``
the step's ``SLURM_STEP_NUM_TASKS`` is there anyway.

Only the environment the process started with counts (``os.environ``, which is a
copy taken at interpreter start-up): MPI libraries may set these variables themselves
during ``MPI_Init``.
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["SIZE_VARIABLES", "world_mismatch"]

SIZE_VARIABLES: Mapping[str, str] = {
    "OMPI_COMM_WORLD_SIZE": "Open MPI's mpiexec",
    "PMI_SIZE": "a PMI launcher: srun --mpi=pmi2, MPICH's mpiexec",
    "SLURM_STEP_NUM_TASKS": "srun",
}
"""The environment variables that give the launched world's size, and who sets them."""


def _library_name(library: str) -> str:
    """``Open MPI v5.0.11`` or ``MPICH 5.0.2`` from ``MPI.Get_library_version()``."""
    first = library.strip().splitlines()[0] if library.strip() else ""
    return " ".join(word for word in first.split(",")[0].split() if word.lower() != "version:")


def _is_open_mpi(library: str) -> bool:
    return "open mpi" in library.lower()


def _order(library: str) -> list[str]:
    names = list(SIZE_VARIABLES)
    if not _is_open_mpi(library):  # MPICH and its derivatives (Intel MPI, MVAPICH, Cray) speak PMI
        names.remove("PMI_SIZE")
        names.insert(0, "PMI_SIZE")
    return names


def _expected(environ: Mapping[str, str], library: str) -> tuple[str, int] | None:
    """The first usable size variable and its value (a positive int), if any."""
    for name in _order(library):
        text = environ.get(name, "").strip()
        if text.isdigit() and int(text) >= 1:
            return name, int(text)
    return None


def _launched_by_srun(name: str, environ: Mapping[str, str]) -> bool:
    return name == "SLURM_STEP_NUM_TASKS" or (name == "PMI_SIZE" and bool(environ.get("SLURM_MPI_TYPE")))


def _launcher(name: str, environ: Mapping[str, str]) -> str:
    if not _launched_by_srun(name, environ):
        return SIZE_VARIABLES[name] if name == "OMPI_COMM_WORLD_SIZE" else "an MPICH-style mpiexec"
    plugin = environ.get("SLURM_MPI_TYPE")
    return f"srun --mpi={plugin}" if plugin else "srun without an MPI plugin (--mpi=none)"


def _fix(name: str, environ: Mapping[str, str], library: str) -> str:
    """What to change, for this MPI library and this launcher."""
    if not _launched_by_srun(name, environ):
        return ("start the ranks with the mpiexec of the MPI library mpi4py was built with (the one "
                "beside your Python, or put that MPI's bin/ first on PATH)")
    if _is_open_mpi(library):
        plugin = "mpi='pmix' (the plugin Open MPI speaks, if SLURM has it)"
    elif library:
        plugin = "mpi='pmi2' (the plugin MPICH speaks; the default)"
    else:
        plugin = "mpi='pmi2' for MPICH or mpi='pmix' for Open MPI"
    return (f"pass launcher='mpiexec' (your MPI's own mpiexec starts the ranks), or {plugin}; "
            "'srun --mpi=list' shows the plugins this cluster offers")


def world_mismatch(size: int, environ: Mapping[str, str], library: str = "") -> str | None:
    """Why this rank must not run anything, if its MPI world is smaller than its launch.

    Args:
        size: ``MPI.COMM_WORLD.Get_size()`` of this process.
        environ: the environment the process was started with (``os.environ``).
        library: ``MPI.Get_library_version()``: names the library in the message and
            decides which variables come first (Open MPI's, or PMI's).

    Returns:
        None when the world is as large as the launch said (or nothing says how large
        it should be); else one line naming the sizes, the launcher, the library and
        the fix.

    Notes:
        Only a *smaller* world is a mismatch: a launcher may start fewer processes than
        ranks (hydra's proxies under ``srun``), never more.
    """
    found = _expected(environ, library)
    if found is None:
        return None
    name, expected = found
    if size >= expected:
        return None
    named = _library_name(library)
    mpi = f"the MPI library ({named})" if named else "the MPI library"
    return (
        f"{_launcher(name, environ)} started {expected} processes ({name}={expected}), but MPI put this "
        f"one in a world of {size}: {mpi} does not speak that launcher's process-management interface, "
        f"so each process would run every run on its own. No run was started. "
        f"Fix: {_fix(name, environ, library)}."
    )
