"""``python -m parallelaverage.worker JOBDIR LAUNCH``: what every MPI rank of a job runs.

Each rank claims runs (``mpi.dynamic_range``, or a static block), says in its status
record which run it is executing (:mod:`parallelaverage.jobfiles.rankstatus`), calls the
user's function, records the output in its :class:`~parallelaverage.jobfiles.tally.Tally`
(statistics and/or the kept output), and writes its tally as a snapshot: after its
first finished run, then every ``max(2 s, 100 × the snapshot's own write time)``
(longer over 500 ranks: the launch writes at most 250 snapshots per second), at most
every 60 s (:class:`SnapshotClock`), and on SLURM's SIGUSR1. At the end the ranks
merge their statistics with ``mpi.allreduce`` and rank 0 writes the launch's result.

A run ends in one of three ways, and only these:

* it returns: the output is recorded, or, if it cannot be (another shape than most
  runs, not numeric, not storable in the chosen encoding), the run fails alone;
* it raises *anything* — ``Exception``, ``SystemExit`` (``sys.exit``),
  ``KeyboardInterrupt``, ``GeneratorExit``: the run failed, with its traceback, and
  the rank goes on with the next run;
* it kills the process (segfault, ``abort``, ``os._exit``, the OOM killer): the
  status record still names the run, and ``faulthandler`` appended the signal and
  traceback; the caller reports that run as having crashed its rank.

Only a signal from outside (SIGTERM from ``scancel``/``cancel_job``/the time limit,
SIGINT) stops a rank, after a snapshot.

Knows nothing of decorators or the job database.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, Iterator

import numpy as np

from parallelaverage import _context, _kernels
from parallelaverage.jobfiles.layout import JobFiles, LaunchPlan
from parallelaverage.jobfiles.outputs import OutputWriter, encode_output
from parallelaverage.jobfiles.payload import Payload
from parallelaverage.jobfiles.rankstatus import RankStatus
from parallelaverage.jobfiles.tally import Tally, append_ranges, describe_layout, layout_of, read_life_tally
from parallelaverage.jobfiles.trust import load_pickle, write_pickle
from parallelaverage.runspace import Positions, RunSpace
from parallelaverage.stats import Welford
from parallelaverage._accumulator import add_prepared_all, from_spec, parse_spec, prepare_all, specs_for
from parallelaverage._target import TargetWatch
from parallelaverage._atomic import atomic_write_bytes
from parallelaverage._launch_check import world_mismatch
from parallelaverage.errors import say

__all__ = ["main", "SnapshotClock", "SNAPSHOT_MIN_INTERVAL_S", "SNAPSHOT_MAX_INTERVAL_S", "LAUNCH_SNAPSHOTS_PER_S"]

SNAPSHOT_MIN_INTERVAL_S = float(os.environ.get("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "2.0"))
"""Shortest time between two snapshots of a rank (the environment variable is for tests)."""
SNAPSHOT_MAX_INTERVAL_S = 60.0
"""Longest time between two snapshots of a rank, however slow a snapshot is to write."""
FINAL_WRITE_PATIENCE_S = float(os.environ.get("PARALLELAVERAGE_FINAL_WRITE_PATIENCE_S", "600"))
"""How long a rank keeps trying to write its last snapshot (and rank 0 the result) when
the file system refuses (full, over quota): finished runs exist only in its memory, and a
full disk is often freed by its user within minutes."""
SNAPSHOT_COST_FACTOR = 100.0
"""The interval is at least this many times the last snapshot's write time: writing
snapshots costs a rank at most 1 % of its time."""
LAUNCH_SNAPSHOTS_PER_S = 250.0
"""What a launch's ranks together may write per second, at most: each snapshot is a create,
a write, an fsync and a rename in the launch's folder and an append to the rank's done log,
so 250 snapshots/s are ~750 metadata operations/s on one directory of a parallel file
system (docs/scaling.md). Up to 500 ranks this leaves the interval at 2 s; 1,000 ranks
snapshot every 4 s."""


class SnapshotClock:
    """When a rank writes its next snapshot: after its first finished run, then every
    ``clamp(100 × last write time, max(2 s, ranks / 250 s), 60 s)``.

    This is the promise of ``docs/reliability.md``: a kill loses at most the runs in
    flight and the runs each rank finished since its last snapshot, that is, at most
    one interval of work per rank (2 s unless snapshots are slow to write or the launch
    has more than 500 ranks).

    Args:
        ranks: the launch's number of ranks, which share the file system's metadata
            budget (:data:`LAUNCH_SNAPSHOTS_PER_S`).
    """

    def __init__(self, min_s: float = SNAPSHOT_MIN_INTERVAL_S, max_s: float = SNAPSHOT_MAX_INTERVAL_S,
                 ranks: int = 1) -> None:
        if min_s > 0:  # 0 (tests only) keeps a snapshot after every run
            min_s = max(min_s, ranks / LAUNCH_SNAPSHOTS_PER_S)
        self.min_s, self.max_s = min_s, max(min_s, max_s)
        self.interval_s = min_s
        self.next_at = 0.0  # the first finished run triggers the first snapshot

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def written(self, started: float, finished: float) -> None:
        if self.min_s > 0:  # 0 (tests only): a snapshot after every run
            self.interval_s = min(self.max_s, max(self.min_s, SNAPSHOT_COST_FACTOR * (finished - started)))
        self.next_at = finished + self.interval_s


class RunRecorder:
    """Turns each run's outcome into the rank's tally and its kept outputs.

    The common case — a plain number or an array of the shape and dtype of the last
    run, averaged and not kept — takes a fast path: one ``Welford.add`` and one range
    update, about 0.5 µs. Anything else takes the general path, which names what
    cannot be averaged or stored.
    """

    def __init__(self, payload: Payload, writer: OutputWriter | None) -> None:
        self.average = payload.average  # None (keep only), "all", or a tuple of element indices
        self.statistics = payload.statistics  # more than the mean, per averaged element (statistics=)
        self.encoding = payload.encoding
        self.writer = writer
        self.tally = Tally()
        self.n_done = self.n_failed = 0
        self._fast_type: Any = None  # the kind of output the fast path takes, once seen
        self._fast_shape: Any = None
        self._fast_dtype: Any = None
        self._fast_add: Any = None
        self._fast_state: Any = None
        # the runs done on the fast path since the last flush: positions streak_start .. streak_end-1
        self.streak_start = self.streak_end = -1

    def flush(self) -> None:
        """Put the streak of fast-path runs into the tally's done runs (before a snapshot)."""
        if self.streak_end > self.streak_start:
            self.tally.done.add_range(self.streak_start, self.streak_end)
        self.streak_start = self.streak_end = -1

    def failed(self, position: int, message: str) -> None:
        self.flush()
        self.tally.fail(position, message)
        self.n_failed += 1

    def succeeded(self, position: int, run: Any, output: Any) -> None:
        kind = type(output)
        if kind is self._fast_type and (kind is not np.ndarray or (
                output.shape == self._fast_shape and output.dtype == self._fast_dtype)):
            try:
                self._fast_add(self._fast_state, output, 1.0)  # the kernel Welford.add calls for this kind
            except (TypeError, ValueError, OverflowError, BufferError):  # e.g. a non-contiguous view
                self.flush()
                self._fast_type = None
                return self._record(position, run, output)
            if position == self.streak_end:  # consecutive runs: one range update per streak
                self.streak_end = position + 1
            else:
                self.flush()
                self.streak_start, self.streak_end = position, position + 1
            self.n_done += 1
            return
        self.flush()
        self._fast_type = None  # the general path may replace the accumulator's state
        self._record(position, run, output)

    def _record(self, position: int, run: Any, output: Any) -> None:
        tally = self.tally
        group = prepared = None
        if self.average is not None:
            found = layout_of(output, self.average)
            if isinstance(found, str):
                return self.failed(position, f"run {run!r} {found}")
            layout, prepared = found
            group = tally.group_for(layout)
            if group is None:
                return self.failed(position, f"run {run!r} returned {describe_layout(layout)}; the runs "
                                             "returned too many different shapes to keep apart")
        encoded = None
        if self.writer is not None:
            try:
                encoded = encode_output(output, self.encoding, run if not isinstance(run, tuple) else list(run))
            except TypeError as error:
                return self.failed(position, f"run {run!r} {error}")
        if group is not None and prepared is not None:
            accumulators = group.accumulators
            try:
                more = _prepared_statistics(group, prepared, self.statistics) if self.statistics else ()
                for index, sample, weight in prepared:
                    acc = accumulators.get(index)
                    if acc is None:
                        acc = accumulators[index] = Welford()
                    acc.add(sample, weight)
                for kinds, items in more:
                    add_prepared_all(kinds, items, position)  # keyed by position: the batches of the jackknife
            except (TypeError, ValueError) as error:  # e.g. a dtype numpy cannot average
                return self.failed(position, f"run {run!r} returned an output that cannot be averaged: {error}")
            if layout[0] is not None:
                averaged = {index for index, _, _ in prepared}
                group.last_values = {i: v for i, v in enumerate(output) if i not in averaged}
                group.last_position = position
            if group.runs is not None:
                group.runs.add(position)
            elif self.writer is None and layout[0] is None and prepared[0][2] is None and not self.statistics:
                self._fast_path_for(output, accumulators[0])
        if encoded is not None and self.writer is not None:
            self.writer.append(position, encoded)
        tally.done.add(position)
        self.n_done += 1

    def _fast_path_for(self, output: Any, accumulator: Welford) -> None:
        """Later outputs of this kind (of the rank's first layout) skip the general path."""
        kind = type(output)
        if accumulator._state is None or accumulator._complex:
            return
        if kind is float or (kind is np.ndarray and output.dtype == np.float64 and output.flags.c_contiguous):
            self._fast_type, self._fast_add, self._fast_state = kind, _kernels.add, accumulator._state
            self._fast_shape = output.shape if kind is np.ndarray else None
            self._fast_dtype = output.dtype if kind is np.ndarray else None


