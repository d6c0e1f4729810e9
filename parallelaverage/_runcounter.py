"""``RunCounter``: hand out runs to ranks, each exactly once, without waiting on any rank.

Two levels, so that a claim needs no MPI call and no other rank's attention:

* **a node's block.** The ranks of a node (``comm.Split_type(COMM_TYPE_SHARED)``) share
  a block of run positions ``[next, end)`` in int64 slots of an MPI shared-memory
  window, and claim chunks of it with C11 atomics (``_native.claim_block``, one
  compare-and-swap): no MPI call, so no MPI progress is needed anywhere.
* **the global counter**, only when ``comm`` spans several nodes: one int64 in an MPI
  window on rank 0. When a node's block runs out, one of its ranks (whichever finds it
  empty first; the others wait on a flag) refills it with one ``Fetch_and_op`` + ``Flush``
  in a guided chunk: enough for about ``REFILL_TARGET_S`` of every rank of the node,
  at most ``ranks of the node × remaining / (2 × ranks)``. So at most one rank per node
  touches the remote counter, and the shorter the runs, the rarer per run.

Networks without hardware atomics serve a ``Fetch_and_op`` only when the target rank
enters the MPI library. Rank 0 runs its share of the runs too, so a thread on rank 0
(``PROGRESS_INTERVAL_S``) calls ``MPI_Iprobe`` while it computes; it needs the GIL,
which a run gives up at least every 5 ms (``sys.getswitchinterval()``) unless it sits
in C code that holds it.

A rank that is a node of its own (and every rank, if the native extension is
missing) keeps its block in plain Python ints instead.

Why not the alternatives (measured, see ``docs/mpi.md``): ``Fetch_and_op`` on the
shared window costs about 1.6 us a claim against 0.25 us for the compare-and-swap
(MPICH, 2 ranks); a node-local lock can be held by a rank the OS has descheduled (we
oversubscribe cores); MPICH's own progress thread (``MPIR_CVAR_ASYNC_PROGRESS=1``)
spins on every rank, which cost 8 us per run and 20x on a small ``Allreduce`` here.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
import warnings
from typing import Any, Generator, Iterator, Sequence, cast

import numpy as np
from mpi4py import MPI

from parallelaverage import _context

try:
    from parallelaverage import _native

    atomic_compare_exchange, atomic_load = _native.atomic_compare_exchange, _native.atomic_load
    atomic_store, claim_block = _native.atomic_store, _native.claim_block
except (ImportError, AttributeError):  # pragma: no cover - a broken install; _kernels warns about it once
    ATOMICS = False
else:
    ATOMICS = True

__all__ = ["RunCounter", "CHUNK_TARGET_S", "REFILL_TARGET_S", "PROGRESS_INTERVAL_S", "ATOMICS"]

CHUNK_TARGET_S = 0.002
"""A rank's claim from its node's block should take about this long to run."""

REFILL_TARGET_S = 0.02
"""A node's refill from the global counter should keep each of its ranks busy about
this long: for short runs, one remote access per node and 20 ms; runs longer than
that are refilled one per rank of the node."""

PROGRESS_INTERVAL_S = 0.001
"""How often rank 0 enters the MPI library to serve remote claims while it computes
(only when ``comm`` spans several nodes)."""

_GUIDED_FACTOR = 2
"""A chunk is at most remaining / (factor * ranks) runs: large early, 1 near the end."""

# int64 slots of a node's shared window
_NEXT, _END, _REFILLING, _DONE, _SEEN = range(5)
_SLOTS = 8  # one cache line


def _chunk_size(left: int, ranks: int, seconds_per_run: float | None) -> int:
    """How many runs a rank claims next from a block with ``left`` runs shared by ``ranks``."""
    guided = max(1, left // (_GUIDED_FACTOR * ranks))
    if seconds_per_run is None:
        return 1
    if seconds_per_run <= 0.0:
        return guided
    return max(1, min(guided, int(CHUNK_TARGET_S / seconds_per_run)))


def _validated_runs(runs: int | Sequence[Any], chunk: int | None) -> Sequence[Any]:
    """The run ids of ``runs`` (a count or a sequence); errors name what is wrong."""
    ids: Sequence[Any]
    if isinstance(runs, bool) or not (isinstance(runs, (int, np.integer)) or hasattr(runs, "__getitem__")):
        raise TypeError(f"runs={runs!r}: must be a number of runs or a sequence of run ids")
    if isinstance(runs, (int, np.integer)):
        if runs < 0:
            raise ValueError(f"runs={runs}: must be >= 0")
        ids = range(int(runs))
    else:
        ids = runs
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk={chunk!r}: must be a positive integer or None")
    return ids


class _PrivateBlock:
    """The block of a rank that is a node of its own: plain Python ints."""

    def __init__(self, start: int, end: int, done: bool) -> None:
        self.next, self.end, self.done, self.seen = start, end, done, 0

    def claim(self, k: int) -> tuple[int, int, int]:
        start, end = self.next, self.end
        stop = min(start + k, end) if start < end else start
        self.next = stop
        return start, stop, end

    def has_runs(self) -> bool:
        return self.next < self.end

    def is_done(self) -> bool:
        return self.done

    def begin_refill(self) -> bool:
        return True

    def end_refill(self) -> None:
        pass

    def install(self, start: int, stop: int, seen: int) -> None:
        self.next, self.end, self.seen = start, stop, seen

    def finish(self, seen: int) -> None:
        self.done, self.seen = True, seen

    def last_seen(self) -> int:
        return self.seen

    def free(self) -> None:
        pass


class _SharedBlock:
    """A node's block in int64 slots of an MPI shared-memory window, claimed with C11
    atomics. Positions only move forward: a new block starts at or after the end of
    the old one, and ``install`` stores its start before its end (see ``claim_block``)."""

    def __init__(self, node: MPI.Intracomm, start: int, end: int, done: bool) -> None:
        self.window = MPI.Win.Allocate_shared(_SLOTS * 8 if node.Get_rank() == 0 else 0, 8, comm=node)
        try:
            memory, _ = self.window.Shared_query(0)
            self.slots = np.frombuffer(memory, dtype=np.int64)  # type: ignore[call-overload]
            if node.Get_rank() == 0:
                for slot, value in ((_NEXT, start), (_END, end), (_REFILLING, 0), (_DONE, int(done)), (_SEEN, 0)):
                    atomic_store(self.slots, slot, value)
            node.Barrier()
        except BaseException:
            self.window.Free()
            raise

    def claim(self, k: int) -> tuple[int, int, int]:
        return claim_block(self.slots, k)

    def has_runs(self) -> bool:
        return bool(atomic_load(self.slots, _NEXT) < atomic_load(self.slots, _END))

    def is_done(self) -> bool:
        return bool(atomic_load(self.slots, _DONE))

    def begin_refill(self) -> bool:
        return bool(atomic_compare_exchange(self.slots, _REFILLING, 0, 1))

    def end_refill(self) -> None:
        atomic_store(self.slots, _REFILLING, 0)

    def install(self, start: int, stop: int, seen: int) -> None:
        atomic_store(self.slots, _SEEN, seen)
        atomic_store(self.slots, _NEXT, start)  # start first: see claim_block
        atomic_store(self.slots, _END, stop)

    def finish(self, seen: int) -> None:
        atomic_store(self.slots, _SEEN, seen)
        atomic_store(self.slots, _DONE, 1)

    def last_seen(self) -> int:
        return int(atomic_load(self.slots, _SEEN))

    def free(self) -> None:
        del self.slots  # a view of the window's memory, which is gone after Free
        self.window.Free()


class _GlobalCounter:
    """One int64 on rank 0 of ``comm`` (``MPI_Win_allocate``), ``Lock_all`` once."""

    def __init__(self, comm: MPI.Intracomm) -> None:
        self.window = MPI.Win.Allocate(8 if comm.Get_rank() == 0 else 0, 8, comm=comm)
        if comm.Get_rank() == 0:
            memory = self.window.tomemory()  # an mpi4py buffer: its stub does not declare the buffer protocol
            np.frombuffer(memory, dtype=np.int64)[0] = 0  # type: ignore[call-overload]
        comm.Barrier()
        self.window.Lock_all()
        self.accesses = 0
        self._increment = np.zeros(1, dtype=np.int64)
        self._fetched = np.zeros(1, dtype=np.int64)

    def fetch_add(self, k: int) -> int:
        """Add ``k``; return the value before."""
        self._increment[0] = k
        self.window.Fetch_and_op(self._increment, self._fetched, 0, 0, MPI.SUM)
        self.window.Flush(0)
        self.accesses += 1
        return int(self._fetched[0])

    def free(self) -> None:
        self.window.Unlock_all()
        self.window.Free()


class _ProgressThread:
    """Enters the MPI library every ``interval_s`` on the rank that hosts the global
    counter, so that remote ``Fetch_and_op`` calls are served while the rank computes.

    Probes a duplicate of the counter's communicator: MPICH answers a probe of
    ``COMM_SELF`` without entering the network's progress engine."""

    def __init__(self, comm: MPI.Intracomm, interval_s: float) -> None:
        self._comm = comm
        self._stopping = False
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._run, name="parallelaverage-progress", daemon=True)
        self._thread.start()
        # a counter never freed must not leave the thread probing while MPI finalizes at
        # exit: atexit calls this before mpi4py's own hook, registered earlier
        atexit.register(self.stop)

    def _run(self) -> None:
        iprobe, sleep, interval_s = self._comm.Iprobe, time.sleep, self._interval_s
        while not self._stopping:
            sleep(interval_s)
            iprobe()

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._stopping = True
        self._thread.join()


