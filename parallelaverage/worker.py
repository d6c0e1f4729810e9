"""``python -m parallelaverage.worker JOBDIR LAUNCH``: what every MPI rank of a job runs.

Each rank claims runs (``mpi.dynamic_range``, or a static block), says in its status
record which run it is executing (:mod:`parallelaverage.jobfiles.rankstatus`), calls the
user's function, records the output in its :class:`~parallelaverage.jobfiles.tally.Tally`
(statistics and/or the kept output), and writes its tally as a snapshot: after its
first finished run, then every ``max(2 s, 100 × the snapshot's own write time)``, at
most every 60 s (:class:`SnapshotClock`), and on SLURM's SIGUSR1. At the end the ranks
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

import errno
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, Iterator

import numpy as np

from parallelaverage import _context
from parallelaverage.jobfiles.layout import JobFiles, LaunchPlan
from parallelaverage.jobfiles.outputs import OutputWriter, encode_output
from parallelaverage.jobfiles.payload import Payload
from parallelaverage.jobfiles.rankstatus import RankStatus
from parallelaverage.jobfiles.tally import Tally, append_ranges, describe_layout, layout_of
from parallelaverage.jobfiles.trust import load_pickle, write_pickle
from parallelaverage.runspace import Positions, RunSpace
from parallelaverage.stats import Welford
from parallelaverage._accumulator import add_prepared_all, from_spec, parse_spec, prepare_all, specs_for
from parallelaverage._target import TargetWatch
from parallelaverage._atomic import atomic_write_bytes
from parallelaverage._launch_check import world_mismatch
from parallelaverage.errors import say

__all__ = ["main", "SnapshotClock", "SNAPSHOT_MIN_INTERVAL_S", "SNAPSHOT_MAX_INTERVAL_S"]

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


class SnapshotClock:
    """When a rank writes its next snapshot: after its first finished run, then every
    ``clamp(100 × last write time, 2 s, 60 s)``.

    This is the promise of ``docs/reliability.md``: a kill loses at most the runs in
    flight and the runs each rank finished since its last snapshot, that is, at most
    one interval of work per rank (2 s unless snapshots are slow to write).
    """

    def __init__(self, min_s: float = SNAPSHOT_MIN_INTERVAL_S, max_s: float = SNAPSHOT_MAX_INTERVAL_S) -> None:
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

    def failed(self, position: int, message: str) -> None:
        self.tally.fail(position, message)
        self.n_failed += 1

    def succeeded(self, position: int, run: Any, output: Any) -> None:
        kind = type(output)
        if kind is self._fast_type and (kind is not np.ndarray or (
                output.shape == self._fast_shape and output.dtype == self._fast_dtype)):
            self._fast_add(output)
            self.tally.done.add(position)
            self.n_done += 1
            return
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
        if kind is float or (kind is np.ndarray and output.dtype.kind in "fc" and output.flags.c_contiguous):
            self._fast_type, self._fast_add = kind, accumulator.add
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

    def position(self, index: int) -> int:
        if len(self.ranges) == 1:
            return self.ranges[0][0] + index
        import bisect

        k = bisect.bisect_right(self.offsets, index) - 1
        return self.ranges[k][0] + index - self.offsets[k]

    def __getitem__(self, index: Any) -> Any:
        position = self.position(index)
        return position if self.flat else self.space.id_at(position)


def _runs_for_rank(plan: _Plan, payload: Payload, comm: Any) -> Iterator[tuple[int, Any]]:
    """``(position, run id)`` of the runs this rank executes."""
    if payload.dynamic_load_balancing:
        from parallelaverage import mpi

        if plan.flat:
            for run in mpi.dynamic_range(plan, comm):
                yield run, run
        else:
            position_of = plan.space.position_of
            for run in mpi.dynamic_range(plan, comm):
                yield position_of(run), run
        return
    rank, size = comm.Get_rank(), comm.Get_size()
    for index in range(plan.total * rank // size, plan.total * (rank + 1) // size):  # one block per rank
        run = plan[index]
        _context._set_run(run)
        yield plan.position(index), run
    _context._set_run(_context._NO_RUN)


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


def execute(files: JobFiles, attempt: int, comm: Any, status: RankStatus, payload: Payload,
            plan: LaunchPlan, space: RunSpace) -> Tally:
    """Run this rank's share of the launch; return its tally (also on disk)."""
    rank = comm.Get_rank()
    writer = OutputWriter(files.outputs(attempt, rank, payload.encoding), payload.encoding) if payload.keep_runs else None
    recorder = RunRecorder(payload, writer)
    snapshot_path = files.snapshot(attempt, rank)
    log_name = f"done-r{rank}.ranges"
    log_path = files.attempt_dir(attempt) / log_name
    logged = {"pairs": 0, "index": 0}
    checkpoints = CHECKPOINTS
    clock = SnapshotClock()
    now = time.monotonic
    slots = status.slots

    def publish_counts() -> None:
        slots[RankStatus.DONE] = recorder.n_done
        slots[RankStatus.FAILED] = recorder.n_failed

    def snapshot() -> bool:
        """Write the tally: the done runs new since the last snapshot go to the rank's done
        log, the rest (statistics, failures) to the snapshot, so that a snapshot's size
        does not grow with the runs done. A rank that cannot write (disk full) says why
        in its status and goes on, trying again at the next interval."""
        checkpoints.busy = True
        started = now()
        tally = recorder.tally
        try:
            if writer is not None:
                writer.flush()  # outputs are durable before a snapshot names their runs
            new = tally.done.ranges_from(max(0, logged["index"] - 1))  # the last range may have grown
            append_ranges(log_path, new)
            logged["pairs"] += len(new)
            logged["index"] = tally.done.n_ranges
            write_pickle(snapshot_path, Tally(Positions(), tally.failed, tally.errors, {}, tally.groups,
                                              done_log=(log_name, logged["pairs"])))
        except OSError as error:
            report_write_error(status, rank, f"cannot write its snapshot {snapshot_path}", error)
            written = False
        else:
            status.clear_error()
            status.snapshot_written()
            written = True
        publish_counts()
        clock.written(started, now())
        checkpoints.busy = False
        return written

    checkpoints.snapshot = snapshot
    in_flight = RankStatus.IN_FLIGHT
    function, args, kwargs = payload.function, payload.args, payload.kwargs
    succeeded, failed = recorder.succeeded, recorder.failed
    _lazy_run_id_environ()
    putenv = os.putenv
    status.set_stage("running")
    every_s = STATUS_EVERY_S if clock.min_s > 0 else 0.0  # 0: a snapshot after every run (tests)
    previous = now()
    next_status = previous + every_s
    slow = True
    watch = TargetWatch(files, attempt, *payload.target) if payload.target and rank == 0 else None
    stopped = False  # target_error reached: the runs left are claimed, not run, so every rank's claims end
    for position, run in _runs_for_rank(_Plan(plan.positions, space), payload, comm):
        if stopped:
            continue
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
        slow = moment - previous >= 1e-3
        previous = moment
        if moment >= next_status:  # at most every 0.25 s, whatever the runs cost
            if checkpoints.requested or clock.due(moment):
                snapshot()
                checkpoints.requested = False
            else:
                publish_counts()
            next_status = moment + every_s
        elif clock.next_at == 0.0:  # the first snapshot, after the first run
            snapshot()
        if watch is not None and watch.due(moment) and watch.reached(recorder.tally, rank):
            stopped = True
    patiently(snapshot)
    if writer is not None:
        writer.close()
    return recorder.tally


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


