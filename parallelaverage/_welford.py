"""Online, numerically exact mean and variance of weighted samples: the ``Welford`` value type.

Public through :mod:`parallelaverage.stats` (the classes say so in ``__module__``, so
pickles name ``parallelaverage.stats.Welford`` as they always did).

``Welford`` accumulates scalars or arrays of any shape one sample at a time, merges
with other accumulators in any order (Chan's formula), and pickles or saves as a small
named state. The heavy lifting happens in fused C loops (``parallelaverage._native``)
on one packed float64 buffer, the same buffer that ``parallelaverage.mpi.allreduce``
sends between ranks.

Numerics (``docs/statistics.md`` has the formulas):
    Each element is shifted by a reference value before the update: the first sample
    of positive weight, moved to the running mean as samples come in (exactly: the
    represented mean does not change). The state keeps the unbiased weighted variance
    itself and the weight sums in a range that cannot overflow, so the mean, the
    variance and the error of the mean stay within ~1e-14 of the exact values for data
    such as ``1e12 + N(0, 1)``, integers up to 2**64, and weights anywhere between
    5e-324 and 1e300.

Undefined values are NaN, never a number that looks valid: the mean when no sample has
positive weight; the variance and the error of the mean with fewer than two samples of
positive weight; the variance of an element that saw an infinity or a NaN.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import numpy as np

from parallelaverage import _kernels, _packed
from parallelaverage._packed import HEADER

__all__ = ["Welford", "WeightedSample", "ESTIMATORS"]

Estimator = Literal["kish", "original"]
ESTIMATORS: tuple[Estimator, ...] = ("kish", "original")
"""The variance / error-of-the-mean estimators: ``"kish"`` (the default: the unbiased
variance with reliability weights and Kish's effective sample size) and ``"original"``
(the original ParallelAverage's, with the number of samples ``n``)."""

_STATE_SCHEMA = 2
_LEGACY_SCHEMA = 1  # packed [count, W, shift, mean, m2]: still read, converted on load
_MAX_DIMS = 64  # numpy's limit on ndim
_NUMERIC_KINDS = "biufc"


def _promote_to_complex(state: np.ndarray) -> np.ndarray:
    """The packed state of a real accumulator re-expressed as a complex one (imaginary
    parts: every sample was 0)."""
    k = (state.size - HEADER) // 3
    promoted = _packed.empty_state(2 * k)
    promoted[:HEADER] = state[:HEADER]
    for section in range(3):
        source = state[HEADER + section * k : HEADER + (section + 1) * k]
        start = HEADER + section * 2 * k
        promoted[start : start + 2 * k : 2] = source
    return promoted


def _sample_array(sample: Any) -> np.ndarray:
    """The sample as an array the kernels read, or an error in the user's terms."""
    if isinstance(sample, np.ma.MaskedArray):
        raise TypeError(
            "a masked array cannot be averaged: its mask would be silently dropped. Pass "
            "sample.filled(value) to average an explicit value, or add the whole sample "
            "with weight=0 to leave it out"
        )
    if isinstance(sample, int) and not isinstance(sample, bool) and not -(2**63) <= sample < 2**64:
        raise ValueError(
            f"the integer {sample} is beyond the 64-bit range that is averaged exactly: "
            "convert it to float if rounding it is acceptable"
        )
    array = np.asarray(sample)
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind not in _NUMERIC_KINDS:
        raise TypeError(
            f"cannot average a sample of type {type(sample).__name__} "
            f"(dtype {array.dtype}): samples must be numbers or numeric arrays"
        )
    if (kind == "f" and size > 8) or (kind == "c" and size > 16):
        raise TypeError(
            f"samples of dtype {array.dtype} (long double) hold more precision than the "
            "float64 accumulator keeps: convert them with .astype(np.float64) (or "
            "np.complex128) if rounding them is acceptable"
        )
    if kind == "f" and size < 4:
        return array.astype(np.float64)  # float16: exact in float64
    if kind == "b":
        return array.astype(np.uint8)
    if array.dtype.byteorder not in "=|":
        return array.astype(array.dtype.newbyteorder("="))  # same type, native order
    return array


def _weight(weight: Any) -> float:
    if weight is None:
        return 1.0
    if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, (int, float, np.integer, np.floating)):
        raise TypeError(f"weight must be a real number, got {type(weight).__name__}")
    try:
        w = float(weight)
    except OverflowError:
        w = math.inf
    if not (w >= 0.0) or math.isinf(w):
        raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
    return w


class Welford:
    """Running weighted mean and variance of samples of one shape.

    Args:
        None: start empty and call :meth:`add` or :meth:`merge`.

    Samples may be Python or numpy scalars, or numpy arrays of any shape: float64,
    float32 and float16 (converted exactly), integers and bools (64-bit integers are
    subtracted exactly, without rounding them to float64 first), complex64 and
    complex128. Complex samples keep a complex mean and a real variance
    ``E|x - mean|^2``. Accumulators are values: ``a + b`` is a new merged accumulator,
    ``a.merge(b)`` merges in place, and an empty accumulator is the neutral element of
    both.

    Example:
        >>> acc = Welford()
        >>> for x in (1.0, 2.0, 4.0):
        ...     acc.add(x)
        >>> float(acc.mean), float(acc.variance)
        (2.3333333333333335, 2.3333333333333335)
    """

    __slots__ = ("_state", "_shape", "_complex")

    def __init__(self) -> None:
        self._state: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None
        self._complex = False

    # ------------------------------------------------------------------ updates
    def add(self, sample: Any, weight: float | None = None) -> None:
        """Add one sample, optionally with a weight >= 0.

        A sample of weight 0 counts in :attr:`count` and nothing else: its values, even
        NaN, do not touch the statistics.

        Raises:
            ValueError: the sample's shape differs from the first sample's, the weight is
                negative or not finite, or an integer is beyond the 64-bit range.
            TypeError: the sample is not numeric (a string, a dict, ...), is a masked
                array, or holds long doubles; the weight is not a real number.
        """
        kind = type(sample)
        if (kind is np.ndarray and sample.shape == self._shape) or (kind is float and self._shape == ()):
            try:
                _kernels.add(self._state, sample, 1.0 if weight is None else weight)
                return
            except (TypeError, ValueError, OverflowError, BufferError):
                pass  # not contiguous, other dtype, or a bad weight: the slow path says why
        self._add_checked(sample, weight)

    def _add_checked(self, sample: Any, weight: float | None) -> None:
        array = _sample_array(sample)
        w = _weight(weight)
        if self._state is None:
            self._shape = array.shape
            self._complex = array.dtype.kind == "c"
            self._state = _packed.empty_state(array.size * (2 if self._complex else 1))
        elif array.shape != self._shape:
            raise ValueError(
                f"sample of shape {array.shape} differs from the accumulated shape {self._shape}"
            )
        if array.dtype.kind == "c" and not self._complex:
            self._state = _promote_to_complex(self._state)
            self._complex = True
        if self._complex:
            array = array.astype(np.complex128, copy=False)
        _kernels.add(self._state, np.ascontiguousarray(array), w)

    def merge(self, other: Welford) -> Welford:
        """Merge ``other`` into this accumulator (Chan's formula); return ``self``.

        The operand of more total weight keeps its shifts, so an accumulator of only
        zero-weight samples adds its count and nothing else.
        """
        if not isinstance(other, Welford):
            raise TypeError(f"can only merge a Welford, not {type(other).__name__}")
        if other._state is None or other.count == 0:
            return self
        if self._state is None or self.count == 0:
            self._state = other._state.copy()
            self._shape, self._complex = other._shape, other._complex
            return self
        if other._shape != self._shape:
            raise ValueError(
                f"cannot merge accumulators of shapes {self._shape} and {other._shape}"
            )
        other_state = other._state
        if other._complex and not self._complex:
            self._state = _promote_to_complex(self._state)
            self._complex = True
        elif self._complex and not other._complex:
            other_state = _promote_to_complex(other_state)
        if other_state is self._state:  # a.merge(a): the kernels read b while writing a
            other_state = other_state.copy()
        _kernels.merge(self._state, other_state)
        return self

    def __add__(self, other: Welford) -> Welford:
        if not isinstance(other, Welford):
            return NotImplemented
        return self.copy().merge(other)

    def copy(self) -> Welford:
        """An independent copy."""
        new = Welford()
        if self._state is not None:
            new._state = self._state.copy()
        new._shape, new._complex = self._shape, self._complex
        return new

    # ---------------------------------------------------------------- results
    @property
    def count(self) -> int:
        """Number of samples added, zero-weight ones included."""
        return 0 if self._state is None else int(self._state[_packed.COUNT])

    @property
    def total_weight(self) -> float:
        """Sum of the weights (``count`` for unweighted samples; ``inf`` beyond float64)."""
        return 0.0 if self._state is None else _packed.weight_sums(self._state[:HEADER])[0]

    @property
    def effective_count(self) -> float:
        """Kish's effective sample size ``(sum w)**2 / sum w**2``: ``count`` for equal
        weights, fewer when a few weights dominate; NaN when no weight is positive."""
        if self._state is None:
            return math.nan
        return 1.0 / _packed.weight_sums(self._state[:HEADER])[1]

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of the samples, or ``None`` before the first one."""
        return self._shape

    def _checked_state(self) -> np.ndarray:
        if self._state is None or self._state[_packed.COUNT] == 0:
            raise ValueError("the accumulator is empty: add a sample first")
        return self._state

    def _shaped(self, values: np.ndarray) -> Any:
        array = values.reshape(self._shape)
        return array[()] if array.ndim == 0 else array

    def _means(self) -> np.ndarray:
        """shift + mean, float64 (interleaved for complex); NaN with no positive weight."""
        state = self._checked_state()
        shift, mean, _ = _packed.sections(state)
        if state[_packed.W_M] == 0.0:
            return np.full(shift.size, np.nan)
        return shift + mean

    @property
    def mean(self) -> Any:
        """Weighted mean ``sum(w x) / sum(w)`` (float64 or complex128; a numpy scalar for
        scalar samples). NaN when no sample has positive weight."""
        values = self._means()
        if self._complex:
            values = values.view(np.complex128)
        return self._shaped(values)

    def _kish_variance(self) -> tuple[np.ndarray, float, float]:
        """u per element (NaN where undefined), 1/n_eff and 1 - 1/n_eff."""
        state = self._checked_state()
        _, _, u = _packed.sections(state)
        _, inverse_neff, spread = _packed.weight_sums(state[:HEADER])
        finite = np.isfinite(self._means())
        if self._complex:
            u = u[0::2] + u[1::2]
            finite = finite[0::2] & finite[1::2]
        if state[_packed.P_M] == 0.0:  # fewer than two samples of positive weight
            return np.full(u.size, np.nan), inverse_neff, spread
        return np.where(finite, u, np.nan), inverse_neff, spread

    def variance_by(self, estimator: Estimator = "kish") -> Any:
        """The variance of the samples by the named estimator (see :data:`ESTIMATORS`).

        ``"kish"``: ``M2 / (W - S / W)`` with ``M2 = sum w (x - mean)**2``, ``W = sum w``
        and ``S = sum w**2``: unbiased for independent samples of a common variance
        whatever the weights (reliability weights); ``M2 / (n - 1)`` unweighted.
        ``"original"``: ``n / (n - 1) * M2 / W`` with ``n`` the number of samples, zero
        weights included, as the original ParallelAverage computed it.

        Both are NaN with fewer than two samples of positive weight, and for elements that
        saw an infinity or a NaN. Complex samples give the real ``E|x - mean|^2``.

        Raises:
            ValueError: unknown estimator, or an empty accumulator.
        """
        kish, _, spread = self._kish_variance_checked(estimator)
        if estimator == "kish":
            return self._shaped(kish)
        n = self.count
        with np.errstate(invalid="ignore", over="ignore"):
            values = kish * spread * (n / (n - 1.0)) if n > 1 else np.full_like(kish, np.nan)
        return self._shaped(values)

    def sem_by(self, estimator: Estimator = "kish") -> Any:
        """The estimated error of the mean by the named estimator (see :data:`ESTIMATORS`).

        ``"kish"``: ``sqrt(variance / n_eff)`` with Kish's ``n_eff = W**2 / S``.
        ``"original"``: ``sqrt(variance_by("original") / n)``, ``n`` counting zero weights.

        Raises:
            ValueError: unknown estimator, or an empty accumulator.
        """
        kish, inverse_neff, _ = self._kish_variance_checked(estimator)
        if estimator == "kish":
            return self._shaped(np.sqrt(kish * inverse_neff))
        return self._shaped(np.sqrt(np.asarray(self.variance_by("original")).reshape(-1) / self.count))

    def _kish_variance_checked(self, estimator: str) -> tuple[np.ndarray, float, float]:
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator={estimator!r}: must be one of {', '.join(map(repr, ESTIMATORS))}")
        return self._kish_variance()

    @property
    def variance(self) -> Any:
        """Unbiased weighted variance (Kish's; :meth:`variance_by` for the other)."""
        return self.variance_by("kish")

    @property
    def std(self) -> Any:
        """Square root of :attr:`variance`."""
        return np.sqrt(self.variance)

    @property
    def sem(self) -> Any:
        """Estimated error of the mean, ``sqrt(variance / n_eff)`` (Kish's effective
        sample size); :meth:`sem_by` gives the original's ``sqrt(variance / n)``."""
        return self.sem_by("kish")

    # -------------------------------------------------------------- persistence
    def to_state(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_state` turns back into an equal accumulator."""
        return {
            "schema": _STATE_SCHEMA,
            "shape": None if self._shape is None else list(self._shape),
            "complex": self._complex,
            "packed": None if self._state is None else self._state.copy(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Welford:
        """Rebuild an accumulator from :meth:`to_state` output, validating every field.

        Reads the states of this version (schema 2) and of the previous one (schema 1,
        whose weighted states did not record ``sum w**2``: they are read with
        ``n_eff = n``, which makes both estimators equal to the original's for them).

        Raises:
            ValueError: the state is not one a version of this class wrote, or a field is
                out of range or inconsistent with the others; the message names it.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"not a Welford state: expected a mapping, got {type(state).__name__}")
        missing = [key for key in ("schema", "shape", "complex", "packed") if key not in state]
        if missing:
            raise ValueError(f"not a Welford state: missing {', '.join(map(repr, missing))}")
        schema, shape, is_complex, packed = state["schema"], state["shape"], state["complex"], state["packed"]
        if isinstance(schema, (bool, np.bool_)) or not isinstance(schema, (int, np.integer)) \
                or schema not in (_LEGACY_SCHEMA, _STATE_SCHEMA):
            raise ValueError(
                f"unsupported Welford state schema {schema!r} (this version reads {_LEGACY_SCHEMA} and {_STATE_SCHEMA})"
            )
        if not isinstance(is_complex, (bool, np.bool_)):
            raise ValueError(f"Welford state field 'complex' must be a bool, got {is_complex!r}")
        acc = cls()
        if packed is None:
            if shape is not None or is_complex:
                raise ValueError("Welford state without 'packed' values must have shape None and complex False")
            return acc
        shape = _checked_shape(shape)
        size = math.prod(shape) * (2 if is_complex else 1)
        acc._state = _packed.checked_state(packed, size, int(schema) == _LEGACY_SCHEMA)
        acc._shape, acc._complex = shape, bool(is_complex)
        return acc

    @classmethod
    def _from_packed(cls, packed: np.ndarray, shape: tuple[int, ...], is_complex: bool) -> Welford:
        """Wrap a packed state without copying (used by the MPI engine)."""
        acc = cls()
        acc._state, acc._shape, acc._complex = packed, tuple(shape), is_complex
        return acc

    def __reduce__(self) -> tuple[Any, ...]:
        return (Welford.from_state, (self.to_state(),))

    def __repr__(self) -> str:
        if self._state is None:
            return "Welford(empty)"
        kind = ", complex" if self._complex else ""
        return f"Welford(count={self.count}, shape={self._shape}{kind})"


def _checked_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_DIMS or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 0 for d in shape
    ):
        raise ValueError(
            f"Welford state field 'shape' must be a list of at most {_MAX_DIMS} integers >= 0, got {shape!r}"
        )
    return tuple(int(d) for d in shape)


class WeightedSample:
    """A sample with a weight: return one from a run to get a weighted average.

    Args:
        sample: the value (scalar or array) of this run.
        weight: its weight, finite and >= 0.
    """

    __slots__ = ("sample", "weight")

    def __init__(self, sample: Any, weight: float) -> None:
        self.sample = sample
        self.weight = weight

    def __reduce__(self) -> tuple[Any, ...]:
        return (WeightedSample, (self.sample, self.weight))

    def __repr__(self) -> str:
        return f"WeightedSample({self.sample!r}, weight={self.weight!r})"


# Public as parallelaverage.stats.Welford and .WeightedSample: pickles, reprs and the
# docs name them there, as before this module was split off.
Welford.__module__ = WeightedSample.__module__ = "parallelaverage.stats"
