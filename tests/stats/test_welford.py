"""Welford against an exact oracle (rational arithmetic, tests/stats/welford_oracle.py), over
shapes, dtypes, weights (zero, 5e-324, 1e-300, 1e300, mixed), offsets, split and merge
orders; and the rules of docs/statistics.md for undefined values, inf and NaN,
integers, overflow, states and inputs."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelaverage import _packed
from parallelaverage.stats import ESTIMATORS, Welford
from welford_oracle import exact, exact_columns

TARGET = 1e-13
ESTIMATES = ("mean", "variance", "sem", "variance_original", "sem_original")


def accumulate(samples, weights=None) -> Welford:
    acc = Welford()
    for i, sample in enumerate(samples):
        acc.add(sample, None if weights is None else weights[i])
    return acc


def split_and_merge(samples, cuts: list[int], order: list[int], weights=None) -> Welford:
    bounds = [0, *sorted(cuts), len(samples)]
    parts = [
        accumulate(samples[a:b], None if weights is None else weights[a:b])
        for a, b in zip(bounds, bounds[1:])
    ]
    total = Welford()
    for index in order:
        total.merge(parts[index % len(parts)])
    return total


def estimates(acc: Welford) -> dict[str, np.ndarray]:
    return {
        "mean": np.asarray(acc.mean),
        "variance": np.asarray(acc.variance),
        "sem": np.asarray(acc.sem),
        "variance_original": np.asarray(acc.variance_by("original")),
        "sem_original": np.asarray(acc.sem_by("original")),
    }


def assert_exact(acc: Welford, expected: dict[str, np.ndarray], target: float = TARGET) -> None:
    """Every estimate within ``target`` of the exact value: relative for the variances
    and errors of the mean, relative to |mean| + std for the mean; NaN exactly where the
    exact value is undefined."""
    got = estimates(acc)
    spread = np.sqrt(np.where(np.isnan(expected["variance"]), 0.0, expected["variance"]))
    scale = np.abs(expected["mean"]) + spread
    for name in ESTIMATES:
        value, truth = got[name], expected[name]
        assert value.shape == truth.shape, name
        np.testing.assert_array_equal(np.isnan(value), np.isnan(truth), err_msg=name)
        defined = ~np.isnan(truth)
        if name == "mean":
            error, bound = np.abs(value - truth), target * scale
        else:
            # relative, with a floor for values that are zero up to the rounding of the
            # data, and for subnormal ones (a 5e-324 weight can make them so)
            subnormal = 2e-322 if name.startswith("variance") else math.sqrt(2e-322)
            floor = np.maximum(1e-30 * (scale**2 if name.startswith("variance") else scale), subnormal)
            error, bound = np.abs(value - truth), target * np.abs(truth) + floor
        assert np.all(error[defined] <= bound[defined]), (name, value, truth)


# ------------------------------------------------------------------ the oracle
WEIGHT_KINDS = ["none", "uniform", "with_zeros", "tiny", "small", "huge", "mixed"]


def draw_weights(rng: np.random.Generator, kind: str, n: int) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "uniform":
        return rng.uniform(0.0, 2.0, n)
    if kind == "with_zeros":
        w = rng.uniform(0.0, 2.0, n)
        w[rng.integers(0, n, max(1, n // 3))] = 0.0
        return w
    if kind == "tiny":  # multiples of the smallest subnormal
        return 5e-324 * rng.integers(1, 5, n).astype(float)
    if kind == "small":
        return 1e-300 * rng.uniform(0.5, 2.0, n)
    if kind == "huge":
        return 1e300 * rng.uniform(0.5, 2.0, n)
    return rng.choice([0.0, 5e-324, 1e-300, 1.0, 1e300], n)  # mixed scales


def draw_samples(rng: np.random.Generator, dtype: type, shape: tuple[int, ...], n: int, offset: float) -> np.ndarray:
    kind = np.dtype(dtype).kind
    if dtype == np.int64:
        return (2**62 + rng.integers(-(10**6), 10**6, (n, *shape))).astype(dtype)
    if dtype == np.uint64:
        return (2**64 - 1 - rng.integers(0, 10**6, (n, *shape)).astype(np.uint64)).astype(dtype)
    if kind in "iub":
        info = np.iinfo(dtype) if kind != "b" else None
        top = 2 if kind == "b" else min(int(info.max), 200) + 1
        return rng.integers(0, top, (n, *shape)).astype(dtype)
    if dtype == np.float16:
        offset = min(offset, 1e3)  # float16 ends at 65504
    raw = offset + rng.standard_normal((n, *shape)) * (1e-6 if offset >= 1e9 else 10.0)
    if kind == "c":
        raw = raw + 1j * (offset - rng.standard_normal((n, *shape)))
    return raw.astype(dtype)


shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.uint64,
                          np.complex128, np.complex64, np.bool_])


@settings(max_examples=150, deadline=None)
@given(shape=shapes, dtype=dtypes, n=st.integers(1, 30), seed=st.integers(0, 2**32 - 1),
       offset=st.sampled_from([0.0, 1e3, 1e9]), weight_kind=st.sampled_from(WEIGHT_KINDS), data=st.data())
def test_every_estimate_against_the_exact_oracle(shape, dtype, n, seed, offset, weight_kind, data):
    rng = np.random.default_rng(seed)
    samples = draw_samples(rng, dtype, shape, n, offset)
    weights = draw_weights(rng, weight_kind, n)
    cuts = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=3, unique=True)) if n > 1 else []
    order = data.draw(st.permutations(range(len(cuts) + 1)))
    acc = split_and_merge(samples, cuts, order, weights)
    expected = exact_columns(samples, weights)
    assert acc.count == n and acc.shape == shape
    assert np.iscomplexobj(acc.mean) == (np.dtype(dtype).kind == "c")
    assert not np.iscomplexobj(acc.variance)
    if weights is not None and not np.any(weights > 0):
        assert np.all(np.isnan(acc.mean)) and np.all(np.isnan(acc.variance))
        return
    assert_exact(acc, expected)
    truth = exact([0.0] * n, weights)
    assert acc.total_weight == pytest.approx(truth.total_weight, rel=1e-14)
    assert acc.effective_count == pytest.approx(truth.effective_count, rel=1e-13)


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e9, 1e12, 1e17])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 2_999), max_size=6, unique=True),
       weighted=st.booleans(), data=st.data())
def test_long_runs_at_offsets_in_any_merge_order(offset, seed, cuts, weighted, data):
    rng = np.random.default_rng(seed)
    samples = offset + rng.standard_normal(3_000) * max(1.0, offset * 1e-15)
    weights = rng.uniform(0.0, 2.0, samples.size) if weighted else None
    order = data.draw(st.permutations(range(len(cuts) + 1)))
    expected = exact_columns(samples, weights)
    for acc in (accumulate(samples, weights), split_and_merge(samples, cuts, order, weights)):
        assert_exact(acc, expected)


def test_plain_sum_of_squares_would_fail_where_we_pass():
    """The original's sum / sum-of-squares at offset 1e9 versus ours, on the same data."""
    samples = 1e9 + np.random.default_rng(3).standard_normal(2_000)
    naive = (np.sum(samples**2) - np.sum(samples) ** 2 / samples.size) / (samples.size - 1)
    truth = exact(samples.tolist()).variance
    assert abs(naive - truth) / truth >= 0.5  # every digit lost
    assert abs(accumulate(samples).variance - truth) / truth <= TARGET


