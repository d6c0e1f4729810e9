"""The job list as the viewer sees it: one summary per job, cached by ``job.json`` stamp.

:meth:`JobDatabase.jobs` reads and validates every ``job.json`` (45-90 µs each, about
0.5-0.9 s at 10,000 jobs), too slow to repeat every two seconds for every open page,
or to make someone wait for before they see anything. So the catalog

* reads the records once, **newest first**, in a background thread started with the
  server; the first page (the newest jobs, unfiltered) is answered as soon as its
  jobs are read, while the rest load (the answer then says ``"loading"``);
* afterwards re-reads a ``job.json`` only when its stamp changed (mtime, size and
  inode: records are replaced by rename, so the inode changes too): a refresh costs
  one ``stat`` per job (about 7 µs), at most once per ``refresh_interval_s``;
* keeps the jobs matching recent filters, with their filter values, until a record
  changes (:attr:`Catalog.version`), so that polling the same page is cheap.

Running jobs are refreshed more deeply on demand (:meth:`Catalog.refresh_live`): their
runs are counted from the snapshot files, as a call of the function would, which also
stores the new counts in their ``job.json``.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter, methodcaller
from typing import Any

from parallelaverage.jobdb import CorruptFileError, JobDatabase, JobNotFoundError, JobRecord

__all__ = ["ACTIVE_STATUSES", "Catalog", "JobQuery", "summarize"]

logger = logging.getLogger("parallelaverage.viewer")

#: Statuses of jobs whose runs may still change; the viewer follows their progress.
ACTIVE_STATUSES = frozenset({"created", "submitted", "running"})

#: Most jobs one list request returns.
MAX_LIMIT = 1000
#: Most distinct values per parameter reported for the filter menus.
MAX_FACET_VALUES = 200
#: Filtered job lists kept for repeated requests.
_CACHED_QUERIES = 16

_Stamp = tuple[int, int, int]


def summarize(record: JobRecord) -> dict[str, Any]:
    """The JSON summary of a job shown in the list.

    Returns:
        Plain JSON data: name, call, arguments (with their order), status,
        counts of runs and times.
    """
    n_runs = record.N_runs
    return {
        "job_name": record.job_name,
        "index": record.index,
        "function": record.function,
        "name": record.function.rsplit(".", 1)[-1],
        "call": record.call,
        "arguments": dict(record.arguments),
        "parameters": tuple(record.arguments_order),
        "N_runs": n_runs,
        "total_runs": n_runs if isinstance(n_runs, int) else math.prod(n_runs),
        "averaged": record.average_results != "keep",
        "status": record.status,
        "active": record.status in ACTIVE_STATUSES,
        "submitted_at": record.submitted_at,
        "updated_at": record.updated_at,
        "n_successful": record.n_successful,
        "n_failed": record.n_failed,
        "n_not_ready": record.n_not_ready,
        "queue": record.queue,
        "queue_job_id": record.queue_job_id,
    }


def has_warnings(summary: Mapping[str, Any]) -> bool:
    """Failed runs, or runs missing from a job that no longer runs."""
    return summary["n_failed"] > 0 or (summary["n_not_ready"] > 0 and not summary["active"])


@dataclass(frozen=True)
class JobQuery:
    """Which jobs a list request asks for, and which page of them.

    Attributes:
        function: Qualified function name, or None for every function.
        statuses: Accepted statuses; empty accepts all.
        arguments: ``(parameter, accepted readable values)`` pairs; a job must
            match every pair (any of the values of each).
        warnings_only: Only jobs with failed runs, or missing runs once ended.
        offset: Jobs to skip, newest first.
        limit: Jobs to return at most.
    """

    function: str | None = None
    statuses: frozenset[str] = frozenset()
    arguments: tuple[tuple[str, frozenset[str]], ...] = ()
    warnings_only: bool = False
    offset: int = 0
    limit: int = 100

    @classmethod
    def from_params(cls, params: Mapping[str, list[str]]) -> JobQuery:
        """Read a query from URL parameters.

        ``function=NAME``, ``status=A,B``, ``arg.NAME=VALUE`` (repeat for several
        accepted values), ``warnings=1``, ``offset=N``, ``limit=N``.

        Raises:
            ValueError: ``offset`` or ``limit`` is not a valid count; the message says which.
        """
        def count(name: str, default: int, low: int, high: int) -> int:
            text = params.get(name, [str(default)])[-1]
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{name}={text!r}: must be an integer from {low} to {high}") from None
            if not low <= value <= high:
                raise ValueError(f"{name}={value}: must be from {low} to {high}")
            return value

        statuses = frozenset(s for text in params.get("status", []) for s in text.split(",") if s)
        arguments: dict[str, set[str]] = {}
        for key, values in params.items():
            if key.startswith("arg.") and len(key) > 4:
                arguments.setdefault(key[4:], set()).update(values)
        return cls(
            function=params.get("function", [""])[-1] or None,
            statuses=statuses,
            arguments=tuple(sorted((name, frozenset(values)) for name, values in arguments.items())),
            warnings_only=params.get("warnings", ["0"])[-1] in ("1", "true", "yes"),
            offset=count("offset", 0, 0, 10**9),
            limit=count("limit", 100, 1, MAX_LIMIT),
        )

    @property
    def filters(self) -> tuple[Any, ...]:
        """The query without its paging: what decides which jobs match."""
        return (self.function, self.statuses, self.arguments, self.warnings_only)

    @property
    def filtered(self) -> bool:
        return bool(self.function or self.statuses or self.arguments or self.warnings_only)

    def matches(self, summary: Mapping[str, Any]) -> bool:
        if self.function is not None and summary["function"] != self.function:
            return False
        if self.statuses and summary["status"] not in self.statuses:
            return False
        arguments = summary["arguments"]
        for name, values in self.arguments:
            if arguments.get(name) not in values:
                return False
        return not self.warnings_only or has_warnings(summary)


@dataclass
class _Entry:
    stamp: _Stamp
    summary: dict[str, Any] | None  # None: unreadable, see problem
    problem: str | None = None


def facets_of(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per parameter of these jobs, in signature order: its distinct values with counts,
    most common first (at most :data:`MAX_FACET_VALUES`)."""
    orders = dict.fromkeys(map(itemgetter("parameters"), summaries))
    names = dict.fromkeys(name for order in orders for name in order)
    arguments = list(map(itemgetter("arguments"), summaries))
    facets = []
    for name in names:
        counter = collections.Counter(map(methodcaller("get", name), arguments))
        counter.pop(None, None)
        facets.append({"name": name, "distinct": len(counter),
                       "values": [[value, n] for value, n in counter.most_common(MAX_FACET_VALUES)]})
    return facets


