"""The packed Welford state: its layout, its header arithmetic, and its validation.

A packed state is one contiguous float64 array: a header of ``HEADER`` values, then
three sections of ``k`` elements each (``native/welford.c`` says why):

    [count, npos, W_m, W_e, S_m, S_e, P_m, P_e, flags, tag,  shift[k], mean[k], u[k]]

* ``count``: samples added (zero weights included); ``npos``: those of positive weight;
* ``W = W_m * 2**W_e`` the sum of the weights, ``S`` the sum of their squares and
  ``P = W**2 - S`` the sum of ``w_i * w_j`` over pairs ``i != j``, each kept as a
  mantissa in [0.5, 1) and an exponent, so that no sum of finite weights overflows or
  underflows, and ``P`` never suffers the cancellation of ``W**2 - S``;
* ``flags``: ``EXTREME`` (some element saw a finite value beyond ``LIMIT``: its updates
  take the scaled path), ``RECENTRE`` (the next add moves the shifts, set by merges)
  and ``NONFINITE`` (some element's mean is infinite or NaN);
* ``tag``: ``FORMAT_TAG``, the version of this layout;
* ``shift``: a reference value per element, taken from the first sample of positive
  weight and later moved to the running mean; ``mean``: the weighted mean minus the
  shift; ``u``: the unbiased weighted variance ``M2 / (W - S / W)`` itself, which
  neither overflows nor goes subnormal unless the variance itself does.

The same header arithmetic runs in ``native/welford.c`` (same operations, same order):
this module is its reference, and what ``parallelaverage._allreduce`` uses to merge
the headers of groups of ranks.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "HEADER", "COUNT", "NPOS", "W_M", "W_E", "S_M", "S_E", "P_M", "P_E", "FLAGS", "TAG",
    "FORMAT_TAG", "EXTREME", "RECENTRE", "NONFINITE", "LIMIT", "empty_state", "sections", "recentres",
    "weight_sums", "start_weights", "add_coefficients", "merge_coefficients", "merge_headers",
    "second_goes_first", "two_sum", "checked_state", "SCALE",
]

HEADER = 10
COUNT, NPOS, W_M, W_E, S_M, S_E, P_M, P_E, FLAGS, TAG = range(HEADER)
FORMAT_TAG = 2.0
EXTREME = 1
RECENTRE = 2
NONFINITE = 4
"""Some element's mean is infinite or NaN: adds then use ``g m + f d`` for the mean,
which keeps an infinite mean infinite (``m + f delta``, one rounding fewer, is used
otherwise)."""
LIMIT = 2.0**1021
"""Finite values beyond this take the scaled path: below it no difference of the
recurrence can overflow (shift, x <= 2**1021, mean - shift <= 2**1022, delta <= 2**1023)."""
SCALE = 16.0
"""The scaled path works on values divided by this (a power of two: exact)."""
_TINY = 5e-324  # a positive weight fraction never becomes 0, or 0 * inf would make a NaN

Xf = tuple[float, int]  # mantissa in [0.5, 1) (or 0) and exponent: a float of unlimited range


def empty_state(k: int) -> np.ndarray:
    """A packed state of ``k`` float64 elements holding no sample."""
    state = np.zeros(HEADER + 3 * k, dtype=np.float64)
    state[TAG] = FORMAT_TAG
    return state


def sections(state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = (state.size - HEADER) // 3
    body = state[HEADER:]
    return body[:k], body[k : 2 * k], body[2 * k :]


def recentres(npos: int) -> bool:
    """Whether the add that brings the positive-weight samples to ``npos`` moves the shift.

    At 2 and 4, then ``2**(b // 3)`` times per doubling of the count (``b`` the binary
    order of ``npos``): about ``npos**(1/3)`` moves in all, 11 in the first 100 samples
    and 64 in 10,000. A shift taken from an outlier (a first sample of 1e12 among
    N(0, 1)) then follows the running mean closely enough that the mean stays within
    a few ulps, like numpy's: the rounding error of the running mean grows with the
    distance the mean drifted since the last move, and with this spacing its sum no
    longer grows with ``npos``. A move also writes the shift section (an add ~30%
    slower), so it must stay rare.
    """
    if npos < 2:
        return False
    bits = npos.bit_length() - 1
    return npos % (1 << (bits - bits // 3)) == 0


# ------------------------------------------------------------- unlimited-range floats
def _xf(value: float) -> Xf:
    m, e = math.frexp(value)
    return (m, e)


def _xf_of(header: np.ndarray, slot: int) -> Xf:
    return (float(header[slot]), int(header[slot + 1]))


def _xf_mul(a: Xf, b: Xf) -> Xf:
    m, e = math.frexp(a[0] * b[0])
    return (m, a[1] + b[1] + e) if m else (0.0, 0)


def _xf_div(a: Xf, b: Xf) -> Xf:
    m, e = math.frexp(a[0] / b[0])
    return (m, a[1] - b[1] + e) if m else (0.0, 0)


def _xf_twice(a: Xf) -> Xf:
    return (a[0], a[1] + 1) if a[0] else a


def _xf_add(a: Xf, b: Xf) -> Xf:
    if a[0] == 0.0:
        return b
    if b[0] == 0.0:
        return a
    e = max(a[1], b[1])
    m, k = math.frexp(_ldexp(a[0], a[1] - e) + _ldexp(b[0], b[1] - e))
    return (m, e + k)


def _xf_sqrt(a: Xf) -> Xf:
    m, e = a
    if m == 0.0:
        return a
    if e & 1:
        m, e = m * 2.0, e - 1
    r, k = math.frexp(math.sqrt(m))
    return (r, e // 2 + k)


def _ldexp(m: float, e: int) -> float:
    """C's ldexp: infinity on overflow (Python's raises)."""
    try:
        return math.ldexp(m, e)
    except OverflowError:
        return math.copysign(math.inf, m)


def _xf_float(a: Xf) -> float:
    return _ldexp(a[0], a[1])


def _xf_less(a: Xf, b: Xf) -> bool:
    """a < b for a, b >= 0."""
    if a[0] == 0.0 or b[0] == 0.0:
        return a[0] < b[0]
    return (a[1], a[0]) < (b[1], b[0])


def _set_xf(header: np.ndarray, slot: int, value: Xf) -> None:
    header[slot], header[slot + 1] = value[0], float(value[1])


def weight_sums(header: np.ndarray) -> tuple[float, float, float]:
    """``(W, S / W**2, P / W**2)`` of a header as floats: the total weight, ``1 / n_eff``
    (Kish) and ``1 - 1 / n_eff``; the ratios are NaN when ``W == 0``."""
    W, S, P = _xf_of(header, W_M), _xf_of(header, S_M), _xf_of(header, P_M)
    if W[0] == 0.0:
        return 0.0, math.nan, math.nan
    W2 = _xf_mul(W, W)
    return _xf_float(W), _xf_float(_xf_div(S, W2)), _xf_float(_xf_div(P, W2))


# ----------------------------------------------------------------- coefficients
def start_weights(header: np.ndarray, w: float) -> None:
    """The header's sums after the first sample of positive weight ``w``."""
    wx = _xf(w)
    _set_xf(header, W_M, wx)
    _set_xf(header, S_M, _xf_mul(wx, wx))
    _set_xf(header, P_M, (0.0, 0))
    header[NPOS] = 1.0