def _prepared_statistics(group: Any, prepared: list[tuple[int, Any, Any]], statistics: Any) -> list[tuple[Any, Any]]:
    """The statistics of each averaged element of a run's output, checked before any is
    changed: a run whose output one of them refuses fails whole (raises)."""
    out = []
    for index, sample, weight in prepared:
        kinds = group.statistics.get(index)
        if kinds is None:
            kinds = group.statistics[index] = {parse_spec(spec)[0]: from_spec(spec) for spec in specs_for(statistics, index)}
        out.append((kinds, prepare_all(kinds, sample, weight)))
    return out


class Checkpoints:
    """Signals from outside turned into snapshots.

    SIGUSR1 (SLURM's warning before the time limit, ``--signal=USR1@60``) asks for a
    snapshot after the current run. SIGTERM and SIGINT (the time limit, ``scancel``,
    ``cancel_job``, Ctrl-C) write one at once and end the rank, unless the rank is in
    the middle of its bookkeeping: then right after it, so a snapshot is always
    consistent. Installed first thing, so a signal during start-up ends the rank
    cleanly too. Because SIGINT is handled here, a ``KeyboardInterrupt`` seen around a
    run can only come from the run's own code, and fails that run alone.
    """

    def __init__(self) -> None:
        self.requested = False
        self.busy = False
        self.terminating = 0
        self.snapshot: Any = None
        self.status: RankStatus | None = None

    def install(self) -> None:
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)

    def _on_usr1(self, signum: int, frame: Any) -> None:
        self.requested = True

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.terminating = signum
        if not self.busy:
            self.exit_now()

    def exit_now(self) -> None:
        if self.status is not None:
            self.status.stopped_by(self.terminating)
        if self.snapshot is not None:
            self.snapshot()
        if self.status is not None:
            self.status.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        exit_ = getattr(self.status, "real_exit", os._exit)
        exit_(128 + self.terminating)


