"""``Job``: one stored job, by name — its state, its result, and every action on it.

The decorators, the command line and the viewer all act on jobs through this handle,
and so can users (as with submitit's ``Job``)::

    job = parallelaverage.Job.load("3_simulate")     # or Job.load(3)
    job.status          # "running", "completed", ...
    job.done()          # not running any more
    job.result()        # what a call returns now (warnings for failed/missing runs)
    job.wait()          # block until it stops, then the result
    job.watch()         # block until it stops, then its state (runs done, failed, missing)
    job.cancel()
    job.resubmit(include_crashed=False, fresh_streams=False)
    print(job.stdout())

The job owns its life: the first launch (:meth:`Job.start`, made by the decorator
right after creating the job with its first launch folder), every later launch
(:meth:`Job.resubmit`, :meth:`Job.relaunch`), and cancelling. A new launch is decided
and created under the job's launch lock — read the state, choose the runs, make the
launch folder — so two callers can never launch the same runs twice.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import datetime
from typing import Any, Mapping, Sequence

import numpy as np

from parallelaverage import _testhooks
from parallelaverage._atomic import atomic_write_bytes, host_tag
from parallelaverage.jobfiles.layout import Creator, JobFiles, LaunchPlan
from parallelaverage.jobfiles.outputs import OutputIndex
from parallelaverage._state import JobState, launch_runner, read_job_state
from parallelaverage.backends import backend_named
from parallelaverage.errors import (
    JobEndedWarning, JobWarning, LaunchError, NotReadyWarning, RunsFailedError, RunsFailedWarning,
    SubmissionError, say, warn,
)
from parallelaverage.jobdb import JobDatabase, JobRecord
from parallelaverage.results import AveragedResult, RunOutputs
from parallelaverage.runspace import RunSpace

__all__ = ["Job", "prefetch_states", "start_batch"]

POLL_COST_FACTOR = 100.0
"""A waiting caller sleeps at least this many times its last poll's duration (after its
first 2 s): polling a launch of many ranks takes at most 1 % of a core."""


def _timestamp(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


class Job:
    """A job of a job database: its state, result, and the actions on it.

    Args:
        db: The database.
        record: The job's record (``db.load(name)``).
    """

    def __init__(self, db: JobDatabase, record: JobRecord) -> None:
        self.db, self.record = db, record
        self.files = JobFiles(db.job_dir(record))
        self.space = RunSpace(record.N_runs)

    @classmethod
    def load(cls, job: str | int, path: str | os.PathLike[str] = ".") -> Job:
        """The job named ``job`` (``"3_simulate"``) or numbered ``job`` (``3``, ``"3"``)
        in the database under ``path``.

        Raises:
            JobNotFoundError: no such job.
        """
        db = JobDatabase(path)
        return cls(db, db.resolve(job))

    def __repr__(self) -> str:
        return f"<Job {self.name}: {self.record.call}>"

    @property
    def name(self) -> str:
        """The job's name, ``"<number>_<function>"`` (its folder in the database)."""
        return self.record.job_name

    @property
    def average(self) -> Any:
        """What is averaged: ``"all"``, the averaged tuple elements, or None when
        the runs' outputs are kept without averaging (``@parallel``)."""
        average = self.record.options.get("average")
        return tuple(average) if isinstance(average, list) else average

    @property
    def n_tasks(self) -> int:
        """The MPI ranks the job was submitted with (``N_tasks``)."""
        return int(self.record.options.get("N_tasks", 1))

    @property
    def all_runs(self) -> Any:
        """Every run id of the job, in order (computed on demand)."""
        return self.space.ids(self.space.all())

    # ------------------------------------------------------------------ reading
    def state(self, *, light: bool = False) -> JobState:
        """Merge every launch into the job's state; store its status and counts in the
        record when they changed (best effort: reading works on a read-only database
        or a full disk, and then leaves the record as it is).

        ``light``: only the status and the counts are needed (``state.counts()``): the
        snapshots of live launches are not read. For polling.
        """
        state = read_job_state(self.files, self.space, submitted_at=_timestamp(self.record.submitted_at),
                               light=light)
        if not light or state.status != "running":
            self._refresh_record(state)
        return state

    def _refresh_record(self, state: JobState) -> None:
        record = self.record
        counts = dict(n_successful=len(state.done), n_failed=len(state.failed_positions),
                      n_not_ready=len(state.missing_positions))
        if state.status == record.status and all(getattr(record, k) == v for k, v in counts.items()):
            return
        if not self.db.writable:
            return
        try:
            self.record = self.db.update(record.job_name, status=state.status, **counts)
        except OSError:
            pass  # a full disk: the record is only a cache of what the files say

    @property
    def status(self) -> str:
        """The job's status now (see :data:`parallelaverage.jobdb.STATUSES`)."""
        return self.state().status

    def done(self) -> bool:
        """Whether the job has stopped (completed, ended, cancelled or never launched)."""
        return self.state().status != "running"

    def result(self, state: JobState | None = None, *, report: bool = True) -> Any:
        """What a call returns now: the averaged result (or the kept outputs) so far;
        None while no run has finished.

        Warns about runs not ready, failed, crashed or missing. A job that has stopped
        without a single successful run has nothing to return and says why instead.

        Raises:
            RunsFailedError: the job stopped and every run that ran failed.
            LaunchError: the job stopped and its launch could not run anything.
            SubmissionError: the queue refused the job.
        """
        state = self.state() if state is None else state
        if report:
            self.report(state)
        if state.status != "running" and not state.done:
            self._raise_empty(state)
        return build_result(self.files, state, self.name, self.average, bool(self.record.options.get("keep_runs")))

    def _raise_empty(self, state: JobState) -> None:
        failed = state.failed
        if failed:
            first = failed.first()
            crashed = f" ({len(state.crashed)} crashed their rank)" if state.crashed else ""
            missing = f"; {len(state.missing_positions)} more are missing" if state.missing_positions else ""
            raise RunsFailedError(
                f"every run of job {self.name} that ran failed: {len(failed)} of {len(state.all_runs)}"
                f"{crashed}{missing}. The first error (run {first[0]!r}):\n{first[1]}" if first else "",
                job_name=self.name, failed_run_ids=list(failed), first_traceback=first[1] if first else "")
        latest = state.latest
        if state.status == "submit_failed" and latest is not None:
            raise SubmissionError(f"job {self.name} was never launched: {latest.message}. Fix the cause and "
                                  "call the function again (without @dont_submit) to submit it again")
        if state.fatal and state.status == "ended":
            raise LaunchError(f"job {self.name}: {state.fatal}\nOnce the cause is fixed (a launch option such as "
                              "mpi= or launcher=, the job's environment), re_submit the call to launch its runs again")

    def report(self, state: JobState) -> None:
        """Warn about what the caller should know: pending, failed, crashed, missing runs."""
        total = len(state.all_runs)
        for problem in state.problems:
            warn(f"{self.name}: {problem}", JobWarning)
        failed = state.failed
        if failed and (state.done or state.status == "running"):
            first = failed.first()
            crashed = f" ({len(state.crashed)} crashed their rank)" if state.crashed else ""
            warn(f"{len(failed)} / {total} runs failed{crashed}; the first error (run {first[0]!r}):\n{first[1]}"
                 if first else f"{len(failed)} / {total} runs failed", RunsFailedWarning)
        if state.status == "running" and state.missing_positions:
            warn(f"{len(state.missing_positions)} / {total} runs are not ready yet!", NotReadyWarning)
        elif state.status in ("ended", "cancelled", "not_launched") and state.missing_positions \
                and not (state.fatal and not state.done and not failed):  # that one raises LaunchError
            how = {"ended": "job ended", "cancelled": "job was cancelled",
                   "not_launched": "job was never launched"}[state.status]
            why = f"\n{state.fatal}" if state.fatal else ""
            warn(f"{self.name}: {how} with {len(state.missing_positions)} of {total} runs missing; use re_submit "
                 f"to run them{why}", JobEndedWarning)
        elif state.fatal and state.status == "completed":  # a re-submission that ran nothing
            warn(f"{self.name}: {state.fatal}", JobEndedWarning)

    def wait(self, poll_s: float = 0.01, max_poll_s: float = 1.0, progress: bool = True,
             timeout_s: float | None = None) -> Any:
        """Block until the job stops running, then return :meth:`result`.

        Args:
            poll_s, max_poll_s, progress, timeout_s: as :meth:`watch`.

        Raises:
            TimeoutError: ``timeout_s`` passed first (the job goes on).
            RunsFailedError, LaunchError, SubmissionError: as :meth:`result`.
        """
        return self.result(self.watch(poll_s, max_poll_s, progress, timeout_s))

    def watch(self, poll_s: float = 0.01, max_poll_s: float = 1.0, progress: bool = True,
              timeout_s: float | None = None) -> JobState:
        """Block until the job stops running, showing its progress; return the state it stopped in.

        Polls every ``poll_s`` for the first seconds (short jobs finish fast), then
        less and less often, up to every ``max_poll_s``; after those first seconds, never
        sooner than 100 times what the last poll took (a launch of 1,000 ranks has 1,000 status records to read:
        polling costs at most 1 % of a core, and its file reads stay few).

        Args:
            poll_s: The first interval between reads of the job's state, in seconds.
            max_poll_s: The longest interval.
            progress: Show a progress bar (tqdm's widget in Jupyter, its bar on a
                terminal, a line every 10 s in a log) on standard error.
            timeout_s: Give up after this many seconds.

        Raises:
            TimeoutError: ``timeout_s`` passed first (the job goes on).
        """
        from parallelaverage._progress import RunsBar  # loads tqdm: the caller's side only, on first use

        bar = RunsBar(len(self.space.all()), label=self.name) if progress else None
        started = time.monotonic()
        try:
            while True:
                # counts only: the statistics are read once, when the job has stopped (a stopped
                # job's light state is its full state: no launch of it is live)
                polled = time.monotonic()
                state = self.state(light=True)
                poll_cost_s = time.monotonic() - polled
                if bar is not None:
                    bar.update(*state.counts())
                if state.status != "running":
                    return state
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"job {self.name} still running after {timeout_s:g} s")
                if time.monotonic() - started < 2.0:
                    time.sleep(poll_s)
                else:
                    time.sleep(max(poll_s, POLL_COST_FACTOR * poll_cost_s))
                    poll_s = min(max_poll_s, poll_s * 1.2)
        finally:
            if bar is not None:
                bar.close()

    def stdout(self) -> str:
        """The standard output of every launch, with a header per launch."""
        return self._text(self.files.stdout)

    def stderr(self) -> str:
        """The standard error of every launch, with a header per launch."""
        return self._text(self.files.stderr)

    def output_text(self) -> str:
        """Standard output and error of every launch, with headers (``print_job_output``)."""
        parts = []
        for launch_no in self.files.launch_numbers():
            for path in (self.files.stdout(launch_no), self.files.stderr(launch_no)):
                parts.append(self._section(path))
        return "".join(parts)

    def _text(self, which: Any) -> str:
        return "".join(self._section(which(launch_no)) for launch_no in self.files.launch_numbers())

    @staticmethod
    def _section(path: Any) -> str:
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"----- {path} -----\n{text}{'' if text.endswith(chr(10)) or not text else chr(10)}"

    # ------------------------------------------------------------------ launching
    def start(self, launch_no: int, queuing_system: str, n_tasks: int, queue_options: Mapping[str, Any]) -> int:
        """Start a launch whose folder exists (made by :meth:`relaunch` or with the job).

        Raises:
            SubmissionError: the backend refused it (recorded in ``submit_error.txt``).
        """
        backend = backend_named(queuing_system)
        plan = self.files.read_plan(launch_no, self.space)
        n_tasks = max(1, min(n_tasks, len(plan.positions)))
        try:
            info = backend.submit(self.files, launch_no, n_tasks, dict(queue_options))
        except Exception as error:
            message = str(error).strip() or type(error).__name__
            try:
                atomic_write_bytes(self.files.submit_error(launch_no), message.encode())
                self.record = self.db.update(self.name, status="submit_failed")
            except OSError:
                pass
            raise SubmissionError(f"job {self.name}, launch {launch_no}: {backend.name} did not start it: "
                                  f"{message}") from error
        info = {**info, "backend": backend.name, "n_tasks": n_tasks, "queue_options": dict(queue_options)}
        _testhooks.hook("launch_submitted")
        atomic_write_bytes(self.files.launch(launch_no), json.dumps(info).encode())
        # A cancel that came while the launch was made wrote its marker before reading
        # launch.json; this reads the marker after writing launch.json: one of the two
        # sees the other, so the launch is stopped by one of them (or by both).
        cancelled = self.files.cancel_request(launch_no).exists()
        if cancelled:
            backend.cancel(self.files, launch_no, info)
            say(f"job {self.name} was cancelled while launch {launch_no} was being made: "
                f"stopped {backend.describe(info)}")
        _testhooks.hook("launch_recorded")
        try:
            self.record = self.db.update(self.name, status="cancelled" if cancelled else "running",
                                         queue=backend.name, queue_job_id=str(info.get("job_id", info.get("pid"))))
        except OSError:
            pass
        return launch_no

    def relaunch(self, queuing_system: str, n_tasks: int, queue_options: Mapping[str, Any], *,
                 include_failed: bool = True, include_crashed: bool = False, fresh_streams: bool = False,
                 what: str = "re-submitting") -> int | None:
        """Launch the runs that are missing (and failed, and crashed if asked) again.

        The decision is a critical section under the job's launch lock: of two callers
        at once, one launches; the other is told that the job is running as launch k.

        Returns:
            The new launch's number; None if nothing was launched (already running,
            or nothing to run), which is said on the terminal.

        Raises:
            SubmissionError: the backend refused the new launch.
        """
        created = self._create_launch(queuing_system, include_failed=include_failed,
                                      include_crashed=include_crashed, fresh_streams=fresh_streams)
        if isinstance(created, str):
            say(created)
            return None
        launch_no, count = created
        n = min(n_tasks, count)
        say(f"{what} {count} runs of job {self.name} on {n} MPI ranks, {queuing_system} (launch {launch_no})")
        return self.start(launch_no, queuing_system, n, queue_options)

    def resubmit(self, n_tasks: int | None = None, queue_options: Mapping[str, Any] | None = None, *,
                 queuing_system: str | None = None, include_crashed: bool = False,
                 fresh_streams: bool = False) -> int | None:
        """Run the failed and missing runs again, merged into this job.

        Args:
            n_tasks: ranks for the new launch (default: as the last launch).
            queue_options: queue options (default: as the last launch).
            queuing_system: ``"local"`` or ``"slurm"`` (default: as the last launch).
            include_crashed: also re-run runs that crashed their rank (they would
                probably crash it again, so they are left out unless asked).
            fresh_streams: give the re-run runs new random streams (default: the
                same streams, so a run is reproducible whichever launch ran it).

        Returns:
            The new launch's number, or None when nothing was launched.
        """
        last = self._last_launch_info()
        backend = queuing_system or last.get("backend") or self.record.queue or "local"
        options = queue_options if queue_options is not None else last.get(
            "queue_options", self.record.options.get("queue_options", {}))
        return self.relaunch(backend, n_tasks or int(last.get("n_tasks") or self.n_tasks), options,
                             include_crashed=include_crashed, fresh_streams=fresh_streams)

    def _last_launch_info(self) -> dict[str, Any]:
        for launch_no in reversed(self.files.launch_numbers()):
            info = self.files.read_json(self.files.launch(launch_no))
            if isinstance(info, dict):
                return info
            creator = self.files.read_json(self.files.creator(launch_no))
            if isinstance(creator, dict):
                return creator
        return {}

    def _create_launch(self, queuing_system: str, *, include_failed: bool, include_crashed: bool,
                       fresh_streams: bool) -> tuple[int, int] | str:
        """Under the launch lock: decide the runs, seal the earlier launches, make the
        launch folder. Returns ``(launch, number of runs)`` or why nothing was made."""
        self.db.check_writable(f"re-submit job {self.name}")
        with self.db.launch_lock(self.name):
            state = read_job_state(self.files, self.space)
            _testhooks.hook("state_read")
            if state.status == "running":
                live = [launch.number for launch in state.launches if launch.live]
                which = f"launch {live[-1]}" if live else "its first launch"
                return f"job {self.name} is already running as {which}; not launching it twice"
            runs = state.missing_positions
            if include_failed:
                failed = state.failed_positions if include_crashed else state.failed_positions - state.crashed
                runs = runs.union(failed)
            if not runs:
                skipped = (f" ({len(state.crashed)} runs that crashed their rank are left out: "
                           "re_submit(include_crashed=True) runs them)") if state.crashed else ""
                return f"job {self.name} has no missing or failed runs; nothing to re-submit{skipped}"
            for launch in state.launches:
                if not self.files.sealed(launch.number).exists() and not self.files.result(launch.number).exists():
                    from parallelaverage.jobfiles.trust import write_pickle

                    write_pickle(self.files.sealed(launch.number), launch.tally)
            launch_no = (state.launches[-1].number if state.launches else 0) + 1
            plan = LaunchPlan(runs, launch_no if fresh_streams else 0)
            self._make_launch_folder(launch_no, plan, queuing_system)
            _testhooks.hook("launch_created")
            return launch_no, len(runs)

    def _make_launch_folder(self, launch_no: int, plan: LaunchPlan, queuing_system: str) -> None:
        """Stage the folder with its creator record and plan, then rename it into place."""
        self.files.launches_dir.mkdir(mode=0o700, exist_ok=True)
        staging = self.files.launches_dir / f".new-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        try:
            atomic_write_bytes(staging / "creator.json", json.dumps({**Creator.now(), "backend": queuing_system}).encode())
            atomic_write_bytes(staging / "runs.json", plan.to_bytes(self.space))
            os.rename(staging, self.files.launch_dir(launch_no))
        except BaseException:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
            raise

    def cancel(self) -> None:
        """Stop every launch of the job and every process it started; mark it cancelled.

        A job that is not running is left as it is (a completed job stays completed).
        A launch that another caller is making right now is cancelled as soon as it starts.
        """
        state = self.state()
        if state.status != "running":
            say(f"job {self.name} is not running ({state.status}); nothing to cancel")
            return
        self.db.check_writable(f"cancel job {self.name}")
        shared: list[str] = []
        for launch in state.launches:
            if not launch.live:
                continue
            atomic_write_bytes(self.files.cancel_request(launch.number), b"")
            info = launch.info or self.files.read_json(self.files.launch(launch.number))  # made meanwhile?
            if isinstance(info, dict) and launch.backend:
                runner, runner_launch_no = launch_runner(self.files, launch.number, info)
                backend_named(launch.backend).cancel(runner, runner_launch_no, info)
                if runner is not self.files:
                    shared += [name for name in batch_members(runner) if name != self.name]
        try:
            self.record = self.db.update(self.name, status="cancelled")
        except OSError:
            pass
        say(f"cancelled job {self.name}")
        if shared:
            # one launch runs every job of an f.map: stopping it stops them all, said out loud
            others = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
            say(f"job {self.name} ran in one launch with {others} (f.map): that launch was stopped; they keep "
                f"the runs they finished, and a plain call or re_submit runs the rest of each")