def add_coefficients(header: np.ndarray, w: float) -> tuple[float, float, float, float]:
    """Update ``header`` for one sample of weight ``w > 0`` added to a state of positive
    weight; return ``(f, g, a, sb)``: ``mean' = g mean + f d`` and ``u' = a u + (sb delta)**2``.

    With ``W`` the weight before and ``W' = W + w`` after, ``f = w / W'``, ``g = W / W'``,
    ``a = P W' / (W P')`` and ``sb**2 = w W / P'`` where ``P' = P + 2 w W``.
    """
    if (abs(header[W_E]) <= 300.0 and abs(header[S_E]) <= 300.0 and (header[P_M] == 0.0 or abs(header[P_E]) <= 300.0)
            and 2.0**-300 <= w <= 2.0**300):
        # every value below stays normal: plain floats round exactly as the
        # unlimited-range arithmetic does (the C kernel takes the same shortcut)
        W_f, S_f, P_f = (math.ldexp(header[slot], int(header[slot + 1])) for slot in (W_M, S_M, P_M))
        W_new_f, P_new_f = W_f + w, P_f + 2.0 * (w * W_f)
        _set_xf(header, W_M, _xf(W_new_f))
        _set_xf(header, S_M, _xf(S_f + w * w))
        _set_xf(header, P_M, _xf(P_new_f))
        return w / W_new_f, W_f / W_new_f, (P_f * W_new_f) / (W_f * P_new_f), math.sqrt((w * W_f) / P_new_f)
    W, S, P, wx = _xf_of(header, W_M), _xf_of(header, S_M), _xf_of(header, P_M), _xf(w)
    W_new = _xf_add(W, wx)
    P_new = _xf_add(P, _xf_twice(_xf_mul(wx, W)))
    f = _xf_float(_xf_div(wx, W_new))
    g = max(_xf_float(_xf_div(W, W_new)), _TINY)
    a = _xf_float(_xf_div(_xf_mul(P, W_new), _xf_mul(W, P_new)))
    sb = _xf_float(_xf_sqrt(_xf_div(_xf_mul(wx, W), P_new)))
    _set_xf(header, W_M, W_new)
    _set_xf(header, S_M, _xf_add(S, _xf_mul(wx, wx)))
    _set_xf(header, P_M, P_new)
    return f, g, a, sb


