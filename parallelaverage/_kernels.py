"""The Welford kernels on packed states: compiled when possible, numpy otherwise.

The packed layout and its header arithmetic live in :mod:`parallelaverage._packed`.
Three kernels act on packed states:

* ``add(state, sample, weight)``: one weighted sample, in place;
* ``merge(state_a, state_b)``: Chan's merge of ``b`` into ``a``, in place;
* ``merge_range(out, a, b, lo, hi, header_a, header_b)``: the same merge on elements
  ``lo..hi-1`` of each section only, written to ``out`` (which may be ``a`` or ``b``),
  given the headers of the states ``a`` and ``b`` stand for: one step of the
  reduce-scatter in :mod:`parallelaverage._allreduce`.

The pure-numpy functions below are the reference twins of the C kernels, equal to
them to the bit (the same IEEE operations in the same order, no fused multiply-add):
the oracle in the tests, and the fallback when ``parallelaverage._native`` cannot be
imported (a one-time ``RuntimeWarning`` says why).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np

from parallelaverage._packed import (
    COUNT, EXTREME, FLAGS, FORMAT_TAG, HEADER, LIMIT, NONFINITE, NPOS, RECENTRE, SCALE, TAG, W_M, add_coefficients,
    empty_state, merge_coefficients, recentres, second_goes_first, start_weights, two_sum,
)
from parallelaverage._packed import sections as _sections

_BLOCK = 8192  # elements per block of the numpy kernels

__all__ = [
    "add", "merge", "merge_range", "add_reference", "merge_reference", "merge_range_reference",
    "NATIVE", "empty_state", "HEADER",
]


# ---------------------------------------------------------------- element updates
def _values(sample: Any) -> np.ndarray:
    """The sample as a flat array: float64 (complex as interleaved re, im), or int64 and
    uint64 kept as integers for the exact differences."""
    x = np.ascontiguousarray(sample)
    kind = x.dtype.kind
    if kind == "c" and x.dtype.itemsize <= 16:
        return x.astype(np.complex128, copy=False).reshape(-1).view(np.float64)
    if kind in "iu" and x.dtype.itemsize == 8:
        return x.astype(np.int64 if kind == "i" else np.uint64, copy=False).reshape(-1)
    if kind in "biu" or (kind == "f" and x.dtype.itemsize in (4, 8)):
        return x.astype(np.float64, copy=False).reshape(-1)
    raise TypeError(f"unsupported sample buffer of dtype {x.dtype}")


def _difference(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``x - shift`` rounded once; for 64-bit integers the integer part ``t`` of the shift
    is subtracted in integer arithmetic, so values beyond 2**53 lose nothing (a shift
    rounded up to 2**63 or 2**64 is taken as the largest integer plus 1)."""
    if x.dtype == np.float64:
        return x - shift
    t = np.trunc(shift)
    frac = shift - t
    if x.dtype == np.int64:
        ok = (t >= -(2.0**63)) & (t <= 2.0**63)
        top = t == 2.0**63
        ti = np.where(top, np.iinfo(np.int64).max, np.where(ok & ~top, t, 0.0).astype(np.int64))
        di = x - ti  # wraps on overflow; the sign test below catches it
        ok &= ((x ^ ti) & (x ^ di)) >= 0
        exact = (di.astype(np.float64) - np.where(top, 1.0, 0.0)) - frac
        return np.where(ok, exact, x.astype(np.float64) - shift)
    ok = (t >= 0.0) & (t <= 2.0**64)
    top = t == 2.0**64
    tu = np.where(top, np.iinfo(np.uint64).max, np.where(ok & ~top, t, 0.0).astype(np.uint64))
    above = (x - tu).astype(np.float64)
    below = -((tu - x).astype(np.float64))
    exact = (np.where(x >= tu, above, below) - np.where(top, 1.0, 0.0)) - frac
    return np.where(ok, exact, x.astype(np.float64) - shift)