CHECKPOINTS = Checkpoints()


class _Plan(Sequence[Any]):
    """A launch's runs as a sequence of run ids (for ``dynamic_range``), with positions."""

    def __init__(self, positions: Positions, space: RunSpace) -> None:
        self.space = space
        self.ranges = positions.ranges()
        self.offsets = []
        total = 0
        for start, stop in self.ranges:
            self.offsets.append(total)
            total += stop - start
        self.total = total
        self.flat = space.flat

    def __len__(self) -> int:
        return self.total

    def base_of(self, start: int, stop: int) -> int | None:
        """``b`` such that the positions of indices ``start .. stop-1`` are ``b + index``, when
        they lie in one range of the plan (always, for a plain ``N_runs``); else None."""
        if len(self.ranges) == 1:
            return self.ranges[0][0]
        import bisect

        k = bisect.bisect_right(self.offsets, start) - 1
        first, last = self.ranges[k]
        if stop - self.offsets[k] <= last - first:
            return first - self.offsets[k]
        return None

    def position(self, index: int) -> int:
        if len(self.ranges) == 1:
            return self.ranges[0][0] + index
        import bisect

        k = bisect.bisect_right(self.offsets, index) - 1
        return self.ranges[k][0] + index - self.offsets[k]

    def __getitem__(self, index: Any) -> Any:
        position = self.position(index)
        return position if self.flat else self.space.id_at(position)


