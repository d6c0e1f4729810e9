"""What a queue backend provides: the few hooks that differ between local and SLURM.

Everything else (job files, snapshots, merging, status) is shared. A launch is one
start of a job's MPI ranks; a job has a first launch and one more per ``re_submit``.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

from parallelaverage._jobdir import JobFiles

__all__ = ["Backend", "LaunchState", "worker_argv", "backend_named", "BACKENDS"]

# Plain ``python -m`` puts the working directory first on sys.path, so that a source
# checkout there (without its compiled extension) would shadow the installed package:
# -P (Python >= 3.11) leaves it out; on 3.10 the -c form removes it.
_WORKER_MAIN = "import sys; del sys.path[0]; from parallelaverage.worker import main; sys.exit(main(sys.argv[1:]))"


def worker_argv(python: str, job_dir: str | os.PathLike[str], attempt: int) -> list[str]:
    """The command every rank runs: ``python -P -m parallelaverage.worker JOBDIR LAUNCH``."""
    job = [os.fspath(job_dir), str(attempt)]
    if sys.version_info >= (3, 11):
        return [python, "-P", "-m", "parallelaverage.worker", *job]
    return [python, "-c", _WORKER_MAIN, *job]

LaunchState = str
"""``"running"`` (queued or executing), ``"ended"`` (gone, by itself or killed)."""


class Backend(ABC):
    """A way to start a job's ``N_tasks`` MPI ranks and to watch and stop them."""

    name: str = ""

    @abstractmethod
    def submit(self, files: JobFiles, attempt: int, n_tasks: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """Start launch ``attempt`` of the job; return what identifies it (stored in launch.json)."""

    @abstractmethod
    def state(self, files: JobFiles, attempt: int, launch: Mapping[str, Any]) -> LaunchState:
        """Whether the launch is still ``"running"`` or has ``"ended"``."""

    def states(self, launches: Sequence[tuple[JobFiles, int, Mapping[str, Any]]]) -> list[LaunchState]:
        """The states of many launches at once; backends with a queue to ask override it
        to ask once for all (SLURM: one ``squeue`` call)."""
        return [self.state(files, attempt, launch) for files, attempt, launch in launches]

    @abstractmethod
    def cancel(self, files: JobFiles, attempt: int, launch: Mapping[str, Any]) -> None:
        """Stop the launch and every process it started."""

    def recover(self, files: JobFiles, attempt: int) -> dict[str, Any] | None:
        """What identifies a launch whose maker died before writing its ``launch.json``
        (the launch may have started anyway), or None if it never started."""
        return None

    def describe(self, launch: Mapping[str, Any]) -> str:
        """A short human description of a launch (``pid 1234``, ``SLURM job 56``)."""
        return ", ".join(f"{k} {v}" for k, v in launch.items() if k != "backend")


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