def _init(x: np.ndarray, shift: np.ndarray, mean: np.ndarray, u: np.ndarray) -> int:
    """The first sample of positive weight: it becomes the shift. Returns the flags the
    state then needs (``EXTREME``, ``NONFINITE``)."""
    xd = x.astype(np.float64)
    finite = np.isfinite(xd)
    np.copyto(shift, np.where(finite, xd, 0.0))
    np.copyto(mean, _difference(x, shift))
    np.copyto(u, np.where(np.isfinite(mean), 0.0, np.nan))
    return (EXTREME if np.any(np.abs(shift) > LIMIT) else 0) | (0 if finite.all() else NONFINITE)


def _update(x: np.ndarray, shift: np.ndarray, mean: np.ndarray, u: np.ndarray,
            f: float, g: float, a: float, sb: float, recentre: bool, extreme: bool, gform: bool) -> bool:
    """One weighted sample into the elements; returns whether the scaled path was taken.
    The mean is ``m + f delta``, or ``g m + f d`` (``gform``, a state with a non-finite
    mean), as in the C kernel.

    Block by block, so that the temporaries stay in the cache (large ones page-fault);
    in place where the C kernel's order of operations allows it, for the same bits.
    """
    scaled = False
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, x.size, _BLOCK):
            part = slice(start, start + _BLOCK)
            xb, sh, me, uu = x[part], shift[part], mean[part], u[part]
            big = _beyond(xb, sh, extreme)
            if big is not None:
                old = sh[big], me[big], uu[big]
            d = _difference(xb, sh)
            delta = d - me
            if gform:
                d *= f
                me *= g
                me += d  # g * mean + f * d
            else:
                me += f * delta  # mean + f * delta
            delta *= sb
            delta *= delta
            uu *= a
            uu += delta  # a * u + (sb * delta)**2
            if recentre:
                s, rest = two_sum(sh, me)
                moved = np.isfinite(me)
                np.copyto(sh, s, where=moved)
                np.copyto(me, rest, where=moved)
            if big is not None:
                _update_scaled(xb[big], *old, f, g, a, sb, sh, me, uu, big)
                scaled = True
    return scaled


def _beyond(x: np.ndarray, shift: np.ndarray, extreme: bool) -> np.ndarray | None:
    """The elements that take the scaled path (None when there are none): a finite
    float64 value beyond ``LIMIT``, or in an ``EXTREME`` state a shift beyond it."""
    if x.dtype != np.float64:
        return None
    magnitude = np.abs(x)
    if not extreme and not np.fmax.reduce(magnitude, initial=0.0) > LIMIT:  # fmax: NaN hides nothing
        return None
    big = (magnitude > LIMIT) & np.isfinite(x)
    if extreme:
        big |= np.abs(shift) > LIMIT
    return big if big.any() else None


def _update_scaled(x: np.ndarray, shift: np.ndarray, mean: np.ndarray, u: np.ndarray,
                   f: float, g: float, a: float, sb: float,
                   shift_out: np.ndarray, mean_out: np.ndarray, u_out: np.ndarray, where: np.ndarray) -> None:
    """The scaled update of the elements ``where`` (from their values before the sample):
    everything divided by ``SCALE`` (exact), and the shift moved to the mean."""
    xs, ss, ms = x / SCALE, shift / SCALE, mean / SCALE
    ds = xs - ss
    deltas = ds - ms
    means = g * ms + f * ds
    ts = (sb * deltas) * SCALE
    u_out[where] = a * u + ts * ts
    s, rest = two_sum(ss, means)
    moved = np.isfinite(means)
    shift_out[where] = np.where(moved, s * SCALE, shift)
    mean_out[where] = np.where(moved, rest * SCALE, means * SCALE)


