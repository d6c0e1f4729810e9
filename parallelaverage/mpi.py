"""The MPI engine: hand out runs to ranks, merge their statistics.

Usable inside any mpi4py program, with no job database::

    from mpi4py import MPI
    from parallelaverage.stats import Welford
    from parallelaverage import mpi

    acc = Welford()
    with mpi.RunCounter(n_runs, comm=MPI.COMM_WORLD) as counter:  # collective
        for i in counter:                                          # each index handed out once
            acc.add(simulate(i))
    total = mpi.allreduce(acc, comm=MPI.COMM_WORLD)                # merged state on every rank

``RunCounter`` is a shared counter: fast ranks claim more runs, and no claim waits on
another rank's compute (:mod:`parallelaverage._runcounter`). Like every collective
resource it is released by a ``with`` block on every rank, never by the garbage
collector. ``dynamic_range`` is the same as a generator, for loops that always run to
their end. ``allreduce`` merges ``Welford`` states with the native Chan merge: small
states in one ``MPI_Allreduce`` with a user-defined op, large ones slice by slice
(reduce-scatter + allgather, :mod:`parallelaverage._allreduce`), which moves and
merges as many bytes as a SUM ``Allreduce`` does.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, Sequence

import numpy as np
from mpi4py import MPI

from parallelaverage import _allreduce, _kernels, _packed
from parallelaverage._runcounter import (
    CHUNK_TARGET_S,
    PROGRESS_INTERVAL_S,
    REFILL_TARGET_S,
    RunCounter,
    _validated_runs,
    dynamic_range_stream,
)
from parallelaverage.stats import Welford, _promote_to_complex

__all__ = [
    "RunCounter", "dynamic_range", "allreduce",
    "CHUNK_TARGET_S", "REFILL_TARGET_S", "PROGRESS_INTERVAL_S", "SPLIT_MIN_BYTES_PER_RANK",
]


def dynamic_range(
    runs: int | Sequence[Any],
    comm: MPI.Intracomm | None = None,
    *,
    chunk: int | None = None,
    seed: int | None = None,
) -> Iterator[Any]:
    """Yield the runs this rank should execute; across ranks each is yielded exactly once.

    A generator over a :class:`RunCounter`, made at the first ``next`` and freed when
    the iteration ends. Collective: every rank of ``comm`` must iterate it **to its
    end**. A loop that may stop early (``break``, an exception) must use
    ``with RunCounter(runs, comm) as counter: for run in counter: ...`` instead:
    a generator left early frees its counter when it is closed or garbage-collected,
    a collective call the other ranks may not make at the same point. Leaving it early
    warns (``RuntimeWarning``) and says so.

    Args:
        runs: a number of runs ``n`` (yields indices ``0 .. n-1``) or an explicit sequence
            of run ids (yields its items, e.g. only the runs that failed before).
        comm: communicator, ``MPI.COMM_WORLD`` by default.
        chunk: claim this many runs at a time; ``None`` (default) adapts the chunk to
            the measured run time (see :class:`RunCounter`).
        seed: job seed for :func:`parallelaverage.rng` inside the runs (unchanged if None).

    Yields:
        Run ids; each rank sees its runs in increasing order. While a run is being
        executed, :func:`parallelaverage.run_id` returns it.

    Raises:
        ValueError, TypeError: ``runs`` or ``chunk`` is not valid (at the call).
    """
    ids = _validated_runs(runs, chunk)
    return dynamic_range_stream(ids, MPI.COMM_WORLD if comm is None else comm, chunk, seed)


# ------------------------------------------------------------------- allreduce
def _merge_op(inbuf: Any, inoutbuf: Any, datatype: MPI.Datatype) -> None:
    # The state travels as ONE element of a contiguous datatype: Open MPI splits
    # buffers of plain MPI.DOUBLE before calling a user op, which would corrupt it.
    _kernels.merge(inoutbuf, inbuf)


_op: MPI.Op | None = None

_SPARE_MAX_BYTES = 64 << 20
_spare: dict[int, np.ndarray] = {}


def _result_buffer(like: np.ndarray) -> np.ndarray:
    """A buffer for an allreduce result: the previous one of this size if nothing else
    holds it any more, else a new one (kept for next time when at most 64 MiB).

    Fresh memory costs first-touch page faults: about 13 ms for a state of 10^6
    elements on the measured machine, as much as the Allreduce itself.
    """
    spare = _spare.get(like.size)
    if spare is not None and sys.getrefcount(spare) == 3:  # _spare, `spare`, the argument
        return spare
    buffer = np.empty_like(like)
    if buffer.nbytes <= _SPARE_MAX_BYTES:
        _spare.clear()
        _spare[like.size] = buffer
    return buffer


def _merge_operator() -> MPI.Op:
    global _op
    if _op is None:
        _op = MPI.Op.Create(_merge_op, commute=True)
    return _op


SPLIT_MIN_BYTES_PER_RANK = 64 << 10
"""States of at least this many bytes per rank are merged slice by slice
(:mod:`parallelaverage._allreduce`); smaller ones in one ``MPI_Allreduce``, whose fewer
messages win there. Measured on one node (MPICH, 2 cores, ``bench/mpi.py --crossover``):
the slices lose at 72 kB and win from 240 kB on, at 2 and at 4 ranks."""


def _splits_well(nbytes: int, k: int, size: int) -> bool:
    return size > 1 and nbytes >= SPLIT_MIN_BYTES_PER_RANK * size and k >= size


def _allreduce_whole(send: np.ndarray, receive: np.ndarray, in_place: bool, comm: MPI.Intracomm) -> None:
    """One ``MPI_Allreduce`` with the native merge as a user-defined op."""
    datatype = MPI.DOUBLE.Create_contiguous(send.size).Commit()
    try:
        source = MPI.IN_PLACE if in_place else [send, 1, datatype]
        comm.Allreduce(source, [receive, 1, datatype], op=_merge_operator())
    finally:
        datatype.Free()


_MAX_DIMS = 64  # numpy's limit on ndim


def _gather_layouts(acc: Welford, comm: MPI.Intracomm) -> tuple[set[tuple[tuple[int, ...], bool]], list[np.ndarray]]:
    """Every rank's packed header, and the ``(shape, is_complex)`` of the non-empty ones.

    One ``Allgather`` of a fixed-size float64 record (header, complex, ndim, dims): a
    pickled ``allgather`` costs twice as long, and on oversubscribed cores every extra
    microsecond of a collective is paid by all ranks.
    """
    h = _packed.HEADER
    record = np.zeros(h + 2 + _MAX_DIMS)
    state, shape = acc._state, acc.shape
    if acc.count and state is not None and shape is not None:
        record[:h] = state[:h]
        record[h], record[h + 1] = acc._complex, len(shape)
        record[h + 2 : h + 2 + len(shape)] = shape
    else:
        record[:h] = _packed.empty_state(0)
    records = np.empty((comm.Get_size(), record.size))
    comm.Allgather(record, records)
    layouts = {
        (tuple(int(d) for d in row[h + 2 : h + 2 + int(row[h + 1])]), bool(row[h]))
        for row in records
        if row[_packed.COUNT] > 0
    }
    return layouts, [row[:h].copy() for row in records]


def allreduce(acc: Welford, comm: MPI.Intracomm | None = None, *, inplace: bool = False) -> Welford:
    """Merge the accumulators of all ranks; every rank gets the merged result.

    Collective. Ranks that saw no sample may pass an empty ``Welford``. The other
    accumulators of :mod:`parallelaverage.stats` (``Covariance``, ``Moments``, ``Batches``,
    ``Histogram``, ``LogBinning``) merge the same way, in one ``MPI_Allreduce`` of their
    packed state (:mod:`parallelaverage._collective`). The Welford states are
    merged by the native Chan merge (the same as :meth:`Welford.merge`), so the result
    equals a serial merge of the ranks' accumulators to rounding. States under
    ``SPLIT_MIN_BYTES_PER_RANK`` bytes per rank travel in one ``MPI_Allreduce`` with a
    user-defined op; larger ones are reduce-scattered and allgathered slice by slice.
    Either way every rank gets the same bits: a slice is merged on one rank only, and
    the merge op gives the same bits in either order of its operands.

    Args:
        acc: this rank's accumulator (left unchanged unless ``inplace``).
        comm: communicator, ``MPI.COMM_WORLD`` by default.
        inplace: merge into ``acc`` itself and return it, allocating no result. For
            large states this saves the first-touch page faults of a fresh result buffer
            (about 13 ms for 10^6 elements on the measured machine). The bits of the
            result are the same either way.

    Returns:
        A ``Welford`` holding every rank's samples (empty if no rank had any): a new one,
        or ``acc`` when ``inplace``.

    Raises:
        ValueError: ranks accumulated samples of different shapes (raised on every rank).
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    if not isinstance(acc, Welford):  # Covariance, Moments, Batches, Histogram, LogBinning: one generic collective
        from parallelaverage import _collective

        return _collective.allreduce(acc, comm, inplace=inplace)
    layouts, headers = _gather_layouts(acc, comm)
    if not layouts:
        return Welford()
    shapes = {shape for shape, _ in layouts}
    if len(shapes) > 1:
        raise ValueError(f"ranks accumulated samples of different shapes: {sorted(shapes)}")
    (shape,) = shapes
    is_complex = any(c for _, c in layouts)
    k = int(np.prod(shape, dtype=np.int64)) * (2 if is_complex else 1)
    state = acc._state
    if acc.count == 0 or state is None:
        send = _packed.empty_state(k)
    elif is_complex and not acc._complex:
        send = _promote_to_complex(state)
    else:
        send = state
    # a buffer made here (empty or promoted state) can be reduced into directly
    in_place = inplace or send is not state
    receive = send if in_place else _result_buffer(send)
    if _splits_well(send.nbytes, k, comm.Get_size()):
        _allreduce.merge_states(send, receive, headers, comm)
    else:
        _allreduce_whole(send, receive, in_place, comm)
    if not inplace:
        return Welford._from_packed(receive, shape, is_complex)
    acc._state, acc._shape, acc._complex = receive, tuple(shape), is_complex
    return acc
