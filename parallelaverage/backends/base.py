"""What a queue backend provides: the few hooks that differ between local and SLURM.

Everything else (job files, snapshots, merging, status) is shared. A launch is one
start of a job's MPI ranks; a job has a first launch and one more per ``re_submit``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping

from parallelaverage._jobfiles import JobFiles

__all__ = ["Backend", "LaunchState"]

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

    @abstractmethod
    def cancel(self, files: JobFiles, attempt: int, launch: Mapping[str, Any]) -> None:
        """Stop the launch and every process it started."""

    def describe(self, launch: Mapping[str, Any]) -> str:
        """A short human description of a launch (``pid 1234``, ``SLURM job 56``)."""
        return ", ".join(f"{k} {v}" for k, v in launch.items() if k != "backend")