# --------------------------------------------------- the shift comes from weight
@pytest.mark.parametrize("first_weight", [0.0, 5e-324, 1e-300])
def test_a_light_first_sample_does_not_spoil_the_variance(first_weight):
    """Data 1e9 + 1e-6 N(0, 1) after a first sample of 0 with (almost) no weight: the
    shift is re-taken (zero weight) or moved to the running mean (tiny weight)."""
    rng = np.random.default_rng(11)
    samples = np.concatenate([[0.0], 1e9 + 1e-6 * rng.standard_normal(400)])
    weights = np.concatenate([[first_weight], np.ones(400)])
    expected = exact_columns(samples, weights)
    assert_exact(accumulate(samples, weights), expected)


def test_an_accumulator_of_zero_weights_merged_in_changes_only_the_count():
    rng = np.random.default_rng(12)
    data = 1e9 + 1e-6 * rng.standard_normal((300, 2))
    zeros = accumulate(np.zeros((5, 2)), [0.0] * 5)
    for merged in (zeros.copy().merge(accumulate(data)), accumulate(data).merge(zeros)):
        assert merged.count == 305
        expected = exact_columns(np.concatenate([np.zeros((5, 2)), data]), [0.0] * 5 + [1.0] * 300)
        assert_exact(merged, expected)


