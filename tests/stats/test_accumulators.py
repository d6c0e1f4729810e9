"""Batches (the jackknife), Histogram and LogBinning against the exact oracle
(tests/stats/moments_oracle.py) in any split and merge order, with zero, tiny and huge
weights; the specs of ``statistics=``; states and pickles; bad input."""

from __future__ import annotations

import math
import pickle
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelaverage.stats import Batches, Covariance, Histogram, LogBinning, Moments, Welford, from_spec, jackknife
from moments_oracle import exact_binning, exact_jackknife, exact_sum

TARGET = 1e-12
WEIGHT_KINDS = ["none", "uniform", "with_zeros", "tiny", "small", "huge", "mixed"]


def draw_weights(rng: np.random.Generator, kind: str, n: int) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "uniform":
        return rng.uniform(0.1, 2.0, n)
    if kind == "with_zeros":
        w = rng.uniform(0.1, 2.0, n)
        w[rng.integers(0, n, max(1, n // 4))] = 0.0
        return w
    if kind == "tiny":
        return 5e-324 * rng.integers(1, 5, n).astype(float)
    if kind == "small":
        return 1e-300 * rng.uniform(0.5, 2.0, n)
    if kind == "huge":
        return 1e300 * rng.uniform(0.5, 2.0, n)
    return rng.choice([0.0, 5e-324, 1e-300, 1.0, 1e300], n)


def split(make, add, n, cuts, order):
    """Add items 0..n-1 to parts cut at ``cuts``, merge the parts in ``order``."""
    bounds = [0, *sorted(cuts), n]
    parts = []
    for a, b in zip(bounds, bounds[1:]):
        acc = make()
        for i in range(a, b):
            add(acc, i)
        parts.append(acc)
    total = make()
    for index in order:
        total.merge(parts[index % len(parts)])
    return total


def cuts_and_order(data, n):
    cuts = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=3, unique=True)) if n > 1 else []
    return cuts, data.draw(st.permutations(range(len(cuts) + 1)))


# ------------------------------------------------------------------ the jackknife
def ratio(a, b):
    return a[0] / b[0] if isinstance(a, list) else a / b


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), k=st.integers(2, 8), seed=st.integers(0, 2**32 - 1),
       weight_kind=st.sampled_from(["none", "uniform", "with_zeros", "tiny", "huge"]),
       which=st.sampled_from(["ratio", "binder", "mean"]), shuffled=st.booleans(), data=st.data())
def test_jackknife_against_the_exact_oracle_in_any_split_and_merge_order(n, k, seed, weight_kind, which, shuffled, data):
    rng = np.random.default_rng(seed)
    keys = rng.permutation(n) if shuffled else np.arange(n)  # runs in any order: the keys decide the batch
    weights = draw_weights(rng, weight_kind, n)
    if which == "binder":
        m = rng.standard_normal(n) + 0.5
        outputs = [np.stack([m**2, m**4], axis=1)]

        def exact_f(v):
            return 1 - v[1] / (3 * v[0] ** 2)

        def f(v):
            return 1 - v[1] / (3 * v[0] ** 2)
    elif which == "ratio":  # <s O> / <s>: two outputs of the same runs
        s = 1.0 + 0.3 * rng.standard_normal(n)  # a reweighting factor; its mean stays away from 0
        o = 2.0 + rng.standard_normal(n)
        outputs = [s * o, s]

        def exact_f(so, s_):
            return so[0] / s_[0]

        def f(so, s_):
            return so / s_
    else:
        outputs = [1e3 + rng.standard_normal((n, 2))]

        def exact_f(v):
            return v[0] - v[1]

        def f(v):
            return v[0] - v[1]
    cuts, order = cuts_and_order(data, n)
    accs = []
    for values in outputs:
        def add(acc, i, values=values):
            acc.add(values[i], None if weights is None else weights[i], key=int(keys[i]))
        accs.append(split(lambda: Batches(k), add, n, cuts, order))
    estimate = jackknife(f, *accs)
    value, error, corrected = exact_jackknife(exact_f, outputs, [int(key) for key in keys], k,
                                              None if weights is None else list(weights))
    # f sees float64 means: what it computes is exact to the resolution of the means
    # (|mean| * 1e-16), here 1e3 for the difference of two means of 1e3 + N(0, 1)
    resolution = 1e-13 * (1e3 if which == "mean" else 1.0)
    assert estimate.value == pytest.approx(value, rel=TARGET, abs=resolution)
    if math.isnan(error):
        assert math.isnan(estimate.error)
    else:
        assert estimate.error == pytest.approx(error, rel=1e-10, abs=resolution)
        assert estimate.bias_corrected == pytest.approx(corrected, rel=1e-10, abs=10 * k * resolution)


