"""Welford against a two-pass oracle in long double, over shapes, dtypes, weights,
offsets and merge orders."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelaverage.stats import Welford

TARGET = 1e-13


def oracle(samples: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass mean and unbiased variance in long double.

    The data are first shifted by one of their own samples: that subtraction is exact
    in float64, and without it the long double reference itself is off at offset 1e12.
    """
    x = np.asarray(samples)
    n = x.shape[0]
    w = np.ones(n, dtype=np.longdouble) if weights is None else np.asarray(weights, np.longdouble)
    w = w.reshape((n,) + (1,) * (x.ndim - 1))
    if np.iscomplexobj(x):
        re_mean, re_var = oracle(x.real, weights)
        im_mean, im_var = oracle(x.imag, weights)
        return re_mean + 1j * im_mean, re_var + im_var
    x = x.astype(np.float64)
    shifted = (x - x[0]).astype(np.longdouble)
    total = w.sum()
    mean = (w * shifted).sum(axis=0) / total
    m2 = (w * (shifted - mean) ** 2).sum(axis=0)
    variance = n / (n - 1) * m2 / total
    return (x[0] + mean).astype(np.float64), variance.astype(np.float64)


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(value - reference) / np.abs(reference)))


def accumulate(samples: np.ndarray, weights: np.ndarray | None = None) -> Welford:
    acc = Welford()
    for i, sample in enumerate(samples):
        acc.add(sample, None if weights is None else weights[i])
    return acc


def split_and_merge(samples: np.ndarray, cuts: list[int], order: list[int], weights=None) -> Welford:
    bounds = [0, *sorted(cuts), len(samples)]
    parts = [
        accumulate(samples[a:b], None if weights is None else weights[a:b])
        for a, b in zip(bounds, bounds[1:])
    ]
    total = Welford()
    for index in order:
        total.merge(parts[index % len(parts)])
    return total


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e9, 1e12])
@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(1, 9_999), max_size=6, unique=True),
    data=st.data(),
)
def test_variance_exact_at_offsets_in_any_merge_order(offset, seed, cuts, data):
    samples = offset + np.random.default_rng(seed).standard_normal(10_000)
    order = data.draw(st.permutations(range(len(cuts) + 1)))
    mean, variance = oracle(samples)
    for acc in (accumulate(samples), split_and_merge(samples, cuts, order)):
        assert acc.count == 10_000
        assert relative_error(acc.variance, variance) <= TARGET
        assert abs(float(acc.mean) - float(mean)) <= TARGET * max(1.0, abs(offset))


def test_plain_sum_of_squares_would_fail_where_we_pass():
    """The original's estimator at offset 1e9 versus ours, on the same data."""
    samples = 1e9 + np.random.default_rng(3).standard_normal(10_000)
    naive = (np.sum(samples**2) - np.sum(samples) ** 2 / samples.size) / (samples.size - 1)
    _, variance = oracle(samples)
    assert relative_error(naive, variance) >= 0.5  # every digit lost
    assert relative_error(accumulate(samples).variance, variance) <= TARGET


shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from([np.float64, np.float32, np.int64, np.int32, np.uint8, np.complex128, np.complex64])


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=dtypes, n=st.integers(2, 60), seed=st.integers(0, 2**32 - 1),
       offset=st.sampled_from([0.0, 1e3, 1e9]), weighted=st.booleans(), data=st.data())
def test_shapes_dtypes_weights_against_oracle(shape, dtype, n, seed, offset, weighted, data):
    rng = np.random.default_rng(seed)
    raw = offset + rng.standard_normal((n, *shape)) * 10
    if np.issubdtype(dtype, np.complexfloating):
        raw = raw + 1j * (rng.standard_normal((n, *shape)) - offset)
    if np.issubdtype(dtype, np.integer):
        raw = np.abs(raw) % 200
    samples = raw.astype(dtype)
    weights = rng.uniform(0.0, 2.0, n) if weighted else None
    if weighted:
        weights[data.draw(st.integers(0, n - 1))] = 0.0  # zero weights are allowed
    cuts = data.draw(st.lists(st.integers(1, n - 1), max_size=3, unique=True))
    order = data.draw(st.permutations(range(len(cuts) + 1)))
    acc = split_and_merge(samples, cuts, order, weights)
    mean, variance = oracle(samples, weights)
    assert acc.count == n
    assert np.shape(acc.mean) == shape and np.shape(acc.variance) == shape
    assert np.iscomplexobj(acc.mean) == np.issubdtype(dtype, np.complexfloating)
    assert not np.iscomplexobj(acc.variance)
    scale = np.abs(np.asarray(mean)) + np.sqrt(np.asarray(variance)) + 1.0
    assert np.all(np.abs(acc.mean - mean) <= 1e-13 * scale)
    # relative 1e-11, with an absolute floor for variances that are zero up to rounding
    assert np.all(np.abs(acc.variance - variance) <= 1e-11 * variance + 1e-28 * scale**2)
    expected_weight = n if weights is None else weights.sum()
    assert acc.total_weight == pytest.approx(expected_weight, rel=1e-14)