class Catalog:
    """Summaries of every job of a database, kept up to date cheaply.

    Safe to use from several threads (one per HTTP request).

    Args:
        db: The database to show.
        refresh_interval_s: Look for changed ``job.json`` files at most this often.
        live_interval_s: Recount the runs of one running job at most this often.
        live_budget_s: Time one :meth:`refresh_live` call may spend recounting.
    """

    def __init__(self, db: JobDatabase, *, refresh_interval_s: float = 1.0,
                 live_interval_s: float = 2.0, live_budget_s: float = 0.5) -> None:
        self.db = db
        self.refresh_interval_s = refresh_interval_s
        self.live_interval_s = live_interval_s
        self.live_budget_s = live_budget_s
        self.version = 0  # changes whenever a summary does
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._order: list[dict[str, Any]] = []
        self._positions: dict[str, int] = {}
        self._problems: list[dict[str, str]] = []
        self._refreshed_at = -math.inf
        self._queries: collections.OrderedDict[tuple[Any, ...], tuple[int, list[dict[str, Any]], list[dict[str, Any]]]]
        self._queries = collections.OrderedDict()
        self._functions: tuple[int, list[dict[str, Any]]] = (-1, [])
        # The first load: newest first, its progress visible to requests.
        self._loaded = threading.Event()
        self._load_lock = threading.Lock()
        self._progress = threading.Condition()
        self._prefix: list[dict[str, Any]] = []
        self._expected = 0
        self._live_lock = threading.Lock()
        self._live_at: dict[str, float] = {}
        self._samples: dict[str, collections.deque[tuple[float, int]]] = {}
        self._reported: dict[str, str] = {}

    # ------------------------------------------------------------- loading

    def load(self) -> None:
        """Read every job's record, newest first (the server runs this in a thread at start).

        Requests for the newest jobs are answered while it runs (see :meth:`page`);
        others wait for it. Calling it again does nothing.
        """
        with self._load_lock:
            if self._loaded.is_set():
                return
            try:
                names = self._job_folders()[::-1]  # newest first
                self._expected = len(names)
                entries: dict[str, _Entry] = {}
                for count, name in enumerate(names, 1):
                    entry = self._read(name)
                    if entry is None:
                        continue
                    entries[name] = entry
                    if entry.summary is not None:
                        self._prefix.append(entry.summary)
                    if count % 50 == 0:
                        with self._progress:
                            self._progress.notify_all()
                with self._lock:
                    self._entries = entries
                    self._rebuild()
                    self._refreshed_at = time.monotonic()
            finally:
                self._loaded.set()
                with self._progress:
                    self._progress.notify_all()
                self._prefix = []

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the ``job.json`` files that changed, unless done very recently."""
        if not self._loaded.is_set():
            self.load()
            return
        with self._lock:
            if not force and time.monotonic() - self._refreshed_at < self.refresh_interval_s:
                return
            self._scan()
            self._refreshed_at = time.monotonic()

    # ------------------------------------------------------------- the list

    def summaries(self) -> list[dict[str, Any]]:
        """Every readable job's summary, newest first (do not modify them)."""
        self.refresh()
        return self._order

    def problems(self) -> list[dict[str, str]]:
        """One ``{"job_name", "problem"}`` per job folder whose ``job.json`` is unreadable."""
        self.refresh()
        return self._problems

    def functions(self) -> list[dict[str, Any]]:
        """Per function: its number of jobs, by status, running and with warnings.

        Returns:
            Sorted by short name, then qualified name.
        """
        version, summaries = self._snapshot()
        cached_version, cached = self._functions
        if cached_version == version:
            return cached
        groups: dict[str, dict[str, Any]] = {}
        for summary in summaries:
            group = groups.get(summary["function"])
            if group is None:
                group = groups[summary["function"]] = {
                    "function": summary["function"], "name": summary["name"], "jobs": 0,
                    "active": 0, "with_warnings": 0, "statuses": {}, "newest": summary["job_name"],
                }
            group["jobs"] += 1
            group["active"] += summary["active"]
            group["with_warnings"] += has_warnings(summary)
            group["statuses"][summary["status"]] = group["statuses"].get(summary["status"], 0) + 1
        result = sorted(groups.values(), key=lambda g: (g["name"], g["function"]))
        self._functions = (version, result)
        return result

    def page(self, query: JobQuery) -> dict[str, Any]:
        """The jobs matching a query: one page of them, the total, and filter values.

        Returns:
            ``{"total", "offset", "limit", "jobs", "facets"}`` where ``facets`` lists,
            per parameter of the matching jobs, its distinct values with counts.
            While the first load runs, an unfiltered request for the newest jobs is
            answered from the jobs read so far, with ``"loading": {"read", "of"}``
            (``total`` then counts job folders; ``facets`` covers the page only).
        """
        if not self._loaded.is_set() and self._load_lock.locked() and not query.filtered:
            early = self._early_page(query)
            if early is not None:
                return early
        matching, facets = self._matching(query)
        jobs = [self._with_progress(s) for s in matching[query.offset : query.offset + query.limit]]
        return {"total": len(matching), "offset": query.offset, "limit": query.limit, "jobs": jobs, "facets": facets}

    def put(self, record: JobRecord) -> dict[str, Any]:
        """Store a record just read or written (e.g. by :meth:`Job.state`); return its summary."""
        summary = summarize(record)
        try:
            stamp = self.db.record_stamp(record.job_name) or (-1, -1, -1)  # none: read again on the next refresh
        except OSError:
            stamp = (-1, -1, -1)
        with self._lock:
            old = self._entries.get(record.job_name)
            if old is not None and old.summary == summary:
                self._entries[record.job_name] = _Entry(stamp, old.summary)
                return old.summary
            self._entries[record.job_name] = _Entry(stamp, summary)
            position = self._positions.get(record.job_name)
            if old is not None and old.summary is not None and position is not None:
                self._order[position] = summary  # same index, same place: no re-sort
                self.version += 1
            else:
                self._rebuild()
        return summary

    # ------------------------------------------------------- running jobs

    def _prefetch(self, names: list[str]) -> None:
        """One queue query for every due job that may be running (SLURM: one squeue)."""
        from parallelaverage.job import Job, prefetch_states  # the job layer, loaded only once needed

        jobs = []
        for name in names:
            try:
                record = self.db.load(name)
            except Exception:  # reported by the per-job update that follows
                continue
            if record.status in ACTIVE_STATUSES:
                jobs.append(Job(self.db, record))
        prefetch_states(jobs)

    def refresh_live(self, job_names: Iterable[str]) -> None:
        """Recount the runs of these jobs if they are still active.

        Each job at most every ``live_interval_s``; the ones waiting longest
        first; stops after ``live_budget_s`` (the rest wait for the next call).
        Errors (a corrupt snapshot, a lock held too long) are logged and skipped:
        the list shows the last known counts.
        """
        from parallelaverage.job import Job  # the job layer, loaded only once needed

        started = time.monotonic()
        with self._live_lock:
            due = [n for n in job_names if started - self._live_at.get(n, -math.inf) >= self.live_interval_s]
            due.sort(key=lambda n: self._live_at.get(n, -math.inf))
        self._prefetch(due)
        for name in due:
            if time.monotonic() - started > self.live_budget_s:
                break
            with self._live_lock:
                self._live_at[name] = time.monotonic()
            try:
                record = self.db.load(name)
                if record.status not in ACTIVE_STATUSES:
                    self.put(record)
                    continue
                job = Job(self.db, record)
                state = job.state()
            except Exception as error:  # any failure of one job must not break the list
                message = f"{type(error).__name__}: {error}"
                if self._reported.get(name) != message:  # once, not at every poll
                    self._reported[name] = message
                    logger.warning("could not update the progress of job %s: %s", name, message)
                continue
            self._sample(name, len(state.successful) + len(state.failed))
            self.put(job.record)

    def _sample(self, name: str, finished: int) -> None:
        with self._live_lock:
            samples = self._samples.setdefault(name, collections.deque(maxlen=120))
            samples.append((time.monotonic(), finished))

    def _with_progress(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The summary with the rate (runs/s) and ETA seen by this viewer, if running."""
        if not summary["active"]:
            return summary
        rate = None
        with self._live_lock:
            samples = self._samples.get(summary["job_name"])
            if samples and len(samples) > 1:
                (t0, n0), (t1, n1) = samples[0], samples[-1]
                if t1 - t0 > 1.0:
                    rate = (n1 - n0) / (t1 - t0)
        remaining = summary["n_not_ready"]
        eta = remaining / rate if rate and remaining else None
        return {**summary, "rate_per_s": rate, "eta_s": eta}

    # ---------------------------------------------------------- internals

    def _early_page(self, query: JobQuery) -> dict[str, Any] | None:
        """The newest jobs while the first load runs, once enough are read; else None."""
        wanted = query.offset + query.limit
        with self._progress:
            self._progress.wait_for(lambda: self._loaded.is_set() or len(self._prefix) >= wanted
                                    or len(self._prefix) >= self._expected > 0)
            if self._loaded.is_set():
                return None
            prefix = self._prefix[:wanted]
            read, expected = len(self._prefix), self._expected
        jobs = prefix[query.offset :]
        return {"total": expected, "offset": query.offset, "limit": query.limit, "jobs": jobs,
                "facets": facets_of(jobs), "loading": {"read": read, "of": expected}}

    def _matching(self, query: JobQuery) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The summaries matching a query's filters and their facets, cached per version."""
        version, summaries = self._snapshot()
        key = query.filters
        with self._lock:
            cached = self._queries.get(key)
            if cached is not None and cached[0] == version:
                self._queries.move_to_end(key)
                return cached[1], cached[2]
        matching = [s for s in summaries if query.matches(s)] if query.filtered else summaries
        facets = facets_of(matching)
        with self._lock:
            self._queries[key] = (version, matching, facets)
            self._queries.move_to_end(key)
            while len(self._queries) > _CACHED_QUERIES:
                self._queries.popitem(last=False)
        return matching, facets

    def _snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        """The current version and summaries, taken together (after a refresh if due)."""
        self.refresh()
        with self._lock:
            return self.version, self._order

    def _job_folders(self) -> list[str]:
        return self.db.job_names()

    def _read(self, name: str, old: _Entry | None = None) -> _Entry | None:
        """The entry of one job folder: ``old`` if its ``job.json`` did not change,
        None if the folder is gone."""
        try:
            stamp = self.db.record_stamp(name)
        except OSError as error:
            return _Entry((0, 0, 0), None, str(error))
        if stamp is None:
            if not self.db.job_dir(name).is_dir():
                return None
            stamp = (0, 0, 0)  # a folder without job.json: load() says what is wrong
        if old is not None and old.stamp == stamp:
            return old
        # stamped before reading: a record replaced in between is read again next time.
        try:
            return _Entry(stamp, summarize(self.db.load(name)))
        except JobNotFoundError:
            return None
        except (CorruptFileError, ValueError, OSError) as error:
            return _Entry(stamp, None, str(error))

    def _scan(self) -> None:
        """Stat every ``job.json``; read those that changed. Caller holds the lock."""
        entries: dict[str, _Entry] = {}
        changed = False
        for name in self._job_folders():
            old = self._entries.get(name)
            entry = self._read(name, old)
            if entry is not None:
                entries[name] = entry
            changed = changed or entry is not old
        if changed or len(entries) != len(self._entries):
            self._entries = entries
            self._rebuild()

    def _rebuild(self) -> None:
        summaries = [e.summary for e in self._entries.values() if e.summary is not None]
        summaries.sort(key=lambda s: (s["index"], s["submitted_at"]), reverse=True)
        self._order = summaries
        self._positions = {s["job_name"]: i for i, s in enumerate(summaries)}
        self._problems = sorted(
            ({"job_name": name, "problem": e.problem or ""} for name, e in self._entries.items() if e.summary is None),
            key=lambda p: p["job_name"],
        )
        self.version += 1