def merge_headers(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The header of the merge of two states (any order, either may be empty)."""
    merged, _ = merge_coefficients(first, second)
    return merged


def merge_coefficients(h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """The merged header, and ``(f1, f2, c1, c2, scd)`` for two states of positive weight:
    ``mean = f1 mean1 + f2 (shift2 - shift1 + mean2)`` and
    ``u = c1 u1 + c2 u2 + (scd delta)**2`` with ``f_i = W_i / W``, ``c_i = P_i W / (W_i P)``
    and ``scd**2 = W1 W2 / P`` where ``P = P1 + P2 + 2 W1 W2``."""
    W1, S1, P1 = _xf_of(h1, W_M), _xf_of(h1, S_M), _xf_of(h1, P_M)
    W2, S2, P2 = _xf_of(h2, W_M), _xf_of(h2, S_M), _xf_of(h2, P_M)
    merged = np.zeros(HEADER)
    merged[COUNT] = h1[COUNT] + h2[COUNT]
    merged[NPOS] = h1[NPOS] + h2[NPOS]
    merged[FLAGS] = float((int(h1[FLAGS]) | int(h2[FLAGS])) & (EXTREME | NONFINITE) | RECENTRE)
    merged[TAG] = FORMAT_TAG
    W12 = _xf_mul(W1, W2)
    W = _xf_add(W1, W2)
    P = _xf_add(_xf_add(P1, P2), _xf_twice(W12))
    _set_xf(merged, W_M, W)
    _set_xf(merged, S_M, _xf_add(S1, S2))
    _set_xf(merged, P_M, P)
    if W1[0] == 0.0 or W2[0] == 0.0:
        merged[FLAGS] = h2[FLAGS] if W1[0] == 0.0 else h1[FLAGS]  # the other state, as it was
        return merged, ()
    f1 = max(_xf_float(_xf_div(W1, W)), _TINY)
    f2 = max(_xf_float(_xf_div(W2, W)), _TINY)
    c1 = _xf_float(_xf_div(_xf_mul(P1, W), _xf_mul(W1, P)))
    c2 = _xf_float(_xf_div(_xf_mul(P2, W), _xf_mul(W2, P)))
    scd = _xf_float(_xf_sqrt(_xf_div(W12, P)))
    return merged, (f1, f2, c1, c2, scd)


def second_goes_first(h1: np.ndarray, h2: np.ndarray) -> bool | None:
    """Whether the second state is the first operand (keeps its shift): more weight
    first, then more samples; None on a tie."""
    W1, W2 = _xf_of(h1, W_M), _xf_of(h2, W_M)
    if W1 != W2:
        return _xf_less(W1, W2)
    if h1[COUNT] != h2[COUNT]:
        return bool(h2[COUNT] > h1[COUNT])
    return None




def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's TwoSum: ``s + rest == a + b`` exactly, ``s`` the rounded sum."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


# ------------------------------------------------------------------ validation
_MAX_COUNT = 2.0**53  # counts are float64: exact up to here
_MAX_EXPONENT = 1 << 20
_CONSISTENCY = 1e-4  # P + S == W**2 up to the rounding of ~count additions
_MEAN_BOUND = 2.0**1022 * 1.001  # |mean - shift| of a state without EXTREME




def _fail(message: str) -> None:
    raise ValueError(f"invalid Welford state: {message}")


def _check_count(value: float, name: str, upper: float = _MAX_COUNT) -> None:
    if not (math.isfinite(value) and value == math.floor(value) and 0 <= value <= upper):
        _fail(f"{name} is {value!r}, not an integer in 0..{int(upper)}")


def checked_state(packed: object, k: int, legacy: bool) -> np.ndarray:
    """A validated copy of a packed state of ``k`` float64 elements (``legacy``: the
    schema-1 layout ``[count, W, shift, mean, m2]``, converted to this one).

    Raises:
        ValueError: naming the first field that is out of range or inconsistent.
    """
    array = np.asarray(packed)
    if array.dtype.kind == "c":
        _fail("'packed' holds complex numbers; a packed state is float64 (complex samples are interleaved)")
    if array.dtype.kind != "f" or array.ndim != 1:
        _fail(f"'packed' must be a 1-D float64 array, got {array.ndim}-D of dtype {array.dtype}")
    array = array.astype(np.float64, copy=True)
    needed = (2 if legacy else HEADER) + 3 * k
    if array.size != needed:
        _fail(f"'packed' holds {array.size} values; a state of {k} float64 elements needs {needed}")
    state = _from_legacy(array, k) if legacy else array
    _check_header(state[:HEADER])
    _check_sections(state, k)
    return state


def _check_header(h: np.ndarray) -> None:
    count, npos = float(h[COUNT]), float(h[NPOS])
    _check_count(count, "count")
    _check_count(npos, "npos (samples of positive weight)", count)
    if h[TAG] != FORMAT_TAG:
        _fail(f"format tag is {h[TAG]!r}, expected {FORMAT_TAG}")
    if h[FLAGS] not in tuple(float(f) for f in range(8)):
        _fail(f"flags is {h[FLAGS]!r}, not a combination of EXTREME (1), RECENTRE (2) and NONFINITE (4)")
    sums = {}
    for name, slot in (("total weight W", W_M), ("sum of squared weights S", S_M), ("pair sum P", P_M)):
        m, e = float(h[slot]), float(h[slot + 1])
        zero = m == 0.0 and e == 0.0
        if not zero and not (0.5 <= m < 1.0 and e == math.floor(e) and abs(e) <= _MAX_EXPONENT):
            _fail(f"{name} is ({m!r}, {e!r}), not a mantissa in [0.5, 1) and an integer exponent")
        sums[name] = (m, int(e))
    W, S, P = sums.values()
    if (W[0] == 0.0) != (npos == 0) or (S[0] == 0.0) != (npos == 0):
        _fail(f"total weight W and S must be 0 exactly when npos is 0 (npos {int(npos)})")
    if (P[0] == 0.0) != (npos <= 1):
        _fail(f"pair sum P must be 0 exactly when npos <= 1 (npos {int(npos)})")
    if npos:
        W2 = _xf_mul(W, W)
        total = _xf_float(_xf_div(_xf_add(P, S), W2))
        lowest = _xf_float(_xf_div(_xf_mul(S, _xf(npos)), W2))  # Cauchy-Schwarz: S >= W**2 / npos
        if not (abs(total - 1.0) <= _CONSISTENCY and lowest >= 1.0 - _CONSISTENCY):
            _fail("weight sums are inconsistent: P + S must equal W**2, and S >= W**2 / npos")


def _check_sections(state: np.ndarray, k: int) -> None:
    shift, mean, u = sections(state)
    if state[NPOS] == 0:
        if np.any(state[HEADER:] != 0.0):
            _fail("element values are present although no sample has positive weight")
        return
    if not np.all(np.isfinite(shift)):
        _fail("the shift section holds non-finite values")
    if np.any(u < 0.0):
        _fail("the variance section holds negative values")
    if not int(state[FLAGS]) & NONFINITE and not np.all(np.isfinite(mean)):
        _fail(f"infinite or NaN means need the NONFINITE flag ({NONFINITE})")
    if not int(state[FLAGS]) & EXTREME:
        finite = np.isfinite(mean)
        if np.any(np.abs(shift) > LIMIT) or np.any(np.abs(mean[finite]) > _MEAN_BOUND):
            _fail(f"values beyond 2**1021 need the EXTREME flag ({EXTREME})")


def _from_legacy(old: np.ndarray, k: int) -> np.ndarray:
    """A schema-1 state ``[count, W, shift, mean, m2]`` in this layout.

    Schema 1 did not record ``S = sum w**2``: it is taken as ``W**2 / count`` (equal
    weights), exact for unweighted states, and which makes Kish's estimators equal to the
    original's ones that the state was written under. The shifts move to the means.
    """
    count, W = float(old[0]), float(old[1])
    _check_count(count, "count")
    if not (math.isfinite(W) and W >= 0.0) or (count == 0 and W != 0.0):
        _fail(f"total weight W is {W!r}, not finite and >= 0 (and 0 when count is 0)")
    state = empty_state(k)
    state[COUNT] = count
    if W == 0.0:
        return state
    old_shift, old_mean, m2 = old[2 : 2 + k], old[2 + k : 2 + 2 * k], old[2 + 2 * k :]
    if not np.all(np.isfinite(old_shift)):
        _fail("the shift section holds non-finite values")
    if np.any(m2 < 0.0):
        _fail("the m2 section holds negative values")
    shift, mean, u = sections(state)
    with np.errstate(invalid="ignore", over="ignore"):
        moved, rest = two_sum(old_shift, old_mean)
        finite = np.isfinite(old_mean) & np.isfinite(moved)
        shift[:] = np.where(finite, moved, old_shift)
        mean[:] = np.where(finite, rest, old_mean)
        u[:] = (m2 / W) * (count / (count - 1.0)) if count > 1 else m2 * 0.0
    Wx = _xf(W)
    W2 = _xf_mul(Wx, Wx)
    state[NPOS] = count
    _set_xf(state, W_M, Wx)
    _set_xf(state, S_M, _xf_div(W2, _xf(count)))
    _set_xf(state, P_M, _xf_div(_xf_mul(W2, _xf(count - 1.0)), _xf(count)) if count > 1 else (0.0, 0))
    extreme = np.any(np.abs(shift) > LIMIT) or np.any(np.abs(mean[np.isfinite(mean)]) > _MEAN_BOUND)
    nonfinite = not np.all(np.isfinite(mean))
    state[FLAGS] = float(RECENTRE | (EXTREME if extreme else 0) | (NONFINITE if nonfinite else 0))
    return state
