"""``LogBinning``: runs that return a time series, and its integrated autocorrelation time.

A run of a Markov chain returns a series ``x_0 .. x_{T-1}`` (an array whose first axis is
time). Its samples are correlated, so the naive error of their mean is too small. Level
``l`` of the accumulator holds the statistics of the means of consecutive blocks of
``2**l`` samples (blocks never span two runs: runs are independent chains), as one
``Welford`` per level: ``floor(log2 T) + 1`` levels, so memory grows as ``log2 T``
(3 float64 per element per level, plus a header). Merging two accumulators merges level by
level (Chan), across runs and ranks.

When the blocks are much longer than the autocorrelation time, their means are
independent and the error of the mean from level ``l``, ``e_l``, stops growing: the
plateau is the error corrected for the correlation, and
``tau_int = e_l**2 / (2 e_0**2)`` the integrated autocorrelation time (1/2 for
uncorrelated samples). The level is chosen per element by Wolff's criterion as in
pyblock (Lee, Needs & Foulkes 2011): the smallest ``l`` with ``(2**l)**3 > 2 N
(e_l / e_0)**4``, ``N`` the samples; when no level qualifies, the top one (one block per
run: the error of independent runs, valid but noisy) and :attr:`LogBinning.converged`
says so.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from parallelaverage import _kernels, _packed
from parallelaverage._accumulator import Accumulator, Layout, register
from parallelaverage._packed import COUNT, FLAGS, NONFINITE, NPOS, P_M, S_M, W_M
from parallelaverage._welford import Welford, _sample_array, _weight

__all__ = ["LogBinning"]

_HEADER = 3
_COUNT, _LEVELS, _TAG = range(_HEADER)
_FORMAT_TAG = 40.0


def _levels(length: int) -> int:
    return max(1, int(length).bit_length())


def _block_state(blocks: np.ndarray, reference: np.ndarray, w: float) -> np.ndarray:
    """The packed Welford state of ``nb`` samples ``reference + blocks[i]`` of weight ``w``
    each: shift ``reference``, mean and unbiased variance by two passes."""
    nb, k = blocks.shape
    state = _packed.empty_state(k)
    shift, mean, u = _packed.sections(state)
    with np.errstate(invalid="ignore", over="ignore"):
        block_mean = blocks.sum(axis=0) / nb
        spread = ((blocks - block_mean) ** 2).sum(axis=0) / (nb - 1) if nb > 1 else np.zeros(k)
    finite = np.isfinite(block_mean)
    shift[:] = reference
    mean[:] = block_mean
    u[:] = np.where(finite, spread, np.nan)
    wx, n = _packed._xf(w), _packed._xf(float(nb))
    state[COUNT] = state[NPOS] = float(nb)
    _packed._set_xf(state, W_M, _packed._xf_mul(n, wx))
    _packed._set_xf(state, S_M, _packed._xf_mul(n, _packed._xf_mul(wx, wx)))
    pairs = _packed._xf_mul(_packed._xf(float(nb)), _packed._xf(float(nb - 1)))
    _packed._set_xf(state, P_M, _packed._xf_mul(pairs, _packed._xf_mul(wx, wx)) if nb > 1 else (0.0, 0))
    state[FLAGS] = 0.0 if finite.all() else float(NONFINITE)
    return state


@register
class LogBinning(Accumulator):
    """Log-binning of the time series that runs return: the integrated autocorrelation
    time and the error of the mean corrected for it.

    Args:
        None: start empty and add series.

    Each sample is one run's series: an array of shape ``(T, *observables)`` (time first;
    every series of one length), optionally weighted (the weight of the whole run).

    Example:
        >>> acc = LogBinning()
        >>> rng = np.random.default_rng(0)
        >>> for run in range(20):
        ...     x, series = 0.0, []
        ...     for t in range(1024):
        ...         x = 0.9 * x + rng.standard_normal()
        ...         series.append(x)
        ...     acc.add(np.array(series))
        >>> 5 < float(acc.autocorrelation_time) < 15   # (1 + 0.9) / (2 (1 - 0.9)) = 9.5
        True
    """

    kind = "autocorrelation"
    parameters: ClassVar[dict[str, Any]] = {}
    __slots__ = ("_state", "_shape")

    def __init__(self) -> None:
        self._state: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    @classmethod
    def _checked_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _params(self) -> dict[str, Any]:
        return {}

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape of the series ``(T, *observables)``, or None before the first one."""
        return self._shape

    @property
    def count(self) -> int:
        """Series added, zero-weight ones included."""
        return 0 if self._state is None else int(self._state[_COUNT])

    @property
    def levels(self) -> int:
        """The number of levels, ``floor(log2 T) + 1``; 0 before the first series."""
        return 0 if self._shape is None else _levels(self._shape[0])

    @property
    def block_sizes(self) -> np.ndarray:
        """``2**l`` for each level ``l``."""
        return 2 ** np.arange(self.levels)

    # ------------------------------------------------------------ adding
    def _prepare(self, sample: Any, weight: Any) -> tuple[np.ndarray, float, tuple[int, ...]]:
        array = _sample_array(sample)
        if array.dtype.kind == "c":
            raise TypeError("log-binning of complex series is not defined here: add the real and imaginary parts "
                            "as separate elements")
        if array.ndim == 0 or array.shape[0] == 0:
            raise ValueError(f"autocorrelation needs each run to return a time series (an array whose first axis "
                             f"is time), got shape {array.shape}")
        if self._shape is not None and array.shape != self._shape:
            raise ValueError(f"series of shape {array.shape} differs from the accumulated shape {self._shape}")
        values = np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1)
        return values, _weight(weight), array.shape

    def _add_prepared(self, prepared: tuple[np.ndarray, float, tuple[int, ...]], key: Any = None) -> None:
        x, w, shape = prepared
        if self._state is None:
            self._shape = shape
            self._state = self._empty_packed((self.spec, shape))
        state = self._state
        state[_COUNT] += 1.0
        if w == 0.0:
            return
        reference = np.where(np.isfinite(x[0]), x[0], 0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            blocks = x - reference  # exact for a series that stays within a factor 2 of its start
        for level, view in enumerate(self._views(state)):
            _kernels.merge(view, _block_state(blocks, reference, w))
            if level + 1 < self.levels:
                half = blocks.shape[0] // 2
                with np.errstate(invalid="ignore", over="ignore"):
                    blocks = (blocks[0 : 2 * half : 2] + blocks[1 : 2 * half : 2]) * 0.5

    def _views(self, state: np.ndarray) -> list[np.ndarray]:
        levels = int(state[_LEVELS])
        size = (state.size - _HEADER) // levels
        return [state[_HEADER + level * size : _HEADER + (level + 1) * size] for level in range(levels)]

    # ------------------------------------------------------------ packed states
    def _packed_state(self) -> np.ndarray | None:
        return self._state

    @classmethod
    def _empty_packed(cls, layout: Layout) -> np.ndarray:
        shape = tuple(layout[1])
        levels = _levels(shape[0]) if shape else 1
        k = math.prod(shape[1:]) if shape else 1
        state = np.concatenate([np.zeros(_HEADER), np.tile(_packed.empty_state(k), levels)])
        state[_LEVELS], state[_TAG] = float(levels), _FORMAT_TAG
        return state

    @classmethod
    def _merge_packed(cls, layout: Layout, a: np.ndarray, b: np.ndarray) -> None:
        a[_COUNT] += b[_COUNT]
        levels = int(a[_LEVELS])
        size = (a.size - _HEADER) // levels
        for level in range(levels):
            part = slice(_HEADER + level * size, _HEADER + (level + 1) * size)
            _kernels.merge(a[part], b[part])

    @classmethod
    def _from_packed(cls, layout: Layout, packed: np.ndarray) -> LogBinning:
        acc = cls()
        acc._state, acc._shape = packed, tuple(layout[1])
        return acc

    @classmethod
    def _check_packed(cls, layout: Layout, packed: np.ndarray) -> None:
        shape = tuple(layout[1])
        if not shape:
            raise ValueError("invalid LogBinning state: the shape of a series has a time axis")
        if packed[_TAG] != _FORMAT_TAG or packed[_LEVELS] != _levels(shape[0]):
            raise ValueError("invalid LogBinning state: wrong format tag or number of levels")
        count = packed[_COUNT]
        if not (math.isfinite(count) and count == math.floor(count) and count >= 0):
            raise ValueError(f"invalid LogBinning state: count is {count!r}, not an integer >= 0")
        levels = int(packed[_LEVELS])
        size = (packed.size - _HEADER) // levels
        for level in range(levels):
            try:
                _packed.checked_state(packed[_HEADER + level * size : _HEADER + (level + 1) * size],
                                      math.prod(shape[1:]), False)
            except ValueError as error:
                raise ValueError(f"level {level}: {error}") from None

    # ------------------------------------------------------------ results
    def level(self, l: int) -> Welford:  # noqa: E741 - the level's usual name
        """The statistics of the block means of level ``l`` (blocks of ``2**l`` samples), a copy."""
        if self._state is None:
            raise ValueError("the accumulator is empty: add a series first")
        if not 0 <= l < self.levels:
            raise IndexError(f"level {l}: there are {self.levels} levels (0 to {self.levels - 1})")
        return Welford._from_packed(self._views(self._state)[l].copy(), self._shape[1:], False)  # type: ignore[index]

    def _errors(self) -> np.ndarray:
        rows = []
        for l in range(self.levels):  # noqa: E741
            acc = self.level(l)
            with np.errstate(invalid="ignore", divide="ignore"):
                rows.append(np.asarray(acc.sem, dtype=float).reshape(-1) if acc.count else
                            np.full(math.prod(self._shape[1:]), np.nan))  # type: ignore[index]
        return np.stack(rows)

    def _obs(self, values: np.ndarray) -> Any:
        array = values.reshape(self._shape[1:])  # type: ignore[index]
        return array[()] if array.ndim == 0 else array

    @property
    def mean(self) -> Any:
        """The mean of every sample of every series (level 0), per observable."""
        return self.level(0).mean

    @property
    def naive_error(self) -> Any:
        """The error of the mean as if every sample were independent (level 0)."""
        return self._obs(self._errors()[0])

    @property
    def errors(self) -> np.ndarray:
        """The error of the mean from each level: shape ``(levels, *observables)``."""
        return self._errors().reshape((self.levels, *self._shape[1:]))  # type: ignore[index]

    @property
    def autocorrelation_times(self) -> np.ndarray:
        """``e_l**2 / (2 e_0**2)`` at each level: shape ``(levels, *observables)``; it
        grows with the block size until the plateau, whose value is ``tau_int``."""
        errors = self._errors()
        with np.errstate(invalid="ignore", divide="ignore"):
            return (errors**2 / (2.0 * errors[0] ** 2)).reshape((self.levels, *self._shape[1:]))  # type: ignore[index]

    def _chosen(self) -> tuple[np.ndarray, np.ndarray]:
        """Per observable: the chosen level and whether Wolff's criterion chose it."""
        errors = self._errors()
        samples = self.level(0).effective_count
        sizes = (2.0 ** np.arange(self.levels))[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = sizes**3 > 2.0 * samples * (errors / errors[0]) ** 4
        ok &= np.isfinite(errors)
        converged = ok.any(axis=0)
        top = self.levels - 1
        chosen = np.where(converged, np.argmax(ok, axis=0), top)
        return chosen, converged

    @property
    def level_chosen(self) -> Any:
        """The level whose error is :attr:`error`, per observable."""
        return self._obs(self._chosen()[0])

    @property
    def converged(self) -> Any:
        """Whether Wolff's criterion found the level (else the top level was taken: the
        series are too short for their autocorrelation time, or too few)."""
        return self._obs(self._chosen()[1])

    @property
    def error(self) -> Any:
        """The error of the mean, corrected for the autocorrelation (the error at the chosen level)."""
        chosen, _ = self._chosen()
        errors = self._errors()
        return self._obs(errors[chosen, np.arange(errors.shape[1])])

    @property
    def autocorrelation_time(self) -> Any:
        """The integrated autocorrelation time ``tau_int`` (1/2 for uncorrelated samples),
        in samples, at the chosen level."""
        chosen, _ = self._chosen()
        times = self.autocorrelation_times.reshape(self.levels, -1)
        return self._obs(times[chosen, np.arange(times.shape[1])])


# Public as parallelaverage.stats.LogBinning: pickles, reprs and the docs name it there.
LogBinning.__module__ = "parallelaverage.stats"
