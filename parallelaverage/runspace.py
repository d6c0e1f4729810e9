"""The run space: how ``N_runs`` becomes run ids, counted and stored without lists.

A job's runs are numbered by **position** ``0 .. total-1``. ``N_runs=1000`` gives the
run ids ``0 .. 999`` (id = position); ``N_runs=(4, 5)`` gives index tuples
``(0, 0), (0, 1), ... (3, 4)`` in row-major order (position = flat index). Everything
that stores or counts runs (launches, snapshots, results, the caller's state) works
with positions held as sorted ranges (:class:`Positions`), so a job of 10**9 runs costs
as much to describe as one of 10, and a finished job's state is a handful of ranges.
Run ids appear only at the edges: inside a run (``run_id()``), in messages, and in
the lazy :class:`RunIds` views that results hand to users.

This module imports nothing of parallelaverage but its errors: the ranks use it too.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from parallelaverage.errors import OptionError, OptionTypeError

__all__ = ["RunSpace", "Positions", "RunIds", "MAX_RUNS", "encode_run_id", "decode_run_id"]

MAX_RUNS = 2**53
"""The most runs one job may have: counts and positions stay exact in float64 and int64."""


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    try:  # numpy integers (without importing numpy here)
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return False
    return isinstance(value, np.integer)


class RunSpace:
    """The runs of one job: ``N_runs`` in canonical form, with ids and positions.

    Args:
        n_runs: ``N_runs`` as the decorator, the call key or a ``job.json`` gives it:
            a positive int, or a non-empty tuple/list of positive ints (numpy integers
            accepted).

    Raises:
        OptionTypeError: not an int or a sequence of ints.
        OptionError: a count below 1, or more than :data:`MAX_RUNS` runs in all.
    """

    __slots__ = ("dims", "flat", "total", "_strides")

    def __init__(self, n_runs: Any) -> None:
        if _is_int(n_runs):
            dims: tuple[int, ...] = (int(n_runs),)
            flat = True
        elif isinstance(n_runs, (tuple, list)) and n_runs and all(_is_int(n) for n in n_runs):
            dims = tuple(int(n) for n in n_runs)
            flat = False
        else:
            raise OptionTypeError(
                f"N_runs={n_runs!r}: must be a positive int, or a tuple of positive ints for "
                "index-tuple run ids"
            )
        if flat and dims[0] < 1:
            raise OptionError(f"N_runs={dims[0]}: must be at least 1 (the number of runs to average over)")
        if not flat and any(n < 1 for n in dims):
            raise OptionError(f"N_runs={dims}: every dimension must be at least 1")
        total = math.prod(dims)
        if total > MAX_RUNS:
            raise OptionError(
                f"N_runs={n_runs!r}: {total:.3g} runs is more than one job can hold "
                f"({MAX_RUNS:.3g} = 2**53); split the work into several calls"
            )
        self.dims, self.flat, self.total = dims, flat, total
        strides = []
        step = 1
        for n in reversed(dims):
            strides.append(step)
            step *= n
        self._strides = tuple(reversed(strides))

    # ------------------------------------------------------------ forms of N_runs
    @property
    def canonical(self) -> int | list[int]:
        """The JSON form stored in call keys and ``job.json``: an int, or a list of ints."""
        return self.dims[0] if self.flat else list(self.dims)

    @property
    def option(self) -> int | tuple[int, ...]:
        """The form the decorator takes: an int, or a tuple of ints."""
        return self.dims[0] if self.flat else self.dims

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunSpace) and (self.dims, self.flat) == (other.dims, other.flat)

    def __hash__(self) -> int:
        return hash((self.dims, self.flat))

    def __repr__(self) -> str:
        return f"RunSpace({self.option!r})"

    # ------------------------------------------------------------ ids and positions
    def id_at(self, position: int) -> Any:
        """The run id at ``position``: the position itself, or its index tuple."""
        if self.flat:
            return position
        return tuple((position // stride) % n for stride, n in zip(self._strides, self.dims))

    def position_of(self, run_id: Any) -> int:
        """The position of a run id.

        Raises:
            KeyError: ``run_id`` is not a run of this space.
        """
        if self.flat:
            if _is_int(run_id) and 0 <= run_id < self.total:
                return int(run_id)
            raise KeyError(run_id)
        if (isinstance(run_id, (tuple, list)) and len(run_id) == len(self.dims)
                and all(_is_int(i) and 0 <= i < n for i, n in zip(run_id, self.dims))):
            return sum(int(i) * stride for i, stride in zip(run_id, self._strides))
        raise KeyError(run_id)

    def encode_id(self, run_id: Any) -> Any:
        """A run id as JSON: an int, or a list of ints."""
        return list(run_id) if isinstance(run_id, tuple) else run_id

    def decode_id(self, value: Any) -> Any:
        """Inverse of :meth:`encode_id`."""
        return tuple(value) if isinstance(value, list) else value

    def all(self) -> Positions:
        """Every position of the space."""
        return Positions.range(0, self.total)

    def ids(self, positions: Positions) -> RunIds:
        """The run ids at ``positions``, as a lazy sequence."""
        return RunIds(self, positions)


class Positions:
    """A set of run positions held as sorted, disjoint, non-touching ``[start, stop)`` ranges.

    Adding positions in increasing order (as a rank finishes its runs) costs O(1) each;
    set operations cost O(ranges). Pickles as two lists of ints.
    """

    __slots__ = ("_starts", "_stops")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._stops: list[int] = []
        for start, stop in ranges:
            self.add_range(start, stop)

    @classmethod
    def range(cls, start: int, stop: int) -> Positions:
        """The positions ``start, ..., stop - 1`` (none if ``stop <= start``)."""
        made = cls()
        if stop > start:
            made._starts.append(int(start))
            made._stops.append(int(stop))
        return made

    @classmethod
    def of(cls, positions: Iterable[int]) -> Positions:
        """The given positions, in any order, repeats allowed."""
        made = cls()
        for position in sorted(positions):
            made.add(position)
        return made

    # ------------------------------------------------------------ building
    def add(self, position: int) -> None:
        """Add one position (O(1) when it extends the last range)."""
        stops = self._stops
        if stops and stops[-1] == position:
            stops[-1] = position + 1
            return
        if not stops or position > stops[-1]:
            self._starts.append(position)
            stops.append(position + 1)
            return
        self.add_range(position, position + 1)

    def add_range(self, start: int, stop: int) -> None:
        """Add ``[start, stop)``, merging with the ranges it touches."""
        start, stop = int(start), int(stop)
        if stop <= start:
            return
        starts, stops = self._starts, self._stops
        if not stops or start > stops[-1]:
            starts.append(start)
            stops.append(stop)
            return
        # first range that ends at or after `start`, last one that begins at or before `stop`
        lo = bisect.bisect_left(stops, start)
        hi = bisect.bisect_right(starts, stop)
        if lo < hi:
            start = min(start, starts[lo])
            stop = max(stop, stops[hi - 1])
        starts[lo:hi] = [start]
        stops[lo:hi] = [stop]

    # ------------------------------------------------------------ reading
    def __len__(self) -> int:
        return sum(stop - start for start, stop in zip(self._starts, self._stops))

    @property
    def count(self) -> int:
        """How many positions (as ``len``)."""
        return len(self)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __contains__(self, position: object) -> bool:
        if not isinstance(position, int):
            return False
        index = bisect.bisect_right(self._starts, position) - 1
        return index >= 0 and position < self._stops[index]

    def __iter__(self) -> Iterator[int]:
        for start, stop in zip(self._starts, self._stops):
            yield from range(start, stop)

    def ranges(self) -> list[tuple[int, int]]:
        """The positions as sorted, disjoint, non-touching ``(start, stop)`` ranges."""
        return list(zip(self._starts, self._stops))

    def ranges_from(self, index: int) -> list[tuple[int, int]]:
        """The ranges from the ``index``-th on (what a rank's done log has not seen yet)."""
        return list(zip(self._starts[index:], self._stops[index:]))

    @property
    def n_ranges(self) -> int:
        """How many ranges hold the positions (what the set operations cost)."""
        return len(self._starts)

    def first(self) -> int | None:
        """The smallest position; None if there is none."""
        return self._starts[0] if self._starts else None

    def nth(self, index: int) -> int:
        """The ``index``-th smallest position (0-based)."""
        if index < 0:
            index += len(self)
        for start, stop in zip(self._starts, self._stops):
            if index < stop - start:
                return start + index
            index -= stop - start
        raise IndexError("position index out of range")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Positions) and (self._starts, self._stops) == (other._starts, other._stops)

    def __repr__(self) -> str:
        shown = ", ".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in self.ranges()[:8])
        more = ", ..." if self.n_ranges > 8 else ""
        return f"Positions({shown}{more}; {len(self)} in all)"

    def copy(self) -> Positions:
        """An independent copy (adding to it leaves this one as it is)."""
        made = Positions()
        made._starts, made._stops = list(self._starts), list(self._stops)
        return made

    # ------------------------------------------------------------ set algebra
    def union(self, *others: Positions) -> Positions:
        """The positions in this or any of ``others`` (also ``a | b``)."""
        pieces = sorted(r for p in (self, *others) for r in zip(p._starts, p._stops))
        made = Positions()
        starts, stops = made._starts, made._stops
        for start, stop in pieces:
            if stops and start <= stops[-1]:
                if stop > stops[-1]:
                    stops[-1] = stop
            else:
                starts.append(start)
                stops.append(stop)
        return made

    def __or__(self, other: Positions) -> Positions:
        return self.union(other)

    def difference(self, other: Positions) -> Positions:
        """The positions in this but not in ``other`` (also ``a - b``)."""
        made = Positions()
        j, theirs = 0, list(zip(other._starts, other._stops))
        for start, stop in zip(self._starts, self._stops):
            while j < len(theirs) and theirs[j][1] <= start:
                j += 1
            k = j
            cursor = start
            while k < len(theirs) and theirs[k][0] < stop:
                cut_start, cut_stop = theirs[k]
                if cut_start > cursor:
                    made._starts.append(cursor)
                    made._stops.append(cut_start)
                cursor = max(cursor, cut_stop)
                if cut_stop > stop:
                    break
                k += 1
            if cursor < stop:
                made._starts.append(cursor)
                made._stops.append(stop)
        return made

    def __sub__(self, other: Positions) -> Positions:
        return self.difference(other)

    def intersection(self, other: Positions) -> Positions:
        """The positions in both (also ``a & b``)."""
        return self.difference(self.difference(other))

    def __and__(self, other: Positions) -> Positions:
        return self.intersection(other)

    # ------------------------------------------------------------ pickling
    def __getstate__(self) -> tuple[list[int], list[int]]:
        return (self._starts, self._stops)

    def __setstate__(self, state: tuple[list[int], list[int]]) -> None:
        starts, stops = state
        if len(starts) != len(stops):
            raise ValueError("Positions state: starts and stops differ in length")
        self._starts, self._stops = [int(s) for s in starts], [int(s) for s in stops]

    def to_json(self) -> list[list[int]]:
        """The ranges as JSON data: ``[[start, stop], ...]``."""
        return [[a, b] for a, b in self.ranges()]

    @classmethod
    def from_json(cls, value: Any) -> Positions:
        """The positions of :meth:`to_json`'s data.

        Raises:
            ValueError: ``value`` is not a list of ``[start, stop]`` integer pairs.
        """
        if not isinstance(value, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(type(x) is int for x in pair) for pair in value
        ):
            raise ValueError("expected a list of [start, stop] pairs of integers")
        return cls((a, b) for a, b in value)


