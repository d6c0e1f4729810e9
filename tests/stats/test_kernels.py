"""The compiled kernels against their pure-numpy twins (the oracle and the fallback)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelaverage import _kernels

pytestmark = pytest.mark.skipif(not _kernels.NATIVE, reason="the compiled extension is not built")
from parallelaverage import _native  # noqa: E402  (only imported when built)

INPUT_DTYPES = [np.float64, np.float32, np.int8, np.int16, np.int32, np.int64,
                np.uint8, np.uint16, np.uint32, np.uint64, np.complex128, np.complex64, np.bool_]


@settings(max_examples=80, deadline=None)
@given(dtype=st.sampled_from(INPUT_DTYPES), k=st.integers(1, 40), n=st.integers(1, 12),
       seed=st.integers(0, 2**32 - 1), weighted=st.booleans())
def test_native_add_and_merge_match_reference(dtype, k, n, seed, weighted):
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal((n, k)) * 50 + 1e6).astype(dtype) if np.dtype(dtype).kind != "c" \
        else (rng.standard_normal((n, k)) + 1j * rng.standard_normal((n, k))).astype(dtype)
    values = k * (2 if np.dtype(dtype).kind == "c" else 1)
    states = [_kernels.empty_state(values) for _ in range(4)]
    for i, sample in enumerate(samples):
        w = float(rng.uniform(0, 3)) if weighted else 1.0
        _native.add(states[0], sample, w)
        _kernels.add_reference(states[1], sample, w)
        _native.add(states[2 + i % 2], sample, w)
    np.testing.assert_allclose(states[0], states[1], rtol=1e-13, atol=1e-9)
    merged_native, merged_reference = states[2].copy(), states[2].copy()
    _native.merge(merged_native, states[3])
    _kernels.merge_reference(merged_reference, states[3])
    np.testing.assert_allclose(merged_native, merged_reference, rtol=1e-13, atol=1e-9)


def test_size_mismatch_and_bad_buffers_raise_like_the_reference():
    state = _kernels.empty_state(3)
    for kernel in (_native.add, _kernels.add_reference):
        with pytest.raises(ValueError, match="4 values"):
            kernel(state, np.zeros(4), 1.0)
        with pytest.raises(ValueError, match="weight"):
            kernel(state, np.zeros(3), -1.0)
        with pytest.raises(TypeError):
            kernel(state, np.array(["a", "b", "c"]), 1.0)
    for kernel in (_native.merge, _kernels.merge_reference):
        with pytest.raises(ValueError, match="differ"):
            kernel(state, _kernels.empty_state(4))
    with pytest.raises(ValueError, match="packed Welford state"):
        _native.add(np.zeros(4), np.zeros(1), 1.0)


def test_merge_accepts_raw_bytes_as_mpi_hands_them_over():
    a, b = _kernels.empty_state(2), _kernels.empty_state(2)
    _native.add(a, np.array([1.0, 2.0]), 1.0)
    _native.add(b, np.array([3.0, 4.0]), 1.0)
    raw = bytearray(a.tobytes())
    _native.merge(memoryview(raw), memoryview(b.tobytes()))
    merged = np.frombuffer(raw, dtype=np.float64)
    assert merged[0] == 2 and np.allclose(merged[2:4] + merged[4:6], [2.0, 3.0])


def _filled_state(k: int, seed: int, offset: float = 1e9) -> np.ndarray:
    state = _kernels.empty_state(k)
    rng = np.random.default_rng(seed)
    for _ in range(3 + seed % 4):
        _native.add(state, offset + rng.standard_normal(k), float(rng.uniform(0.5, 2.0)))
    return state


@given(k=st.integers(1, 40), data=st.data(), into=st.sampled_from(["a", "b", "third"]))
@settings(max_examples=90, deadline=None)
def test_merge_range_equals_the_whole_merge_on_its_slice(k, data, into):
    lo = data.draw(st.integers(0, k))
    hi = data.draw(st.integers(lo, k))
    a, b = _filled_state(k, 1), _filled_state(k, 2)
    whole = a.copy()
    _native.merge(whole, b)
    results = []
    for kernel in (_native.merge_range, _kernels.merge_range_reference):
        first, second = a.copy(), b.copy()
        out = {"a": first, "b": second, "third": np.full_like(a, np.nan)}[into]
        before = out.copy()
        kernel(out, first, second, lo, hi, a[1], b[1])
        # the whole merge may keep the other operand's shift: compare shift + mean
        sl = slice(_kernels.HEADER + lo, _kernels.HEADER + hi)
        shifted = slice(sl.start + k, sl.stop + k)
        squares = slice(sl.start + 2 * k, sl.stop + 2 * k)
        np.testing.assert_allclose(out[sl] + out[shifted], whole[sl] + whole[shifted], rtol=1e-15, atol=0)
        np.testing.assert_allclose(out[squares], whole[squares], rtol=1e-12, atol=0)
        for section in range(3):
            start = _kernels.HEADER + section * k
            outside = np.r_[start : start + lo, start + hi : start + k]
            np.testing.assert_array_equal(out[outside], before[outside])
        np.testing.assert_array_equal(out[:2], before[:2])  # headers untouched
        results.append(out[sl.start : squares.stop].tobytes())
    assert results[0] == results[1]  # native and twin agree to the bit, whichever the output


@given(k=st.integers(1, 30), seeds=st.tuples(st.integers(0, 7), st.integers(0, 7)), same_count=st.booleans())
@settings(max_examples=60, deadline=None)
def test_merge_gives_the_same_bits_in_either_order(k, seeds, same_count):
    """Both partners of an MPI exchange merge the other's state into theirs."""
    a, b = _filled_state(k, seeds[0]), _filled_state(k, seeds[1])
    if same_count:
        b[0], b[1] = a[0], a[1]
    for kernel in (_native.merge, _kernels.merge_reference):
        ab, ba = a.copy(), b.copy()
        kernel(ab, b)
        kernel(ba, a)
        assert ab.tobytes() == ba.tobytes()
    native, reference = a.copy(), a.copy()
    _native.merge(native, b)
    _kernels.merge_reference(reference, b)
    assert native.tobytes() == reference.tobytes()  # the twin takes the same order