def prefetch_states(jobs: Sequence[Job]) -> None:
    """Ask each queue once about every launch of ``jobs`` (SLURM: at most one ``squeue
    --me`` call, and none for launches whose files or ranks answer).

    The backends remember what they saw (SLURM: the process's queue watcher), so the
    ``Job.state()`` calls that follow, one per job, ask the queue nothing more. For
    listings of a whole database.
    """
    by_backend: dict[str, list[tuple[JobFiles, int, Any]]] = {}
    for job in jobs:
        for launch_no in job.files.launch_numbers():
            info = job.files.read_json(job.files.launch(launch_no))
            if isinstance(info, dict):
                by_backend.setdefault(info.get("backend") or job.record.queue or "local", []).append(
                    (*launch_runner(job.files, launch_no, info), info))
    for name, launches in by_backend.items():
        try:
            backend_named(name).states(launches)
        except (RuntimeError, ValueError, OSError):
            pass  # each job's own query will report it


def build_result(files: JobFiles, state: JobState, job_name: str, average: Any, keep_runs: bool) -> Any:
    """What a call returns: RunOutputs, an AveragedResult, a tuple of them, or None
    while no run has finished (for ``@parallel`` as for ``@parallel_average``)."""
    space = state.space
    if not state.done:
        return None
    outputs = None
    if average is None or keep_runs:
        paths = [path for launch_no in files.launch_numbers() for path in files.all_outputs(launch_no)
                 if path.suffix != ".idx"]
        outputs = RunOutputs(OutputIndex(paths, space), space, state.done)
    if average is None:
        return outputs
    group = state.tally.main_group()
    if group is None or not group.accumulators:
        return None
    successful, failed = state.successful, space.ids(state.failed_positions)

    def averaged(index: int) -> AveragedResult:
        acc = group.accumulators[index]
        with np.errstate(invalid="ignore", divide="ignore"):
            return AveragedResult(
                acc.mean, acc.sem, acc.variance, successful_run_ids=successful, failed_run_ids=failed,
                runs=outputs, job_name=job_name, count=acc.count, total_weight=acc.total_weight,
                statistics=group.statistics.get(index),
            )

    length = group.layout[0]
    if length is None:
        return averaged(0)
    return tuple(averaged(i) if i in group.accumulators else group.last_values.get(i) for i in range(length))



