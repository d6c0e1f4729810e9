"""Reading a job's state from its files: each launch's phase and tally, merged into one.

A job is a sequence of launches (``attempts/1``, ``attempts/2``...). Each launch is in
one phase, decided from its files and, while it may run, by its backend:

==============  ==============================================================
``launching``    its folder exists (``creator.json`` first), no ``launch.json``
                 yet, and its creator is alive: another caller is launching it
``submit_failed``  the queue refused it (``submit_error.txt`` says why); final
``abandoned``    no ``launch.json``, its creator is gone and no rank ever started:
                 it never ran (a caller killed mid-submission); final
``running``      the backend says it may still run (queued or executing)
``ended``        the backend says it is over
==============  ==============================================================

Each launch's **tally** (which runs it finished or failed, and their statistics) is
its ``sealed.pkl`` if a later launch froze it, else its ``result.pkl``, else the
merge of its ranks' snapshots. Once a launch has ended, its ranks' status records
tell which runs crashed their rank (a fatal signal or ``os._exit`` inside the run):
those count as failed, with the signal and the rank's report. The job's state merges
every launch: a run is *done* if any launch did it, else *pending* if a live launch
will still run it (a run a live launch has failed is not run again by it), else
*failed* (or crashed) if a launch failed it, else *missing*.

Reading never writes: results, ``list``, ``show`` and the viewer work on a read-only
database and on a full disk.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from parallelaverage.jobfiles.layout import Creator, JobFiles, LaunchPlan
from parallelaverage.jobfiles.rankstatus import RankInfo, read_rank_status
from parallelaverage.jobfiles.tally import Tally, read_launch_tally
from parallelaverage.backends import backend_named
from parallelaverage.backends.base import Backend
from parallelaverage.runspace import Positions, RunIds, RunSpace

__all__ = ["LaunchState", "JobState", "Crash", "FailedRuns", "read_launch", "read_job_state", "LAUNCH_GRACE_S"]

LAUNCH_GRACE_S = 60.0
"""A launch being made on another host, with no ``launch.json`` after this long, is
taken as abandoned by its creator (on the creator's own host, its pid decides)."""

LIVE_PHASES = ("launching", "running")


@dataclass
class LaunchState:
    """One launch as read now."""

    number: int
    phase: str
    info: dict[str, Any] | None
    backend: str | None
    plan: LaunchPlan | None
    tally: Tally
    ranks: list[RankInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    message: str | None = None  # why it was refused or could not start its runs
    exit_code: int | None = None
    cancelled: bool = False
    crashes: list[Crash] = field(default_factory=list)  # read once the launch has ended
    history: list[str] = field(default_factory=list)  # how each earlier life of a requeued launch ended
    target: dict[str, Any] | None = None  # its target.json: it reached its target error (target_error=)

    @property
    def live(self) -> bool:
        return self.phase in LIVE_PHASES


@dataclass(frozen=True)
class Crash:
    """A run that ended its rank's process: a fatal signal inside the run (segfault,
    ``abort``...), which ``faulthandler`` reported, or an ``os._exit`` call.

    Attributes:
        launch, rank, position: where it happened, and the run (a position).
        signal: the fatal signal's number; None for ``os._exit``.
        exit_code: the code the run passed to ``os._exit``; None for a signal.
        report: ``faulthandler``'s report (the signal and the run's traceback); '' for ``os._exit``.
        launch_exit_code: the exit code of the launch (mpiexec, srun), if known.
    """

    launch: int
    rank: int
    position: int
    signal: int | None
    exit_code: int | None
    report: str
    launch_exit_code: int | None

    @property
    def signal_name(self) -> str | None:
        return _signal_name(self.signal) if self.signal is not None else None

    def headline(self, run: Any) -> str:
        """``run 17 crashed the rank (rank 1, signal 11, SIGSEGV)``, or the ``os._exit`` form."""
        if self.signal is None:
            return f"run {run!r} ended its rank's process (rank {self.rank}) with os._exit({self.exit_code})"
        return f"run {run!r} crashed the rank (rank {self.rank}, {_signal_text(self.signal)})"


class FailedRuns(Mapping[Any, str]):
    """Run id -> error message of the failed runs (read on demand)."""

    def __init__(self, space: RunSpace, positions: Positions, tally: Tally) -> None:
        self._space, self._positions, self._tally = space, positions, tally

    def __len__(self) -> int:
        return len(self._positions)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._space.ids(self._positions))

    def __getitem__(self, run: Any) -> str:
        try:
            position = self._space.position_of(run)
        except KeyError:
            raise KeyError(run) from None
        if position not in self._positions:
            raise KeyError(run)
        return self._tally.error_of(position) or f"run {run!r} failed (its message was not kept)"

    def first(self) -> tuple[Any, str] | None:
        """The failed run with a kept message and the smallest position, with its message."""
        kept = sorted(p for p in (*self._tally.crashed, *self._tally.errors) if p in self._positions)
        if kept:
            return self._space.id_at(kept[0]), self._tally.error_of(kept[0]) or ""
        first = self._positions.first()
        return None if first is None else (self._space.id_at(first), self[self._space.id_at(first)])


@dataclass
class JobState:
    """Everything known about a job right now, merged over all its launches.

    Attributes:
        status: one of :data:`parallelaverage.jobdb.STATUSES` but ``submitted``.
        space: the job's run space.
        tally: the merged tally (minority output layouts already moved to failed).
        done, failed, crashed, pending, missing: run positions; ``crashed`` is part of
            ``failed``; ``pending`` (runs a live launch has yet to run) is part of ``missing``.
        launches: every launch, oldest first.
        problems: unreadable files and the like, one line each.
        fatal: why the latest launch could not run anything (launcher or start-up failure).
    """

    status: str
    space: RunSpace
    tally: Tally
    done: Positions
    failed_positions: Positions
    crashed: Positions
    pending: Positions
    missing_positions: Positions
    launches: list[LaunchState]
    problems: list[str] = field(default_factory=list)
    fatal: str | None = None
    light: bool = False  # the live launches' tallies hold only their earlier lives (see counts())
    target: dict[str, Any] | None = None  # a launch reached the target error: its target.json

    # views in run ids, for results, the command line and the viewer
    @property
    def all_runs(self) -> RunIds:
        return self.space.ids(self.space.all())

    @property
    def successful(self) -> RunIds:
        return self.space.ids(self.done)

    @property
    def failed(self) -> FailedRuns:
        return FailedRuns(self.space, self.failed_positions, self.tally)

    @property
    def missing(self) -> RunIds:
        return self.space.ids(self.missing_positions)

    @property
    def not_ready(self) -> int:
        return len(self.missing_positions)

    @property
    def latest(self) -> LaunchState | None:
        return self.launches[-1] if self.launches else None

    def counts(self) -> tuple[int, int]:
        """Runs done and failed: the merged tallies', plus what live launches' ranks report
        (a light state holds no tally of its live launches)."""
        done, failed = len(self.done), len(self.failed_positions)
        for launch in self.launches:
            if launch.live and self.light:
                done += sum(rank.n_done for rank in launch.ranks)
                failed += sum(rank.n_failed for rank in launch.ranks)
        return done, failed

    @property
    def crashes(self) -> list[Crash]:
        """How each run of :attr:`crashed` ended its rank (its latest crash), by position."""
        latest = {crash.position: crash for launch in self.launches for crash in launch.crashes
                  if crash.position in self.crashed}
        return [latest[position] for position in sorted(latest)]


# ------------------------------------------------------------------ one launch
def _read_tally(files: JobFiles, launch_no: int, problems: list[str], *,
                lives: list[int] | None = None) -> tuple[Tally, bool]:
    """A launch's tally (see :func:`read_launch_tally`), and whether it is final."""
    return read_launch_tally(files, launch_no, problems, lives=lives)


def _signal_name(number: int) -> str | None:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return None


def _signal_text(number: int) -> str:
    name = _signal_name(number)
    return f"signal {number}, {name}" if name else f"signal {number}"


def _crashes(launch_no: int, ranks: list[RankInfo], exit_code: int | None) -> list[Crash]:
    """The runs that ended their rank's process, from the ranks' status records (for an
    ended launch). A rank killed from outside (SIGKILL, the OOM killer) left neither a
    report nor an ``os._exit`` mark: its run was only in flight, and is missing."""
    crashes = []
    for info in ranks:
        if info.in_flight is None or info.stage not in ("running", "exited_in_run"):
            continue
        if info.stage == "exited_in_run":
            crashes.append(Crash(launch_no, info.rank, info.in_flight, None, info.exit_code, "", exit_code))
        elif info.crash_signal is not None:
            crashes.append(Crash(launch_no, info.rank, info.in_flight, info.crash_signal[0], None,
                                 info.crash_report.strip(), exit_code))
    return crashes


def launch_runner(files: JobFiles, launch_no: int, info: Any) -> tuple[JobFiles, int]:
    """Where a launch's processes write what concerns all of them (exit status, rank status
    records, stderr): the launch's own folder, or, for a job of a batch (``f.map``), the
    batch's launch folder."""
    if isinstance(info, dict) and info.get("batch"):
        return JobFiles(info["batch"]), 1
    return files, launch_no


def _crash_message(files: JobFiles, crash: Crash, run: Any, runner_launch_no: int | None = None) -> str:
    """What a crashed run's error is: what happened, the launch's exit code, the
    ``faulthandler`` report and the last lines of the launch's ``stderr.txt``."""
    text = crash.headline(run)
    if crash.launch_exit_code is not None:
        text += f"\nlaunch {crash.launch} {_exited(crash.launch_exit_code)}"
    if crash.report:
        text += "\n" + crash.report
    where = crash.launch if runner_launch_no is None else runner_launch_no
    tail = files.stderr_tail(where)
    if tail:
        text += f"\nlast lines of {files.stderr(where)}:\n{tail}"
    return text


def _start_failure(files: JobFiles, launch_no: int, ranks: list[RankInfo], exit_code: int | None,
                   label: int | None = None) -> str | None:
    """Why an ended launch could not run anything — its launcher failed before any rank
    started, or its ranks failed to start (an import error, a wrong MPI world) — or None
    when its ranks started and were stopped (killed, cancelled) like any ended launch."""
    fatal = [path.read_text(errors="replace") for path in files.fatals(launch_no)]
    meaning = None if exit_code is None else _exit_signal(exit_code)
    code = "" if exit_code is None else f" (exit code {exit_code}{', ' + meaning if meaning else ''})"
    errors = [r.error.strip() for r in ranks if r.stage == "failed_to_start" and r.error.strip()]
    name = launch_no if label is None else label
    if fatal or errors:
        head = f"launch {name} could not start its runs{code}:\n{(fatal or errors)[0].rstrip()}"
    elif not ranks and exit_code not in (None, 0):  # the launcher itself failed (killed: no exit code)
        head = f"launch {name} failed before any rank started{code}"
    else:
        return None
    tail = files.stderr_tail(launch_no)
    if tail:
        head += f"\nlast lines of {files.stderr(launch_no)}:\n{tail}"
    return head


def _exit_signal(code: int) -> str | None:
    """``"signal 15, SIGTERM"`` for an exit code that says a signal ended the process
    (``128 + n`` from a shell, ``-n`` from Python), else None."""
    if code > 128:
        return _signal_text(code - 128)
    if code < 0:
        return _signal_text(-code)
    return None


def _stopped_ranks(ranks: list[RankInfo]) -> str:
    """``": rank 2 was stopped by signal 15, SIGTERM, after a checkpoint"``: the ranks a
    signal from outside stopped (the launch's exit code may be another rank's)."""
    by_signal: dict[int, list[int]] = {}
    for info in ranks:
        if info.stage == "stopped" and info.signal:
            by_signal.setdefault(info.signal, []).append(info.rank)
    return "".join(
        f"{':' if i == 0 else ';'} {'rank' if len(numbers) == 1 else 'ranks'} {', '.join(map(str, sorted(numbers)))} "
        f"{'was' if len(numbers) == 1 else 'were'} stopped by {_signal_text(number)}, after a checkpoint"
        for i, (number, numbers) in enumerate(sorted(by_signal.items())))


def _exited(code: int) -> str:
    """``"exited with code 143 (signal 15, SIGTERM)"``."""
    meaning = _exit_signal(code)
    return f"exited with code {code}" + (f" ({meaning})" if meaning else "")


def read_launch(files: JobFiles, launch_no: int, space: RunSpace, *, ask_backend: bool = True,
                states: Mapping[int, str] | None = None, light: bool = False) -> LaunchState:
    """Read one launch (see the module docstring for its phases).

    Args:
        states: the backend's answers for launches with a ``launch.json``, when the
            caller asked for many at once; else the backend is asked here.
        light: for a launch that may still run, read its ranks' counts but not its
            snapshots (what a polling caller needs: the statistics are read once, when
            a result is built).
    """
    problems: list[str] = []
    info = files.read_json(files.launch(launch_no))
    if info is not None and not isinstance(info, dict):
        problems.append(f"{files.launch(launch_no)} is corrupt")
        info = None
    creator = files.read_json(files.creator(launch_no)) or {}
    backend_name = (info or {}).get("backend") or creator.get("backend")
    try:
        plan = files.read_plan(launch_no, space)
    except (OSError, ValueError):
        plan = None
    cancelled = files.cancel_request(launch_no).exists()
    final = files.result(launch_no).exists() or files.sealed(launch_no).exists()
    # a launch.json not written yet (its maker may have died) still has the creator's pointer
    runner, runner_launch_no = launch_runner(files, launch_no, info if info is not None else creator)
    member = (info if info is not None else creator).get("batch_member") if runner is not files else None
    exit_code = runner.exit_status(runner_launch_no)
    # a launch with its result and its exit status is over: its ranks have nothing more to say
    over = final and exit_code is not None
    ranks = [] if over else [
        r for r in (read_rank_status(path, rank) for rank, path in runner.rank_statuses(runner_launch_no)) if r]
    message = None
    if info is None:
        error = files.submit_error(launch_no)
        if error.exists():
            phase = "submit_failed"
            message = error.read_text(errors="replace").strip()
        elif Creator.alive(creator, LAUNCH_GRACE_S) and creator:
            phase = "launching"
        else:
            recovered = _backend(backend_name).recover(runner, runner_launch_no) if backend_name else None
            if recovered is not None:
                info = recovered if runner is files else {
                    **recovered, "batch": creator["batch"], "batch_member": member}
            elif any(r.alive() for r in ranks):
                phase = "running"
            elif ranks:
                phase = "ended"
            else:
                phase = "abandoned"
                message = (f"launch {launch_no} was never started: the process making it "
                           f"(pid {creator.get('pid', '?')} on {creator.get('host', '?')}) was gone before it did")
    if info is not None:
        if states is not None and launch_no in states:
            phase = states[launch_no]
        elif ask_backend and backend_name:
            phase = _backend(backend_name).state(runner, runner_launch_no, info)
        else:
            phase = "ended"
    lives = files.lives(launch_no)
    # the earlier lives are frozen; the current one's counts are in `ranks`, unless the files
    # say it is over while the backend still lists it (its answer lags): then in its tally
    if light and phase in LIVE_PHASES and member is None and not over:
        tally, final = _read_tally(files, launch_no, problems, lives=lives[:-1]) if len(lives) > 1 else (Tally(), False)
    else:
        tally, final = _read_tally(files, launch_no, problems)
    own = ranks if member is None else [r for r in ranks if r.member == member]  # a batch: this job's runs
    crashes = _crashes(launch_no, own, exit_code) if phase == "ended" else []
    if phase == "ended" and not files.sealed(launch_no).exists():  # a sealed tally holds its crashes
        crashed = {crash.position: _crash_message(runner, crash, space.id_at(crash.position), runner_launch_no)
                   for crash in crashes}
        if crashed:
            tally = Tally(tally.done, tally.failed, tally.errors, {**tally.crashed, **crashed}, tally.groups)
        if not tally.done and not tally.failed and not crashed:
            message = _start_failure(runner, runner_launch_no, ranks, exit_code, launch_no)
        elif exit_code == 76:
            message = (f"launch {launch_no} was requeued more often than its max_relaunches allows and "
                       "stopped: re_submit runs what is left")
        elif exit_code == 75 and files.life_end(launch_no, lives[-1]).exists():  # stopped before its time limit
            end = files.read_json(files.life_end(launch_no, lives[-1])) or {}
            message = (f"launch {launch_no} stopped before its time limit with {end.get('left', 'some')} runs left "
                       f"and was not requeued (max_relaunches reached, or 0): re_submit runs them")
        elif not final and exit_code not in (None, 0) and not crashed:
            problems.append(
                f"launch {launch_no} {_exited(exit_code)} without writing its result{_stopped_ranks(ranks)} "
                f"(see {files.stderr(launch_no)}); the ranks' snapshots were merged instead")
        for rank in ranks:
            if rank.error and message is None:
                problems.append(f"rank {rank.rank} of launch {launch_no}: {rank.error.strip()}")
    elif phase in LIVE_PHASES:
        for rank in ranks:
            if rank.error:
                problems.append(f"rank {rank.rank} of launch {launch_no}: {rank.error.strip()}")
    target = files.read_json(files.target(launch_no))
    return LaunchState(launch_no, phase, info, backend_name, plan, tally, ranks if member is None else [], problems,
                       message, exit_code, cancelled, crashes, _history(files, launch_no, lives),
                       target if isinstance(target, dict) else None)


def _history(files: JobFiles, launch_no: int, lives: list[int]) -> list[str]:
    """One line per earlier life of a launch: how it ended and what the next one did."""
    lines = []
    for life in lives[:-1]:
        end = files.read_json(files.life_end(launch_no, life))
        if isinstance(end, dict) and end.get("reason") == "deadline":
            lines.append(f"life {life} stopped before its time limit with {end.get('left', '?')} runs left "
                         f"and requeued itself; life {life + 1} ran them")
        else:
            lines.append(f"life {life} was requeued by SLURM (a node failure, preemption or scontrol requeue); "
                         f"life {life + 1} ran the runs it had not finished")
    return lines


_BACKENDS: dict[str, Backend] = {}


def _backend(name: str) -> Backend:
    if name not in _BACKENDS:
        _BACKENDS[name] = backend_named(name)
    return _BACKENDS[name]


# ------------------------------------------------------------------ the whole job
def read_job_state(files: JobFiles, space: RunSpace, *, submitted_at: float | None = None,
                   light: bool = False) -> JobState:
    """Merge every launch of a job into one state (asks each backend once for all its launches).

    ``light``: the live launches' runs are counted from their ranks' status records and
    their snapshots are not read (see :meth:`JobState.counts`); for polling.
    """
    launch_nos = files.launch_numbers()
    by_backend: dict[str, list[tuple[JobFiles, int, dict[str, Any]]]] = {}
    for launch_no in launch_nos:
        info = files.read_json(files.launch(launch_no))
        if isinstance(info, dict) and info.get("backend"):
            by_backend.setdefault(info["backend"], []).append((files, launch_no, info))
    asked: dict[str, list[tuple[JobFiles, int, dict[str, Any]]]] = {
        name: [(*launch_runner(f, a, i), i) for f, a, i in launches] for name, launches in by_backend.items()}
    states: dict[int, str] = {}
    for name, launches in by_backend.items():
        for (_, launch_no, _), answer in zip(launches, _backend(name).states(asked[name])):
            states[launch_no] = answer
    launches_read = [read_launch(files, launch_no, space, states=states, light=light) for launch_no in launch_nos]
    state = combine(launches_read, space, submitted_at=submitted_at)
    state.light = light and state.status == "running"
    return state


def combine(launches: list[LaunchState], space: RunSpace, *, submitted_at: float | None = None) -> JobState:
    """The job's state from its launches' states."""
    import time

    problems = [p for launch in launches for p in launch.problems]
    merged = Tally()
    for launch in launches:
        again = merged.done & launch.tally.done
        if again:
            # no path of the library launches a done run again (re-submission is one critical
            # section); a copied or restored launch folder does: count each run once
            problems.append(f"launch {launch.number} holds {len(again)} runs that an earlier launch also did "
                            f"(the first: run {space.id_at(again.nth(0))!r}): counting them twice would bias the "
                            "average, so its runs are left out (and missing unless done elsewhere); if "
                            f"attempts/{launch.number} in the job's folder is a copy, remove it")
            continue
        try:
            merged = merged.merged(launch.tally)
        except ValueError as error:
            problems.append(f"launch {launch.number}: {error}; its runs count as missing")
    tally = merged.resolved(space.id_at)
    done = tally.done
    crashed = Positions.of(tally.crashed) - done
    pending = Positions()
    for launch in launches:
        if launch.live and launch.plan is not None:
            # the runs of its plan a live launch has not yet done or failed: a run it
            # failed is failed now (it will not run it again), not pending until it ends
            pending = pending.union(launch.plan.positions - launch.tally.done - launch.tally.failed)
    pending = pending - done
    failed = tally.failed.union(crashed) - done - pending
    crashed = crashed - pending
    missing = space.all() - done - failed
    live = any(launch.live for launch in launches)
    reached = next((launch.target for launch in reversed(launches) if launch.target), None)
    if reached is not None and not live:
        missing = Positions()  # the target error was reached: the runs left are not needed (target_error=)
    latest = launches[-1] if launches else None
    fatal = latest.message if latest is not None and latest.phase in ("ended", "submit_failed", "abandoned") else None
    if live:
        status = "running"
    elif not launches:
        recent = submitted_at is not None and time.time() - submitted_at < LAUNCH_GRACE_S
        status = "running" if recent else "not_launched"
    elif latest is not None and latest.cancelled:
        status = "cancelled"
    elif not missing:
        status = "completed"
    elif latest is not None and latest.phase == "submit_failed":
        status = "submit_failed"
    elif latest is not None and latest.phase == "abandoned":
        status = "not_launched"
    else:
        status = "ended"
    return JobState(status, space, tally, done, failed, crashed, pending, missing, launches, problems, fatal,
                    target=reached)
