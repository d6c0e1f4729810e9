"""The compiled kernels against their pure-numpy twins (the oracle and the fallback):
equal to the bit, on every path (plain, re-centring, scaled, integer, zero weights),
NaN payloads aside (IEEE leaves the sign of a NaN made by inf - inf unspecified)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelaverage import _kernels, _packed
from parallelaverage._packed import HEADER

pytestmark = pytest.mark.skipif(not _kernels.NATIVE, reason="the compiled extension is not built")
from parallelaverage import _native  # noqa: E402  (only imported when built)

INPUT_DTYPES = [np.float64, np.float32, np.int8, np.int16, np.int32, np.int64,
                np.uint8, np.uint16, np.uint32, np.uint64, np.complex128, np.complex64, np.bool_]
WEIGHTS = [1.0, 0.0, 5e-324, 1e-300, 1e300, 0.37, 2.5]
SPECIALS = [np.inf, -np.inf, np.nan, 1e308, -1.7e308, 3e307, 2.0**1021]


def bits(state: np.ndarray) -> bytes:
    """The bytes of a state with every NaN made the same NaN."""
    return np.where(np.isnan(state), np.nan, state).tobytes()


def _sample(rng: np.random.Generator, dtype: type, k: int, special: bool) -> np.ndarray:
    kind = np.dtype(dtype).kind
    if dtype == np.int64:
        return (2**62 + rng.integers(-1000, 1000, k)).astype(dtype)
    if dtype == np.uint64:
        return (2**63 + rng.integers(0, 10**6, k).astype(np.uint64)).astype(dtype)
    if kind in "iub":
        return rng.integers(0, 100, k).astype(dtype)
    x = rng.choice([1e9, 0.0, -1e5]) + rng.standard_normal(k)
    if special and dtype in (np.float64, np.complex128):
        x[rng.integers(0, k)] = rng.choice(SPECIALS)
    if kind == "c":
        x = x + 1j * rng.standard_normal(k)
    return x.astype(dtype)


def _filled(k: int, dtype: type, seed: int, n: int, special: bool) -> tuple[np.ndarray, np.ndarray]:
    """The same samples into a native and a twin state."""
    rng = np.random.default_rng(seed)
    values = k * (2 if np.dtype(dtype).kind == "c" else 1)
    native, twin = _packed.empty_state(values), _packed.empty_state(values)
    for _ in range(n):
        x = _sample(rng, dtype, k, special and rng.random() < 0.3)
        w = float(rng.choice(WEIGHTS))
        _native.add(native, x, w)
        _kernels.add_reference(twin, x, w)
    return native, twin


@settings(max_examples=80, deadline=None)
@given(dtype=st.sampled_from(INPUT_DTYPES), k=st.integers(1, 40), n=st.integers(1, 40),
       seed=st.integers(0, 2**32 - 1), special=st.booleans())
def test_native_add_and_merge_equal_the_twin_to_the_bit(dtype, k, n, seed, special):
    a_native, a_twin = _filled(k, dtype, seed, n, special)
    b_native, b_twin = _filled(k, dtype, seed + 1, n // 2 + 1, special)
    assert bits(a_native) == bits(a_twin)
    _native.merge(a_native, b_native)
    _kernels.merge_reference(a_twin, b_twin)
    assert bits(a_native) == bits(a_twin)


def test_a_long_sample_takes_every_path_and_stays_equal():
    """Beyond one vector block, with huge values (scaled path) and re-centring adds."""
    rng = np.random.default_rng(7)
    k = 5000
    native, twin = _packed.empty_state(k), _packed.empty_state(k)
    for i in range(70):
        x = 1e6 + rng.standard_normal(k)
        if i in (5, 40):
            x[rng.integers(0, k, 3)] = [1e308, -np.inf, np.nan]
        _native.add(native, x, 1.0 + i % 3)
        _kernels.add_reference(twin, x, 1.0 + i % 3)
        assert bits(native) == bits(twin), i
    assert native[_packed.FLAGS] == _packed.EXTREME | _packed.NONFINITE


def test_size_mismatch_and_bad_buffers_raise_like_the_reference():
    state = _packed.empty_state(3)
    for kernel in (_native.add, _kernels.add_reference):
        with pytest.raises(ValueError, match="4 values"):
            kernel(state, np.zeros(4), 1.0)
        with pytest.raises(ValueError, match="weight"):
            kernel(state, np.zeros(3), -1.0)
        with pytest.raises(TypeError, match="bool"):
            kernel(state, np.zeros(3), True)
        with pytest.raises(TypeError):
            kernel(state, np.array(["a", "b", "c"]), 1.0)
        with pytest.raises(ValueError, match="packed Welford state"):
            kernel(np.zeros(4), np.zeros(1), 1.0)  # the layout of schema 1
    assert state[_packed.COUNT] == 0  # nothing half-applied
    for kernel in (_native.merge, _kernels.merge_reference):
        with pytest.raises(ValueError, match="differ"):
            kernel(state, _packed.empty_state(4))


def test_merge_accepts_raw_bytes_as_mpi_hands_them_over():
    a, b = _packed.empty_state(2), _packed.empty_state(2)
    _native.add(a, np.array([1.0, 2.0]), 1.0)
    _native.add(b, np.array([3.0, 4.0]), 1.0)
    raw = bytearray(a.tobytes())
    _native.merge(memoryview(raw), memoryview(b.tobytes()))
    merged = np.frombuffer(raw, dtype=np.float64)
    shift, mean, u = _packed.sections(merged)
    assert merged[_packed.COUNT] == 2 and np.array_equal(shift + mean, [2.0, 3.0])
    np.testing.assert_allclose(u, [2.0, 2.0], rtol=4e-16)  # (sqrt(b) delta)**2: within an ulp


def _weighted_state(k: int, seed: int, offset: float = 1e9, extreme: bool = False) -> np.ndarray:
    state = _packed.empty_state(k)
    rng = np.random.default_rng(seed)
    for i in range(3 + seed % 4):
        x = offset + rng.standard_normal(k)
        if extreme and i == 1:
            x[:: 2] = (-1.0) ** seed * 1.5e308  # beyond 2**1021: the scaled path
        _native.add(state, x, float(rng.uniform(0.5, 2.0)))
    return state


@given(k=st.integers(1, 40), data=st.data(), into=st.sampled_from(["a", "b", "third"]),
       empty=st.sampled_from([None, "a", "b"]), extreme=st.booleans())
@settings(max_examples=90, deadline=None)
def test_merge_range_equals_the_whole_merge_on_its_slice(k, data, into, empty, extreme):
    lo = data.draw(st.integers(0, k))
    hi = data.draw(st.integers(lo, k))
    a, b = _weighted_state(k, 1, extreme=extreme), _weighted_state(k, 2)
    if empty is not None:  # only zero weights: the other side is copied
        zero = _packed.empty_state(k)
        _native.add(zero, np.zeros(k), 0.0)
        a, b = (zero, b) if empty == "a" else (a, zero)
    whole = a.copy()
    _native.merge(whole, b)
    results = []
    for kernel in (_native.merge_range, _kernels.merge_range_reference):
        first, second = a.copy(), b.copy()
        out = {"a": first, "b": second, "third": np.full_like(a, np.nan)}[into]
        before = out.copy()
        kernel(out, first, second, lo, hi, a[:HEADER].copy(), b[:HEADER].copy())
        for section in range(3):
            start = HEADER + section * k
            inside = slice(start + lo, start + hi)
            assert bits(out[inside]) == bits(whole[inside])  # the operand of more weight keeps its shift
            outside = np.r_[start : start + lo, start + hi : start + k]
            np.testing.assert_array_equal(out[outside], before[outside])
        np.testing.assert_array_equal(out[:HEADER], before[:HEADER])  # headers untouched
        results.append(bits(out))
    assert results[0] == results[1]
    np.testing.assert_array_equal(_packed.merge_headers(a[:HEADER], b[:HEADER]), whole[:HEADER])


@given(k=st.integers(1, 30), seeds=st.tuples(st.integers(0, 7), st.integers(0, 7)), same_weight=st.booleans())
@settings(max_examples=60, deadline=None)
def test_merge_gives_the_same_bits_in_either_order(k, seeds, same_weight):
    """Both partners of an MPI exchange merge the other's state into theirs."""
    a, b = _weighted_state(k, seeds[0]), _weighted_state(k, seeds[1])
    if same_weight:
        b[:HEADER] = a[:HEADER]
    for kernel in (_native.merge, _kernels.merge_reference):
        ab, ba = a.copy(), b.copy()
        kernel(ab, b)
        kernel(ba, a)
        assert ab.tobytes() == ba.tobytes()
    native, reference = a.copy(), a.copy()
    _native.merge(native, b)
    _kernels.merge_reference(reference, b)
    assert native.tobytes() == reference.tobytes()  # the twin takes the same order


