"""``Job``: one stored job, by name — what the decorators, the command line and the
viewer act on. Needs no function: everything comes from the job's record and files.
"""

from __future__ import annotations

import json
import time
import warnings
from datetime import datetime
from typing import Any, Sequence

from parallelaverage import _jobs
from parallelaverage._jobfiles import JobFiles
from parallelaverage._options import run_ids
from parallelaverage._progress import ProgressBar
from parallelaverage.backends.base import Backend
from parallelaverage.jobdb import JobDatabase, JobRecord

__all__ = ["Job", "prefetch_states"]

PREFIX = "[parallelaverage]"


def say(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def _timestamp(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


class Job:
    """A job of a database: its state, result, and the actions on it."""

    def __init__(self, db: JobDatabase, record: JobRecord) -> None:
        self.db, self.record = db, record
        self.files = JobFiles(db.job_dir(record))

    @classmethod
    def load(cls, job_name: str, path: str = ".") -> Job:
        """The job called ``job_name`` (e.g. ``"3_simulate"``) in the database under ``path``."""
        db = JobDatabase(path)
        return cls(db, db.load(job_name))

    @property
    def name(self) -> str:
        return self.record.job_name

    @property
    def backend(self) -> Backend:
        return _jobs.backend_for(self.record.queue or "local")

    @property
    def all_runs(self) -> list[Any]:
        n_runs = self.record.N_runs
        return run_ids(tuple(n_runs) if isinstance(n_runs, list) else n_runs)

    @property
    def average(self) -> Any:
        average = self.record.options.get("average")
        return tuple(average) if isinstance(average, list) else average

    @property
    def n_tasks(self) -> int:
        return int(self.record.options.get("N_tasks", 1))

    def state(self) -> _jobs.JobState:
        """Merge every launch; store the status and counts in the record if they changed."""
        record = self.record
        state = _jobs.read_state(self.files, self.backend, self.all_runs,
                                 cancelled=record.status == "cancelled",
                                 submitted_at=None if record.status == "submit_failed"
                                 else _timestamp(record.submitted_at))
        counts = dict(n_successful=len(state.successful), n_failed=len(state.failed),
                      n_not_ready=len(state.missing))
        status = "cancelled" if record.status == "cancelled" and state.status != "running" else state.status
        if status != record.status or any(getattr(record, k) != v for k, v in counts.items()):
            self.record = self.db.update(record.job_name, status=status, **counts)
        return state

    def result(self, state: _jobs.JobState | None = None, *, report: bool = True) -> Any:
        """What a call returns: the averaged result (or outputs) so far, with warnings."""
        state = self.state() if state is None else state
        if report:
            _jobs.report(state, self.name)
        keep = bool(self.record.options.get("keep_runs"))
        return _jobs.build_result(self.files, state, self.name, self.average, keep)

    def wait(self, poll_s: float = 0.01, max_poll_s: float = 1.0, progress: bool = True) -> Any:
        """Block until the job stops running, then return its result.

        Polls every 10 ms for the first seconds (short jobs finish fast), then less
        and less often, up to once a second.
        """
        bar = ProgressBar(len(self.all_runs), label=self.name) if progress else None
        started = time.monotonic()
        while True:
            state = self.state()
            if bar is not None:
                bar.update(len(state.successful), len(state.failed))
            if state.status != "running":
                break
            time.sleep(poll_s)
            if time.monotonic() - started > 2.0:
                poll_s = min(max_poll_s, poll_s * 1.2)
        if bar is not None:
            bar.close()
        return self.result(state)

    def resubmit(self, n_tasks: int | None = None, queue_options: dict[str, Any] | None = None) -> int | None:
        """Launch the failed and missing runs again; return the launch number (None: nothing to do)."""
        state = self.state()
        if state.status == "running":
            warnings.warn(f"{PREFIX} job {self.name} is still running; wait for it or cancel it first",
                          _jobs.NotReadyWarning, stacklevel=3)
            return None
        runs = state.missing + [run for run in state.all_runs if run in state.failed]
        if not runs:
            say(f"job {self.name} has no missing or failed runs; nothing to re-submit")
            return None
        n_tasks = min(n_tasks or self.n_tasks, len(runs))
        options = self.record.options.get("queue_options", {}) if queue_options is None else queue_options
        say(f"re-submitting {len(runs)} runs of job {self.name} on {n_tasks} MPI ranks, {self.backend.name}")
        attempt, info = _jobs.launch(self.files, self.backend, runs, n_tasks, dict(options))
        self.record = self.db.update(self.name, status="running",
                                     queue_job_id=str(info.get("job_id", info.get("pid"))))
        return attempt

    def cancel(self) -> None:
        """Stop every launch of the job and every process it started; mark it cancelled.

        A job that is not running is left as it is (a completed job stays completed).
        """
        status = self.state().status
        if status != "running":
            say(f"job {self.name} is not running ({status}); nothing to cancel")
            return
        for attempt in self.files.attempts():
            try:
                info = json.loads(self.files.launch(attempt).read_bytes())
            except (OSError, ValueError):
                continue
            self.backend.cancel(self.files, attempt, info)
        self.record = self.db.update(self.name, status="cancelled")
        say(f"cancelled job {self.name}")

    def output_text(self) -> str:
        """The standard output and error of every launch, with headers."""
        parts = []
        for attempt in self.files.attempts():
            for path in (self.files.stdout(attempt), self.files.stderr(attempt)):
                text = path.read_text(errors="replace") if path.exists() else ""
                parts.append(f"----- {path} -----\n{text}{'' if text.endswith(chr(10)) or not text else chr(10)}")
        return "".join(parts)


def prefetch_states(jobs: Sequence[Job]) -> None:
    """Ask each queue once about every launch of ``jobs`` (SLURM: one ``squeue`` call).

    The backends remember what they saw for a moment, so the ``Job.state()`` calls that
    follow, one per job, ask the queue nothing more. For listings of a whole database.
    """
    by_backend: dict[str, list[tuple[JobFiles, int, Any]]] = {}
    for job in jobs:
        for attempt in job.files.attempts():
            try:
                info = json.loads(job.files.launch(attempt).read_bytes())
            except (OSError, ValueError):
                continue
            by_backend.setdefault(job.record.queue or "local", []).append((job.files, attempt, info))
    for name, launches in by_backend.items():
        try:
            _jobs.backend_for(name).states(launches)
        except (RuntimeError, ValueError, OSError):
            pass  # each job's own query will report it
