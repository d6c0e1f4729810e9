"""The element loops of ``Moments`` and ``Covariance``: compiled when possible, numpy otherwise.

A packed state is a Welford header (:mod:`parallelaverage._packed`: counts, weight sums,
flags, a tag) followed by element sections; the tag names the layout:

* Moments of order p (tag ``10 + p``, p = 2, 3, 4): ``shift[k], mean[k], u2[k]`` and, for
  p >= 3, ``u3[k]``, for p = 4, ``u4[k]``;
* Covariance (tag ``20``): ``shift[d], mean[d], C[d (d + 1) / 2]``, the upper triangle of
  the covariance matrix row by row.

``u_p = M_p W / P`` with ``M_p = sum w (x - mean)**p``: ``u2`` is the unbiased weighted
variance, as Welford's ``u``, and ``C`` the unbiased weighted covariance (see
``native/moments.c`` for the recurrences). Four kernels act on packed states, given the
coefficients that the header arithmetic (``_packed``, in Python) computed:

* ``moments_add(state, x, coefficients, recentre)`` and ``covariance_add(...)``: one
  sample of float64 values, in place;
* ``moments_merge(out, first, second, coefficients)`` and ``covariance_merge(...)``: the
  merge of two states (``first`` keeps its shift) written to ``out``, which is one of them.

The pure-numpy functions below are the twins of the C loops, equal to them to the bit:
the oracle of the tests, and the fallback when ``parallelaverage._native_moments``
cannot be imported (a one-time ``RuntimeWarning`` says so).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from parallelaverage._packed import HEADER, TAG, two_sum

__all__ = [
    "MOMENTS_TAG_BASE", "COVARIANCE_TAG", "MAX_ORDER", "moments_order", "moments_sections", "covariance_dimension",
    "covariance_sections", "triangle_size", "moments_add", "moments_merge", "covariance_add", "covariance_merge",
    "moments_add_reference", "moments_merge_reference", "covariance_add_reference", "covariance_merge_reference",
    "NATIVE",
]

MOMENTS_TAG_BASE = 10.0
COVARIANCE_TAG = 20.0
MAX_ORDER = 4


# ------------------------------------------------------------------- layouts
def moments_order(state: np.ndarray) -> int:
    """The order (2, 3, 4) of a packed Moments state.

    Raises:
        ValueError: not a packed Moments state.
    """
    order = int(state[TAG] - MOMENTS_TAG_BASE) if state.size > HEADER else 0
    if not (2 <= order <= MAX_ORDER and state[TAG] == MOMENTS_TAG_BASE + order and (state.size - HEADER) % (order + 1) == 0):
        raise ValueError("state is not a packed Moments state (see parallelaverage/_moments.py)")
    return order


def moments_sections(state: np.ndarray) -> list[np.ndarray]:
    """Views of ``shift, mean, u2[, u3[, u4]]``."""
    order = moments_order(state)
    k = (state.size - HEADER) // (order + 1)
    body = state[HEADER:]
    return [body[i * k : (i + 1) * k] for i in range(order + 1)]


def triangle_size(d: int) -> int:
    """Values of the upper triangle of a d x d matrix, diagonal included."""
    return d * (d + 1) // 2


def covariance_dimension(state: np.ndarray) -> int:
    """d of a packed Covariance state (``HEADER + 2 d + d (d + 1) / 2`` values).

    Raises:
        ValueError: not a packed Covariance state.
    """
    m = state.size - HEADER
    if m > 0 and state[TAG] == COVARIANCE_TAG:
        d = int(((25 + 8 * m) ** 0.5 - 5) / 2)
        for guess in (d - 1, d, d + 1):
            if guess >= 0 and guess * guess + 5 * guess == 2 * m:
                return guess
    raise ValueError("state is not a packed Covariance state (see parallelaverage/_moments.py)")


def covariance_sections(state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of ``shift, mean`` and the upper triangle ``C``."""
    d = covariance_dimension(state)
    body = state[HEADER:]
    return body[:d], body[d : 2 * d], body[2 * d :]