def add_reference(state: np.ndarray, sample: Any, weight: float) -> None:
    """Numpy twin of the native ``add`` (same semantics, same errors, same bits)."""
    if isinstance(weight, (bool, np.bool_)):
        raise TypeError("weight must be a real number, not a bool")
    w = float(weight)
    if not (w >= 0.0) or math.isinf(w):
        raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
    state = _as_state(state)
    x = _values(sample)
    shift, mean, u = _sections(state)
    if x.size != shift.size:
        raise ValueError(f"sample has {x.size} values, the state holds {shift.size}")
    state[COUNT] += 1.0
    if w == 0.0:
        return  # a zero weight changes nothing but the count, not even with a NaN
    flags = int(state[FLAGS])
    if state[W_M] == 0.0:
        set_flags = _init(x, shift, mean, u)
        start_weights(state, w)
        state[FLAGS] = float(set_flags)
        return
    f, g, a, sb = add_coefficients(state, w)
    state[NPOS] += 1.0
    recentre = bool(flags & RECENTRE) or recentres(int(state[NPOS]))
    scaled = _update(x, shift, mean, u, f, g, a, sb, recentre, bool(flags & EXTREME), bool(flags & NONFINITE))
    nonfinite = x.dtype == np.float64 and not np.all(np.isfinite(x))
    state[FLAGS] = float((flags | (EXTREME if scaled else 0) | (NONFINITE if nonfinite else 0)) & ~RECENTRE)


def _as_state(buffer: Any, name: str = "state", check_tag: bool = True) -> np.ndarray:
    """The buffer as a float64 array, checked like the native kernels check it
    (``check_tag``: the header must be a packed state's; ``merge_range``'s states carry
    only slices, their headers are passed apart)."""
    state = buffer if isinstance(buffer, np.ndarray) else np.frombuffer(buffer, dtype=np.float64)
    if state.dtype != np.float64 or state.size < HEADER or (state.size - HEADER) % 3 or (
        check_tag and state[TAG] != FORMAT_TAG
    ):
        raise ValueError(
            f"{name} is not a packed Welford state (float64, layout {int(FORMAT_TAG)}: "
            "see parallelaverage/_packed.py)"
        )
    return state


def _check_sizes(*states: np.ndarray) -> int:
    k = (states[0].size - HEADER) // 3
    for other in states[1:]:
        if other.size != states[0].size:
            raise ValueError(f"states differ in size: {k} and {(other.size - HEADER) // 3} elements")
    return k


def merge_reference(state_a: Any, state_b: Any) -> None:
    """Numpy twin of the native ``merge``: Chan's formula including the shifts.

    Like the native kernel it accepts any buffer (MPI hands a reduction op raw bytes).
    """
    state_a, state_b = _as_state(state_a, "state_a"), _as_state(state_b, "state_b")
    k = _check_sizes(state_a, state_b)
    if state_b[W_M] == 0.0:
        state_a[COUNT] += state_b[COUNT]
        return
    if state_a[W_M] == 0.0:
        count = state_a[COUNT]
        state_a[:] = state_b
        state_a[COUNT] += count
        return
    swap = second_goes_first(state_a[:HEADER], state_b[:HEADER])
    if swap is None:
        swap = state_b.tobytes() > state_a.tobytes()
    first, second = (state_b, state_a) if swap else (state_a, state_b)
    header, coefficients = merge_coefficients(first[:HEADER], second[:HEADER])
    _merge_elements(state_a, first, second, 0, k, coefficients, int(header[FLAGS]) & EXTREME)
    state_a[:HEADER] = header