def test_merge_range_rejects_bad_ranges_and_overlap():
    a, b = _filled_state(5, 1), _filled_state(5, 2)
    for kernel in (_native.merge_range, _kernels.merge_range_reference):
        with pytest.raises(ValueError, match="outside"):
            kernel(a, a, b, 3, 6, 1.0, 1.0)
        with pytest.raises(ValueError, match="outside"):
            kernel(a, a, b, 3, 2, 1.0, 1.0)
        with pytest.raises(ValueError, match="differ"):
            kernel(a, a, _kernels.empty_state(4), 0, 1, 1.0, 1.0)
        with pytest.raises(ValueError, match="overlap"):
            kernel(a, a, a, 0, 5, 1.0, 1.0)  # a state merged with itself
        shared = np.concatenate([b, b])
        with pytest.raises(ValueError, match="overlap"):
            kernel(shared[1 : 1 + b.size], a, shared[: b.size], 0, 5, 1.0, 1.0)  # out half over b


def _other_thread_progress_during_add(size: int) -> int:
    """How far another thread counts (of 10,000) while the main thread is in one
    ``Welford.add`` of a float64 sample of ``size`` elements.

    The switch interval is raised to a minute, so the interpreter never takes the GIL
    from the main thread by force. The other thread waits at a gate (a lock, waited on
    without the GIL) that the main thread opens just before the add: it can then only
    run Python code if the add itself gives the GIL up, and once it has the GIL it
    keeps it until it has counted to the end.
    """
    from parallelaverage.stats import Welford

    x = np.random.default_rng(0).standard_normal(size)
    y = x + 1.0  # before the gate opens: numpy gives the GIL up in loops over 500 elements
    acc = Welford()
    acc.add(x)  # the next add takes the fast path: straight into the kernel
    gate, progress = threading.Lock(), [0]
    gate.acquire()

    def count() -> None:
        with gate:
            pass
        for _ in range(10_000):
            progress[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    thread = threading.Thread(target=count)
    try:
        thread.start()  # returns once the thread waits at the gate, having given the GIL up
        gate.release()  # the thread wants the GIL now; nothing but the add can hand it over
        acc.add(y)
        during = progress[0]
    finally:
        thread.join()
        sys.setswitchinterval(interval)
    assert acc.count == 2 and progress[0] == 10_000
    return during


def test_large_samples_release_the_gil_and_stay_exact():
    # Held, the GIL lets the other thread count nothing at all during the add: small
    # samples keep it (releasing costs 0.1 us). Released, the other thread runs if the
    # OS schedules it within the add's few milliseconds, which a loaded machine may
    # not do every time: one of a few adds must see it count to its end.
    assert [_other_thread_progress_during_add(1_000) for _ in range(3)] == [0, 0, 0]
    progress = []
    while len(progress) < 10 and 10_000 not in progress:
        progress.append(_other_thread_progress_during_add(4_000_000))  # an add of about 10 ms
    assert 10_000 in progress, f"another thread counted {progress} of 10,000 during large adds"
    x = np.random.default_rng(0).standard_normal(100_000)
    state, reference = _kernels.empty_state(x.size), _kernels.empty_state(x.size)
    for shift in range(3):
        _native.add(state, x + shift, 1.0)
        _kernels.add_reference(reference, x + shift, 1.0)
    np.testing.assert_allclose(state, reference, rtol=1e-14, atol=1e-12)


def test_without_the_extension_the_numpy_kernels_take_over_with_one_warning():
    import subprocess
    import sys

    program = (
        "import sys, warnings\n"
        "sys.modules['parallelaverage._native'] = None  # as if the extension failed to import\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from parallelaverage import _kernels\n"
        "    from parallelaverage.stats import Welford\n"
        "acc = Welford()\n"
        "for x in (1.0, 2.0, 4.0):\n"
        "    acc.add(x)\n"
        "print(_kernels.NATIVE, len(caught), acc.mean, acc.variance)\n"
        "print(caught[0].message)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    first, message = done.stdout.splitlines()[:2]
    assert first.split()[:2] == ["False", "1"] and float(first.split()[2]) == pytest.approx(7 / 3)
    assert "could not be imported" in message and "pure-numpy" in message
