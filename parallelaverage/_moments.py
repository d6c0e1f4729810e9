"""``Moments`` (skewness, excess kurtosis) and ``Covariance``: shifted, exact, mergeable.

Both keep Welford's header (:mod:`parallelaverage._packed`: the counts and the weight
sums ``W``, ``S``, ``P`` with unlimited exponents) and its shifts, and update their
central moments with Pébay's formulas divided by ``P / W``, which keeps them in the range
of the data whatever the weights (``native/moments.c`` has the recurrences,
``docs/statistics.md`` the definitions). The header arithmetic is ``_packed``'s, in
Python; the element loops are the C kernels of :mod:`parallelaverage._momentkernels`.

Samples are converted to float64 (integers beyond 2**53 are rounded; complex samples are
refused: add the real and imaginary parts as separate elements). Values beyond 2**1021,
or whose third or fourth powers are beyond the float64 range, give inf or NaN in their
elements (Welford's scaled path is not repeated here).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np

from parallelaverage import _momentkernels as kernels
from parallelaverage import _packed
from parallelaverage._accumulator import Accumulator, Layout, register
from parallelaverage._packed import (
    COUNT, FLAGS, HEADER, NPOS, P_M, RECENTRE, TAG, W_M, add_coefficients, merge_coefficients, recentres,
    second_goes_first, start_weights,
)
from parallelaverage._welford import _sample_array, _weight

__all__ = ["Moments", "Covariance", "SKEWNESS_ESTIMATORS"]

SkewnessEstimator = Literal["moment", "adjusted"]
SKEWNESS_ESTIMATORS: tuple[SkewnessEstimator, ...] = ("moment", "adjusted")
"""The skewness and excess-kurtosis estimators: ``"moment"`` (the default: the moment
ratios of the weighted samples, scipy's ``bias=True``) and ``"adjusted"`` (with Kish's
effective count in the small-sample corrections, scipy's ``bias=False`` for unit weights)."""


def _float64_values(sample: Any, what: str) -> np.ndarray:
    """The sample as an array the loops read (validated as Welford validates), or the
    error in the user's terms."""
    array = _sample_array(sample)
    if array.dtype.kind == "c":
        raise TypeError(f"{what} of complex samples is not defined here: add the real and imaginary parts as "
                        "separate elements (e.g. np.stack([x.real, x.imag]))")
    return array


def _header_ratio(header: np.ndarray, power: float) -> float:
    """``(W**2 / P) ** power`` from the header, with an unlimited exponent until the end
    (inf when the result is beyond float64: weights so unequal that the moments of the
    weighted distribution are themselves beyond it)."""
    W, P = _packed._xf_of(header, _packed.W_M), _packed._xf_of(header, P_M)
    ratio = _packed._xf_div(_packed._xf_mul(W, W), P)
    if power == 0.5:
        return _packed._xf_float(_packed._xf_sqrt(ratio))
    if power == 1.0:
        return _packed._xf_float(ratio)
    raise ValueError(power)  # pragma: no cover


class _Shifted(Accumulator):
    """Welford's header and shifts, with element sections that the subclass defines."""

    __slots__ = ("_state", "_shape")
    what: ClassVar[str] = ""

    def __init__(self) -> None:
        self._state: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------ subclass hooks
    def _size(self, k: int) -> int:
        raise NotImplementedError

    def _tag(self) -> float:
        raise NotImplementedError

    @classmethod
    def _kernel_add(cls, state: np.ndarray, x: np.ndarray, f: float, g: float, a: float, sb: float,
                    recentre: bool) -> None:
        raise NotImplementedError

    @classmethod
    def _kernel_merge(cls, out: np.ndarray, first: np.ndarray, second: np.ndarray,
                      coefficients: tuple[float, ...]) -> None:
        raise NotImplementedError

    @classmethod
    def _sections_of(cls, state: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    # ------------------------------------------------------------ protocol
    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape of the samples, or None before the first one."""
        return self._shape

    @property
    def count(self) -> int:
        """Samples added, zero-weight ones included."""
        return 0 if self._state is None else int(self._state[COUNT])

    @property
    def total_weight(self) -> float:
        """Sum of the weights (``inf`` beyond float64)."""
        return 0.0 if self._state is None else _packed.weight_sums(self._state[:HEADER])[0]

    @property
    def effective_count(self) -> float:
        """Kish's effective sample size ``W**2 / S``; NaN when no weight is positive."""
        return math.nan if self._state is None else 1.0 / _packed.weight_sums(self._state[:HEADER])[1]

    def _prepare(self, sample: Any, weight: Any) -> tuple[np.ndarray, float, tuple[int, ...]]:
        shape = self._shape
        if type(sample) is np.ndarray and sample.dtype == np.float64 and sample.shape == shape \
                and sample.flags.c_contiguous and (weight is None or type(weight) is float and 0.0 <= weight < math.inf):
            return sample.reshape(-1), 1.0 if weight is None else weight, sample.shape  # the common case, checked
        array = _float64_values(sample, self.what)
        if shape is not None and array.shape != shape:
            raise ValueError(f"sample of shape {array.shape} differs from the accumulated shape {shape}")
        return np.ascontiguousarray(array, dtype=np.float64).reshape(-1), _weight(weight), array.shape

    def _add_prepared(self, prepared: tuple[np.ndarray, float, tuple[int, ...]], key: Any = None) -> None:
        x, w, shape = prepared
        if self._state is None:
            self._shape = shape
            self._state = self._empty_state(x.size)
        state = self._state
        state[COUNT] += 1.0
        if w == 0.0:
            return  # a zero weight changes nothing but the count, not even with a NaN
        if state[W_M] == 0.0:
            sections = self._sections_of(state)
            shift, mean = sections[0], sections[1]
            np.copyto(shift, np.where(np.isfinite(x), x, 0.0))
            with np.errstate(invalid="ignore"):
                np.subtract(x, shift, out=mean)
            undefined = np.where(np.isfinite(mean), 0.0, np.nan)
            for section in sections[2:]:
                self._init_section(section, undefined)
            start_weights(state, w)
            state[FLAGS] = 0.0
            return
        flags = int(state[FLAGS])
        f, g, a, sb = add_coefficients(state, w)
        state[NPOS] += 1.0
        self._kernel_add(state, x, f, g, a, sb, bool(flags & RECENTRE) or recentres(int(state[NPOS])))
        state[FLAGS] = 0.0

    def _init_section(self, section: np.ndarray, undefined: np.ndarray) -> None:
        section[:] = undefined

    def _empty_state(self, k: int) -> np.ndarray:
        state = np.zeros(self._size(k))
        state[TAG] = self._tag()
        return state

    # ------------------------------------------------------------ packed states
    def _packed_state(self) -> np.ndarray | None:
        return self._state

    @classmethod
    def _merge_packed(cls, layout: Layout, a: np.ndarray, b: np.ndarray) -> None:
        if b[W_M] == 0.0:
            a[COUNT] += b[COUNT]  # no positive weight: only its count
            return
        if a[W_M] == 0.0:
            count = a[COUNT]
            a[:] = b
            a[COUNT] += count
            return
        swap = second_goes_first(a[:HEADER], b[:HEADER])
        if swap is None:
            swap = b.tobytes() > a.tobytes()
        first, second = (b, a) if swap else (a, b)
        header, (f1, f2, c1, c2, scd) = merge_coefficients(first[:HEADER], second[:HEADER])
        cls._kernel_merge(a, first, second, cls._merge_coefficients(f1, f2, c1, c2, scd))
        tag = a[TAG]
        a[:HEADER] = header
        a[TAG] = tag

    @classmethod
    def _merge_coefficients(cls, f1: float, f2: float, c1: float, c2: float, scd: float) -> tuple[float, ...]:
        return (f1, f2, c1, c2, scd)

    @classmethod
    def _from_packed(cls, layout: Layout, packed: np.ndarray) -> Any:
        from parallelaverage._accumulator import from_spec

        acc = from_spec(layout[0])
        if not isinstance(acc, _Shifted):
            raise ValueError(f"layout {layout[0]!r} is not that of a Moments or Covariance state")
        acc._state, acc._shape = packed, tuple(layout[1])
        return acc

    @classmethod
    def _check_packed(cls, layout: Layout, packed: np.ndarray) -> None:
        header = packed[:HEADER].copy()
        expected_tag = cls._empty_packed(layout)[TAG]
        if header[TAG] != expected_tag:
            raise ValueError(f"invalid {cls.__name__} state: format tag is {header[TAG]!r}, expected {expected_tag}")
        if header[FLAGS] not in (0.0, float(RECENTRE)):
            raise ValueError(f"invalid {cls.__name__} state: flags is {header[FLAGS]!r}, not 0 or RECENTRE ({RECENTRE})")
        header[TAG] = _packed.FORMAT_TAG  # Welford's header checks, on our header
        _packed._check_header(header)
        sections = cls._sections_of(packed)
        if header[NPOS] == 0:
            if np.any(packed[HEADER:] != 0.0):
                raise ValueError(f"invalid {cls.__name__} state: element values are present although no "
                                 "sample has positive weight")
            return
        if not np.all(np.isfinite(sections[0])):
            raise ValueError(f"invalid {cls.__name__} state: the shift section holds non-finite values")
        cls._check_sections(sections)

    @classmethod
    def _check_sections(cls, sections: list[np.ndarray]) -> None:
        pass

    # ------------------------------------------------------------ results
    def _checked_state(self) -> np.ndarray:
        if self._state is None or self._state[COUNT] == 0:
            raise ValueError("the accumulator is empty: add a sample first")
        return self._state

    def _shaped(self, values: np.ndarray, shape: tuple[int, ...] | None = None) -> Any:
        array = np.asarray(values).reshape(self._shape if shape is None else shape)
        return array[()] if array.ndim == 0 else array

    def _mean_values(self) -> np.ndarray:
        state = self._checked_state()
        sections = self._sections_of(state)
        if state[W_M] == 0.0:
            return np.full(sections[0].size, np.nan)
        return sections[0] + sections[1]

    @property
    def mean(self) -> Any:
        """The weighted mean (shift + mean: within an ulp of Welford's for finite samples);
        NaN when no sample has positive weight, and where a sample was infinite or NaN
        (Welford's mean, ``AveragedResult.data``, follows IEEE there)."""
        return self._shaped(self._mean_values())

    def _defined(self, values: np.ndarray) -> np.ndarray:
        """``values`` with NaN where fewer than two samples had positive weight."""
        if self._checked_state()[P_M] == 0.0:
            return np.full(values.shape, np.nan)
        return values


@register
class Moments(_Shifted):
    """Running weighted central moments up to order 4: variance, skewness, excess kurtosis.

    Args:
        order: the highest moment kept: 2 (variance only), 3 (skewness) or 4 (the
            default: skewness and excess kurtosis). Memory: ``order + 1`` float64 per element.

    Samples are numbers or real arrays of any shape (every element has its own moments),
    with optional weights, merged in any order by Pébay's formulas. The state keeps
    ``u_p = M_p W / P`` (``M_p = sum w (x - mean)**p``, ``W = sum w``, ``P = W**2 - sum w**2``),
    shifted like Welford's, so the estimates stay within 1e-12 of the exact ones for data
    such as ``1e9 + noise`` and weights from 5e-324 to 1e300.

    Example:
        >>> acc = Moments()
        >>> for x in (1.0, 2.0, 4.0, 8.0):
        ...     acc.add(x)
        >>> round(float(acc.skewness), 6), round(float(acc.excess_kurtosis), 6)
        (0.687243, -1.002623)
    """

    kind = "moments"
    parameters = {"order": 4}
    what = "moments"
    __slots__ = ("_order",)

    def __init__(self, order: int = 4) -> None:
        super().__init__()
        self._order = self._checked_params({"order": order})["order"]

    @classmethod
    def _checked_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        order = params["order"]
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 2 <= order <= kernels.MAX_ORDER:
            raise ValueError(f"moments: order={order!r}: must be 2, 3 or 4")
        return {"order": int(order)}

    def _params(self) -> dict[str, Any]:
        return {"order": self._order}

    @property
    def order(self) -> int:
        """The highest moment kept (2, 3 or 4)."""
        return self._order

    def _size(self, k: int) -> int:
        return HEADER + (self._order + 1) * k

    def _tag(self) -> float:
        return kernels.MOMENTS_TAG_BASE + self._order

    @classmethod
    def _empty_packed(cls, layout: Layout) -> np.ndarray:
        from parallelaverage._accumulator import parse_spec

        order = parse_spec(layout[0])[1]["order"]
        state = np.zeros(HEADER + (order + 1) * math.prod(layout[1]))
        state[TAG] = kernels.MOMENTS_TAG_BASE + order
        return state

    @classmethod
    def _sections_of(cls, state: np.ndarray) -> list[np.ndarray]:
        return kernels.moments_sections(state)

    @classmethod
    def _kernel_add(cls, state: np.ndarray, x: np.ndarray, f: float, g: float, a: float, sb: float,
                    recentre: bool) -> None:
        af = a * f
        kernels.moments_add(state, x, (f, a, sb, g - f, 3.0 * af, (g * g - g * f) + f * f, 4.0 * af, 6.0 * af * f),
                            recentre)

    @classmethod
    def _kernel_merge(cls, out: np.ndarray, first: np.ndarray, second: np.ndarray,
                      coefficients: tuple[float, ...]) -> None:
        kernels.moments_merge(out, first, second, coefficients)

    @classmethod
    def _merge_coefficients(cls, f1: float, f2: float, c1: float, c2: float, scd: float) -> tuple[float, ...]:
        return (f1, f2, c1, c2, scd, f1 - f2, c1 * f2, c2 * f1, (f1 * f1 - f1 * f2) + f2 * f2, (c1 * f2) * f2,
                (c2 * f1) * f1)

    @classmethod
    def _check_sections(cls, sections: list[np.ndarray]) -> None:
        if np.any(sections[2] < 0.0) or (len(sections) > 4 and np.any(sections[4] < 0.0)):
            raise ValueError("invalid Moments state: an even moment is negative")

    # ------------------------------------------------------------ results
    def _u(self, p: int) -> np.ndarray:
        if p > self._order:
            raise ValueError(f"this Moments keeps moments up to order {self._order}: make it with order={p} "
                             f"(statistics=('moments:{p}',)) to get order {p}")
        return self._sections_of(self._checked_state())[p]

    @property
    def variance(self) -> Any:
        """The unbiased weighted variance (Kish's, as ``Welford.variance``)."""
        return self._shaped(self._defined(self._u(2)))

    def central_moment(self, p: int) -> Any:
        """The weighted central moment ``sum w (x - mean)**p / W`` of order ``p`` (2 to
        ``order``): the moment of the weighted sample, not a bias-corrected estimate.

        Raises:
            ValueError: ``p`` above the kept order, or an empty accumulator.
        """
        if not isinstance(p, (int, np.integer)) or p < 2:
            raise ValueError(f"p={p!r}: central moments of order 2 to {self._order} are kept")
        u = self._u(p)
        state = self._checked_state()
        spread = _packed.weight_sums(state[:HEADER])[2]  # P / W**2
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):
            return self._shaped(self._defined(u * spread))

    def skewness_by(self, estimator: SkewnessEstimator = "moment") -> Any:
        """The skewness by the named estimator.

        ``"moment"``: ``g1 = m3 / m2**1.5`` with ``m_p`` the weighted central moments
        (scipy's ``skew(bias=True)`` for unit weights). ``"adjusted"``:
        ``G1 = g1 sqrt(n (n - 1)) / (n - 2)`` with ``n`` Kish's effective count (scipy's
        ``skew(bias=False)`` for unit weights); NaN for ``n <= 2``.

        NaN where undefined: fewer than two samples of positive weight, a zero variance,
        a sample that was infinite or NaN.

        Raises:
            ValueError: order below 3, unknown estimator, or an empty accumulator.
        """
        self._check_estimator(estimator)
        u2, u3 = self._u(2), self._u(3)
        scale = _header_ratio(self._checked_state()[:HEADER], 0.5) if self._state[P_M] else math.nan  # type: ignore[index]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            g1 = ((u3 / u2) / np.sqrt(u2)) * scale  # not u2**1.5: it underflows where g1 does not
            if estimator == "adjusted":
                n = self.effective_count
                g1 = g1 * (math.sqrt(n * (n - 1.0)) / (n - 2.0)) if n > 2.0 else np.full_like(g1, np.nan)
        return self._shaped(self._defined(g1))

    def excess_kurtosis_by(self, estimator: SkewnessEstimator = "moment") -> Any:
        """The excess kurtosis by the named estimator.

        ``"moment"``: ``g2 = m4 / m2**2 - 3`` (scipy's ``kurtosis(bias=True)`` for unit
        weights). ``"adjusted"``: ``G2 = (n - 1) ((n + 1) g2 + 6) / ((n - 2) (n - 3))``
        with ``n`` Kish's effective count (scipy's ``kurtosis(bias=False)``); NaN for
        ``n <= 3``.

        Raises:
            ValueError: order below 4, unknown estimator, or an empty accumulator.
        """
        self._check_estimator(estimator)
        u2, u4 = self._u(2), self._u(4)
        scale = _header_ratio(self._checked_state()[:HEADER], 1.0) if self._state[P_M] else math.nan  # type: ignore[index]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            g2 = ((u4 / u2) / u2) * scale - 3.0
            if estimator == "adjusted":
                n = self.effective_count
                g2 = ((n - 1.0) * ((n + 1.0) * g2 + 6.0)) / ((n - 2.0) * (n - 3.0)) if n > 3.0 \
                    else np.full_like(g2, np.nan)
        return self._shaped(self._defined(g2))

    @staticmethod
    def _check_estimator(estimator: str) -> None:
        if estimator not in SKEWNESS_ESTIMATORS:
            raise ValueError(f"estimator={estimator!r}: must be one of {', '.join(map(repr, SKEWNESS_ESTIMATORS))}")

    @property
    def skewness(self) -> Any:
        """``skewness_by("moment")``: ``m3 / m2**1.5`` of the weighted samples."""
        return self.skewness_by("moment")

    @property
    def excess_kurtosis(self) -> Any:
        """``excess_kurtosis_by("moment")``: ``m4 / m2**2 - 3`` of the weighted samples
        (0 for a normal distribution)."""
        return self.excess_kurtosis_by("moment")


@register
class Covariance(_Shifted):
    """Running weighted covariance between the elements of array samples, and their correlation.

    Args:
        None: start empty and call :meth:`add` or :meth:`merge`.

    A sample of shape ``s`` with ``d`` elements in all keeps ``d (d + 1) / 2`` covariances:
    memory O(d**2) (80 MB for d = 4,500), and each add costs O(d**2) too. The covariance
    is Kish's unbiased one (its diagonal has the same bits as ``Welford.variance``), merged
    by Chan's formula for co-moments (Pébay), shifted like Welford's: within 1e-12 of the
    exact values at offsets 1e9, with weights from 5e-324 to 1e300.

    Example:
        >>> acc = Covariance()
        >>> for x in ([1.0, 2.0], [2.0, 4.5], [3.0, 5.5]):
        ...     acc.add(np.array(x))
        >>> acc.covariance
        array([[1.  , 1.75],
               [1.75, 3.25]])
    """

    kind = "covariance"
    parameters: ClassVar[dict[str, Any]] = {}
    what = "the covariance"
    __slots__ = ()

    @classmethod
    def _checked_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _params(self) -> dict[str, Any]:
        return {}

    def _size(self, k: int) -> int:
        return HEADER + 2 * k + kernels.triangle_size(k)

    def _tag(self) -> float:
        return kernels.COVARIANCE_TAG

    @classmethod
    def _empty_packed(cls, layout: Layout) -> np.ndarray:
        d = math.prod(layout[1])
        state = np.zeros(HEADER + 2 * d + kernels.triangle_size(d))
        state[TAG] = kernels.COVARIANCE_TAG
        return state

    @classmethod
    def _sections_of(cls, state: np.ndarray) -> list[np.ndarray]:
        return list(kernels.covariance_sections(state))

    def _init_section(self, section: np.ndarray, undefined: np.ndarray) -> None:
        rows, columns = kernels._triangle_indices(undefined.size)
        section[:] = undefined[rows] + undefined[columns]  # NaN in every row and column of a non-finite one

    @classmethod
    def _kernel_add(cls, state: np.ndarray, x: np.ndarray, f: float, g: float, a: float, sb: float,
                    recentre: bool) -> None:
        kernels.covariance_add(state, x, (f, a, sb), recentre)

    @classmethod
    def _kernel_merge(cls, out: np.ndarray, first: np.ndarray, second: np.ndarray,
                      coefficients: tuple[float, ...]) -> None:
        kernels.covariance_merge(out, first, second, coefficients)

    @classmethod
    def _check_sections(cls, sections: list[np.ndarray]) -> None:
        d = sections[0].size
        rows, columns = kernels._triangle_indices(d)
        if np.any(sections[2][rows == columns] < 0.0):
            raise ValueError("invalid Covariance state: a variance (diagonal value) is negative")

    # ------------------------------------------------------------ results
    def _matrix(self) -> np.ndarray:
        """The full symmetric d x d matrix from the upper triangle."""
        triangle = self._sections_of(self._checked_state())[2]
        d = self._sections_of(self._state)[0].size  # type: ignore[arg-type]
        rows, columns = kernels._triangle_indices(d)
        matrix = np.empty((d, d))
        matrix[rows, columns] = triangle
        matrix[columns, rows] = triangle
        return self._defined(matrix)

    def _square(self, matrix: np.ndarray) -> Any:
        shape = self._shape or ()
        return self._shaped(matrix, shape + shape)

    @property
    def covariance(self) -> Any:
        """The unbiased weighted covariance ``sum w (x_i - mean_i)(x_j - mean_j) / (W - S / W)``
        of every pair of elements, of shape ``shape + shape`` (``(d, d)`` for vectors).
        NaN with fewer than two samples of positive weight, and in the rows and columns
        of elements that saw an infinity or a NaN."""
        return self._square(self._matrix())

    def covariance_by(self, estimator: Literal["kish", "original"] = "kish") -> Any:
        """The covariance by the named estimator, as ``Welford.variance_by``: ``"kish"``
        (:attr:`covariance`) or ``"original"``, ``n / (n - 1) M / W`` with ``n`` counting
        zero weights.

        Raises:
            ValueError: unknown estimator, or an empty accumulator.
        """
        if estimator not in ("kish", "original"):
            raise ValueError(f"estimator={estimator!r}: must be 'kish' or 'original'")
        matrix = self._matrix()
        if estimator == "original":
            n = self.count
            spread = _packed.weight_sums(self._state[:HEADER])[2]  # type: ignore[index]
            with np.errstate(invalid="ignore", over="ignore"):
                matrix = matrix * spread * (n / (n - 1.0)) if n > 1 else np.full_like(matrix, np.nan)
        return self._square(matrix)

    @property
    def covariance_of_mean(self) -> Any:
        """The estimated covariance of the mean, ``covariance / n_eff`` (Kish): its
        diagonal is the square of ``Welford.sem``."""
        inverse_neff = _packed.weight_sums(self._checked_state()[:HEADER])[1]
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):
            return self._square(self._matrix() * inverse_neff)

    @property
    def variance(self) -> Any:
        """The diagonal of :attr:`covariance`: the same bits as ``Welford.variance``."""
        return self._shaped(np.diagonal(self._matrix()).copy())

    @property
    def correlation(self) -> Any:
        """Pearson's correlation ``C_ij / sqrt(C_ii C_jj)`` of every pair of elements (the
        normalisation cancels: it is the same for every estimator). NaN where an element
        has zero variance."""
        matrix = self._matrix()
        scale = np.sqrt(np.diagonal(matrix))
        with np.errstate(invalid="ignore", divide="ignore"):
            correlation = matrix / np.outer(scale, scale)
        return self._square(np.clip(correlation, -1.0, 1.0))


# Public as parallelaverage.stats.Moments and .Covariance: pickles, reprs and the docs name them there.
Moments.__module__ = Covariance.__module__ = "parallelaverage.stats"