@pytest.mark.parametrize(
    "sample",
    [1.5, 3, 2 + 1j, np.float32(1.5), np.float64(2.0), np.int64(7), np.complex64(1 - 2j), np.bool_(True)],
)
def test_scalars_of_every_kind(sample):
    acc = Welford()
    acc.add(sample)
    acc.add(sample)
    assert np.ndim(acc.mean) == 0
    assert acc.mean == pytest.approx(complex(sample) if np.iscomplexobj(sample) else float(sample))
    assert acc.variance == 0.0
    assert acc.sem == 0.0


def test_constant_samples_have_exactly_zero_variance():
    for value in (1 / 3, 1000.1, 1e9 + 0.5):
        acc = accumulate(np.full((1000, 4), value))
        assert np.all(acc.variance == 0.0)
        assert np.all(acc.mean == value)


def test_shape_mismatch_names_both_shapes():
    acc = Welford()
    acc.add(np.zeros(3))
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        acc.add(np.zeros(4))
    other = Welford()
    other.add(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 2\)"):
        acc.merge(other)
    assert acc.count == 1  # nothing half-applied


@pytest.mark.parametrize("bad", ["text", {"a": 1}, None, np.array(["x", "y"])])
def test_non_numeric_samples_are_refused(bad):
    with pytest.raises(TypeError, match="cannot average"):
        Welford().add(bad)


@pytest.mark.parametrize("weight", [-1.0, float("inf"), float("nan")])
def test_bad_weights_are_refused(weight):
    acc = Welford()
    acc.add(np.ones(2))
    with pytest.raises(ValueError, match="weight"):
        acc.add(np.ones(2), weight)
    assert acc.count == 1


def test_merging_with_empty_accumulators():
    full = accumulate(np.arange(10.0))
    assert (Welford() + full).mean == full.mean
    assert (full + Welford()).variance == full.variance
    assert Welford().merge(Welford()).count == 0
    empty = Welford()
    assert empty.merge(full) is empty and empty.count == 10
    empty.add(100.0)
    assert full.count == 10  # merge copied, did not alias


def test_empty_accumulator_says_so():
    with pytest.raises(ValueError, match="empty"):
        Welford().mean


def test_single_sample_variance_is_nan():
    acc = Welford()
    acc.add(np.ones(3))
    assert np.all(np.isnan(acc.variance))


def test_addition_returns_a_new_value():
    a, b = accumulate(np.arange(5.0)), accumulate(np.arange(5.0, 9.0))
    c = a + b
    assert (a.count, b.count, c.count) == (5, 4, 9)
    assert c.mean == pytest.approx(4.0)


def test_merging_an_accumulator_into_itself_doubles_its_samples():
    acc = Welford()
    for x in (1e9 + 1.0, 1e9 + 2.0, 1e9 + 4.0):
        acc.add(np.array([x, -x]))
    doubled = acc + acc
    acc.merge(acc)
    assert acc.count == 6
    assert acc.to_state()["packed"].tobytes() == doubled.to_state()["packed"].tobytes()


def test_nan_and_inf_propagate_elementwise():
    samples = np.array([[1.0, np.nan, 1.0, np.inf], [2.0, 1.0, 2.0, 1.0], [3.0, 2.0, np.inf, 2.0]])
    acc = accumulate(samples)
    assert acc.mean[0] == 2.0 and acc.variance[0] == 1.0  # untouched by its neighbours
    assert np.isnan(acc.mean[1]) and np.isnan(acc.variance[1])
    assert acc.mean[2] == np.inf and np.isnan(acc.variance[2])  # as numpy
    # documented difference: an inf followed by finite values gives NaN (numpy: inf)
    assert np.isnan(acc.mean[3]) and np.isnan(acc.variance[3])


def test_real_then_complex_promotes():
    acc = Welford()
    acc.add(np.array([1.0, 2.0]))
    acc.add(np.array([1j, 2 + 2j]))
    mean, variance = oracle(np.array([[1.0, 2.0], [1j, 2 + 2j]]))
    assert np.allclose(acc.mean, mean) and np.allclose(acc.variance, variance)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, n=st.integers(0, 5), is_complex=st.booleans(), seed=st.integers(0, 100))
def test_pickle_and_state_round_trip(shape, n, is_complex, seed):
    rng = np.random.default_rng(seed)
    acc = Welford()
    for _ in range(n):
        sample = rng.standard_normal(shape)
        acc.add(sample + 1j * sample if is_complex else sample)
    for copy in (pickle.loads(pickle.dumps(acc)), Welford.from_state(acc.to_state())):
        assert copy.count == acc.count and copy.shape == acc.shape
        if n:
            assert np.array_equal(copy.mean, acc.mean)
            assert np.array_equal(copy.variance, acc.variance, equal_nan=True)


def test_from_state_rejects_foreign_states():
    state = accumulate(np.ones((3, 2))).to_state()
    with pytest.raises(ValueError, match="schema"):
        Welford.from_state({**state, "schema": 99})
    with pytest.raises(ValueError, match="needs"):
        Welford.from_state({**state, "shape": [4]})
    with pytest.raises(ValueError, match="missing"):
        Welford.from_state({"shape": [1]})


def test_non_contiguous_and_big_endian_samples():
    base = np.arange(20.0).reshape(4, 5)
    acc = Welford()
    acc.add(base[:, ::2])
    acc.add(base[:, ::2].astype(">f8"))
    assert np.array_equal(acc.mean, base[:, ::2])