def test_the_operand_of_more_weight_keeps_its_shift():
    heavy, light = _packed.empty_state(1), _packed.empty_state(1)
    _native.add(heavy, 5.0, 10.0)
    for x in (1.0, 2.0, 3.0):  # more samples, less weight
        _native.add(light, x, 1.0)
    for kernel in (_native.merge, _kernels.merge_reference):
        merged = light.copy()
        kernel(merged, heavy)
        assert _packed.sections(merged)[0][0] == 5.0


def test_merge_range_rejects_bad_ranges_headers_and_overlap():
    a, b = _weighted_state(5, 1), _weighted_state(5, 2)
    ha, hb = a[:HEADER].copy(), b[:HEADER].copy()
    for kernel in (_native.merge_range, _kernels.merge_range_reference):
        with pytest.raises(ValueError, match="outside"):
            kernel(a, a, b, 3, 6, ha, hb)
        with pytest.raises(ValueError, match="outside"):
            kernel(a, a, b, 3, 2, ha, hb)
        with pytest.raises(ValueError, match="differ"):
            kernel(a, a, _packed.empty_state(4), 0, 1, ha, hb)
        with pytest.raises(ValueError, match="header"):
            kernel(a, a, b, 0, 1, ha[:2], hb)
        with pytest.raises(ValueError, match="overlap"):
            kernel(a, a, a, 0, 5, ha, hb)  # a state merged with itself
        shared = np.concatenate([b, b])
        with pytest.raises(ValueError, match="overlap"):
            kernel(shared[1 : 1 + b.size], a, shared[: b.size], 0, 5, ha, hb)  # out half over b


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


