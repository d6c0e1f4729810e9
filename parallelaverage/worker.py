"""``python -m parallelaverage.worker JOBDIR ATTEMPT``: what every MPI rank of a job runs.

Each rank claims runs from the shared counter (``mpi.dynamic_range``), calls the
user's function, feeds the outputs to ``Welford`` accumulators and/or appends them to
its output file, and writes a snapshot of its progress at most every
``SNAPSHOT_INTERVAL_S`` (and when SLURM sends SIGUSR1 before the time limit). At the
end the ranks merge their statistics with ``mpi.allreduce`` and rank 0 writes the
launch's result atomically. Knows nothing of decorators or the job database.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import sys
import time
import traceback
from typing import Any

import numpy as np

from parallelaverage import _context
from parallelaverage._atomic import atomic_write_bytes
from parallelaverage._jobfiles import JobFiles, OutputWriter, Progress, process_start_ticks, write_pickle
from parallelaverage._launch_check import world_mismatch
from parallelaverage.errors import say
from parallelaverage.stats import WeightedSample, Welford

SNAPSHOT_INTERVAL_S = float(os.environ.get("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "2.0"))
"""Seconds between snapshots of a rank's progress (the environment variable is for tests)."""
_NUMERIC = "biufc"


class RunRecorder:
    """Turns each run's output into progress: statistics, kept outputs, failures."""

    def __init__(self, average: Any, writer: OutputWriter | None) -> None:
        self.average = average  # None (keep only), "all", or a tuple of element indices
        self.writer = writer
        self.progress = Progress()

    def failed(self, run: Any, message: str) -> None:
        self.progress.failed[run] = message

    def succeeded(self, run: Any, output: Any) -> None:
        if self.average is not None:
            problem = self._accumulate(run, output)
            if problem is not None:
                self.progress.failed[run] = problem
                return
        if self.writer is not None:
            self.writer.append(run, output)
        self.progress.finished.append(run)

    def _accumulate(self, run: Any, output: Any) -> str | None:
        """Add the averaged elements of `output`; a message instead if it cannot be averaged."""
        progress = self.progress
        is_tuple = isinstance(output, tuple)
        elements = output if is_tuple else (output,)
        length = len(elements) if is_tuple else None
        if progress.tuple_length != length and (progress.finished or progress.accumulators):
            return (f"run {run!r} returned {_describe(output)}, but earlier runs returned "
                    f"{'a tuple of ' + str(progress.tuple_length) if progress.tuple_length else 'a single value'}")
        indices = range(len(elements)) if self.average == "all" else self.average
        prepared = []
        for index in indices:
            if index >= len(elements):
                return f"run {run!r} returned {_describe(output)}: no element {index} to average"
            element = elements[index]
            sample, weight = (element.sample, element.weight) if isinstance(element, WeightedSample) else (element, None)
            array = np.asarray(sample) if not isinstance(sample, np.ndarray) else sample
            if array.dtype.kind not in _NUMERIC:
                return (f"run {run!r} returned {_describe(sample)}, which cannot be averaged: return "
                        "numbers or numeric arrays, or use @parallel to keep outputs as they are")
            acc = progress.accumulators.get(index)
            if acc is not None and acc.shape != array.shape:
                return (f"run {run!r} returned an array of shape {array.shape} (element {index}), "
                        f"earlier runs returned shape {acc.shape}")
            if weight is not None and not (isinstance(weight, (int, float, np.integer, np.floating))
                                           and 0 <= float(weight) < float("inf")):
                return f"run {run!r} returned the weight {weight!r}: weights must be finite and >= 0"
            prepared.append((index, sample, weight))
        for index, sample, weight in prepared:
            progress.accumulators.setdefault(index, Welford()).add(sample, weight)
        progress.tuple_length = length
        for index, element in enumerate(elements):
            if index not in indices:
                progress.last_values[index] = element
        return None