@pytest.mark.parametrize("weight", [5e-324, 1e-300, 1e300, 1.7e308])
def test_extreme_weights_give_exact_finite_statistics(weight):
    samples = 1e9 + np.random.default_rng(4).standard_normal((200, 3))
    weights = [weight] * 200
    acc = accumulate(samples, weights)
    assert np.all(np.isfinite(acc.variance)) and np.all(np.isfinite(acc.sem))
    assert_exact(acc, exact_columns(samples, weights))
    assert acc.total_weight == (math.inf if weight > 1e306 else pytest.approx(200 * weight, rel=1e-14))
    assert acc.effective_count == pytest.approx(200.0, rel=1e-14)


def test_one_dominant_weight_among_negligible_ones():
    """The unbiased variance is then set by the light samples: (x1 - x2)**2 / 2 for two."""
    acc = accumulate([1.0, 3.0], [1e300, 1e-300])
    assert acc.variance == pytest.approx(2.0, rel=1e-15)
    assert acc.sem == pytest.approx(math.sqrt(2.0), rel=1e-15)  # n_eff = 1 + 2e-600
    assert acc.mean == 1.0


# ------------------------------------------------------------ undefined is NaN
def test_all_weights_zero_leave_everything_undefined():
    acc = accumulate(np.arange(6.0).reshape(3, 2), [0.0, 0.0, 0.0])
    assert acc.count == 3 and acc.total_weight == 0.0 and math.isnan(acc.effective_count)
    assert acc.mean.shape == (2,) and np.all(np.isnan(acc.mean))
    for estimator in ESTIMATORS:
        assert np.all(np.isnan(acc.variance_by(estimator))) and np.all(np.isnan(acc.sem_by(estimator)))


def test_one_positive_weight_leaves_the_variance_undefined():
    acc = accumulate([1.0, 5.0], [1.0, 0.0])
    assert acc.mean == 1.0 and acc.count == 2
    for estimator in ESTIMATORS:
        assert math.isnan(acc.variance_by(estimator)) and math.isnan(acc.sem_by(estimator))


def test_the_default_error_of_the_mean_uses_kish_effective_count():
    """One weight of 1e6 among 99 weights of 1: n_eff ~ 1, the original's n = 100."""
    samples = np.random.default_rng(5).standard_normal(100)
    weights = np.array([1e6] + [1.0] * 99)
    acc = accumulate(samples, weights)
    truth = exact(samples.tolist(), weights.tolist())
    assert acc.effective_count == pytest.approx(truth.effective_count, rel=1e-14)
    assert acc.sem == pytest.approx(truth.sem, rel=1e-13)
    assert acc.sem_by("original") == pytest.approx(truth.sem_original, rel=1e-13)
    assert acc.sem / acc.sem_by("original") > 500  # the original's is ~700x too small here
    with pytest.raises(ValueError, match="estimator"):
        acc.sem_by("bessel")


# -------------------------------------------------------------------- integers
@pytest.mark.parametrize("dtype, values", [
    (np.int64, [2**62 + 1, 2**62 + 3, 2**62 + 8, 2**62 - 5]),
    (np.int64, [2**53 + k for k in range(6)]),
    (np.int64, [-(2**63), -(2**63) + 7, 2**63 - 1]),
    (np.uint64, [2**64 - 1, 2**64 - 4, 2**64 - 10]),
    (np.uint64, [0, 2**64 - 1]),
])
def test_64_bit_integers_are_subtracted_exactly(dtype, values):
    samples = np.array(values, dtype=dtype)
    acc = accumulate(samples)
    truth = exact([int(v) for v in values])
    assert acc.variance == pytest.approx(truth.variance, rel=1e-15)
    assert acc.mean == pytest.approx(truth.mean, rel=2.3e-16)  # an ulp
    big_endian = accumulate(samples.astype(samples.dtype.newbyteorder(">")))
    assert big_endian.variance == acc.variance


