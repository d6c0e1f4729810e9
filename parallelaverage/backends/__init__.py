"""Queue backends: how a launch's MPI ranks get started, watched and stopped.

``base`` holds what every backend shares (the template method of a submission, one
retrying command runner); ``local`` starts ``mpiexec`` on this machine, ``slurm``
submits an ``sbatch`` job whose script ``slurm_script`` renders from a template and
whose options ``slurm_options`` checks; ``mpiexec`` builds the mpiexec command line of
the installed MPI.
"""

from __future__ import annotations

from parallelaverage.backends.base import Backend

__all__ = ["backend_named", "BACKENDS"]

BACKENDS = ("local", "slurm")
"""The backends' names, as recorded per launch."""


def backend_named(name: str) -> Backend:
    """The backend object for a queuing system name (``"local"`` or ``"slurm"``).

    Raises:
        ValueError: an unknown name.
    """
    if name == "local":
        from parallelaverage.backends.local import LocalBackend

        return LocalBackend()
    if name == "slurm":
        from parallelaverage.backends.slurm import SlurmBackend

        return SlurmBackend()
    raise ValueError(f"unknown queuing system {name!r}; the backends are {', '.join(BACKENDS)}")