def _chunks_for_rank(total: int, dynamic: bool, comm: Any, stack: contextlib.ExitStack) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` indices into the launch's runs that this rank executes: claimed chunk
    by chunk from the shared counter (freed when ``stack`` closes, on every rank, also when
    this rank stops early), or one static block per rank."""
    if dynamic:
        from parallelaverage.mpi import RunCounter

        counter = stack.enter_context(RunCounter(total, comm))
        return counter.chunks()
    rank, size = comm.Get_rank(), comm.Get_size()
    return iter([(total * rank // size, total * (rank + 1) // size)])


def _failure_text(error: BaseException) -> str:
    """The traceback from the user's function down, without the worker's frame."""
    below_worker = error.__traceback__.tb_next if error.__traceback__ is not None else None
    return "".join(traceback.format_exception(type(error), error, below_worker))


class _RunEnviron(os._Environ):
    """``os.environ`` while runs execute: ``RUN_ID`` is read from the run being executed.

    Writing ``os.environ["RUN_ID"]`` before every run cost 1.7 µs (a ``putenv`` and a
    string); Python code that reads it now gets the current run id for free. Child
    processes read the C environment, which :func:`execute` updates before a run when
    the rank's runs take at least a millisecond (a run that starts a process does).
    """

    def __getitem__(self, key: Any) -> Any:
        if key == "RUN_ID" and _context._current is not _context._NO_RUN:
            return str(_context._current)
        return super().__getitem__(key)


def _lazy_run_id_environ() -> None:
    os.environ.setdefault("RUN_ID", "")
    if type(os.environ) is os._Environ:
        os.environ.__class__ = _RunEnviron


STATUS_EVERY_S = 0.25
"""How often a rank copies its counts into its status record (for the caller's progress)."""

DEADLINE_MARGIN_S = 15.0
"""A rank stops claiming runs when its allocation has less than ``max(15 s, 3 × its longest
run)`` left: what is left then is a margin for the last run, the snapshot and the merge."""


def _deadline() -> float | None:
    """When the allocation ends, on this process's monotonic clock (the SLURM job script
    exports the job's end time; a local launch has none)."""
    value = os.environ.get("PARALLELAVERAGE_END_TIME", "")
    if not value.isdigit():
        return None
    return time.monotonic() + (int(value) - time.time())


class Member:
    """One job's share of a launch on this rank: its function, its runs, what it recorded.

    A launch runs one job, or, for ``f.map``, the calls of many jobs under one shared
    counter: the launch's runs are the members' plans one after the other, member ``m``
    holding the indices ``offset .. offset + len(plan) - 1``.
    """

    def __init__(self, files: JobFiles, launch_no: int, life: int, rank: int, payload: Payload,
                 plan: LaunchPlan, space: RunSpace, offset: int) -> None:
        self.files, self.launch_no, self.life, self.rank = files, launch_no, life, rank
        self.payload, self.space, self.offset = payload, space, offset
        self.plan = plan
        self.runs = _Plan(plan.positions, space)
        self.writer = OutputWriter(files.outputs(launch_no, rank, payload.encoding, life), payload.encoding) \
            if payload.keep_runs else None
        self.recorder = RunRecorder(payload, self.writer)
        self.snapshot_path = files.snapshot(launch_no, rank, life)
        self.log_path = files.done_log(launch_no, rank, life)
        self.logged_pairs = self.logged_index = 0
        self.snapshotted = -1  # runs recorded at the last snapshot
        # target_error=: rank 0 watches the merged error; once below, the rest of the runs
        # are claimed without being run, so that every rank's claims end (see _target)
        self.watch = TargetWatch(files, launch_no, payload.target[0], payload.target[1], life=life) \
            if payload.target and rank == 0 else None
        self.stopped = False

    @property
    def recorded(self) -> int:
        return self.recorder.n_done + self.recorder.n_failed

    def snapshot(self) -> None:
        """Write the tally: the done runs new since the last snapshot go to the rank's done
        log, the rest (statistics, failures) to the snapshot, so that a snapshot's size does
        not grow with the runs done.

        Raises:
            OSError: the file system refused (the caller says why and tries again later).
        """
        recorder = self.recorder
        recorder.flush()
        if self.recorded == self.snapshotted and self.snapshot_path.exists():
            return  # nothing new since the last one
        tally = recorder.tally
        if self.writer is not None:
            self.writer.flush()  # outputs are durable before a snapshot names their runs
        new = tally.done.ranges_from(max(0, self.logged_index - 1))  # the last range may have grown
        append_ranges(self.log_path, new)
        self.logged_pairs += len(new)
        self.logged_index = tally.done.n_ranges
        write_pickle(self.snapshot_path, Tally(Positions(), tally.failed, tally.errors, {}, tally.groups,
                                               done_log=(self.log_path.name, self.logged_pairs)))
        self.snapshotted = self.recorded

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def execute(members: list[Member], comm: Any, status: RankStatus) -> bool:
    """Run this rank's share of the launch (every member's runs under one counter); return
    whether it stopped claiming runs because its allocation was about to end. Each
    member's tally is in ``member.recorder.tally`` (and on disk)."""
    rank = comm.Get_rank()
    checkpoints = CHECKPOINTS
    clock = SnapshotClock(ranks=comm.Get_size())
    now = time.monotonic
    wall = time.time
    slots = status.slots

    def publish_counts() -> None:
        slots[RankStatus.DONE] = sum(m.recorder.n_done for m in members)
        slots[RankStatus.FAILED] = sum(m.recorder.n_failed for m in members)
        slots[RankStatus.PUBLISHED_US] = int(wall() * 1e6)  # the caller's sign of life: no squeue needed

    def snapshot() -> bool:
        """Snapshot every member; a rank that cannot write (disk full) says why in its status
        and goes on, trying again at the next interval. Returns whether all were written."""
        checkpoints.busy = True
        started = now()
        written = True
        for member in members:
            try:
                member.snapshot()
            except OSError as error:
                report_write_error(status, rank, f"cannot write its snapshot {member.snapshot_path}", error)
                written = False
        if written:
            status.clear_error()
            status.snapshot_written()
        publish_counts()
        clock.written(started, now())
        checkpoints.busy = False
        return written

    checkpoints.snapshot = snapshot
    in_flight = RankStatus.IN_FLIGHT
    _lazy_run_id_environ()
    putenv = os.putenv
    status.set_stage("running")
    every_s = STATUS_EVERY_S if clock.min_s > 0 else 0.0  # 0: a snapshot after every run (tests)
    previous = now()
    next_status = previous + every_s
    slow = True
    end = _deadline()
    stop_at = float("inf") if end is None else end - DEADLINE_MARGIN_S
    longest = 0.0
    stopped_early = False
    enter_run, set_seed = _context.enter_run, _context.set_job_seed
    offsets = [member.offset for member in members]
    member_index = {id(member): i for i, member in enumerate(members)}
    total = sum(len(member.runs) for member in members)
    current = None
    with contextlib.ExitStack() as stack:  # leaving it frees the run counter, on every rank
        for chunk_start, chunk_stop in _chunks_for_rank(total, members[0].payload.dynamic_load_balancing, comm, stack):
            start = chunk_start
            while start < chunk_stop:  # the chunk, member by member
                member = members[bisect.bisect_right(offsets, start) - 1] if len(members) > 1 else members[0]
                stop = min(chunk_stop, member.offset + len(member.runs))
                if member is not current:
                    current = member
                    slots[RankStatus.MEMBER] = member_index[id(member)]
                    set_seed(member.payload.seed)
                    _context.set_stream_generation(member.plan.stream_generation)
                    function, args, kwargs = member.payload.function, member.payload.args, member.payload.kwargs
                    succeeded, failed = member.recorder.succeeded, member.recorder.failed
                    runs, flat, id_at = member.runs, member.space.flat, member.space.id_at
                offset = member.offset
                if member.stopped:  # its target error is reached: its runs are claimed, not run
                    start = stop
                    continue
                base = runs.base_of(start - offset, stop - offset)  # within one range: positions base + index
                for index in range(start - offset, stop - offset):
                    position = base + index if base is not None else runs.position(index)
                    run = position if flat else id_at(position)
                    enter_run(run)
                    slots[in_flight] = position
                    if slow:  # runs of a millisecond or more: child processes see the run id too
                        putenv("RUN_ID", str(run))
                    try:
                        output = function(*args, **kwargs)
                    except BaseException as error:  # sys.exit, KeyboardInterrupt...: this run failed, not the rank
                        checkpoints.busy = True
                        failed(position, _failure_text(error))
                    else:
                        checkpoints.busy = True
                        succeeded(position, run, output)
                    slots[in_flight] = -1
                    checkpoints.busy = False
                    if checkpoints.terminating:
                        checkpoints.exit_now()
                    moment = now()
                    took = moment - previous
                    slow = took >= 1e-3
                    previous = moment
                    if took > longest:
                        longest = took
                        if end is not None:
                            stop_at = end - max(DEADLINE_MARGIN_S, 3 * longest)
                    if moment >= stop_at:  # too little time for another run: leave the rest to the next life
                        stopped_early = True
                        break
                    if moment >= next_status:  # at most every 0.25 s, whatever the runs cost
                        if checkpoints.requested or clock.due(moment):
                            snapshot()
                            checkpoints.requested = False
                        else:
                            publish_counts()
                        next_status = moment + every_s
                    elif clock.next_at == 0.0:  # the first snapshot, after the first run
                        snapshot()
                    watch = member.watch
                    if watch is not None and watch.due(moment):
                        member.recorder.flush()
                        if watch.reached(member.recorder.tally, rank):
                            member.stopped = True  # rank 0 now claims the rest of its runs without running them
                            break
                if stopped_early:
                    break
                start = stop
            if stopped_early:
                break
    _context.leave_runs()
    patiently(snapshot)
    for member in members:
        member.close()
    return stopped_early


def report_write_error(status: RankStatus, rank: int, what: str, error: OSError) -> None:
    """Say why a write failed where the caller looks (the status record, whose space
    exists) and on stderr if it can still be written."""
    message = f"{what}: {error.strerror or error}"
    status.set_error(message)
    status.flush()
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return  # stderr is probably on the same full file system, and mpiexec dies of a failed write
    try:
        say(f"rank {rank} {message}", file=sys.stderr)
    except OSError:
        pass


def patiently(write: Any, patience_s: float | None = None) -> bool:
    """Call ``write()`` (which returns whether it succeeded) until it does, with growing
    pauses, for at most ``patience_s``: the last snapshot and the result hold runs that
    exist nowhere else."""
    patience_s = FINAL_WRITE_PATIENCE_S if patience_s is None else patience_s
    deadline = time.monotonic() + patience_s
    pause_s = 0.5
    while not write():
        if time.monotonic() + pause_s > deadline:
            return False
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, 10.0)
    return True


def merge_and_write(files: JobFiles, launch_no: int, tally: Tally, comm: Any, status: RankStatus,
                    life: int = 0, planned: int = 0) -> int:
    """Merge every rank's tally (statistics by allreduce, one per layout and element);
    rank 0 writes the life's result. Returns (on every rank) how many planned runs are left."""
    from parallelaverage import mpi

    layouts = sorted({layout for part in comm.allgather([g.layout for g in tally.groups]) for layout in part},
                     key=repr)
    mine = {group.layout: group for group in tally.groups}
    groups = []
    for layout in layouts:
        group = mine.get(layout)
        indices = sorted({i for part in comm.allgather(sorted(group.accumulators) if group else []) for i in part})
        merged = {i: mpi.allreduce(group.accumulators.get(i, Welford()) if group else Welford(), comm, inplace=True)
                  for i in indices}
        groups.append(merged)
    statistics = _merged_statistics(tally, layouts, comm)  # statistics=: all of them in one collective
    bookkeeping = Tally(tally.done, tally.failed, tally.errors, {},
                        [type(g)(g.layout, g.runs, {}, g.last_values, g.last_position) for g in tally.groups])
    parts = comm.gather(bookkeeping, root=0)
    if comm.Get_rank() != 0:
        return int(comm.bcast(None, root=0))
    result = Tally()
    for part in parts:
        result = result.merged(part)
    by_layout = {group.layout: group for group in result.groups}
    for layout, accumulators in zip(layouts, groups):
        if layout in by_layout:
            by_layout[layout].accumulators = accumulators
            by_layout[layout].statistics = statistics.get(layout, {})

    def write_result() -> bool:
        try:
            write_pickle(files.result(launch_no, life), result)
        except OSError as error:
            report_write_error(status, 0, f"cannot write the launch's result {files.result(launch_no, life)}", error)
            return False
        status.clear_error()
        return True

    if not patiently(write_result):
        raise OSError(f"gave up writing {files.result(launch_no, life)} after {FINAL_WRITE_PATIENCE_S:g} s")
    return int(comm.bcast(max(0, planned - len(result.done) - len(result.failed)), root=0))


def _merged_statistics(tally: Tally, layouts: list[Any], comm: Any) -> dict[Any, dict[int, dict[str, Any]]]:
    """Every rank's ``statistics=`` accumulators merged, by layout, element and kind: one
    ``MPI_Allreduce`` for all of them (:func:`parallelaverage._collective.allreduce_many`).
    A rank that lacks one (it ran no run of that layout) sends an empty one."""
    mine = {group.layout: group for group in tally.groups}
    held = sorted({(repr(layout), index, acc.spec) for layout in layouts if layout in mine
                   for index, kinds in mine[layout].statistics.items() for acc in kinds.values()})
    wanted = sorted({key for part in comm.allgather(held) for key in part})
    if not wanted:
        return {}
    by_repr = {repr(layout): layout for layout in layouts}
    entries = []
    for layout_repr, index, spec in wanted:
        layout = by_repr[layout_repr]
        kind = parse_spec(spec)[0]
        group = mine.get(layout)
        acc = group.statistics.get(index, {}).get(kind) if group is not None else None
        entries.append((layout, index, kind, acc if acc is not None else from_spec(spec)))
    from parallelaverage import _collective

    merged: dict[Any, dict[int, dict[str, Any]]] = {}
    for (layout, index, kind, _), acc in zip(entries, _collective.allreduce_many([e[3] for e in entries], comm)):
        merged.setdefault(layout, {}).setdefault(index, {})[kind] = acc
    return merged


def _load_payload(files: JobFiles) -> Payload:
    payload = load_pickle(files.payload)
    if isinstance(payload, dict):
        payload = Payload.legacy(payload)
    if not isinstance(payload, Payload):
        raise ValueError(f"{files.payload} is not a parallelaverage payload")
    return payload


def _members_of(files: JobFiles, launch_no: int, life: int, comm: Any) -> list[Member]:
    """The jobs this launch runs (one, or a batch's) with what is left of their plans in this
    life: rank 0 reads and seals, the others receive it."""
    rank = comm.Get_rank()
    described = None
    if rank == 0:
        batch = files.batch
        if batch.exists():
            entries = json.loads(batch.read_bytes())["members"]
            jobs = [(JobFiles(entry["dir"]), int(entry["launch"])) for entry in entries]
        else:
            jobs = [(files, launch_no)]
        described = [(str(job.dir), number, *_plan_of_this_life(job, number, life)) for job, number in jobs]
    described = comm.bcast(described, root=0)
    members, offset = [], 0
    for directory, number, plan, space in described:
        job = JobFiles(directory)
        payload = _load_payload(job)
        payload.restore_sources()
        members.append(Member(job, number, life, rank, payload, plan, space, offset))
        offset += len(plan.positions)
    return members


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m parallelaverage.worker JOBDIR LAUNCH", file=sys.stderr)
        return 2
    CHECKPOINTS.install()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    files, launch_no = JobFiles(argv[0]), int(argv[1])
    mismatch = world_mismatch(comm.Get_size(), os.environ, MPI.Get_library_version())
    if mismatch is not None:  # alone in its world, this process would run every run: none at all
        atomic_write_bytes(files.fatal(launch_no, comm.Get_rank()), mismatch.encode())
        say(mismatch, file=sys.stderr)
        return 1
    rank = comm.Get_rank()
    life = _life()
    files.life_dir(launch_no, life).mkdir(mode=0o700, exist_ok=True)
    status = RankStatus(files.rank_status(launch_no, rank, life))
    status.catch_crashes()
    CHECKPOINTS.status = status
    try:
        members = _members_of(files, launch_no, life, comm)
        for member in members:
            member.files.life_dir(member.launch_no, life).mkdir(mode=0o700, exist_ok=True)
        stopped_early = execute(members, comm, status)
    except Exception:
        # e.g. the function's module cannot be imported here: say so where the caller looks
        return _fatal(files, launch_no, rank, status, comm, life)
    status.set_stage("merging")
    left = 0
    try:
        for member in members:
            left += merge_and_write(member.files, member.launch_no, member.recorder.tally, comm, status, life,
                                    len(member.plan.positions))
    except Exception:
        # every run is in the snapshots, which the caller merges instead; the
        # traceback and the exit code tell it why it has to
        traceback.print_exc()
        status.set_error(traceback.format_exc(limit=4))
        status.flush()
        comm.Abort(1)
        return 1
    status.set_stage("finished")
    status.flush()
    # a life that stopped before its time limit with runs left asks its job script to requeue it
    if comm.allreduce(int(stopped_early)) and left:
        if rank == 0:
            for member in members:
                atomic_write_bytes(member.files.life_end(member.launch_no, life), json.dumps(
                    {"reason": "deadline", "left": left, "life": life}).encode())
            if files.dir != members[0].files.dir:
                atomic_write_bytes(files.life_end(launch_no, life), json.dumps(
                    {"reason": "deadline", "left": left, "life": life}).encode())
        return REQUEUE_ME
    return 0


REQUEUE_ME = 75
"""The exit status with which the ranks of a life that stopped at its time limit (with runs
left) ask the job script to requeue the launch (``EX_TEMPFAIL``)."""


def _life() -> int:
    """Which life of its launch this is: 0, or how often SLURM requeued the launch (the job
    script exports it; a user's template without it still has SLURM's own count; a local
    launch exports 0, also when started inside an allocation)."""
    value = os.environ.get("PARALLELAVERAGE_LIFE", os.environ.get("SLURM_RESTART_COUNT", "0"))
    return int(value) if value.isdigit() else 0


def _plan_of_this_life(files: JobFiles, launch_no: int, life: int) -> tuple[LaunchPlan, RunSpace]:
    """The launch's plan, less what its earlier lives did: each earlier life is sealed first,
    so that a rank of an earlier life still running (on a node SLURM gave up on) cannot
    make a run count twice."""
    plan, space = LaunchPlan.read_with_space(files.runs(launch_no))
    if life == 0:
        return plan, space
    earlier = Tally()
    for before in [n for n in files.lives(launch_no) if n < life]:
        seal = files.life_seal(launch_no, before)
        problems: list[str] = []
        tally, _ = read_life_tally(files, launch_no, before, problems)
        if not seal.exists():
            write_pickle(seal, tally)
        for problem in problems:
            say(f"life {life} of launch {launch_no}: {problem}", file=sys.stderr)
        earlier = earlier.merged(tally)
    left = plan.positions.difference(earlier.done).difference(earlier.failed)
    return LaunchPlan(left, plan.stream_generation), space


def _fatal(files: JobFiles, launch_no: int, rank: int, status: RankStatus, comm: Any, life: int = 0) -> int:
    text = traceback.format_exc()
    status.set_stage("failed_to_start")
    status.set_error(text[-3000:])
    status.flush()
    try:
        files.fatal(launch_no, rank, life).write_text(text)
    except OSError:
        pass
    traceback.print_exc()
    comm.Abort(1)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