def batch_members(batch: JobFiles) -> list[str]:
    """The names of the jobs a batch's launch runs (``f.map``), in order; [] if unreadable."""
    described = batch.read_json(batch.batch)
    members = described.get("members") if isinstance(described, dict) else None
    return [str(m.get("job")) for m in members if isinstance(m, dict)] if isinstance(members, list) else []


def start_batch(db: JobDatabase, jobs: Sequence[Job], queuing_system: str, n_tasks: int,
                queue_options: Mapping[str, Any]) -> str:
    """Start the first launches of ``jobs`` as one launch (``f.map``): one mpiexec or one SLURM
    job whose ranks share one counter over every job's runs and write each job's snapshots
    and result into that job's own launch folder. Returns the batch's folder.

    Raises:
        SubmissionError: the backend refused it (recorded in each job's launch folder).
    """
    folder = db.new_batch_folder(jobs[0].name, len(jobs))
    files = JobFiles(folder)
    files.launch_dir(1).mkdir(mode=0o700, parents=True)
    members = [{"dir": str(job.files.dir.resolve()), "launch": 1, "job": job.name} for job in jobs]
    atomic_write_bytes(files.batch, json.dumps({"schema": 1, "members": members}).encode())
    backend = backend_named(queuing_system)
    # Each job points at the batch before it can start: a caller killed between the
    # submission and the launch.json files below leaves jobs whose launch is recovered
    # from the batch's folder, not jobs that look abandoned while the batch runs them.
    for index, job in enumerate(jobs):
        creator = job.files.read_json(job.files.creator(1)) or {}
        atomic_write_bytes(job.files.creator(1), json.dumps(
            {**creator, **Creator.now(), "backend": backend.name, "batch": str(folder.resolve()),
             "batch_member": index}).encode())
    total = sum(len(job.files.read_plan(1, job.space).positions) for job in jobs)
    n_tasks = max(1, min(n_tasks, total))
    try:
        info = backend.submit(files, 1, n_tasks, dict(queue_options))
    except Exception as error:
        message = str(error).strip() or type(error).__name__
        for job in jobs:
            try:
                atomic_write_bytes(job.files.submit_error(1), message.encode())
                job.record = db.update(job.name, status="submit_failed")
            except OSError:
                pass
        raise SubmissionError(f"the batch of {len(jobs)} jobs ({jobs[0].name} ...): {backend.name} did not "
                              f"start it: {message}") from error
    info = {**info, "backend": backend.name, "n_tasks": n_tasks, "queue_options": dict(queue_options),
            "batch": str(folder.resolve())}
    _testhooks.hook("launch_submitted")
    atomic_write_bytes(files.launch(1), json.dumps(info).encode())  # when it was submitted, for the queue watcher
    for index, job in enumerate(jobs):
        atomic_write_bytes(job.files.launch(1), json.dumps({**info, "batch_member": index}).encode())
        if index == 0:
            _testhooks.hook("launch_recorded")  # in a batch: the first job's launch.json only
        try:
            job.record = db.update(job.name, status="running", queue=backend.name,
                                   queue_job_id=str(info.get("job_id", info.get("pid"))))
        except OSError:
            pass
    return str(folder)
