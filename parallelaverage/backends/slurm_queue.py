"""What this process asks the SLURM controller about its jobs, and how rarely.

One :class:`QueueWatcher` per process (as submitit's ``InfoWatcher``) answers every
question about SLURM launches — ``wait()``, decorated calls, the command line, the
viewer — from three sources, cheapest first:

1. **The launch's own files.** ``attempts/<k>/exit_code`` 0 with the launch's result
   (written by the job script after its last life) says that the launch has ended;
   ``attempts/<k>/slurm_state`` holds a terminal state seen before. No question. (Another
   exit status is only a hint: SLURM may requeue the job and run another life of it.)
2. **The ranks' status records** (:mod:`parallelaverage.jobfiles.rankstatus`). A rank
   that published its counts (every 0.25 s while runs end), wrote a snapshot or started
   less than :attr:`QueueWatcher.progress_fresh_s` ago — or whose process is seen alive
   on this host — vouches that the launch runs, unless another rank shows an end (a
   final stage, a process seen gone): :func:`ranks_vouch`. No question.
3. **One ``squeue --me`` listing** of all this user's jobs (``--user=UID`` for a launch
   another user submitted), shared by every launch of the process. It is taken only
   when a launch nothing else vouches for (pending, starting, silent, ending without
   its ``exit_code``) is *due*: the first look 2 s after its submission, then at ages
   4, 8, 16, 32 s... — each wait half the launch's age in question, at least
   :attr:`~QueueWatcher.first_look_s`, at most :attr:`~QueueWatcher.longest_wait_s` —
   and never twice within ``first_look_s``. A launch a listing taken after its
   submission does not show has ended (SLURM forgets finished jobs after
   ``MinJobAge``); one it shows in a terminal state has ended too.

Why ``squeue --me``: for a user other than root, it is one ``REQUEST_JOB_USER_INFO``
RPC (the controller packs only that user's jobs), where ``squeue --jobs=a,b,c`` is a
``REQUEST_JOB_INFO``, the whole job table (``sdiag`` shows both); each call also makes
a ``REQUEST_PARTITION_INFO`` and a ``REQUEST_FED_INFO``. (Run as root, ``--me`` is a
whole-table dump too: squeue takes uid 0 for "no user".) ``sacct`` is not needed: the
files say how a launch ended, and a listing says whether it is still queued.

The same listing counts the user's queued and running jobs, for the submit limits
(``MaxSubmitJobs``, see :mod:`parallelaverage.backends.slurm_limits`).
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.jobfiles.rankstatus import FINAL_STAGES, read_rank_status
from parallelaverage.errors import warn

__all__ = ["QueueWatcher", "JobRow", "Listing", "ranks_vouch", "RUNNING_STATES", "TERMINAL_STATES"]

RUNNING_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING",
    "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT",
    "SPECIAL_EXIT", "POWER_UP_NODE", "UPDATE_DB",
})
"""States of a job that may still run (or is still cleaning up its processes)."""

TERMINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "REVOKED", "TIMEOUT",
})
"""States of a job whose processes are all gone for good: cached, never asked again."""

_COVER_MARGIN_S = 2.0
"""A listing covers a launch another process submitted only if taken this long after
its ``launch.json`` was written (the file server's clock may differ from ours)."""


@dataclass(frozen=True)
class JobRow:
    """One job of a listing: its SLURM state, pending reason, account and QOS."""

    state: str
    reason: str = ""
    account: str = ""
    qos: str = ""

    @property
    def active(self) -> bool:
        """Queued or running: what a submit limit counts."""
        return self.state not in TERMINAL_STATES


@dataclass
class Listing:
    """What one ``squeue`` call said about one user's jobs."""

    jobs: dict[str, JobRow]
    taken_wall: float  # time.time() when the call started: it knows every job submitted before
    taken_at: float  # the same moment, monotonic
    tried_at: float  # the last call, monotonic (a failed one too)
    retry_after: float = -math.inf  # after a failed call: not before this (monotonic)
    failures: int = 0


@dataclass
class _Watched:
    """What the watcher remembers of one launch."""

    files: JobFiles
    launch_no: int
    job_id: str
    uid: int
    covered_after_wall: float  # a listing taken after this (time.time()) shows the job if it is queued
    question_since: float | None  # monotonic: since when nothing but squeue can answer; None: vouched
    looked_at: float = -math.inf  # the last read of its ranks' records (monotonic)
    vouched: bool = False
    own: bool = False  # submitted by this process
    ended: bool = False  # known to have ended (own launches are kept for the count until a listing shows it)


def ranks_vouch(files: JobFiles, launch_no: int, now_wall: float, fresh_s: float) -> bool:
    """Whether the launch's ranks say it runs: one of them shows life — its process runs
    (seen on this host), or, on another host, it wrote something less than ``fresh_s``
    ago — and none shows an end: a rank in a final stage (finished, stopped by a
    signal...) or whose process is gone (seen on this host) means the launch is ending,
    or that SLURM ended it (a time limit, ``scancel``, a node that failed), which only
    ``squeue`` can tell."""
    life = False
    for rank, path in files.rank_statuses(launch_no):
        info = read_rank_status(path, rank)
        if info is None:
            continue  # not started yet
        if info.stage in FINAL_STAGES:
            return False
        alive = info.alive()
        if alive is False:
            return False
        if alive is True:
            life = True
        elif not life:
            last = info.last_sign_at
            life = last is not None and now_wall - last < fresh_s
    return life


class QueueWatcher:
    """The process's view of its SLURM jobs (see the module docstring for the policy).

    Args:
        list_jobs: asks the controller for one user's jobs (``squeue --me`` for ours):
            ``{job id: JobRow}``; raises RuntimeError when the controller cannot be asked.
        cache_state: records a terminal state in the launch's folder (``slurm_state``).
        cached_state: the terminal state recorded for a launch, if any.
        clock, wall: monotonic and wall clocks (tests pass fakes).
        finished: whether a launch's files alone say it is over (default: its
            ``exit_code`` file exists).
    """

    first_look_s: float = 2.0
    """The first question about a new launch comes this long after its submission; no
    two ``squeue`` calls come closer together."""
    longest_wait_s: float = 60.0
    """The longest wait between two questions about a launch."""
    progress_fresh_s: float = 60.0
    """A rank on another host that wrote its status this recently vouches for its launch
    (its counts are published every 0.25 s while runs end; a run longer than this
    leaves the launch to ``squeue``). NFS clients may see a rank's writes ~30 s late."""
    look_s: float = 2.0
    """A launch's rank records are read at most this often (the caller's own reading of
    them, for its progress, is apart)."""

    def __init__(self, list_jobs: Callable[[int], dict[str, JobRow]],
                 cache_state: Callable[[JobFiles, int, str, JobRow], None],
                 cached_state: Callable[[JobFiles, int, str], str | None], *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 finished: Callable[[JobFiles, int], bool] | None = None) -> None:
        self._list_jobs, self._cache_state, self._cached_state = list_jobs, cache_state, cached_state
        self._finished = finished or (lambda files, launch_no: files.exit_code(launch_no).exists())
        self._clock, self._wall = clock, wall
        self._lock = threading.RLock()
        self._listings: dict[int, Listing] = {}
        self._watched: dict[tuple[str, int], _Watched] = {}  # (job dir, launch) -> record
        self.calls = 0
        """``squeue`` calls made (for tests and benchmarks)."""

    # ------------------------------------------------------------------ launches
    def submitted(self, files: JobFiles, launch_no: int, job_id: str) -> None:
        """A launch this process has just submitted: first question after :attr:`first_look_s`."""
        with self._lock:
            now, wall = self._clock(), self._wall()
            self._watched[(str(files.dir), launch_no)] = _Watched(
                files, launch_no, job_id, os.getuid(), covered_after_wall=wall, question_since=now, own=True)

    def ended(self, files: JobFiles, launch_no: int) -> None:
        """The launch is known to have ended (its files, a terminal state, ``scancel``)."""
        with self._lock:
            key = (str(files.dir), launch_no)
            record = self._watched.get(key)
            if record is not None and record.own:
                record.ended = True  # still counted as queued by the last listing: see active_jobs
            else:
                self._watched.pop(key, None)

    def states(self, launches: Sequence[tuple[JobFiles, int, Mapping[str, Any]]]) -> list[str]:
        """``"running"`` or ``"ended"`` per launch, asking ``squeue`` only when a launch is due.

        Raises:
            RuntimeError: ``squeue`` failed and this process has never had an answer for
                that user (a later failure keeps the last answers, with a warning).
        """
        with self._lock:
            now, wall = self._clock(), self._wall()
            result = ["ended"] * len(launches)
            due: dict[int, list[int]] = {}
            watched: dict[int, _Watched] = {}
            for index, (files, launch_no, info) in enumerate(launches):
                job_id = str(info.get("job_id", ""))
                if self._finished(files, launch_no) or self._cached_state(files, launch_no, job_id) is not None:
                    self.ended(files, launch_no)
                    continue
                record = self._record(files, launch_no, job_id, now, wall)
                watched[index] = record
                if record.ended or self._from_listing(record) == "ended":
                    self.ended(files, launch_no)
                    continue
                result[index] = "running"
                if now - record.looked_at >= self.look_s:
                    record.looked_at = now
                    record.vouched = ranks_vouch(files, launch_no, wall, self.progress_fresh_s)
                    if record.vouched:
                        record.question_since = None
                    elif record.question_since is None:
                        record.question_since = now  # silent from now on: squeue, with a fresh back-off
                if record.vouched:
                    continue
                if self._due(record, now):
                    due.setdefault(record.uid, []).append(index)
            for uid, indices in due.items():
                if not self._refresh(uid):
                    continue
                for index in indices:
                    record = watched[index]
                    if self._from_listing(record) == "ended":
                        self.ended(record.files, record.launch_no)
                        result[index] = "ended"
            return result

    def _record(self, files: JobFiles, launch_no: int, job_id: str, now: float, wall: float) -> _Watched:
        key = (str(files.dir), launch_no)
        record = self._watched.get(key)
        if record is not None and record.job_id == job_id:
            return record
        try:  # launch.json is written right after sbatch answered, by the user who submitted
            stat = files.launch(launch_no).stat()
            submitted_wall, uid = stat.st_mtime, stat.st_uid
        except OSError:  # a launch found again by its name (its maker died): as old as can be
            submitted_wall, uid = 0.0, os.getuid()
        record = _Watched(files, launch_no, job_id, uid, covered_after_wall=submitted_wall + _COVER_MARGIN_S,
                          question_since=now - max(0.0, wall - submitted_wall))
        self._watched[key] = record
        return record

    def _from_listing(self, record: _Watched) -> str | None:
        """``"ended"``/``"running"`` from the user's last listing, None if it was taken
        before the launch was submitted (it cannot know the job)."""
        listing = self._listings.get(record.uid)
        if listing is None or listing.taken_wall < record.covered_after_wall:
            return None
        row = listing.jobs.get(record.job_id)
        if row is None:
            return "ended"  # finished long ago (purged after MinJobAge), or cancelled before it ran
        if row.state in TERMINAL_STATES:
            self._cache_state(record.files, record.launch_no, record.job_id, row)
            return "ended"
        return "running"

    def _due(self, record: _Watched, now: float) -> bool:
        listing = self._listings.get(record.uid)
        if listing is not None and (now - listing.tried_at < self.first_look_s or now < listing.retry_after):
            return False
        since = record.question_since if record.question_since is not None else now
        wait_s = min(self.longest_wait_s, max(self.first_look_s, (now - since) / 2))
        last = listing.taken_at if listing is not None and listing.taken_wall >= record.covered_after_wall \
            else -math.inf
        return now - max(last, since) >= wait_s

    def _refresh(self, uid: int) -> bool:
        """Ask for the user's jobs; False when it failed (the last answers stand)."""
        now, wall = self._clock(), self._wall()
        old = self._listings.get(uid)
        self.calls += 1
        try:
            jobs = self._list_jobs(uid)
        except RuntimeError as error:
            if old is None:
                raise
            old.tried_at = now
            old.failures += 1
            pause_s = min(self.longest_wait_s, self.first_look_s * 2 ** old.failures)
            old.retry_after = now + pause_s
            if old.failures == 1:
                warn(f"{error}\nthe SLURM jobs are taken as still running; asking again in {pause_s:g} s",
                     RuntimeWarning)
            return False
        self._listings[uid] = Listing(jobs, taken_wall=wall, taken_at=now, tried_at=now)
        for key, record in list(self._watched.items()):  # ended launches this listing knows as ended
            if record.ended and record.uid == uid and wall >= record.covered_after_wall \
                    and (record.job_id not in jobs or not jobs[record.job_id].active):
                del self._watched[key]
        return True

    # ------------------------------------------------------------------ counting
    def active_jobs(self, *, account: str | None = None, qos: str | None = None, refresh_after_s: float | None = None) -> int:
        """This user's queued and running jobs (of ``account``/``qos`` if given): the last
        listing's, plus launches this process submitted since, minus those of them whose
        ``exit_code`` file says they have ended since (no question for those).

        Args:
            refresh_after_s: ask ``squeue`` first if the listing is older than this (or
                missing); still never twice within :attr:`first_look_s`.
        """
        uid = os.getuid()
        with self._lock:
            now = self._clock()
            listing = self._listings.get(uid)
            if refresh_after_s is not None and (listing is None or now - listing.taken_at >= refresh_after_s) \
                    and (listing is None or now - listing.tried_at >= self.first_look_s) \
                    and (listing is None or now >= listing.retry_after):
                self._refresh(uid)
                listing = self._listings.get(uid)
            rows = listing.jobs if listing is not None else {}
            count = sum(1 for row in rows.values() if row.active and (account is None or row.account == account)
                        and (qos is None or row.qos == qos))
            for record in self._watched.values():
                if not record.own:
                    continue
                gone = record.ended or record.files.exit_code(record.launch_no).exists()
                covered = listing is not None and listing.taken_wall >= record.covered_after_wall
                row = rows.get(record.job_id) if covered else None
                if not covered:
                    count += not gone  # submitted since the listing
                elif gone and row is not None and row.active and (account is None or row.account == account) \
                        and (qos is None or row.qos == qos):
                    count -= 1  # ended since the listing: its files say so
            return max(0, count)

    def listing_age_s(self) -> float:
        """Seconds since this user's jobs were last listed (inf: never)."""
        listing = self._listings.get(os.getuid())
        return math.inf if listing is None else self._clock() - listing.taken_at
