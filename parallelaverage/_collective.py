"""One ``MPI_Allreduce`` for the accumulators besides ``Welford``, any number at once.

Every accumulator of :mod:`parallelaverage.stats` keeps its state in one float64 buffer
and merges two such buffers with a merge that gives the same bits in either order
(:class:`parallelaverage._accumulator.Accumulator`). So a list of them, on every rank,
merges in one collective: the ranks agree on each accumulator's layout (its spec and
the shape of its samples; a rank that saw no sample sends an empty state of that
layout), the states travel end to end as **one element** of a contiguous datatype (Open
MPI splits buffers of plain ``MPI.DOUBLE`` before calling a user op, see
:mod:`parallelaverage.mpi`), and a user-defined commutative op merges them piece by
piece. The MPI libraries reduce such an op by recursive doubling, each exchange leaving
both partners with the same pair of states, so every rank ends with the same bits.

``parallelaverage.mpi.allreduce`` sends every accumulator but ``Welford`` here; the
worker merges all the statistics of a job (every layout, element and kind) in one call
of :func:`allreduce_many`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from mpi4py import MPI

from parallelaverage._accumulator import Accumulator, from_spec

__all__ = ["allreduce", "allreduce_many"]


def allreduce(acc: Accumulator, comm: MPI.Intracomm, *, inplace: bool = False) -> Accumulator:
    """Merge ``acc`` over the ranks of ``comm``; every rank gets the result (collective).

    Args:
        acc: this rank's accumulator; the other ranks pass one of the same spec (empty
            ones included).
        inplace: merge into ``acc`` itself and return it.

    Raises:
        ValueError: the ranks passed different specs, or samples of different shapes
            (raised on every rank).
    """
    if not isinstance(acc, Accumulator):
        raise TypeError(f"cannot allreduce a {type(acc).__name__}: pass an accumulator of parallelaverage.stats")
    (merged,) = allreduce_many([acc], comm)
    if inplace:
        acc._assign(merged)
        return acc
    return merged


def allreduce_many(accumulators: Sequence[Accumulator], comm: MPI.Intracomm) -> list[Accumulator]:
    """Merge each of ``accumulators`` over the ranks of ``comm``, all in one ``MPI_Allreduce``.

    Collective: every rank passes as many accumulators, of the same specs in the same
    order (each may be empty). The inputs are left unchanged.

    Returns:
        The merged accumulators, in order, the same bits on every rank.

    Raises:
        ValueError: on every rank, when the ranks disagree on the number, the specs or the
            shapes of the samples.
    """
    mine = [(acc.spec, acc._layout()) for acc in accumulators]
    everyone = comm.allgather(mine)
    layouts = _agreed(everyone)
    parts: list[tuple[type[Accumulator], Any, int, int]] = []
    pieces, offset = [], 0
    for acc, layout in zip(accumulators, layouts):
        if layout is None:
            continue
        packed = acc._packed_state() if acc._layout() is not None else None
        piece = type(acc)._empty_packed(layout) if packed is None else packed
        parts.append((type(acc), layout, offset, piece.size))
        pieces.append(piece)
        offset += piece.size
    merged: dict[int, np.ndarray] = {}
    if parts:
        buffer = np.concatenate(pieces)  # a copy: the inputs stay as they were
        _reduce(buffer, parts, comm)
        merged = {start: buffer[start : start + size].copy() for _, _, start, size in parts}
    results: list[Accumulator] = []
    index = 0
    for acc, layout in zip(accumulators, layouts):
        if layout is None:
            results.append(from_spec(acc.spec))
            continue
        cls, _, start, _ = parts[index]
        results.append(cls._from_packed(layout, merged[start]))
        index += 1
    return results


def _agreed(everyone: list[list[tuple[str, Any]]]) -> list[Any]:
    """The layout of each accumulator (None where every rank's is empty), the same on
    every rank; a ValueError on every rank when the ranks disagree."""
    lengths = {len(entries) for entries in everyone}
    if len(lengths) > 1:
        raise ValueError(f"ranks passed different numbers of accumulators: {sorted(lengths)}")
    layouts = []
    for position in range(lengths.pop() if lengths else 0):
        specs = {entries[position][0] for entries in everyone}
        if len(specs) > 1:
            raise ValueError(f"ranks passed accumulators of different specs at position {position}: {sorted(specs)}")
        shapes = {entries[position][1] for entries in everyone if entries[position][1] is not None}
        if len(shapes) > 1:
            raise ValueError(f"ranks accumulated samples of different shapes: {sorted(s[1] for s in shapes)}")
        layouts.append(shapes.pop() if shapes else None)
    return layouts


def _reduce(buffer: np.ndarray, parts: list[tuple[type[Accumulator], Any, int, int]], comm: MPI.Intracomm) -> None:
    """``buffer`` (every part end to end) merged over the ranks, in place."""

    def merge(inbuf: Any, inoutbuf: Any, datatype: MPI.Datatype) -> None:
        into = np.frombuffer(inoutbuf, dtype=np.float64)
        other = np.frombuffer(inbuf, dtype=np.float64)
        for cls, layout, start, size in parts:
            cls._merge_packed(layout, into[start : start + size], other[start : start + size])

    op = MPI.Op.Create(merge, commute=True)
    datatype = MPI.DOUBLE.Create_contiguous(buffer.size).Commit()
    try:
        comm.Allreduce(MPI.IN_PLACE, [buffer, 1, datatype], op=op)
    finally:
        datatype.Free()
        op.Free()