def test_jackknife_of_the_mean_is_the_error_of_the_batch_means():
    rng = np.random.default_rng(1)
    x = 5.0 + rng.standard_normal(400)
    acc = Batches(20)
    for i, v in enumerate(x):
        acc.add(v, key=i)
    value, error = acc.jackknife(lambda m: m)
    batch_means = x.reshape(20, 20, order="F").mean(axis=1)  # run i in batch i mod 20
    assert value == pytest.approx(x.mean(), rel=1e-14)
    assert error == pytest.approx(batch_means.std(ddof=1) / math.sqrt(20), rel=1e-12)


def test_batches_depend_on_keys_not_on_order_or_split():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((60, 3))
    one = Batches(7)
    for i in range(60):
        one.add(x[i], key=i)
    parts = [Batches(7) for _ in range(3)]
    for i in rng.permutation(60):
        parts[i % 3].add(x[i], key=int(i))
    merged = parts[2] + parts[0] + parts[1]
    np.testing.assert_array_equal(one.counts, merged.counts)
    np.testing.assert_allclose(one.means, merged.means, rtol=0, atol=1e-15)  # data of scale 1


def test_too_few_batches_give_nan_errors_and_bad_calls_are_named():
    acc = Batches(4)
    acc.add(1.0, key=0)
    acc.add(3.0, key=4)  # the same batch
    value, error = acc.jackknife(lambda m: m)
    assert value == 2.0 and math.isnan(error)
    with pytest.raises(ValueError, match="empty"):
        Batches().jackknife(lambda m: m)
    with pytest.raises(ValueError, match="different numbers"):
        jackknife(lambda a, b: a, acc, Batches(5))
    with pytest.raises(TypeError, match="key"):
        acc.add(1.0, key=1.5)
    with pytest.raises(TypeError, match="real and imaginary"):
        acc.add(1j)


# ------------------------------------------------------------------ histograms
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), bins=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), pooled=st.booleans(),
       weight_kind=st.sampled_from(WEIGHT_KINDS), shape=st.sampled_from([(), (3,), (2, 2)]), data=st.data())
def test_histograms_against_numpy_and_exact_weight_sums_in_any_split_and_merge_order(n, bins, seed, pooled, weight_kind,
                                                                                    shape, data):
    rng = np.random.default_rng(seed)
    low, high = sorted(rng.uniform(-2, 2, 2))
    high += 0.5
    samples = rng.uniform(low - 1, high + 1, (n, *shape))
    samples[rng.random((n, *shape)) < 0.1] = high  # the right edge: the last bin
    samples[rng.random((n, *shape)) < 0.05] = np.nan
    samples[rng.random((n, *shape)) < 0.05] = -np.inf
    weights = draw_weights(rng, weight_kind, n)
    cuts, order = cuts_and_order(data, n)

    def add(acc, i):
        acc.add(samples[i], None if weights is None else weights[i])

    acc = split(lambda: Histogram(bins, (low, high), weighted=True, pooled=pooled), add, n, cuts, order)
    positive = np.ones(n, bool) if weights is None else weights > 0
    kept = samples[positive]
    values = kept.reshape(len(kept), math.prod(shape))
    columns = [values.reshape(-1)] if pooled else [values[:, j] for j in range(values.shape[1])]
    sample_weights = (np.ones(n) if weights is None else weights)[positive]
    counts = acc.counts.reshape(len(columns), bins)
    sums = acc.weights.reshape(len(columns), bins)
    for j, column in enumerate(columns):
        finite = column[~np.isnan(column)]
        expected, edges = np.histogram(finite, bins=bins, range=(low, high))
        np.testing.assert_array_equal(counts[j], expected)
        repeat = values.shape[1] if pooled else 1
        w = np.repeat(sample_weights, repeat) if pooled else sample_weights
        index = np.clip(np.searchsorted(edges, column, side="right") - 1, 0, bins - 1)
        for b in range(bins):
            inside = (column >= low) & (column <= high) & (index == b)
            truth = exact_sum(w[inside])
            assert sums[j, b] == pytest.approx(truth, rel=TARGET, abs=0.0)  # 1e-300 bins beside 1e300 ones too
    assert acc.count == n
    assert np.sum(acc.nan) == sum(int(np.isnan(c).sum()) for c in columns)
    assert np.sum(acc.underflow) == sum(int((c < low).sum()) for c in columns)
    assert np.sum(acc.overflow) == sum(int((c > high).sum()) for c in columns)