def _triangle_indices(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each value of the packed upper triangle (cached per d)."""
    cached = _TRIANGLES.get(d)
    if cached is None:
        cached = np.triu_indices(d)
        if d <= 2048:
            _TRIANGLES[d] = cached
    return cached


_TRIANGLES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


# ------------------------------------------------------------------- the twins
def _moved(shift: np.ndarray, mean: np.ndarray) -> None:
    """Move the shifts to the means where the mean is finite (TwoSum: no bit is lost)."""
    s, rest = two_sum(shift, mean)
    moved = np.isfinite(mean)
    np.copyto(shift, s, where=moved)
    np.copyto(mean, rest, where=moved)


def moments_add_reference(state: np.ndarray, x: np.ndarray, coefficients: tuple[float, ...], recentre: bool) -> None:
    """Numpy twin of ``moments_add``: coefficients ``(f, a, sb, g - f, 3 a f,
    g**2 - g f + f**2, 4 a f, 6 a f**2)``."""
    f, a, sb, gmf, af3, h, af4, af6 = coefficients
    sections = moments_sections(state)
    shift, mean, u2 = sections[:3]
    if x.size != shift.size:
        raise ValueError(f"x has {x.size} values, the state holds {shift.size}")
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        delta = (x - shift) - mean
        m = mean + f * delta
        t = sb * delta
        t2 = t * t
        if len(sections) > 4:
            u3, u4 = sections[3], sections[4]
            dd = delta * delta
            u4[:] = ((a * u4 + (t2 * h) * dd) - (af4 * delta) * u3) + (af6 * dd) * u2
        if len(sections) > 3:
            u3 = sections[3]
            u3[:] = (a * u3 + (t2 * gmf) * delta) - (af3 * delta) * u2
        u2[:] = a * u2 + t2
        mean[:] = m
        if recentre:
            _moved(shift, mean)


def moments_merge_reference(out: np.ndarray, first: np.ndarray, second: np.ndarray,
                            coefficients: tuple[float, ...]) -> None:
    """Numpy twin of ``moments_merge``: coefficients ``(f1, f2, c1, c2, scd, f1 - f2,
    c1 f2, c2 f1, f1**2 - f1 f2 + f2**2, c1 f2**2, c2 f1**2)``."""
    f1, f2, c1, c2, scd, fmf, k2a, k2b, h, q2a, q2b = coefficients
    if out is not first and out is not second or first is second:
        raise ValueError("out must be the first or the second operand (and they must differ)")
    if not first.size == second.size == out.size:
        raise ValueError("the states differ in size")
    a_sections, b_sections = moments_sections(first), moments_sections(second)
    s1, m1, a2 = a_sections[:3]
    s2, m2, b2 = b_sections[:3]
    order = len(a_sections) - 1
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        ds = s2 - s1
        delta = ds + (m2 - m1)
        m = f1 * m1 + f2 * (ds + m2)
        t = scd * delta
        t2 = t * t
        results = [s1.copy(), m, (c1 * a2 + c2 * b2) + t2]
        if order >= 3:
            a3, b3 = a_sections[3], b_sections[3]
            results.append(((c1 * a3 + c2 * b3) + (t2 * fmf) * delta) + (3.0 * delta) * (k2b * b2 - k2a * a2))
        if order >= 4:
            a4, b4 = a_sections[4], b_sections[4]
            dd = delta * delta
            results.append((((c1 * a4 + c2 * b4) + (t2 * h) * dd) + (6.0 * dd) * (q2b * b2 + q2a * a2))
                           + (4.0 * delta) * (k2b * b3 - k2a * a3))
    for section, value in zip(moments_sections(out), results):
        section[:] = value


def covariance_add_reference(state: np.ndarray, x: np.ndarray, coefficients: tuple[float, ...], recentre: bool) -> None:
    """Numpy twin of ``covariance_add``: coefficients ``(f, a, sb)``."""
    f, a, sb = coefficients
    shift, mean, cov = covariance_sections(state)
    if x.size != shift.size:
        raise ValueError(f"x has {x.size} values, the state holds {shift.size}")
    rows, columns = _triangle_indices(shift.size)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        delta = (x - shift) - mean
        mean += f * delta
        if recentre:
            _moved(shift, mean)
        t = sb * delta
        cov[:] = a * cov + t[rows] * t[columns]


def covariance_merge_reference(out: np.ndarray, first: np.ndarray, second: np.ndarray,
                               coefficients: tuple[float, ...]) -> None:
    """Numpy twin of ``covariance_merge``: coefficients ``(f1, f2, c1, c2, scd)``."""
    f1, f2, c1, c2, scd = coefficients
    if out is not first and out is not second or first is second:
        raise ValueError("out must be the first or the second operand (and they must differ)")
    if not first.size == second.size == out.size:
        raise ValueError("the states differ in size")
    s1, m1, a = covariance_sections(first)
    s2, m2, b = covariance_sections(second)
    rows, columns = _triangle_indices(s1.size)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        ds = s2 - s1
        delta = ds + (m2 - m1)
        m = f1 * m1 + f2 * (ds + m2)
        t = scd * delta
        cov = (c1 * a + c2 * b) + t[rows] * t[columns]
    shift_o, mean_o, cov_o = covariance_sections(out)
    shift_o[:] = s1.copy()
    mean_o[:] = m
    cov_o[:] = cov


Kernel = Callable[..., None]


def _select() -> tuple[Kernel, Kernel, Kernel, Kernel, bool]:
    try:
        from parallelaverage import _native_moments as native
    except ImportError as error:  # pragma: no cover - exercised only on broken installs
        warnings.warn(
            f"parallelaverage._native_moments could not be imported ({error}); Moments and Covariance use "
            "their pure-numpy kernels. Reinstall with a C compiler available to get the compiled ones.",
            RuntimeWarning, stacklevel=3,
        )
        return (moments_add_reference, moments_merge_reference, covariance_add_reference,
                covariance_merge_reference, False)
    return native.moments_add, native.moments_merge, native.covariance_add, native.covariance_merge, True


moments_add: Any
moments_merge: Any
covariance_add: Any
covariance_merge: Any
moments_add, moments_merge, covariance_add, covariance_merge, NATIVE = _select()