def _describe(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _runs_for_rank(runs: list[Any], payload: dict[str, Any], comm: Any):
    if payload.get("dynamic_load_balancing", True):
        from parallelaverage import mpi

        return mpi.dynamic_range(runs, comm)
    return _static_runs(runs[comm.Get_rank() :: comm.Get_size()])


def _static_runs(runs: list[Any]):
    for run in runs:
        _context._set_run(run)
        yield run


class Checkpoints:
    """Signals turned into snapshots.

    SIGUSR1 (SLURM's warning before the time limit, ``--signal=USR1@60``) asks for a
    snapshot after the current run. SIGTERM (the time limit itself, ``scancel``,
    ``cancel_job``) writes one at once and ends the rank, unless the rank is in the
    middle of its bookkeeping: then right after it, so a snapshot is always consistent.
    Installed first thing, so a signal during start-up ends the rank cleanly too.
    """

    def __init__(self) -> None:
        self.requested = False
        self.busy = False
        self.terminating = 0
        self.snapshot: Any = None

    def install(self) -> None:
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_usr1(self, signum: int, frame: Any) -> None:
        self.requested = True

    def _on_term(self, signum: int, frame: Any) -> None:
        self.terminating = signum
        if not self.busy:
            self.exit_now()

    def exit_now(self) -> None:
        if self.snapshot is not None:
            self.snapshot()
        sys.stdout.flush()
        os._exit(128 + self.terminating)


CHECKPOINTS = Checkpoints()


def execute(files: JobFiles, attempt: int, comm: Any) -> Progress:
    """Run this rank's share of the launch; return its progress (also on disk)."""
    rank = comm.Get_rank()
    # who we are, so that a caller can tell whether this rank still runs (and writes)
    atomic_write_bytes(files.rank_info(attempt, rank), json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid())}
    ).encode())
    payload = pickle.loads(files.payload.read_bytes())
    runs = files.read_runs(attempt)
    function, args, kwargs = payload["function"], payload["args"], payload["kwargs"]
    _context.set_job_seed(payload.get("seed", 0))
    writer = None
    if payload.get("keep_runs"):
        writer = OutputWriter(files.outputs(attempt, rank, payload.get("encoding", "pickle")), payload.get("encoding", "pickle"))
    recorder = RunRecorder(payload.get("average"), writer)
    snapshot_path = files.snapshot(attempt, rank)
    checkpoints = CHECKPOINTS

    def snapshot() -> None:
        checkpoints.busy = True
        if writer is not None:
            writer.flush()  # outputs are durable before a snapshot names their runs
        write_pickle(snapshot_path, recorder.progress)
        checkpoints.busy = False

    checkpoints.snapshot = snapshot

    clock = time.monotonic
    last_snapshot = clock()
    environ = os.environ
    for run in _runs_for_rank(runs, payload, comm):
        environ["RUN_ID"] = str(run)
        try:
            output = function(*args, **kwargs)
        except Exception as error:
            checkpoints.busy = True
            # the traceback from the user's function down, without the worker's frame
            below_worker = error.__traceback__.tb_next if error.__traceback__ is not None else None
            recorder.failed(run, "".join(traceback.format_exception(type(error), error, below_worker)))
        else:
            checkpoints.busy = True
            recorder.succeeded(run, output)
        checkpoints.busy = False
        if checkpoints.terminating:
            checkpoints.exit_now()
        if checkpoints.requested or clock() - last_snapshot >= SNAPSHOT_INTERVAL_S:
            snapshot()
            checkpoints.requested = False
            last_snapshot = clock()
    snapshot()
    if writer is not None:
        writer.close()
    return recorder.progress


def merge_and_write(files: JobFiles, attempt: int, progress: Progress, comm: Any) -> None:
    """Merge every rank's progress (statistics via allreduce); rank 0 writes the result."""
    from parallelaverage import mpi

    indices = sorted({i for part in comm.allgather(sorted(progress.accumulators)) for i in part})
    merged = {i: mpi.allreduce(progress.accumulators.get(i, Welford()), comm, inplace=True) for i in indices}
    bookkeeping = Progress(progress.finished, progress.failed, {}, progress.last_values, progress.tuple_length)
    parts = comm.gather(bookkeeping, root=0)
    if comm.Get_rank() != 0:
        return
    result = Progress(accumulators=merged)
    for part in parts:
        result.merge(part)
    write_pickle(files.result(attempt), result)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m parallelaverage.worker JOBDIR ATTEMPT", file=sys.stderr)
        return 2
    CHECKPOINTS.install()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    files, attempt = JobFiles(argv[0]), int(argv[1])
    mismatch = world_mismatch(comm.Get_size(), os.environ, MPI.Get_library_version())
    if mismatch is not None:  # alone in its world, this process would run every run: none at all
        atomic_write_bytes(files.attempt_dir(attempt) / f"fatal-r{comm.Get_rank()}.txt", mismatch.encode())
        say(mismatch, file=sys.stderr)
        return 1
    try:
        progress = execute(files, attempt, comm)
    except Exception:
        # e.g. the function's module cannot be imported here: say so where the caller looks
        (files.attempt_dir(attempt) / f"fatal-r{comm.Get_rank()}.txt").write_text(traceback.format_exc())
        traceback.print_exc()
        comm.Abort(1)
        return 1
    try:
        merge_and_write(files, attempt, progress, comm)
    except Exception:
        # every run is in the snapshots, which the caller merges instead; the
        # traceback and the exit code tell it why it has to
        traceback.print_exc()
        comm.Abort(1)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
