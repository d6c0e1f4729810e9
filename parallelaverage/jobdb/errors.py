"""Exceptions of the job database (defined in :mod:`parallelaverage.errors`, re-exported here).

Each error names the file it concerns and what to do about it, because the person
who reads it is usually a user on a login node looking at a traceback.
"""

from __future__ import annotations

from parallelaverage.errors import CorruptFileError, JobNotFoundError, LockTimeoutError

__all__ = ["CorruptFileError", "JobNotFoundError", "LockTimeoutError"]