def test_histogram_merge_is_the_same_bits_in_either_order_and_checks_the_bins():
    rng = np.random.default_rng(3)
    a, b = Histogram(5, (0, 1), weighted=True), Histogram(5, (0, 1), weighted=True)
    for x, w in zip(rng.random(20), [1e300, 1e-300, 5e-324, 2.0] * 5):
        a.add(x, w)
    for x in rng.random(7):
        b.add(x, 0.5)
    assert (a + b) == (b + a)
    with pytest.raises(ValueError, match="specs"):
        a.merge(Histogram(6, (0, 1), weighted=True))
    with pytest.raises(ValueError, match="weighted=True"):
        Histogram(5, (0, 1)).weights
    h = Histogram(4, (0, 1))
    for x in (0.1, 0.2, 0.6, 1.0, 1.5, -1.0):
        h.add(x)
    np.testing.assert_array_equal(h.counts, [2, 0, 1, 1])
    assert (h.underflow, h.overflow, h.nan) == (1, 1, 0)
    assert np.sum(h.density()) * 0.25 == pytest.approx(1.0)


# ------------------------------------------------------------------ log-binning
def ar1(rng, runs, length, phi, offset=0.0, scale=1.0):
    series = np.empty((runs, length))
    x = np.zeros(runs)
    for t in range(length):
        x = phi * x + rng.standard_normal(runs)
        series[:, t] = x
    return offset + scale * series


@settings(max_examples=40, deadline=None)
@given(runs=st.integers(1, 6), length=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       offset=st.sampled_from([0.0, 1e3, 1e9]), weight_kind=st.sampled_from(["none", "uniform", "with_zeros", "tiny",
                                                                              "huge"]), data=st.data())
def test_log_binning_levels_against_the_exact_oracle_in_any_split_and_merge_order(runs, length, seed, offset,
                                                                                   weight_kind, data):
    rng = np.random.default_rng(seed)
    series = ar1(rng, runs, length, 0.7, offset, 1e-6 if offset >= 1e9 else 1.0)
    weights = draw_weights(rng, weight_kind, runs)
    cuts, order = cuts_and_order(data, runs)

    def add(acc, i):
        acc.add(series[i], None if weights is None else weights[i])

    acc = split(LogBinning, add, runs, cuts, order)
    truth = exact_binning(list(series), None if weights is None else list(weights))
    assert acc.levels == len(truth) == length.bit_length()
    for level, expected in enumerate(truth):
        got = acc.level(level)
        if math.isnan(expected["mean"]):
            assert got.count == 0 or np.isnan(got.mean)
            continue
        assert float(got.mean) == pytest.approx(expected["mean"], rel=1e-15, abs=TARGET * (1e-6 if offset >= 1e9 else 1))
        sem = float(acc.errors[level])
        if math.isnan(expected["sem"]):
            assert math.isnan(sem)
        else:
            assert sem == pytest.approx(expected["sem"], rel=TARGET)


def test_log_binning_finds_the_autocorrelation_time_of_an_ar1_chain():
    """tau_int = (1 + phi) / (2 (1 - phi)) for x_t = phi x_{t-1} + noise: 9.5 for phi = 0.9."""
    rng = np.random.default_rng(4)
    acc = LogBinning()
    for series in ar1(rng, 64, 4096, 0.9):
        acc.add(np.stack([series, rng.standard_normal(4096)], axis=1))  # a correlated and an independent observable
    tau = acc.autocorrelation_time
    assert 8.0 < tau[0] < 11.0 and 0.4 < tau[1] < 0.6
    assert np.all(acc.converged)
    assert acc.error[0] == pytest.approx(acc.naive_error[0] * math.sqrt(2 * tau[0]), rel=1e-12)
    assert acc.errors.shape == (13, 2) and acc.autocorrelation_times[0, 0] == 0.5