def test_python_integers_beyond_64_bits_are_refused():
    acc = Welford()
    acc.add(2**62 + 1)
    acc.add(2**63 + 5)  # uint64 for numpy: still exact
    with pytest.raises(ValueError, match="64-bit"):
        acc.add(2**70)
    assert acc.count == 2


# -------------------------------------------------------------------- overflow
def test_differences_beyond_the_float64_range_keep_their_sign():
    acc = accumulate([1e308, 1e308, -1e308])
    assert acc.mean == pytest.approx(1e308 / 3, rel=1e-15)
    assert acc.variance == math.inf  # the exact variance, ~1.3e616, is beyond float64
    constant = accumulate(np.full((4, 2), 1.7e308))
    assert np.all(constant.mean == 1.7e308) and np.all(constant.variance == 0.0)
    mixed = accumulate(np.array([[1e308, 1.0], [-1.7e308, 2.0], [1.5e308, 4.0]]))
    assert mixed.mean[0] == pytest.approx(0.8e308 / 3, rel=1e-15)
    assert mixed.mean[1] == pytest.approx(7 / 3) and mixed.variance[1] == pytest.approx(7 / 3)


def test_huge_values_merge_in_either_order():
    a, b = accumulate([1.6e308, 1.7e308]), accumulate([-1.7e308, 1e300])
    truth = exact([1.6e308, 1.7e308, -1.7e308, 1e300]).mean
    for merged in (a + b, b + a):
        assert merged.mean == pytest.approx(truth, rel=1e-15)


# ------------------------------------------------------------------ inf and NaN
@pytest.mark.parametrize("values, mean", [
    ([np.inf, np.inf], np.inf),
    ([np.inf, 1.0, 2.0], np.inf),
    ([1.0, 2.0, -np.inf], -np.inf),
    ([np.inf, -np.inf], np.nan),
    ([1.0, np.nan, 2.0], np.nan),
    ([np.inf, np.nan], np.nan),
])
def test_inf_and_nan_rules(values, mean):
    """The mean is what sum(w x) / sum(w) is in IEEE arithmetic; a variance involving an
    infinity or a NaN is NaN. Order does not matter, nor does splitting and merging."""
    for ordered in (values, values[::-1]):
        for acc in (accumulate(ordered), split_and_merge(ordered, [1], [1, 0])):
            assert np.array_equal(acc.mean, mean, equal_nan=True), (ordered, acc.mean)
            assert math.isnan(acc.variance) and math.isnan(acc.sem)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.float64])
def test_an_infinity_after_finite_samples_stays_infinite(dtype):
    """Finite samples first (the mean is then updated as m + f delta), an infinity,
    finite samples again (g m + f d from then on, which keeps it)."""
    samples = np.array([[1.0, 2.0], [np.inf, 3.0], [4.0, 5.0], [6.0, -np.inf]], dtype=dtype)
    acc = accumulate(samples)
    assert np.array_equal(acc.mean, np.array([np.inf, -np.inf], dtype=dtype))
    assert np.all(np.isnan(acc.variance))


def test_inf_and_nan_stay_in_their_element_and_zero_weights_ignore_them():
    samples = np.array([[1.0, np.nan, np.inf], [2.0, 1.0, 1.0], [3.0, 2.0, 2.0]])
    acc = accumulate(samples)
    assert acc.mean[0] == 2.0 and acc.variance[0] == 1.0  # untouched by its neighbours
    assert np.isnan(acc.mean[1]) and acc.mean[2] == np.inf
    assert np.all(np.isnan(acc.variance[1:]))
    skipped = accumulate(samples, [0.0, 1.0, 1.0])  # a zero weight: even its NaN is ignored
    assert np.array_equal(skipped.mean, [2.5, 1.5, 1.5])
    np.testing.assert_allclose(skipped.variance, [0.5] * 3, rtol=4e-16)  # within an ulp


