"""Exceptions of the job database.

Each error names the file it concerns and what to do about it, because the
person who reads it is usually a user on a login node looking at a traceback,
not a developer with a debugger.
"""

from __future__ import annotations

import os

from parallelaverage._atomic import CorruptFileError

__all__ = ["CorruptFileError", "JobNotFoundError", "LockTimeoutError"]


class LockTimeoutError(TimeoutError):
    """Waiting for a database lock took longer than the allowed time.

    Args:
        lock_path: The lock file that could not be acquired.
        waited_s: How long we waited, in seconds.
        soft: Whether the lock is a soft lock (a marker file, see
            ``PARALLELAVERAGE_SOFT_LOCKS``), which a crashed process can leave behind.

    Attributes:
        lock_path: The lock file, as a string.
        waited_s: Seconds waited.
    """

    def __init__(self, lock_path: str | os.PathLike[str], waited_s: float, soft: bool = False) -> None:
        self.lock_path = os.fspath(lock_path)
        self.waited_s = waited_s
        self.soft = soft
        if soft:
            fix = (
                "another process holds it, or a process that died left its soft lock behind; "
                f"if no parallelaverage process is running on this job database, delete {self.lock_path}"
            )
        else:
            fix = (
                "another process holds it: look for a running parallelaverage process using this job "
                "database (a process that died has released it); if there is none, the filesystem's "
                "lock service may hang (NFS): set PARALLELAVERAGE_SOFT_LOCKS=1"
            )
        super().__init__(f"timed out after {waited_s:.1f} s waiting for the lock {self.lock_path}: {fix}")

    def __reduce__(self) -> tuple[type[LockTimeoutError], tuple[str, float, bool]]:
        return (type(self), (self.lock_path, self.waited_s, self.soft))


class JobNotFoundError(LookupError):
    """No job of that name exists in the job database.

    Args:
        job_name: The name asked for, e.g. ``"12_simulate"``.
        root: The database directory (``<path>/.parallelaverage``).

    Attributes:
        job_name: The name asked for.
        root: The database directory, as a string.
    """

    def __init__(self, job_name: str, root: str | os.PathLike[str]) -> None:
        self.job_name = job_name
        self.root = os.fspath(root)
        super().__init__(
            f"no job {job_name!r} in {self.root}; list the stored jobs with JobDatabase(...).jobs()"
        )

    def __reduce__(self) -> tuple[type[JobNotFoundError], tuple[str, str]]:
        return (type(self), (self.job_name, self.root))