class RunIds(Sequence[Any]):
    """The run ids at some positions, sorted, as a read-only sequence computed on demand.

    What results hand out as ``successful_run_ids`` and ``failed_run_ids``: ``len``, ``in``,
    indexing and iteration cost nothing like a list of a million ids; ``list(ids)``
    makes the list when one is wanted. Equal to a list holding the same ids.
    """

    __slots__ = ("space", "positions")

    def __init__(self, space: RunSpace, positions: Positions) -> None:
        self.space, self.positions = space, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.space.id_at(self.positions.nth(index))

    def __iter__(self) -> Iterator[Any]:
        id_at = self.space.id_at
        for position in self.positions:
            yield id_at(position)

    def __contains__(self, run_id: object) -> bool:
        try:
            return self.space.position_of(run_id) in self.positions
        except KeyError:
            return False

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RunIds):
            return self.space == other.space and self.positions == other.positions
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        n = len(self)
        shown = [repr(run) for run in self[:10]]
        return "[" + ", ".join(shown) + (f", ... ({n} ids)" if n > 10 else "") + "]"


def encode_run_id(run: Any) -> Any:
    """A run id as JSON: an int, or a list of ints for an index tuple."""
    return list(run) if isinstance(run, tuple) else run


def decode_run_id(value: Any) -> Any:
    """Inverse of :func:`encode_run_id`."""
    return tuple(value) if isinstance(value, list) else value
