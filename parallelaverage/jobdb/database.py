"""The job database: one folder per job, one small index file per call key.

On-disk layout under ``<path>/.parallelaverage/``::

    .parallelaverage/
      1_simulate/                 one folder per job, "<index>_<function>", mode 0o700
        job.json                  the JobRecord, indented JSON (records.py)
        ...                       data files of the job (results, logs) written by others
      2_simulate/
      index/                      the call index (index.py)
        4b/4be1...c2.json         call key digest -> {"job_name": "2_simulate", ...}
      next_index                  the next job number, as text ("3")
      locks/                      lock files (locks.py), never deleted
        db.lock                   guards job creation, the index and next_index
        jobs/2_simulate.lock      guards updates of 2_simulate/job.json
      .creating-<host>-<pid>-<random>/   a job folder being staged; only a crash
                                         leaves one behind, and nothing reads it

Why this layout:

* **Lookups cost O(1), whatever the number of jobs.** A call's digest names its
  index file, so a cache hit reads two small files (the index entry, then
  ``job.json``) and takes no lock. The original kept every job in one JSON list
  that each hit parsed and each submission rewrote: 209 ms and 376 ms at
  10,000 jobs. Here the figures do not grow with the database (see
  ``bench/database.py``).
* **A submission writes three small files** (``job.json``, ``next_index``, the
  index entry), each by rename (:mod:`.atomic`), under one short lock.
* **The index entry is written last.** A job folder appears complete (it is
  staged under a hidden name with its ``job.json`` and renamed into place),
  then the counter, then the entry that makes lookups find it. A crash at any
  point leaves at worst a job folder no lookup finds, never an entry that
  points at nothing or at half a file.
* **A failed lock costs duplicated work only.** Without a working lock two
  processes can both create a job for the same call; each job folder is
  still whole (the rename onto an existing job name fails and the loser takes
  the next index) and the index entry names one of them. Other keys'
  entries are separate files, so they cannot be lost, unlike in a shared list.
* **Fan-out by two hex digits** keeps index directories around 40 entries at
  10,000 jobs (256 directories), friendly to NFS and Lustre metadata servers.
* **No SQLite:** its locking is unreliable on exactly the network filesystems
  clusters use, and a corrupt database file would take every job with it.
* **Job folders are scanned only for listing** (:meth:`JobDatabase.jobs`,
  :meth:`JobDatabase.closest`), which reads every ``job.json``.

Notes:
    On NFS, a file created on one host may stay invisible to another host for
    the attribute-cache time (seconds); a call in that window submits a
    duplicate job. That is the "duplicated work" failure mode, by design.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from . import index
from parallelaverage._atomic import TEMP_MARKER, atomic_write_bytes, atomic_write_json, host_tag, read_json
from .errors import CorruptFileError, JobNotFoundError
from parallelaverage.errors import ReadOnlyDatabaseError
from .keys import CallKey
from .locks import DatabaseLock, use_soft_locks
from .records import JOB_NAME_PATTERN, JobRecord, utc_now

__all__ = ["JobDatabase", "JobScan", "DB_DIRNAME", "JOB_FILENAME"]

logger = logging.getLogger("parallelaverage.jobdb")

#: Name of the database folder inside the user's directory.
DB_DIRNAME = ".parallelaverage"
#: Name of a job's record file inside its folder.
JOB_FILENAME = "job.json"

_DIR_MODE = 0o700  # job arguments and results may be private
_STAGING_PREFIX = ".creating-"
_REMOVING_PREFIX = ".removing-"


class JobScan(NamedTuple):
    """Result of :meth:`JobDatabase.scan`.

    Attributes:
        records: The readable jobs, newest first.
        problems: One :class:`CorruptFileError` per job folder whose ``job.json``
            is missing or unreadable (the files are left untouched).
    """

    records: list[JobRecord]
    problems: list[CorruptFileError]


class _KeyOf:
    """The parts of a call key an index entry needs, taken from a record."""

    def __init__(self, record: JobRecord) -> None:
        self.digest = record.key_digest
        self.function, self.call = record.function, record.call
        self.N_runs, self.average_results = record.N_runs, record.average_results

    def describe(self) -> str:
        from .keys import describe_call

        return describe_call(self.call, self.N_runs, self.average_results)


class JobDatabase:
    """The jobs stored under ``<path>/.parallelaverage``.

    Reading (:meth:`lookup`, :meth:`load`, :meth:`jobs`) takes no lock; writing
    takes the database lock or the job's lock. Each instance may be used from
    several threads and any number of processes and hosts may open the same
    database at once.

    Args:
        path: An existing, writable directory; the database lives in its
            ``.parallelaverage`` subfolder, created on the first write.
        soft_locks: Use soft locks (for filesystems without a working ``flock``);
            ``None`` reads ``PARALLELAVERAGE_SOFT_LOCKS``.
        lock_timeout_s: Give up waiting for a lock after this many seconds.
        lock_warn_s: Log a warning after this many seconds of waiting for a lock.

    Raises:
        ValueError: ``path`` does not exist or is not a directory, or
            ``PARALLELAVERAGE_SOFT_LOCKS`` is not a yes/no value.
        PermissionError: ``path`` (or its ``.parallelaverage``) is not writable.

    Notes:
        The database folder and job folders are created with mode 0o700: other
        users cannot read job arguments or results.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ".",
        *,
        soft_locks: bool | None = None,
        lock_timeout_s: float = 120.0,
        lock_warn_s: float = 10.0,
    ) -> None:
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.root = self.path / DB_DIRNAME
        self._root_str = os.fspath(self.root)
        self.soft_locks = use_soft_locks(soft_locks)
        if not lock_timeout_s > 0 or not lock_warn_s > 0:
            raise ValueError(f"lock_timeout_s={lock_timeout_s}, lock_warn_s={lock_warn_s}: both must be > 0")
        self.lock_timeout_s = float(lock_timeout_s)
        self.lock_warn_s = float(lock_warn_s)
        self._check_directory()
        self._db_lock = self._lock(self.root / "locks" / "db.lock")

    def __repr__(self) -> str:
        kind = ", soft_locks=True" if self.soft_locks else ""
        return f"JobDatabase({os.fspath(self.path)!r}{kind})"

    # ----------------------------------------------------------------- reading

    def lookup(self, key: CallKey) -> JobRecord | None:
        """The job stored for a call, if any. Takes no lock.

        Args:
            key: The call, from :func:`~parallelaverage.jobdb.call_key`.

        Returns:
            The job's record, or None when no job answers the call (also when
            the index names a job folder that someone deleted).

        Raises:
            CorruptFileError: The index entry or the job's ``job.json`` is not
                what parallelaverage wrote; the file is left untouched.
        """
        entry_path = index.entry_path(self.root, key.digest)
        try:
            job_name = index.read_entry(entry_path, key.digest)
        except FileNotFoundError:
            return None
        try:
            record = self._read_record(job_name)
        except FileNotFoundError:
            logger.debug("index entry %s names the missing job %s; treating it as absent", entry_path, job_name)
            return None
        if record.key_digest != key.digest:
            raise CorruptFileError(
                entry_path, f"names job {job_name}, whose {JOB_FILENAME} is for another call ({record.describe()})"
            )
        return record

    def load(self, job_name: str) -> JobRecord:
        """Read one job's record.

        Args:
            job_name: e.g. ``"12_simulate"``.

        Returns:
            The record.

        Raises:
            JobNotFoundError: No such job.
            CorruptFileError: Its ``job.json`` is missing or unreadable.
            ValueError: ``job_name`` is not a job name.
        """
        job_dir = self.job_dir(job_name)
        try:
            return self._read_record(job_name)
        except FileNotFoundError:
            if job_dir.is_dir():
                raise CorruptFileError(
                    job_dir / JOB_FILENAME, "missing; the job folder was not made by parallelaverage"
                ) from None
            raise JobNotFoundError(job_name, self.root) from None

    def scan(self) -> JobScan:
        """Read every job's record, collecting unreadable ones instead of failing.

        Returns:
            The readable records, newest (highest index) first, and the problems.
        """
        records: list[JobRecord] = []
        problems: list[CorruptFileError] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return JobScan([], [])
        for entry in entries:
            if not JOB_NAME_PATTERN.fullmatch(entry.name) or not entry.is_dir():
                continue
            try:
                records.append(self._read_record(entry.name))
            except FileNotFoundError:
                problems.append(
                    CorruptFileError(
                        Path(entry.path) / JOB_FILENAME, "missing; the job folder was not made by parallelaverage"
                    )
                )
            except CorruptFileError as exc:
                problems.append(exc)
        records.sort(key=lambda r: (r.index, r.submitted_at), reverse=True)
        return JobScan(records, problems)

    def jobs(self) -> list[JobRecord]:
        """Every readable job, newest first; unreadable ones are logged and skipped.

        Returns:
            The records, highest index first.

        Notes:
            Reads every ``job.json``: about 50 µs per job on a local disk, more on
            a network filesystem. Use :meth:`scan` to get the problems as data.
        """
        scan = self.scan()
        for problem in scan.problems:
            logger.warning("skipping an unreadable job: %s", problem)
        return scan.records

    def closest(self, key: CallKey, n: int = 3) -> list[JobRecord]:
        """The stored calls of the same function that most resemble ``key``.

        For messages like "no job for simulate(L=65); closest stored calls:
        simulate(L=64), ...". Similarity is :class:`difflib.SequenceMatcher`'s
        ratio between the readable calls (with ``N_runs``).

        Args:
            key: The call that has no job.
            n: How many to return at most.

        Returns:
            Up to ``n`` records, most similar first, one per distinct call
            (its newest job), excluding ``key`` itself.
        """
        target = key.describe()
        newest: dict[str, JobRecord] = {}
        for record in self.jobs():  # newest first: setdefault keeps the newest per call
            if record.function == key.function and record.key_digest != key.digest:
                newest.setdefault(record.key_digest, record)

        def similarity(record: JobRecord) -> float:
            return difflib.SequenceMatcher(None, target, record.describe()).ratio()

        ranked = sorted(newest.values(), key=lambda r: (-similarity(r), -r.index))
        return ranked[: max(n, 0)]

    def job_dir(self, job: JobRecord | str) -> Path:
        """The folder of a job (it may not exist).

        Args:
            job: A record or a job name such as ``"12_simulate"``.

        Returns:
            ``<path>/.parallelaverage/<job name>``.

        Raises:
            ValueError: ``job`` is not a job name (this also rejects paths like ``"../x"``).
        """
        name = job.job_name if isinstance(job, JobRecord) else job
        if not isinstance(name, str) or not JOB_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{name!r} is not a job name; job names look like '12_simulate'")
        return self.root / name

    @staticmethod
    def is_job_name(name: str) -> bool:
        """Whether ``name`` is a job name (``"<number>_<function>"``, e.g. ``"12_simulate"``),
        safe as a folder name: no path, nothing hidden."""
        return isinstance(name, str) and JOB_NAME_PATTERN.fullmatch(name) is not None

    def record_stamp(self, job_name: str) -> tuple[int, int, int] | None:
        """What changes whenever a job's record is written: ``(mtime_ns, size, inode)`` of its ``job.json``.

        For caches of records (the viewer's): one ``stat``, where :meth:`load` reads
        and checks the file. Records are replaced by rename, so the inode changes with
        every write, even within the filesystem's time resolution.

        Returns:
            The stamp; None when the job folder has no ``job.json`` (or is gone).

        Raises:
            ValueError: ``job_name`` is not a job name.
        """
        self.job_dir(job_name)  # validates the name before it becomes a path
        try:
            stat = os.stat(os.path.join(self._root_str, job_name, JOB_FILENAME))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def current_job_of(self, record: JobRecord) -> str | None:
        """The job that now answers the call ``record`` was made for (by the call's index entry).

        Returns:
            ``record.job_name`` for a current job; the newer job's name when a forced
            resubmission (``do_submit``) superseded it; None when the index has no
            readable entry for the call (:meth:`reindex` restores missing ones).
        """
        try:
            return index.read_entry(index.entry_path(self.root, record.key_digest), record.key_digest)
        except (FileNotFoundError, CorruptFileError):
            return None

    def leftovers(self, min_age_s: float = 3600.0) -> list[Path]:
        """What crashed writers left in the database, untouched for ``min_age_s`` seconds.

        Job folders being staged (``.creating-*``) or removed (``.removing-*``) and the
        temporary files of interrupted atomic writes, anywhere in the database (job
        folders included). Nothing reads them; younger ones may belong to a writer
        still at work.

        Returns:
            Their paths (for :func:`parallelaverage.cleanup` to remove), folders first.
        """
        now = time.time()

        def untouched(path: str | Path) -> bool:
            try:
                return now - os.lstat(path).st_mtime > min_age_s
            except FileNotFoundError:
                return False

        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        prefixes = (_STAGING_PREFIX, _REMOVING_PREFIX)
        found = [Path(e.path) for e in entries if e.name.startswith(prefixes) and untouched(e.path)]
        for temp in sorted(self.root.rglob(f"*{TEMP_MARKER}*")):
            if not temp.relative_to(self.root).parts[0].startswith(prefixes) and untouched(temp):
                found.append(temp)
        return found

    # ----------------------------------------------------------------- writing

    def get_or_create(
        self,
        key: CallKey,
        make_record: Callable[[str], JobRecord],
        *,
        files: Mapping[str, bytes] | None = None,
    ) -> tuple[JobRecord, bool]:
        """The job for a call, creating it if there is none.

        Without a job, takes the database lock, checks again (another process
        may have just created it), then creates the job. Of any number of
        simultaneous callers, exactly one creates it (with working locks).

        Args:
            key: The call.
            make_record: Builds the new job's record from the job name chosen by
                the database, usually ``lambda name: new_record(key, name, code_hash=...)``.
                Called at most once, under the lock: keep it quick; it should not
                write files.
            files: Data files to put in the new job's folder, ``{relative path: content}``
                (``"payload.pkl"``, ``"attempts/1/runs.json"``); they appear together with
                ``job.json``. Unused when the job exists.

        Returns:
            ``(record, created)``: the job's record and whether this call created it.

        Raises:
            CorruptFileError: An existing index entry or record is corrupt (left untouched).
            LockTimeoutError: The database lock was not acquired in time.
            ValueError: ``make_record`` returned a record for another name or key,
                or a file name is not a plain name.
        """
        record = self.lookup(key)
        if record is not None:
            return record, False
        self._ensure_layout()
        with self._db_lock:
            record = self.lookup(key) or self._reindex(key)
            if record is not None:
                return record, False
            return self._create_locked(key, make_record, files), True

    def find_unindexed(self, key: CallKey, *, learn: bool = False) -> JobRecord | None:
        """The newest job of ``key`` whose index entry is gone (removed by hand, or a
        half-synced copy): its folder and ``job.json`` are there, the index does not
        name it.

        Reads the index's ``digests`` file (each job folder's key digest) and only the
        records of the folders of this function it does not list yet: a miss costs a
        ``listdir`` and the bytes appended since this process last looked, not a read of
        every record. With ``learn`` (under the database lock) it adds those folders to
        the file; a plain lookup writes nothing.
        """
        suffix = f"_{key.name}"
        try:
            names = [name for name in os.listdir(self.root) if name.endswith(suffix)]
        except FileNotFoundError:
            return None
        known = index.read_digests(self.root)
        learned = []
        for name in names:
            if name not in known and JOB_NAME_PATTERN.fullmatch(name):
                try:
                    digest = self._read_record(name).key_digest
                except (FileNotFoundError, CorruptFileError):
                    continue
                learned.append((name, digest))
        if learn and learned:
            index.append_digests(self.root, learned, dir_mode=_DIR_MODE)
            known.update(learned)  # the process's cache of the file, which now holds them
        candidates = [name for name in names if known.get(name) == key.digest]
        candidates += [name for name, digest in learned if digest == key.digest and name not in candidates]
        for name in sorted(candidates, key=lambda n: int(n.split("_", 1)[0]), reverse=True):
            try:
                record = self._read_record(name)
            except (FileNotFoundError, CorruptFileError):
                continue
            if record.key_digest == key.digest:
                return record
        return None

    def _reindex(self, key: CallKey) -> JobRecord | None:
        """Under the database lock: restore the index entry of an unindexed job of ``key``."""
        record = self.find_unindexed(key, learn=True)
        if record is not None:
            logger.warning("the index had no entry for %s although job %s answers it; re-indexed it",
                           key.describe(), record.job_name)
            index.write_entry(self.root, key, record.job_name, dir_mode=_DIR_MODE)
        return record

    def reindex(self) -> list[str]:
        """Restore every missing index entry (``parallelaverage cleanup --reindex``).

        For each call, the newest job answering it is indexed, unless the index names
        another existing job of that call. Returns the names of the jobs re-indexed.
        """
        self._ensure_layout()
        restored = []
        with self._db_lock:
            newest: dict[str, JobRecord] = {}
            for record in self.scan().records:  # newest first
                newest.setdefault(record.key_digest, record)
            for record in sorted(newest.values(), key=lambda r: r.index):
                current = self.current_job_of(record)
                if current == record.job_name or current and self.job_dir(current).is_dir() and \
                        int(current.split("_", 1)[0]) > record.index:
                    continue
                index.write_entry(self.root, _KeyOf(record), record.job_name, dir_mode=_DIR_MODE)  # type: ignore[arg-type]
                restored.append(record.job_name)
        return restored

    def new_batch_folder(self, first_job: str, count: int) -> Path:
        """A new, empty folder for a launch that runs the calls of ``count`` jobs from
        ``first_job`` on (``f.map``): ``.parallelaverage/batches/<first_job>+<count - 1>``,
        mode 0o700; its name is the SLURM job's name. A job starts in one batch at most,
        so the name is free."""
        self._ensure_layout()
        batches = self.root / "batches"
        batches.mkdir(mode=_DIR_MODE, exist_ok=True)
        folder = batches / f"{first_job}+{count - 1}"
        folder.mkdir(mode=_DIR_MODE)
        return folder

    def launch_lock(self, job_name: str) -> DatabaseLock:
        """The lock under which a job's launches are decided and created (one caller
        at a time reads the job's state, chooses the runs and makes the launch)."""
        self.job_dir(job_name)
        self._ensure_layout()
        return self._lock(self.root / "locks" / "jobs" / f"{job_name}.launch.lock")

    def note_family(self, family: str, job_name: str) -> None:
        """Record that ``job_name`` answers a call of ``family`` (the call's key with
        ``N_runs=1``); a hint for :meth:`family_jobs`, so a failure to write it is ignored."""
        folder = index.family_dir(self.root, family)
        try:
            os.makedirs(folder, mode=_DIR_MODE, exist_ok=True)
            (folder / job_name).touch(mode=0o600)
        except OSError:
            pass

    def family_jobs(self, family: str) -> list[str]:
        """The jobs recorded for a call family by :meth:`note_family`, oldest first (some
        may have been removed since)."""
        try:
            names = [name for name in os.listdir(index.family_dir(self.root, family))
                     if JOB_NAME_PATTERN.fullmatch(name)]
        except OSError:
            return []
        return sorted(names, key=lambda n: int(n.split("_", 1)[0]))

    def job_names(self) -> list[str]:
        """The names of the job folders, oldest first (no record is read)."""
        try:
            names = [e.name for e in os.scandir(self.root) if JOB_NAME_PATTERN.fullmatch(e.name) and e.is_dir()]
        except FileNotFoundError:
            return []
        return sorted(names, key=lambda n: int(n.split("_", 1)[0]))

    def resolve(self, job: str | int) -> JobRecord:
        """A job by name (``"3_simulate"``) or number (``3`` or ``"3"``).

        Raises:
            JobNotFoundError: no such job (or several with that number; the message says).
            CorruptFileError: its ``job.json`` is unreadable.
        """
        text = str(job)
        if text.isdigit():
            matches = [n for n in self.job_names() if n.split("_", 1)[0] == text]
            if len(matches) == 1:
                text = matches[0]
            elif len(matches) > 1:
                raise JobNotFoundError(f"{text} (several jobs have this number: {', '.join(matches)})", self.root)
        if not JOB_NAME_PATTERN.fullmatch(text):
            raise JobNotFoundError(text, self.root)
        return self.load(text)

    def create(
        self,
        key: CallKey,
        make_record: Callable[[str], JobRecord],
        *,
        files: Mapping[str, bytes] | None = None,
    ) -> JobRecord:
        """Create a new job for a call even if one exists (a forced resubmission).

        The new job takes over the call's index entry; the old job's folder stays
        and is still listed by :meth:`jobs`.

        Args:
            key: The call.
            make_record: As for :meth:`get_or_create`.
            files: As for :meth:`get_or_create`.

        Returns:
            The new job's record.

        Raises:
            CorruptFileError: The call's existing index entry is corrupt; it is
                not overwritten.
            LockTimeoutError: The database lock was not acquired in time.
            ValueError: As for :meth:`get_or_create`.
        """
        self._ensure_layout()
        with self._db_lock:
            try:
                index.read_entry(index.entry_path(self.root, key.digest), key.digest)
            except FileNotFoundError:
                pass
            return self._create_locked(key, make_record, files)

    def save(self, record: JobRecord) -> JobRecord:
        """Store an updated record of an existing job, under the job's lock.

        Args:
            record: The new state, e.g. ``dataclasses.replace(record, status="running")``.

        Returns:
            The stored record: ``record`` with ``updated_at`` set to now.

        Raises:
            JobNotFoundError: The job does not exist (any more).
            CorruptFileError: The stored ``job.json`` is corrupt; it is not overwritten.
            ValueError: ``record`` is for another call than the stored job.
            LockTimeoutError: The job's lock was not acquired in time.

        Notes:
            ``save`` replaces the whole record; when several processes update the
            same job, use :meth:`update`, which reads and writes under the lock.
        """
        if not isinstance(record, JobRecord):
            raise TypeError(f"save() takes a JobRecord, not {type(record).__name__}")
        with self._job_lock(record.job_name):
            current = self.load(record.job_name)
            if current.key_digest != record.key_digest:
                raise ValueError(
                    f"this record ({record.describe()}) cannot replace job {record.job_name}, "
                    f"which is for {current.describe()}"
                )
            return self._write_record(dataclasses.replace(record, updated_at=utc_now()))

    def update(self, job_name: str, **changes: Any) -> JobRecord:
        """Change some fields of a job's record, atomically with respect to other updates.

        Args:
            job_name: e.g. ``"12_simulate"``.
            **changes: New field values, e.g. ``status="completed", n_successful=100``.

        Returns:
            The stored record (``updated_at`` set to now).

        Raises:
            JobNotFoundError: The job does not exist.
            CorruptFileError: The stored ``job.json`` is corrupt; it is not overwritten.
            ValueError: A change is invalid, or names an unknown or fixed field.
            LockTimeoutError: The job's lock was not acquired in time.
        """
        fixed = {"job_name", "key_digest", "function", "call", "arguments", "arguments_order", "N_runs",
                 "average_results"}
        fields = {f.name for f in dataclasses.fields(JobRecord)}
        if bad := sorted(set(changes) & fixed):
            raise ValueError(f"cannot change {', '.join(bad)} of a job: they identify its call")
        if unknown := sorted(set(changes) - fields):
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; fields are: {', '.join(sorted(fields - fixed))}")
        with self._job_lock(job_name):
            current = self.load(job_name)
            return self._write_record(dataclasses.replace(current, **changes, updated_at=utc_now()))

    def remove(self, job_name: str) -> None:
        """Delete a job: its index entry first, then its folder.

        Args:
            job_name: e.g. ``"12_simulate"``.

        Raises:
            JobNotFoundError: No such job.
            LockTimeoutError: A lock was not acquired in time.

        Notes:
            The index entry is removed only if it names this job (after a forced
            resubmission it names the newer one). If ``job.json`` is unreadable
            the folder is removed anyway and a stale index entry, if any, is
            treated as absent by :meth:`lookup`.
        """
        job_dir = self.job_dir(job_name)
        if not job_dir.is_dir():
            raise JobNotFoundError(job_name, self.root)
        self._ensure_layout()
        with self._db_lock, self._job_lock(job_name):
            if not job_dir.is_dir():
                raise JobNotFoundError(job_name, self.root)
            try:
                digest: str | None = self._read_record(job_name).key_digest
            except (FileNotFoundError, CorruptFileError):
                digest = None
            if digest is not None:
                entry_path = index.entry_path(self.root, digest)
                try:
                    if index.read_entry(entry_path, digest) == job_name:
                        os.unlink(entry_path)
                except (FileNotFoundError, CorruptFileError):
                    pass
            # Renamed first, so that nobody sees a half-deleted job folder.
            doomed = self.root / f"{_REMOVING_PREFIX}{job_name}-{secrets.token_hex(4)}"
            os.rename(job_dir, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    # --------------------------------------------------------------- internals

    def _check_directory(self) -> None:
        """Fail now, naming the fix, if the database cannot live in ``path``."""
        if not self.path.exists():
            raise ValueError(f"job database path {self.path} does not exist; create it or pass an existing directory")
        if not self.path.is_dir():
            raise ValueError(f"job database path {self.path} is not a directory; pass a directory")
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"{self.root} is a file, not a job database folder; move it away")

    @property
    def writable(self) -> bool:
        """Whether this user may change the database (reading needs no write access)."""
        target = self.root if self.root.exists() else self.path
        return os.access(target, os.W_OK | os.X_OK)

    def check_writable(self, action: str = "change it") -> None:
        """Raise :class:`ReadOnlyDatabaseError` naming ``action`` if the database is read-only."""
        if not self.writable:
            target = self.root if self.root.exists() else self.path
            raise ReadOnlyDatabaseError(
                f"cannot {action}: the job database {target} is read-only for this user "
                "(reading results, list and show work; to submit or change jobs, use a copy you can write "
                "or fix the folder's permissions)"
            )

    def _ensure_layout(self) -> None:
        """Create the database folders if missing (checked on every write: a user
        may delete ``.parallelaverage`` to start afresh while this object lives)."""
        self.check_writable()
        for folder in (self.root / index.INDEX_DIRNAME, self.root / "locks" / "jobs"):
            if not os.path.isdir(folder):
                os.makedirs(self.root, mode=_DIR_MODE, exist_ok=True)
                os.makedirs(folder, mode=_DIR_MODE, exist_ok=True)

    def _lock(self, path: Path) -> DatabaseLock:
        return DatabaseLock(path, soft=self.soft_locks, timeout_s=self.lock_timeout_s, warn_after_s=self.lock_warn_s)

    def _job_lock(self, job_name: str) -> DatabaseLock:
        self.job_dir(job_name)  # validates the name before it becomes a path
        self._ensure_layout()
        return self._lock(self.root / "locks" / "jobs" / f"{job_name}.lock")

    def _read_record(self, job_name: str) -> JobRecord:
        """The record in a job folder; FileNotFoundError if it has none."""
        # os.path rather than pathlib: this runs once per job when listing.
        path = os.path.join(self._root_str, job_name, JOB_FILENAME)
        record = JobRecord.from_json(read_json(path), path)
        if record.job_name != job_name:
            raise CorruptFileError(
                path, f"describes job {record.job_name!r} but lies in folder {job_name!r} (copied from elsewhere?)"
            )
        return record

    def _write_record(self, record: JobRecord) -> JobRecord:
        atomic_write_json(self.root / record.job_name / JOB_FILENAME, record.to_json())
        return record

    def _create_locked(
        self, key: CallKey, make_record: Callable[[str], JobRecord], files: Mapping[str, bytes] | None
    ) -> JobRecord:
        """Create a job; the caller holds the database lock."""
        number = index.read_counter(self.root)
        while os.path.lexists(self.root / f"{number}_{key.name}"):
            number += 1
        record = make_record(f"{number}_{key.name}")
        self._check_new_record(record, key, f"{number}_{key.name}")
        files = dict(files or {})
        for name in files:
            parts = name.split("/") if isinstance(name, str) else [""]
            if name == JOB_FILENAME or any(part in ("", ".", "..") or os.sep in part for part in parts):
                raise ValueError(f"file name {name!r}: must be a relative path of plain names, "
                                 f"other than {JOB_FILENAME}")

        # Stage the folder under a hidden name, so that it appears complete.
        staging = self.root / f"{_STAGING_PREFIX}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(staging, _DIR_MODE)
        try:
            for name, content in files.items():
                target = staging.joinpath(*name.split("/"))
                target.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                atomic_write_bytes(target, content)
            while True:
                atomic_write_json(staging / JOB_FILENAME, record.to_json())
                # Reserve the index before the folder appears: a crash then leaves
                # a gap in the numbering, never two jobs with one number.
                index.write_counter(self.root, record.index + 1)
                try:
                    os.rename(staging, self.root / record.job_name)
                    break
                except OSError as exc:
                    # Only without a working lock: someone else took this name.
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    name = f"{record.index + 1}_{key.name}"
                    logger.warning("job folder %s appeared meanwhile; using %s", record.job_name, name)
                    record = dataclasses.replace(record, job_name=name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        index.append_digests(self.root, [(record.job_name, key.digest)], dir_mode=_DIR_MODE)
        # Last: only now can lookups find the job.
        index.write_entry(self.root, key, record.job_name, dir_mode=_DIR_MODE)
        return record

    @staticmethod
    def _check_new_record(record: Any, key: CallKey, job_name: str) -> None:
        if not isinstance(record, JobRecord):
            raise TypeError(f"make_record must return a JobRecord, not {type(record).__name__}")
        if record.job_name != job_name or record.key_digest != key.digest:
            raise ValueError(
                f"make_record returned a record for job {record.job_name!r} / key {record.key_digest[:12]}...; "
                f"it must use the job name it is given ({job_name!r}) and key.digest ({key.digest[:12]}...)"
            )