def _pause(seconds: float) -> float:
    """Wait a little for another rank of the node to refill the block: yield the core
    first, then sleep 10 us, doubling up to 1 ms. Returns the next pause."""
    if seconds <= 0.0:
        os.sched_yield()
        return 1e-5
    time.sleep(seconds)
    return min(2 * seconds, 1e-3)


class RunCounter:
    """A shared counter of runs: across the ranks of ``comm`` each run is claimed once.

    Collective: every rank of ``comm`` creates it, and every rank frees it, best by
    leaving a ``with`` block (as ``mpi4py.util.sync.Counter``)::

        with RunCounter(n_runs, comm) as counter:
            for run in counter:          # or: run = counter.claim() until it returns None
                acc.add(simulate(run))
                if good_enough():
                    break                # safe: the counter is freed when every rank leaves the block
        total = allreduce(acc, comm)

    Fast ranks claim more runs. A rank that leaves early stops claiming; the others
    claim everything that is left, except the rest of the chunk the leaving rank had
    claimed (use ``chunk=1`` if that matters).

    Args:
        runs: a number of runs ``n`` (run ids ``0 .. n-1``) or a sequence of run ids
            (e.g. only the runs that failed before, or tuples). No run id may be None.
        comm: communicator, ``MPI.COMM_WORLD`` by default.
        chunk: claim this many runs at a time from the node's block; ``None`` (default)
            adapts it to the measured run time: 1 for slow runs and near the end, more
            for runs shorter than ``CHUNK_TARGET_S``.
        seed: job seed for :func:`parallelaverage.rng` inside the runs (unchanged if None).
        node_comm: the ranks of ``comm`` that share memory with this one and so share a
            block of runs; ``comm.Split_type(MPI.COMM_TYPE_SHARED)`` by default. Not freed.

    Raises:
        ValueError, TypeError: ``runs`` or ``chunk`` is not valid (on the calling rank,
            before any communication).

    Notes:
        Every rank must free the counter, at the same point with respect to other
        collective calls on ``comm``: the end of a ``with`` block, or :meth:`free`. Never
        leave it to the garbage collector, which frees it at a point of its choosing.
        See the module :mod:`parallelaverage._runcounter` for how claims avoid waiting
        on any one rank.
    """

    def __init__(
        self,
        runs: int | Sequence[Any],
        comm: MPI.Intracomm | None = None,
        *,
        chunk: int | None = None,
        seed: int | None = None,
        node_comm: MPI.Intracomm | None = None,
    ) -> None:
        self._ids = _validated_runs(runs, chunk)
        if seed is not None:
            _context.set_job_seed(seed)
        comm = MPI.COMM_WORLD if comm is None else comm
        self._n = n = len(self._ids)
        self._size = size = comm.Get_size()
        self._chunk = chunk
        self._global: _GlobalCounter | None = None
        self._progress: _ProgressThread | None = None
        self._own_node: MPI.Intracomm | None = None
        self._probed: MPI.Intracomm | None = None
        self._block: _PrivateBlock | _SharedBlock
        self._freed = False
        self.finished = False
        """Whether this rank has seen every run claimed (its iteration ended by itself)."""
        self.claimed = 0
        """How many runs this rank has claimed."""
        if size == 1:
            self._group_size = 1
            self._block = _PrivateBlock(0, n, done=True)
        else:
            node = node_comm
            if node is None:
                node = self._own_node = cast(MPI.Intracomm, comm.Split_type(MPI.COMM_TYPE_SHARED))
            shared = ATOMICS and node.Get_size() > 1
            self._group_size = node.Get_size() if shared else 1
            groups = comm.allreduce(1 if not shared or node.Get_rank() == 0 else 0)
            done = groups == 1  # one node: its block is all the runs
            end = n if done else 0
            self._block = _SharedBlock(node, 0, end, done) if shared else _PrivateBlock(0, end, done)
            if groups > 1:
                self._global = _GlobalCounter(comm)
                self._probed = comm.Dup()
                if comm.Get_rank() == 0 and MPI.Query_thread() == MPI.THREAD_MULTIPLE:
                    self._progress = _ProgressThread(self._probed, PROGRESS_INTERVAL_S)
        self._chunk_stream: Generator[tuple[int, int], None, None] | None = None
        self._runs = self._stream()

    # ------------------------------------------------------------- claiming
    def claim(self) -> Any:
        """The next run for this rank, or None once every run has been claimed.

        While a run is being executed, :func:`parallelaverage.run_id` returns it.
        """
        if self._freed:
            raise RuntimeError("this RunCounter was freed: claim runs inside its with block")
        return next(self._runs, None)

    def __iter__(self) -> Iterator[Any]:
        """Claim runs until every run has been claimed (continuing any earlier claims)."""
        if self._freed:
            raise RuntimeError("this RunCounter was freed: iterate it inside its with block")
        return self._runs

    @property
    def remote_accesses(self) -> int:
        """How many times this rank accessed the global counter (0 on a single node)."""
        return self._global.accesses if self._global is not None else 0

    def chunks(self) -> Iterator[tuple[int, int]]:
        """Claim runs a chunk at a time: ``(start, stop)`` indices into the runs, until every
        run has been claimed. For loops that want no work per run from the counter (the
        job worker); the chunk size adapts to the time between two claims, as with
        iteration. ``run_id()`` is the caller's to set (:func:`parallelaverage._context.enter_run`).
        """
        if self._freed:
            raise RuntimeError("this RunCounter was freed: claim runs inside its with block")
        if self._chunk_stream is None:
            self._chunk_stream = self._chunks()
        return self._chunk_stream

    def _chunks(self) -> Generator[tuple[int, int], None, None]:
        claim, clock, ranks = self._block.claim, time.perf_counter, self._group_size
        adaptive = self._chunk is None
        k = 1 if self._chunk is None else self._chunk
        seconds_per_run: float | None = None
        while True:
            start, stop, end = claim(k)
            if start >= stop:
                if self._refill(k, seconds_per_run):
                    continue
                self.finished = True
                return
            self.claimed += stop - start
            began = clock()
            yield start, stop
            seconds_per_run = (clock() - began) / (stop - start)
            if adaptive:
                k = _chunk_size(end - stop, ranks, seconds_per_run)

    def _stream(self) -> Generator[Any, None, None]:
        ids, enter_run = self._ids, _context.enter_run
        try:
            for start, stop in self.chunks():
                for position in range(start, stop):
                    run = ids[position]
                    enter_run(run)
                    yield run
        finally:
            _context.leave_runs()

    def _refill(self, k: int, seconds_per_run: float | None) -> bool:
        """Give the node's block new runs; False once every run has been claimed."""
        block, pause = self._block, 0.0
        while True:
            if block.has_runs():
                return True
            if block.is_done():
                return False
            if block.begin_refill():
                try:
                    if block.has_runs():
                        return True
                    if block.is_done():
                        return False
                    if self._global is None:
                        block.finish(self._n)
                        return False
                    size = self._refill_size(k, seconds_per_run, block.last_seen())
                    start = self._global.fetch_add(size)
                    if start >= self._n:
                        block.finish(start + size)
                        return False
                    block.install(start, min(start + size, self._n), start + size)
                    return True
                finally:
                    block.end_refill()
            pause = _pause(pause)

    def _refill_size(self, k: int, seconds_per_run: float | None, seen: int) -> int:
        """Runs for the node: ``REFILL_TARGET_S`` (at least a chunk) for each of its
        ranks, at most its guided share of what was left at its last refill."""
        per_rank = k
        if seconds_per_run is not None:
            per_rank = max(k, math.ceil(REFILL_TARGET_S / seconds_per_run)) if seconds_per_run > 0 else self._n
        ranks = self._group_size
        guided = ranks * max(0, self._n - seen) // (_GUIDED_FACTOR * self._size)
        return max(1, min(ranks * per_rank, guided))

    # ------------------------------------------------------------ releasing
    def free(self) -> None:
        """Release the counter's windows. Collective: every rank calls it once, at the
        same point with respect to other collective calls on ``comm``; later calls do
        nothing. Afterwards :func:`parallelaverage.run_id` raises again."""
        if self._freed:
            return
        self._freed = True
        self._runs.close()
        if MPI.Is_finalized():
            return
        if self._progress is not None:
            self._progress.stop()
        if self._probed is not None:
            self._probed.Free()
        if self._global is not None:
            self._global.free()
        self._block.free()
        if self._own_node is not None:
            self._own_node.Free()

    def __enter__(self) -> RunCounter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.free()


_EARLY_EXIT = (
    "rank {rank} left a loop over dynamic_range() before every run was claimed. Its "
    "counter is freed (a collective call) when the generator is closed or garbage-"
    "collected, which the other ranks may not do at the same point: they can hang. To "
    "leave such a loop early, use\n"
    "    with parallelaverage.mpi.RunCounter(runs, comm) as counter:\n"
    "        for run in counter:\n"
    "            ...\n"
    "which every rank frees at the end of its with block."
)


def dynamic_range_stream(
    runs: Sequence[Any], comm: MPI.Intracomm, chunk: int | None, seed: int | None
) -> Iterator[Any]:
    """The generator behind ``mpi.dynamic_range``: a counter made at the first ``next``,
    its runs, then its free, with a warning if this rank left before the end."""
    counter = RunCounter(runs, comm, chunk=chunk, seed=seed)
    try:
        yield from counter
    finally:
        if not counter.finished:
            warnings.warn(_EARLY_EXIT.format(rank=comm.Get_rank()), RuntimeWarning, stacklevel=2)
        counter.free()
