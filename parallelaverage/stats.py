"""Online, numerically exact mean and variance of samples: the ``Welford`` value type.

``Welford`` accumulates scalars or arrays of any shape one sample at a time, merges
with other accumulators in any order (Chan's formula), and pickles or saves as a small
named state. The heavy lifting happens in fused C loops (``parallelaverage._native``)
on one packed float64 buffer, the same buffer that ``parallelaverage.mpi.allreduce``
sends between ranks.

Numerics:
    Each element is shifted by a reference value (the first sample) before the
    Welford update, and merges carry the shifts. Data such as ``1e12 + N(0, 1)`` keep a
    relative variance error near 1e-15, where sum/sum-of-squares loses every digit.

NaN and inf:
    They stay in their element, as in numpy: an element that saw a NaN has a NaN mean
    and variance, and an element that saw an infinity has a NaN variance. Its mean is
    +-inf when the infinity came last and NaN when finite samples followed it (numpy's
    mean would still be +-inf then); neighbouring elements are unaffected.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from parallelaverage import _kernels

__all__ = ["Welford", "WeightedSample"]

_STATE_SCHEMA = 1
_NUMERIC_KINDS = "biufc"


def _promote_to_complex(state: np.ndarray) -> np.ndarray:
    """The packed state of a real accumulator re-expressed as a complex one."""
    k = (state.size - _kernels.HEADER) // 3
    promoted = _kernels.empty_state(2 * k)
    promoted[: _kernels.HEADER] = state[: _kernels.HEADER]
    for section in range(3):
        source = state[_kernels.HEADER + section * k : _kernels.HEADER + (section + 1) * k]
        start = _kernels.HEADER + section * 2 * k
        promoted[start : start + 2 * k : 2] = source
    return promoted


class Welford:
    """Running weighted mean and variance of samples of one shape.

    Args:
        None: start empty and call :meth:`add` or :meth:`merge`.

    Samples may be Python or numpy scalars, or numpy arrays of any shape; float32 and
    integers accumulate in float64; complex samples keep a complex mean and a real
    variance ``E|x - mean|^2``. Accumulators are values: ``a + b`` is a new merged
    accumulator, ``a.merge(b)`` merges in place, and an empty accumulator is the
    neutral element of both.

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

        Raises:
            ValueError: the sample's shape differs from the first sample's, or the
                weight is negative or not finite.
            TypeError: the sample is not numeric (a string, a dict, ...).
        """
        kind = type(sample)
        if (kind is np.ndarray and sample.shape == self._shape) or (kind is float and self._shape == ()):
            try:
                _kernels.add(self._state, sample, 1.0 if weight is None else weight)
                return
            except (TypeError, ValueError, BufferError):
                pass  # not contiguous, other dtype, or a bad weight: the slow path says why
        self._add_checked(sample, weight)

    def _add_checked(self, sample: Any, weight: float | None) -> None:
        array = np.asarray(sample)
        if array.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(
                f"cannot average a sample of type {type(sample).__name__} "
                f"(dtype {array.dtype}): samples must be numbers or numeric arrays"
            )
        w = 1.0 if weight is None else weight
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, float, np.integer, np.floating)):
            raise TypeError(f"weight must be a real number, got {type(weight).__name__}")
        if not (float(w) >= 0.0) or math.isinf(float(w)):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        if self._state is None:
            self._shape = array.shape
            self._complex = array.dtype.kind == "c"
            self._state = _kernels.empty_state(array.size * (2 if self._complex else 1))
        elif array.shape != self._shape:
            raise ValueError(
                f"sample of shape {array.shape} differs from the accumulated shape {self._shape}"
            )
        if array.dtype.kind == "c" and not self._complex:
            self._state = _promote_to_complex(self._state)
            self._complex = True
        if self._complex:
            array = array.astype(np.complex128, copy=False)
        elif array.dtype.byteorder not in "=|" or array.dtype.kind == "b":
            array = array.astype(np.float64)
        _kernels.add(self._state, np.ascontiguousarray(array), float(w))

    def merge(self, other: Welford) -> Welford:
        """Merge ``other`` into this accumulator (Chan's formula); return ``self``."""
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
        """Number of samples added (including zero-weight ones)."""
        return 0 if self._state is None else int(self._state[0])

    @property
    def total_weight(self) -> float:
        """Sum of the weights (equals ``count`` for unweighted samples)."""
        return 0.0 if self._state is None else float(self._state[1])

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of the samples, or ``None`` before the first one."""
        return self._shape

    def _sections(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._state is None or self._state[0] == 0:
            raise ValueError("the accumulator is empty: add a sample first")
        return _kernels._sections(self._state)

    def _shaped(self, values: np.ndarray) -> Any:
        array = values.reshape(self._shape)
        return array[()] if array.ndim == 0 else array

    @property
    def mean(self) -> Any:
        """Weighted mean (float64 or complex128; a numpy scalar for scalar samples)."""
        shift, mean, _ = self._sections()
        values = shift + mean
        if self._complex:
            values = values.view(np.complex128)
        return self._shaped(values)

    @property
    def variance(self) -> Any:
        """Unbiased variance: ``n / (n - 1)`` times the weighted second central moment.

        For unweighted samples this is ``M2 / (n - 1)`` (numpy's ``ddof=1``); it is NaN
        with fewer than two samples. Complex samples give the real ``E|x - mean|^2``.
        """
        _, _, m2 = self._sections()
        if self._complex:
            m2 = m2[0::2] + m2[1::2]
        n, w = self.count, self.total_weight
        with np.errstate(invalid="ignore", divide="ignore"):
            values = m2 * (n / ((n - 1.0) * w)) if n > 1 and w > 0 else np.full_like(m2, np.nan)
        return self._shaped(values)

    @property
    def std(self) -> Any:
        """Square root of :attr:`variance`."""
        return np.sqrt(self.variance)

    @property
    def sem(self) -> Any:
        """Estimated error of the mean: ``sqrt(variance / n)``."""
        return np.sqrt(self.variance / self.count)

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
        """Rebuild an accumulator from :meth:`to_state` output, validating it.

        Raises:
            ValueError: the state is not one this version wrote, or is inconsistent.
        """
        try:
            schema, shape, is_complex, packed = (
                state["schema"], state["shape"], state["complex"], state["packed"],
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a Welford state: missing {error}") from None
        if schema != _STATE_SCHEMA:
            raise ValueError(f"unsupported Welford state schema {schema!r} (expected {_STATE_SCHEMA})")
        acc = cls()
        if packed is None:
            return acc
        packed = np.array(packed, dtype=np.float64).reshape(-1)
        size = math.prod(shape) * (2 if is_complex else 1)
        if packed.size != _kernels.HEADER + 3 * size:
            raise ValueError(
                f"Welford state of shape {tuple(shape)} needs {_kernels.HEADER + 3 * size} "
                f"values, got {packed.size}"
            )
        acc._state, acc._shape, acc._complex = packed, tuple(shape), bool(is_complex)
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