def merge_and_write(files: JobFiles, attempt: int, tally: Tally, comm: Any, status: RankStatus) -> None:
    """Merge every rank's tally (statistics by allreduce, one per layout and element);
    rank 0 writes the launch's result."""
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
        return
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
            write_pickle(files.result(attempt), result)
        except OSError as error:
            report_write_error(status, 0, f"cannot write the launch's result {files.result(attempt)}", error)
            return False
        status.clear_error()
        return True

    if not patiently(write_result):
        raise OSError(f"gave up writing {files.result(attempt)} after {FINAL_WRITE_PATIENCE_S:g} s")


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


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m parallelaverage.worker JOBDIR LAUNCH", file=sys.stderr)
        return 2
    CHECKPOINTS.install()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    files, attempt = JobFiles(argv[0]), int(argv[1])
    mismatch = world_mismatch(comm.Get_size(), os.environ, MPI.Get_library_version())
    if mismatch is not None:  # alone in its world, this process would run every run: none at all
        atomic_write_bytes(files.fatal(attempt, comm.Get_rank()), mismatch.encode())
        say(mismatch, file=sys.stderr)
        return 1
    rank = comm.Get_rank()
    status = RankStatus(files.rank_status(attempt, rank))
    status.catch_crashes()
    CHECKPOINTS.status = status
    try:
        payload = _load_payload(files)
        payload.restore_sources()
        # only rank 0 reads the plan (a list of ranges), the others get it by broadcast
        plan, space = comm.bcast(LaunchPlan.read_with_space(files.runs(attempt)) if rank == 0 else None, root=0)
        _context.set_job_seed(payload.seed)
        _context.set_stream_generation(plan.stream_generation)
        tally = execute(files, attempt, comm, status, payload, plan, space)
    except Exception:
        # e.g. the function's module cannot be imported here: say so where the caller looks
        return _fatal(files, attempt, rank, status, comm)
    status.set_stage("merging")
    try:
        merge_and_write(files, attempt, tally, comm, status)
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
    return 0


def _fatal(files: JobFiles, attempt: int, rank: int, status: RankStatus, comm: Any) -> int:
    text = traceback.format_exc()
    status.set_stage("failed_to_start")
    status.set_error(text[-3000:])
    status.flush()
    try:
        files.fatal(attempt, rank).write_text(text)
    except OSError:
        pass
    traceback.print_exc()
    comm.Abort(1)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