# ------------------------------------------------ the mean as accurate as numpy's
@pytest.mark.parametrize("n", [1_000, 20_000])
def test_an_outlier_first_sample_does_not_cost_the_mean_its_accuracy(n):
    """First 1e12, then N(0, 1): the shift follows the running mean (measured before this
    was done: 3e-9 relative at n = 1e4); numpy's pairwise mean is within a few ulps."""
    rng = np.random.default_rng(n)
    worst = 0.0
    for _ in range(3):
        samples = np.concatenate([[1e12], rng.standard_normal(n - 1)])
        truth = math.fsum(samples) / n
        worst = max(worst, abs(accumulate(samples).mean - truth) / abs(truth))
        numpy_error = abs(float(np.mean(samples)) - truth) / abs(truth)
        assert numpy_error <= 1e-15
    assert worst <= 1e-15


# ------------------------------------------------------------- types and shapes
def test_float16_is_converted_exactly_and_long_doubles_are_refused():
    halves = np.array([0.1, 0.2, 0.7], dtype=np.float16)
    acc = accumulate(halves)
    assert acc.mean == pytest.approx(exact([float(h) for h in halves]).mean, rel=1e-16)
    for dtype in (np.longdouble, np.clongdouble):
        if np.dtype(dtype).itemsize <= (8 if np.dtype(dtype).kind == "f" else 16):
            continue  # long double is double on this platform
        with pytest.raises(TypeError, match="long double.*astype"):
            Welford().add(np.ones(2, dtype=dtype))
        with pytest.raises(TypeError, match="long double"):
            Welford().add(dtype(1))


def test_masked_arrays_are_refused_with_the_fix():
    acc = Welford()
    with pytest.raises(TypeError, match=r"masked.*filled.*weight=0"):
        acc.add(np.ma.masked_array([1.0, 2.0], mask=[0, 1]))
    assert acc.count == 0