def test_short_series_fall_back_to_the_error_of_independent_runs():
    rng = np.random.default_rng(5)
    acc = LogBinning()
    runs = ar1(rng, 200, 8, 0.99)
    for series in runs:
        acc.add(series)
    assert not acc.converged and acc.level_chosen == 3
    per_run = Welford()
    for series in runs:
        per_run.add(series.mean())
    assert acc.error == pytest.approx(float(per_run.sem), rel=1e-12)  # one block per run: the runs' error


def test_log_binning_refuses_what_is_no_series():
    with pytest.raises(ValueError, match="time series"):
        LogBinning().add(1.0)
    acc = LogBinning()
    acc.add(np.zeros(8))
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros(9))


# ------------------------------------------------------------------ specs, states
@pytest.mark.parametrize("spec, expected", [
    ("covariance", "covariance"),
    ("moments", "moments:order=4"), ("moments:3", "moments:order=3"), ("Moments:order=2", "moments:order=2"),
    ("jackknife", "jackknife:batches=20"), ("jackknife:8", "jackknife:batches=8"), ("batches:batches=3", "jackknife:batches=3"),
    ("histogram:bins=50,range=(0,1)", "histogram:bins=50,range=(0.0,1.0),weighted=False,pooled=False"),
    ("histogram:10,range=(-1,1),weighted=true", "histogram:bins=10,range=(-1.0,1.0),weighted=True,pooled=False"),
    ("autocorrelation", "autocorrelation"),
])
def test_specs_are_parsed_to_one_canonical_form(spec, expected):
    acc = from_spec(spec)
    assert acc.spec == expected and from_spec(acc.spec).spec == expected and from_spec(acc).spec == expected


@pytest.mark.parametrize("spec, message", [
    ("covarience", "did you mean 'covariance'"), ("jackknife:1", "batches=1"), ("histogram:50", "range"),
    ("histogram:bins=5,range=(1,0)", "low < high"), ("moments:order=5", "order=5"), ("moments:ordr=3", "'order'"),
    ("jackknife:batches=x", "not a number"), (3, "spec string"),
])
def test_bad_specs_name_the_fix(spec, message):
    with pytest.raises((ValueError, TypeError), match=message):
        from_spec(spec)


@pytest.mark.parametrize("make", [lambda: Batches(3), lambda: Histogram(4, (0, 1), weighted=True),
                                  lambda: Histogram(4, (0, 1), pooled=True), LogBinning])
def test_states_and_pickles_round_trip(make):
    acc = make()
    rng = np.random.default_rng(6)
    for i in range(7):
        x = rng.random((4, 2))
        if isinstance(acc, Batches):
            acc.add(x, 0.5, key=i)
        else:
            acc.add(x, 0.5)
    for copy in (type(acc).from_state(acc.to_state()), pickle.loads(pickle.dumps(acc)), acc.copy()):
        assert copy == acc
    state = acc.to_state()
    broken = state["packed"].copy()
    broken[0] = -3.0
    with pytest.raises(ValueError):
        type(acc).from_state({**state, "packed": broken})
    with pytest.raises(ValueError, match="kind"):
        Moments.from_state(state)


def test_every_accumulator_is_a_value_with_an_empty_neutral_element():
    rng = np.random.default_rng(8)
    for make in (Covariance, Moments, lambda: Batches(3), lambda: Histogram(3, (0, 1)), LogBinning):
        a = make()
        for i in range(5):
            x = rng.random((4,))
            a.add(x, key=i) if isinstance(a, Batches) else a.add(x)
        assert make() + a == a and a + make() == a and a.copy() == a
        b = a.copy()
        b.merge(b)  # merging with itself doubles, whatever the kernels read
        assert b.count == 2 * a.count
        assert repr(a).startswith(type(a).__name__)


def test_a_fraction_oracle_sanity_check():
    assert exact_sum([1e300, 1e300]) == 2e300 and Fraction(exact_sum([5e-324] * 3)) == Fraction(3 * 5e-324)
