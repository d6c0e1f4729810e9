"""Every error and warning parallelaverage raises on purpose, and how it speaks.

Each error derives from :class:`ParallelAverageError`, so a program can catch all of
them at once, and from the built-in exception it has always been (``NoJobError`` is a
``LookupError``, bad options are ``ValueError`` or ``TypeError``), so code that
catches those keeps working. Messages name what is wrong and how to fix it.

Warnings derive from :class:`JobWarning` and point at the user's line, not into the
library (:func:`warn`). Messages to the terminal start with :data:`PREFIX` (:func:`say`).

This module imports nothing of parallelaverage: every layer, the MPI ranks
included, may use it.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

__all__ = [
    "PREFIX", "say", "warn", "user_stacklevel",
    "ParallelAverageError", "OptionError", "OptionTypeError", "ArgumentError",
    "NoJobError", "JobNotFoundError", "CorruptFileError", "LockTimeoutError",
    "UntrustedFileError", "ReadOnlyDatabaseError", "SubmissionError", "LaunchError",
    "RunsFailedError", "StatisticNotCollectedError",
    "JobWarning", "NotReadyWarning", "RunsFailedWarning", "JobEndedWarning", "CodeChangedWarning",
]

PREFIX = "[parallelaverage]"
"""The first word of every line parallelaverage prints or warns."""


def say(message: str, *, file: Any = None) -> None:
    """Print one line for the user (standard output unless ``file``), prefixed."""
    print(f"{PREFIX} {message}", file=file if file is not None else sys.stdout, flush=True)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside the package.

    Counted from the caller of :func:`warnings.warn` (whose frame is level 1).
    """
    frame = sys._getframe(2)  # the caller of warn()
    level = 2
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE_DIR + os.sep):
            return level
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def warn(message: str, category: type[Warning]) -> None:
    """Warn with :data:`PREFIX`, pointing at the user's line (the first frame outside
    parallelaverage), as ``warnings`` users expect."""
    warnings.warn(f"{PREFIX} {message}", category, stacklevel=user_stacklevel())


# ------------------------------------------------------------------------- errors
class ParallelAverageError(Exception):
    """Base of every error parallelaverage raises on purpose."""


class OptionError(ParallelAverageError, ValueError):
    """A decorator or queue option has a value that cannot work (named in the message)."""


class OptionTypeError(ParallelAverageError, TypeError):
    """A decorator or queue option has the wrong type (named in the message)."""


class ArgumentError(ParallelAverageError, TypeError):
    """A call's argument cannot be stored or sent to the ranks, or does not fit the
    function's signature."""


class NoJobError(ParallelAverageError, LookupError):
    """A call that must find an existing job (``dont_submit``, ``cancel_job``...) found none."""


class JobNotFoundError(ParallelAverageError, LookupError):
    """No job of that name exists in the job database.

    Args:
        job_name: The name asked for, e.g. ``"12_simulate"``.
        root: The database directory (``<path>/.parallelaverage``).
    """

    def __init__(self, job_name: str, root: str | os.PathLike[str]) -> None:
        self.job_name = job_name
        self.root = os.fspath(root)
        super().__init__(
            f"no job {job_name!r} in {self.root}; list the stored jobs with 'parallelaverage list'"
        )

    def __reduce__(self) -> tuple[type[JobNotFoundError], tuple[str, str]]:
        return (type(self), (self.job_name, self.root))


class StatisticNotCollectedError(ParallelAverageError, AttributeError):
    """A result was asked for a statistic (``.covariance``, ``.jackknife``...) that its job did
    not collect: the message names what it did collect and the option that collects it.
    An ``AttributeError``, so ``hasattr(result, "covariance")`` says whether it is there."""


class CorruptFileError(ParallelAverageError, ValueError):
    """A database file exists but is not what parallelaverage wrote there.

    The file is never overwritten or deleted by parallelaverage: it may hold the only
    copy of someone's bookkeeping, so a human decides what to do.

    Args:
        path: The offending file.
        reason: What is wrong with it, e.g. ``"not valid JSON: ..."``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(
            f"{self.path}: {reason}. parallelaverage left this file untouched; "
            "inspect it, then move or delete it so that parallelaverage can recreate it"
        )

    def __reduce__(self) -> tuple[type[CorruptFileError], tuple[str, str]]:
        # the default reduce would call __init__ with the formatted message only; this
        # error crosses process boundaries (multiprocessing) in tests and tools
        return (type(self), (self.path, self.reason))


class LockTimeoutError(ParallelAverageError, TimeoutError):
    """Waiting for a database lock took longer than the allowed time.

    Args:
        lock_path: The lock file that could not be acquired.
        waited_s: How long we waited, in seconds.
        soft: Whether the lock is a soft lock (a marker file, see
            ``PARALLELAVERAGE_SOFT_LOCKS``), which a crashed process can leave behind.
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


class UntrustedFileError(ParallelAverageError, PermissionError):
    """A pickle in a job directory belongs to another user: loading it would run their code."""


class ReadOnlyDatabaseError(ParallelAverageError, PermissionError):
    """An action that changes a job (submit, re-submit, cancel, clean up) was asked of a
    database this user cannot write; reading results needs no write access."""


class SubmissionError(ParallelAverageError, RuntimeError):
    """The queue refused the job (``sbatch`` failed) or the launcher could not be started.

    The job is recorded as ``submit_failed`` with this message; the next plain call,
    after the cause is fixed, submits it again.
    """


class LaunchError(ParallelAverageError, RuntimeError):
    """A launch ended before any run could finish: its launcher failed, or its ranks
    could not start. The message holds the exit code, the end of ``stderr.txt`` and
    the file's path."""


class RunsFailedError(ParallelAverageError, RuntimeError):
    """Every run of a finished job failed: there is nothing to average or return.

    Attributes:
        job_name: The job.
        failed_run_ids: The ids of the failed runs, sorted.
        first_traceback: The error of the first failed run, as text.
    """

    def __init__(self, message: str, *, job_name: str = "", failed_run_ids: list[Any] | None = None,
                 first_traceback: str = "") -> None:
        super().__init__(message)
        self.job_name = job_name
        self.failed_run_ids = list(failed_run_ids or [])
        self.first_traceback = first_traceback

    def __reduce__(self) -> Any:
        return (_rebuild_runs_failed, (str(self), self.job_name, self.failed_run_ids, self.first_traceback))


def _rebuild_runs_failed(message: str, job_name: str, failed: list[Any], first: str) -> RunsFailedError:
    return RunsFailedError(message, job_name=job_name, failed_run_ids=failed, first_traceback=first)


# ----------------------------------------------------------------------- warnings
class JobWarning(UserWarning):
    """Base of the warnings a call prints about its job."""


class NotReadyWarning(JobWarning):
    """Some runs are still running or queued: the result is partial."""


class RunsFailedWarning(JobWarning):
    """Some runs raised, returned something that cannot be averaged, or crashed their rank."""


class JobEndedWarning(JobWarning):
    """The job's processes are gone but runs are missing."""


class CodeChangedWarning(JobWarning):
    """The function's code (or a global it reads) changed since the job was submitted."""
