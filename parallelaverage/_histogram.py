"""``Histogram``: fixed bins, mergeable by addition; optionally weight sums per bin.

The packed state is ``[count, 0, 0, tag]`` followed by, per histogram (one per element
of the samples, or one for all of them when ``pooled``), ``bins + 3`` counts: the bins,
then the samples below the range, above it, and NaN. A weighted histogram adds the same
columns for the sum of the weights and for the sum of their squares, each as a mantissa
block and an exponent block (``value = mantissa * 2**exponent``, the mantissa in
[0.5, 1)): no sum overflows or underflows, so a bin of 1e-300 weights keeps its digits
beside a bin of 1e300 ones, and ``sum w**2`` of weights of 1e300 is kept too (it is inf
only when read as a float beyond 1.8e308). Adding rounds once per value, like a float
sum; merging adds bin by bin, which gives the same bits in either order.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from parallelaverage._accumulator import Accumulator, Layout, parse_spec, register
from parallelaverage._welford import _sample_array, _weight

__all__ = ["Histogram"]

_HEADER = 4
_COUNT, _TAG = 0, 3  # slots 1 and 2 are reserved (0)
_FORMAT_TAG = 30.0
_BLOCKS_WEIGHTED = 5  # counts; sum w (mantissas, exponents); sum w**2 (mantissas, exponents)
_EXTRA = 3  # columns after the bins: below the range, above it, NaN


def _bounds(value: Any) -> tuple[float, float]:
    if value is None:
        raise ValueError("histogram: give range=(low, high) too, e.g. 'histogram:bins=50,range=(0,1)': fixed bins "
                         "are what lets the histograms of every rank and every launch merge")
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"histogram: range={value!r}: give (low, high), e.g. range=(0, 1): fixed bins are what "
                         "lets the histograms of every rank and every launch merge")
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"histogram: range={value!r}: low and high must be finite and low < high")
    return low, high


@register
class Histogram(Accumulator):
    """A histogram with fixed bins of the values of every sample, element by element.

    Args:
        bins: the number of equal bins over ``range``.
        range: ``(low, high)``; a value equal to ``high`` falls in the last bin (as in
            ``numpy.histogram``). Values outside are counted in :attr:`underflow` and
            :attr:`overflow`, NaN in :attr:`nan`.
        weighted: also sum the weights (and their squares) per bin.
        pooled: one histogram of every value of every sample (e.g. all the values a
            run returns), instead of one histogram per element.

    A sample of weight 0 counts in :attr:`count` only; the counts are of samples of
    positive weight, whatever their weight (:attr:`weights` has the weight sums).
    Memory: ``(bins + 3)`` float64 per element (5 times that when weighted).

    Example:
        >>> h = Histogram(bins=4, range=(0, 1))
        >>> for x in (0.1, 0.2, 0.6, 1.0, 1.5):
        ...     h.add(x)
        >>> h.counts, h.overflow
        (array([2, 0, 1, 1]), 1)
    """

    kind = "histogram"
    parameters: ClassVar[dict[str, Any]] = {"bins": None, "range": None, "weighted": False, "pooled": False}
    __slots__ = ("_bins", "_range", "_weighted", "_pooled", "_state", "_shape")

    def __init__(self, bins: int, range: tuple[float, float], weighted: bool = False,  # noqa: A002 - numpy's name
                 pooled: bool = False) -> None:
        params = self._checked_params({"bins": bins, "range": range, "weighted": weighted, "pooled": pooled})
        self._bins, self._range = params["bins"], params["range"]
        self._weighted, self._pooled = params["weighted"], params["pooled"]
        self._state: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    @classmethod
    def _checked_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        bins = params["bins"]
        if bins is None:
            raise ValueError("histogram: give bins= and range=, e.g. 'histogram:bins=50,range=(0,1)'")
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= 10**7:
            raise ValueError(f"histogram: bins={bins!r}: must be an integer from 1 to 10**7")
        for name in ("weighted", "pooled"):
            if not isinstance(params[name], (bool, np.bool_)):
                raise ValueError(f"histogram: {name}={params[name]!r}: must be True or False")
        return {"bins": int(bins), "range": _bounds(params["range"]), "weighted": bool(params["weighted"]),
                "pooled": bool(params["pooled"])}

    def _params(self) -> dict[str, Any]:
        return {"bins": self._bins, "range": self._range, "weighted": self._weighted, "pooled": self._pooled}

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape of the samples, or None before the first one."""
        return self._shape

    @property
    def count(self) -> int:
        """Samples added, zero-weight ones included."""
        return 0 if self._state is None else int(self._state[_COUNT])

    @property
    def edges(self) -> np.ndarray:
        """The ``bins + 1`` bin edges."""
        return np.linspace(self._range[0], self._range[1], self._bins + 1)

    @property
    def centers(self) -> np.ndarray:
        """The middle of each bin."""
        edges = self.edges
        return 0.5 * (edges[:-1] + edges[1:])

    # ------------------------------------------------------------ adding
    @staticmethod
    def _columns(layout_or_params: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(histograms, columns per histogram, blocks: 1, or 5 when weighted)."""
        histograms = 1 if layout_or_params["pooled"] else math.prod(shape)
        return histograms, layout_or_params["bins"] + _EXTRA, _BLOCKS_WEIGHTED if layout_or_params["weighted"] else 1

    def _prepare(self, sample: Any, weight: Any) -> tuple[np.ndarray, float, tuple[int, ...]]:
        array = _sample_array(sample)
        if array.dtype.kind == "c":
            raise TypeError("a histogram of complex samples is not defined: add the real and imaginary parts as "
                            "separate elements")
        if self._shape is not None and array.shape != self._shape:
            raise ValueError(f"sample of shape {array.shape} differs from the accumulated shape {self._shape}")
        return np.asarray(array, dtype=np.float64).reshape(-1), _weight(weight), array.shape

    def _bin_of(self, x: np.ndarray) -> np.ndarray:
        """Column of each value: its bin, or bins (below), bins + 1 (above), bins + 2 (NaN)."""
        low, high = self._range
        bins = self._bins
        index = np.searchsorted(self.edges, x, side="right") - 1
        index = np.where(x == high, bins - 1, index)
        index = np.where(index < 0, bins, index)
        index = np.where(x > high, bins + 1, index)
        return np.where(np.isnan(x), bins + 2, index)

    def _add_prepared(self, prepared: tuple[np.ndarray, float, tuple[int, ...]], key: Any = None) -> None:
        x, w, shape = prepared
        if self._state is None:
            self._shape = shape
            self._state = self._empty_packed((self.spec, shape))
        state = self._state
        state[_COUNT] += 1.0
        if w == 0.0:
            return
        histograms, columns, blocks = self._columns(self._params(), shape)
        size = histograms * columns
        column = self._bin_of(x)
        counts = state[_HEADER : _HEADER + size]
        if self._pooled:
            hits = np.bincount(column, minlength=columns).astype(np.float64)
            counts += hits
        else:
            flat = np.arange(histograms) * columns + column
            counts[flat] += 1.0
        if blocks == 1:
            return
        mantissa, exponent = math.frexp(w)
        square = math.frexp(mantissa * mantissa)
        if self._pooled:
            where = np.nonzero(hits)[0]
            values = [(hits[where] * mantissa, np.full(where.size, float(exponent))),
                      (hits[where] * square[0], np.full(where.size, float(2 * exponent + square[1])))]
        else:
            where = flat
            values = [(np.full(where.size, mantissa), np.full(where.size, float(exponent))),
                      (np.full(where.size, square[0]), np.full(where.size, float(2 * exponent + square[1])))]
        for block, (m, e) in zip((1, 3), values):
            ms = state[_HEADER + block * size : _HEADER + (block + 1) * size]
            es = state[_HEADER + (block + 1) * size : _HEADER + (block + 2) * size]
            ms[where], es[where] = _unlimited_add(ms[where], es[where], m, e)

    # ------------------------------------------------------------ packed states
    def _packed_state(self) -> np.ndarray | None:
        return self._state

    @classmethod
    def _empty_packed(cls, layout: Layout) -> np.ndarray:
        params = parse_spec(layout[0])[1]
        histograms, columns, blocks = cls._columns(params, tuple(layout[1]))
        state = np.zeros(_HEADER + blocks * histograms * columns)
        state[_TAG] = _FORMAT_TAG
        return state

    @classmethod
    def _merge_packed(cls, layout: Layout, a: np.ndarray, b: np.ndarray) -> None:
        params = parse_spec(layout[0])[1]
        histograms, columns, blocks = cls._columns(params, tuple(layout[1]))
        size = histograms * columns
        a[_COUNT] += b[_COUNT]
        a[_HEADER : _HEADER + size] += b[_HEADER : _HEADER + size]
        for block in (1, 3)[: (blocks - 1) // 2]:
            m, e = (slice(_HEADER + i * size, _HEADER + (i + 1) * size) for i in (block, block + 1))
            a[m], a[e] = _unlimited_add(a[m], a[e], b[m], b[e])

    @classmethod
    def _from_packed(cls, layout: Layout, packed: np.ndarray) -> Histogram:
        acc = cls(**parse_spec(layout[0])[1])
        acc._state, acc._shape = packed, tuple(layout[1])
        return acc

    @classmethod
    def _check_packed(cls, layout: Layout, packed: np.ndarray) -> None:
        params = parse_spec(layout[0])[1]
        histograms, columns, blocks = cls._columns(params, tuple(layout[1]))
        size = histograms * columns
        if packed[_TAG] != _FORMAT_TAG:
            raise ValueError(f"invalid Histogram state: format tag is {packed[_TAG]!r}, expected {_FORMAT_TAG}")
        counts = packed[_HEADER : _HEADER + size]
        count = packed[_COUNT]
        if not (math.isfinite(count) and count == math.floor(count) and 0 <= count <= 2.0**53):
            raise ValueError(f"invalid Histogram state: count is {count!r}, not an integer >= 0")
        if not (np.all(counts >= 0) and np.all(counts == np.floor(counts))):
            raise ValueError("invalid Histogram state: the counts are not integers >= 0")
        if packed[1] != 0.0 or packed[2] != 0.0:
            raise ValueError("invalid Histogram state: the reserved header values are not 0")
        for block in (1, 3)[: (blocks - 1) // 2]:
            m = packed[_HEADER + block * size : _HEADER + (block + 1) * size]
            e = packed[_HEADER + (block + 1) * size : _HEADER + (block + 2) * size]
            canonical = ((m == 0.0) & (e == 0.0)) | ((m >= 0.5) & (m < 1.0) & (e == np.floor(e)) & (np.abs(e) < 2**20))
            if not np.all(canonical):
                raise ValueError("invalid Histogram state: a weight sum is not a mantissa in [0.5, 1) and an exponent")

    # ------------------------------------------------------------ results
    def _block(self, which: int) -> np.ndarray:
        histograms, columns, blocks = self._columns(self._params(), self._shape or ())
        if which >= blocks:
            raise ValueError("this histogram does not sum weights: make it with weighted=True "
                             "(statistics=('histogram:...,weighted=True',))")
        if self._state is None:
            raise ValueError("the histogram is empty: add a sample first")
        size = histograms * columns
        start = _HEADER + (2 * which - 1 if which else 0) * size
        values = self._state[start : start + size]
        if which:  # the weight sums: mantissas times 2**exponents (inf beyond float64)
            with np.errstate(over="ignore"):
                values = np.ldexp(values, self._state[start + size : start + 2 * size].astype(np.int64))
        return values.reshape((columns,) if self._pooled else (*(self._shape or ()), columns))

    def _column(self, which: int, offset: int, as_int: bool) -> Any:
        values = self._block(which)[..., offset]
        values = values.astype(np.int64) if as_int else values
        return values[()] if values.ndim == 0 else values

    @property
    def counts(self) -> np.ndarray:
        """Samples of positive weight per bin: shape ``shape + (bins,)``, or ``(bins,)`` pooled."""
        return self._block(0)[..., : self._bins].astype(np.int64)

    @property
    def underflow(self) -> Any:
        """Samples below the range (``-inf`` included), per element (a number when pooled or scalar)."""
        return self._column(0, self._bins, True)

    @property
    def overflow(self) -> Any:
        """Samples above the range (``inf`` included)."""
        return self._column(0, self._bins + 1, True)

    @property
    def nan(self) -> Any:
        """NaN samples."""
        return self._column(0, self._bins + 2, True)

    @property
    def weights(self) -> np.ndarray:
        """The sum of the weights per bin (``weighted=True`` only); inf beyond float64."""
        return self._block(1)[..., : self._bins]

    @property
    def weights_squared(self) -> np.ndarray:
        """The sum of the squared weights per bin (``weighted=True`` only)."""
        return self._block(2)[..., : self._bins]

    @property
    def errors(self) -> np.ndarray:
        """The statistical error of each bin: ``sqrt(sum w**2)`` when weighted, else ``sqrt(counts)``."""
        return np.sqrt(self.weights_squared if self._weighted else self.counts.astype(float))

    def density(self) -> np.ndarray:
        """Each bin's share of the samples in the range (of the weight, when weighted),
        divided by the bin width: it integrates to 1 over the range (NaN when the range
        holds nothing)."""
        values = self.weights if self._weighted else self.counts.astype(float)
        width = (self._range[1] - self._range[0]) / self._bins
        with np.errstate(invalid="ignore", divide="ignore"):
            return values / (values.sum(axis=-1, keepdims=True) * width)


def _unlimited_add(m1: np.ndarray, e1: np.ndarray, m2: np.ndarray, e2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``m1 2**e1 + m2 2**e2`` as mantissas in [0.5, 1) (or 0) and exponents: one rounding,
    no overflow or underflow, symmetric in its operands."""
    e = np.maximum(np.where(m1 == 0.0, -(2.0**30), e1), np.where(m2 == 0.0, -(2.0**30), e2))
    total = np.ldexp(m1, (e1 - e).astype(np.int64).clip(-2000, 0)) + np.ldexp(m2, (e2 - e).astype(np.int64).clip(-2000, 0))
    mantissa, shift = np.frexp(total)
    return mantissa, np.where(mantissa == 0.0, 0.0, e + shift)


# Public as parallelaverage.stats.Histogram: pickles, reprs and the docs name it there.
Histogram.__module__ = "parallelaverage.stats"