@pytest.mark.parametrize(
    "sample",
    [1.5, 3, 2 + 1j, np.float32(1.5), np.float64(2.0), np.int64(7), np.complex64(1 - 2j), np.bool_(True),
     np.float16(0.5)],
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


@pytest.mark.parametrize("weight, error", [(-1.0, ValueError), (float("inf"), ValueError),
                                           (float("nan"), ValueError), (10**400, ValueError),
                                           (True, TypeError), (1j, TypeError), ("1", TypeError)])
def test_bad_weights_are_refused(weight, error):
    acc = Welford()
    acc.add(np.ones(2))
    with pytest.raises(error, match="weight"):
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


def test_real_then_complex_promotes():
    acc = Welford()
    acc.add(np.array([1.0, 2.0]))
    acc.add(np.array([1j, 2 + 2j]))
    assert_exact(acc, exact_columns(np.array([[1.0, 2.0], [1j, 2 + 2j]])))


def test_non_contiguous_and_big_endian_samples():
    base = np.arange(20.0).reshape(4, 5)
    acc = Welford()
    acc.add(base[:, ::2])
    acc.add(base[:, ::2].astype(">f8"))
    assert np.array_equal(acc.mean, base[:, ::2])


# ------------------------------------------------------------------- persistence
@settings(max_examples=20, deadline=None)
@given(shape=shapes, n=st.integers(0, 5), is_complex=st.booleans(), seed=st.integers(0, 100),
       weighted=st.booleans())
def test_pickle_and_state_round_trip(shape, n, is_complex, seed, weighted):
    rng = np.random.default_rng(seed)
    acc = Welford()
    for _ in range(n):
        sample = rng.standard_normal(shape)
        acc.add(sample + 1j * sample if is_complex else sample, float(rng.choice([0.0, 0.5, 3.0])) if weighted else None)
    for copy in (pickle.loads(pickle.dumps(acc)), Welford.from_state(acc.to_state())):
        assert copy.count == acc.count and copy.shape == acc.shape
        if n:
            assert copy.to_state()["packed"].tobytes() == acc.to_state()["packed"].tobytes()


def test_pickles_of_the_previous_schema_still_load():
    """Written by the version before this one (tests/stats/data/make_welford_schema1.py)."""
    with open(Path(__file__).parent / "data" / "welford_schema1.pickle", "rb") as f:
        saved = pickle.load(f)
    for name, acc in saved["accumulators"].items():
        reported = saved["reported"][name]
        assert isinstance(acc, Welford) and acc.count == reported["count"], name
        if not reported["count"]:
            continue
        assert acc.shape == reported["shape"]
        if name == "zero_weights_only":  # it used to report the first sample: undefined now
            assert np.isnan(acc.mean) and acc.total_weight == 0.0
            continue
        np.testing.assert_allclose(acc.mean, reported["mean"], rtol=1e-15)
        # schema 1 did not record sum w**2: read with n_eff = n, the estimator it was written under
        np.testing.assert_allclose(acc.variance, reported["variance"], rtol=1e-14)
        np.testing.assert_allclose(acc.sem, reported["sem"], rtol=1e-14, equal_nan=True)
        assert acc.total_weight == pytest.approx(reported["total_weight"], rel=1e-15)
        more = acc.copy()
        more.add(np.asarray(reported["mean"]))  # and they accumulate further
        assert more.count == acc.count + 1


def _state(**changes):
    state = accumulate(1e9 + np.arange(6.0).reshape(3, 2)).to_state()
    packed = state["packed"]
    for name, value in changes.pop("packed", {}).items():
        packed[name] = value
    return {**state, **changes}


SECTION = _packed.HEADER  # the shift section of these 2-element states; u starts at SECTION + 2 * 2


@pytest.mark.parametrize("state, field", [
    (_state(schema=99), "schema"),
    (_state(schema=True), "schema"),
    (_state(schema="2"), "schema"),
    (_state(shape=[4]), "needs"),
    (_state(shape=[True, 2]), "shape"),
    (_state(shape="3, 2"), "shape"),
    (_state(complex="yes"), "complex"),
    (_state(complex=1), "complex"),
    (_state(packed={_packed.COUNT: -3.0}), "count"),
    (_state(packed={_packed.COUNT: 2.5}), "count"),
    (_state(packed={_packed.NPOS: 7.0}), "npos"),
    (_state(packed={_packed.W_M: 2.0}), "total weight W"),
    (_state(packed={_packed.S_E: 0.5}), "sum of squared weights"),
    (_state(packed={_packed.P_M: 0.9}), "inconsistent"),
    (_state(packed={_packed.FLAGS: 8.0}), "flags"),
    (_state(packed={_packed.HEADER + 2: np.inf}), "NONFINITE"),
    (_state(packed={_packed.TAG: 1.0}), "format tag"),
    (_state(packed={SECTION + 2 * 2: -1.0}), "variance section"),
    (_state(packed={SECTION: np.inf}), "shift section"),
    (_state(packed={SECTION: 1e308}), "EXTREME"),
])
def test_from_state_names_the_field_it_refuses(state, field):
    with pytest.raises(ValueError, match=field):
        Welford.from_state(state)


def test_from_state_refuses_foreign_packed_values():
    state = _state()
    with pytest.raises(ValueError, match="complex numbers"):
        Welford.from_state({**state, "packed": state["packed"] + 1j})
    with pytest.raises(ValueError, match="1-D float64"):
        Welford.from_state({**state, "packed": state["packed"].reshape(2, -1)})
    with pytest.raises(ValueError, match="1-D float64"):
        Welford.from_state({**state, "packed": state["packed"].astype(object)})
    with pytest.raises(ValueError, match="missing 'schema'"):
        Welford.from_state({"shape": [1]})
    with pytest.raises(ValueError, match="mapping"):
        Welford.from_state([1, 2])
    zero = accumulate(np.ones((2, 2)), [0.0, 0.0]).to_state()
    zero["packed"][-1] = 3.0
    with pytest.raises(ValueError, match="no sample has positive weight"):
        Welford.from_state(zero)
    legacy = {"schema": 1, "shape": [1], "complex": False, "packed": np.array([2.0, 2.0, 1.0, 0.5, -1.0])}
    with pytest.raises(ValueError, match="m2"):
        Welford.from_state(legacy)