def _merge_elements(out: np.ndarray, first: np.ndarray, second: np.ndarray, lo: int, hi: int,
                    coefficients: tuple[float, ...], extreme: int) -> None:
    f1, f2, c1, c2, scd = coefficients
    part = slice(lo, hi)
    (shift_1, mean_1, u_1), (shift_2, mean_2, u_2) = (
        tuple(section[part] for section in _sections(state)) for state in (first, second)
    )
    with np.errstate(invalid="ignore", over="ignore"):
        ds = shift_2 - shift_1
        delta = ds + (mean_2 - mean_1)
        merged_mean = f1 * mean_1 + f2 * (ds + mean_2)
        t = scd * delta
        merged_u = c1 * u_1 + c2 * u_2 + t * t
        merged_shift = shift_1.copy()
        if extreme:
            big = (np.abs(shift_1) > LIMIT) | (np.abs(shift_2) > LIMIT)
            if big.any():
                s1, s2 = shift_1[big] / SCALE, shift_2[big] / SCALE
                m1, m2 = mean_1[big] / SCALE, mean_2[big] / SCALE
                dss = s2 - s1
                deltas = dss + (m2 - m1)
                means = f1 * m1 + f2 * (dss + m2)
                ts = (scd * deltas) * SCALE
                merged_u[big] = c1 * u_1[big] + c2 * u_2[big] + ts * ts
                s, rest = two_sum(s1, means)
                moved = np.isfinite(means)
                merged_shift[big] = np.where(moved, s * SCALE, shift_1[big])
                merged_mean[big] = np.where(moved, rest * SCALE, means * SCALE)
    shift_o, mean_o, u_o = (section[part] for section in _sections(out))
    shift_o[:] = merged_shift
    mean_o[:] = merged_mean
    u_o[:] = merged_u


def merge_range_reference(
    out: np.ndarray, a: np.ndarray, b: np.ndarray, lo: int, hi: int, header_a: Any, header_b: Any
) -> None:
    """Numpy twin of the native ``merge_range``: ``out = a (+) b`` on elements ``lo..hi-1``.

    ``header_a`` and ``header_b`` are the headers of the states that ``a`` and ``b`` stand
    for (in an allreduce, the merged headers of groups of ranks); either may have zero
    weight. ``out``'s header is not touched. ``out`` may be ``a`` or ``b`` itself, or a
    third state. The operand of more weight keeps its shift (``a`` on a tie).
    """
    out, a, b = (_as_state(s, name, check_tag=False) for s, name in ((out, "out"), (a, "a"), (b, "b")))
    k = _check_sizes(out, a, b)
    if not 0 <= lo <= hi <= k:
        raise ValueError(f"range {lo}..{hi} is outside a state of {k} elements")
    if (
        (out is not a and np.shares_memory(out, a))
        or (out is not b and np.shares_memory(out, b))
        or np.shares_memory(a, b)
    ):
        raise ValueError("a and b must not overlap, and out must be a, b, or apart from both")
    ha, hb = np.asarray(header_a, dtype=np.float64), np.asarray(header_b, dtype=np.float64)
    if ha.size != HEADER or hb.size != HEADER:
        raise ValueError(f"headers must hold {HEADER} values")
    if hb[W_M] == 0.0 or ha[W_M] == 0.0:
        source = a if hb[W_M] == 0.0 else b
        if source is not out:
            for section_out, section_in in zip(_sections(out), _sections(source)):
                section_out[lo:hi] = section_in[lo:hi]
        return
    swap = bool(second_goes_first(ha, hb))
    (first, h1), (second, h2) = ((b, hb), (a, ha)) if swap else ((a, ha), (b, hb))
    header, coefficients = merge_coefficients(h1, h2)
    _merge_elements(out, first, second, lo, hi, coefficients, int(header[FLAGS]) & EXTREME)


def _select() -> tuple[Callable[..., None], Callable[..., None], Callable[..., None], bool]:
    try:
        from parallelaverage import _native
    except ImportError as error:  # pragma: no cover - exercised only on broken installs
        warnings.warn(
            f"parallelaverage._native could not be imported ({error}); using the pure-numpy "
            "kernels, which are about 10x slower. Reinstall with a C compiler available "
            "(pip install --force-reinstall parallelaverage) to get the compiled ones.",
            RuntimeWarning,
            stacklevel=3,
        )
        return add_reference, merge_reference, merge_range_reference, False
    return _native.add, _native.merge, _native.merge_range, True


add, merge, merge_range, NATIVE = _select()
