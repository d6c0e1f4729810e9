"""The Welford kernels on packed states: compiled when possible, numpy otherwise.

A packed state is one contiguous float64 array ``[count, W, shift[k], mean[k], m2[k]]``
(see ``native/welford.c`` for why the shift is there). Two kernels act on it:

* ``add(state, sample, weight)``: one weighted sample, in place;
* ``merge(state_a, state_b)``: Chan's merge of ``b`` into ``a``, in place;
* ``merge_range(out, a, b, lo, hi, w_a, w_b)``: the same merge on elements ``lo..hi-1``
  of each section only, written to ``out`` (which may be ``a`` or ``b``): one step of the
  reduce-scatter in :mod:`parallelaverage._allreduce`.

The pure-numpy functions below are the reference twins of the C kernels: the oracle
in the tests, and the fallback when ``parallelaverage._native`` cannot be imported
(a one-time ``RuntimeWarning`` says why).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

__all__ = [
    "add", "merge", "merge_range", "add_reference", "merge_reference", "merge_range_reference",
    "NATIVE", "empty_state", "HEADER",
]

HEADER = 2  # count, W
_BLOCK = 8192  # elements per block of the numpy kernels


def empty_state(k: int) -> np.ndarray:
    """A packed state of ``k`` float64 elements holding no sample."""
    return np.zeros(HEADER + 3 * k, dtype=np.float64)


def _sections(state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = (state.size - HEADER) // 3
    body = state[HEADER:]
    return body[:k], body[k : 2 * k], body[2 * k :]


def _as_values(sample: Any) -> np.ndarray:
    """The sample as a flat float64 array (complex as interleaved re, im)."""
    x = np.ascontiguousarray(sample)
    if x.dtype.kind == "c":
        return x.astype(np.complex128, copy=False).reshape(-1).view(np.float64)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"unsupported sample buffer format '{x.dtype.str}'")
    return x.astype(np.float64, copy=False).reshape(-1)


def add_reference(state: np.ndarray, sample: Any, weight: float) -> None:
    """Numpy twin of the native ``add`` (same semantics, same errors)."""
    w = float(weight)
    if not (w >= 0.0) or np.isinf(w):
        raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
    x = _as_values(sample)
    shift, mean, m2 = _sections(state)
    if x.size != shift.size:
        raise ValueError(f"sample has {x.size} values, the state holds {shift.size}")
    if state[0] == 0.0:
        np.copyto(shift, np.where(np.isfinite(x), x, 0.0))
        mean[:] = 0.0
        m2[:] = 0.0
    w_new = state[1] + w
    f = w / w_new if w_new > 0.0 else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        # blocks keep the temporaries small and cache-resident (large ones page-fault)
        for start in range(0, x.size, _BLOCK):
            block = slice(start, start + _BLOCK)
            d = x[block] - shift[block]
            delta = d - mean[block]
            mean[block] += delta * f
            d -= mean[block]
            d *= delta
            d *= w
            m2[block] += d
    state[0] += 1.0
    state[1] = w_new


def merge_reference(state_a: Any, state_b: Any) -> None:
    """Numpy twin of the native ``merge``: Chan's formula including the shifts.

    Like the native kernel it accepts any buffer (MPI hands a reduction op raw bytes).
    """
    state_a = np.frombuffer(state_a, dtype=np.float64) if not isinstance(state_a, np.ndarray) else state_a
    state_b = np.frombuffer(state_b, dtype=np.float64) if not isinstance(state_b, np.ndarray) else state_b
    if state_a.size != state_b.size:
        k_a, k_b = ((s.size - HEADER) // 3 for s in (state_a, state_b))
        raise ValueError(f"states differ in size: {k_a} and {k_b} elements")
    if state_b[0] == 0.0:
        return
    if state_a[0] == 0.0:
        state_a[:] = state_b
        return
    first, second = (state_b, state_a) if _b_goes_first(state_a, state_b) else (state_a, state_b)
    k = (state_a.size - HEADER) // 3
    merge_range_reference(state_a, first, second, 0, k, first[1], second[1])
    state_a[0] += state_b[0]
    state_a[1] = first[1] + second[1]


def _b_goes_first(state_a: np.ndarray, state_b: np.ndarray) -> bool:
    """The native kernel's order of the operands (more samples, more weight, larger
    bytes first), which makes ``merge(a, b)`` and ``merge(b, a)`` equal to the bit."""
    if state_a[0] != state_b[0]:
        return bool(state_b[0] > state_a[0])
    if state_a[1] != state_b[1]:
        return bool(state_b[1] > state_a[1])
    return state_b[HEADER:].tobytes() > state_a[HEADER:].tobytes()


def merge_range_reference(
    out: np.ndarray, a: np.ndarray, b: np.ndarray, lo: int, hi: int, w_a: float, w_b: float
) -> None:
    """Numpy twin of the native ``merge_range``: ``out = a (+) b`` on elements ``lo..hi-1``.

    ``w_a`` and ``w_b`` are the total weights of the non-empty states ``a`` and ``b``;
    headers are not touched. ``out`` may be ``a`` or ``b`` itself, or a third state.
    """
    for other in (a, b):
        if other.size != out.size:
            k_out, k_other = ((s.size - HEADER) // 3 for s in (out, other))
            raise ValueError(f"states differ in size: {k_out} and {k_other} elements")
    k = (out.size - HEADER) // 3
    if not 0 <= lo <= hi <= k:
        raise ValueError(f"range {lo}..{hi} is outside a state of {k} elements")
    if (
        (out is not a and np.shares_memory(out, a))
        or (out is not b and np.shares_memory(out, b))
        or np.shares_memory(a, b)
    ):
        raise ValueError("a and b must not overlap, and out must be a, b, or apart from both")
    part = slice(lo, hi)
    (shift_o, mean_o, m2_o), (shift_a, mean_a, m2_a), (shift_b, mean_b, m2_b) = (
        tuple(section[part] for section in _sections(state)) for state in (out, a, b)
    )
    w = w_a + w_b
    fb = w_b / w if w > 0.0 else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        delta = (shift_b - shift_a) + (mean_b - mean_a)
        merged_mean = mean_a + delta * fb
        merged_m2 = m2_a + (m2_b + delta * delta * (w_a * fb))
    shift_o[:] = shift_a
    mean_o[:] = merged_mean
    m2_o[:] = merged_m2


def _select() -> tuple[Callable[..., None], Callable[..., None], Callable[..., None], bool]:
    try:
        from parallelaverage import _native
    except ImportError as error:  # pragma: no cover - exercised only on broken installs
        warnings.warn(
            f"parallelaverage._native could not be imported ({error}); using the pure-numpy "
            "kernels, which are about 3x slower. Reinstall with a C compiler available "
            "(pip install --force-reinstall parallelaverage) to get the compiled ones.",
            RuntimeWarning,
            stacklevel=3,
        )
        return add_reference, merge_reference, merge_range_reference, False
    return _native.add, _native.merge, _native.merge_range, True


add, merge, merge_range, NATIVE = _select()
