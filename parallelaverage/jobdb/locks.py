"""Database locks: they coordinate writers; file integrity never depends on them.

Every file of the database is written whole by a rename (:mod:`.atomic`), so a
lock only decides *who* does a piece of work, e.g. which of two simultaneous
callers creates the job. If a lock silently fails (flock on some NFS, Lustre
or GPFS mounts), the cost is duplicated work, never a corrupt file.

Lock files live in ``.parallelaverage/locks/``, apart from the data, and are
never deleted. (Deleting a flock file on release was the original's bug: a
waiter then locks the unlinked inode while a newcomer creates and locks a fresh
file, and both believe they hold the lock.)

Two kinds, chosen by :func:`use_soft_locks`:

* ``filelock.FileLock`` (default): ``flock`` on a file that stays in place.
* ``filelock.SoftFileLock`` (``soft_locks=True`` or ``PARALLELAVERAGE_SOFT_LOCKS=1``),
  for filesystems without a working ``flock``: the lock *is* the existence of
  the file, created exclusively on acquire and removed on release. A process
  killed while holding it leaves it behind; filelock reclaims such a marker
  when its owner is known dead on the same host, otherwise the timeout error
  says which file to delete.

Waiting logs a warning every ``warn_after_s`` seconds and ends with a
:class:`~.errors.LockTimeoutError` naming the lock file.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from types import TracebackType

import filelock

from .errors import LockTimeoutError

__all__ = ["DatabaseLock", "use_soft_locks", "SOFT_LOCKS_ENV"]

logger = logging.getLogger("parallelaverage.jobdb")

#: Environment variable that turns on soft locks when ``soft_locks`` is not given.
SOFT_LOCKS_ENV = "PARALLELAVERAGE_SOFT_LOCKS"

# What flock raises where the filesystem (or its NFS lock service) lacks it.
_NO_FLOCK_ERRNOS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def use_soft_locks(soft_locks: bool | None) -> bool:
    """Decide between flock and soft locks.

    Args:
        soft_locks: An explicit choice, or ``None`` to read ``PARALLELAVERAGE_SOFT_LOCKS``.

    Returns:
        True for soft locks.

    Raises:
        ValueError: The environment variable holds something other than a yes/no value.
        TypeError: ``soft_locks`` is neither a bool nor None.
    """
    if soft_locks is not None:
        if not isinstance(soft_locks, bool):
            raise TypeError(f"soft_locks={soft_locks!r}: must be True, False or None (None reads {SOFT_LOCKS_ENV})")
        return soft_locks
    value = os.environ.get(SOFT_LOCKS_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{SOFT_LOCKS_ENV}={os.environ[SOFT_LOCKS_ENV]!r}: must be 1 or 0 (also true/false, yes/no)")


class DatabaseLock:
    """An inter-process lock on one lock file, used as a context manager.

    Reentrant within a thread; separate threads and processes exclude each other.

    Args:
        path: The lock file; its directory is created if needed.
        soft: Use a soft lock (see the module docstring).
        timeout_s: Give up after this many seconds.
        warn_after_s: Log a warning after this many seconds of waiting, and again
            every such interval.

    Raises:
        LockTimeoutError: On entering, when the lock was not acquired in ``timeout_s``.
        OSError: On entering, when the filesystem refuses ``flock``; the message
            names the lock file and the soft-lock switch.
    """

    # flock polls non-blockingly; the database's critical sections last about a
    # millisecond, so poll often. Soft locks poll by creating a file, which costs
    # a metadata operation on a shared filesystem, so they poll less often.
    _POLL_S = {False: 0.002, True: 0.01}

    def __init__(self, path: str | os.PathLike[str], *, soft: bool, timeout_s: float, warn_after_s: float) -> None:
        self.path = Path(path)
        self.soft = soft
        self.timeout_s = timeout_s
        self.warn_after_s = warn_after_s
        kind = filelock.SoftFileLock if soft else filelock.FileLock
        self._lock = kind(os.fspath(self.path), timeout=timeout_s)

    def __enter__(self) -> DatabaseLock:
        start = time.monotonic()
        poll_s = self._POLL_S[self.soft]
        while True:
            waited = time.monotonic() - start
            remaining = self.timeout_s - waited
            if remaining <= 0:
                raise LockTimeoutError(self.path, waited, soft=self.soft)
            try:
                self._lock.acquire(timeout=min(self.warn_after_s, remaining), poll_interval=poll_s)
                return self
            except filelock.Timeout:  # a subclass of OSError: before the clause below
                waited = time.monotonic() - start
                if waited < self.timeout_s:
                    logger.warning(
                        "waiting for the lock %s for %.0f s (another process holds it); "
                        "giving up after %.0f s",
                        self.path,
                        waited,
                        self.timeout_s,
                    )
            except OSError as exc:
                if self.soft or exc.errno not in _NO_FLOCK_ERRNOS:
                    raise
                raise OSError(
                    exc.errno,
                    f"cannot lock {self.path}: {exc.strerror or exc}; if this filesystem does not "
                    f"support flock, set {SOFT_LOCKS_ENV}=1",
                ) from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