def test_large_samples_stay_equal_to_the_twin():
    x = np.random.default_rng(0).standard_normal(100_000)
    state, reference = _packed.empty_state(x.size), _packed.empty_state(x.size)
    for shift in range(3):
        _native.add(state, x + shift, 1.0)
        _kernels.add_reference(reference, x + shift, 1.0)
    assert state.tobytes() == reference.tobytes()


def test_recentring_schedule():
    """At 2 and 4, then 2**(b // 3) times per doubling: ~n**(1/3) in n samples."""
    moved = [n for n in range(1, 130) if _packed.recentres(n)]
    assert moved == [2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128]
    assert sum(_packed.recentres(n) for n in range(1, 10_001)) == 64
    state = _packed.empty_state(1)  # the native kernel follows the same schedule
    previous = None
    for n in range(1, 200):
        _native.add(state, 1e9 + n * n, 1.0)  # the running mean moves at every sample
        shift = state[HEADER]
        assert (shift != previous) == (n == 1 or _packed.recentres(n)), n
        previous = shift


def test_without_the_extension_the_numpy_kernels_take_over_with_one_warning(tmp_path):
    """Run outside the repository: from its root, ``python -c`` would import the source
    tree, where no extension is built, and both kernel modules would warn."""
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
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=tmp_path)
    first, message = done.stdout.splitlines()[:2]
    assert first.split()[:2] == ["False", "1"] and float(first.split()[2]) == pytest.approx(7 / 3)
    assert "could not be imported" in message and "pure-numpy" in message
