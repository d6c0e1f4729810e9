"""Moments and Covariance against the exact oracle (rational arithmetic,
tests/stats/moments_oracle.py): shapes, dtypes, weights (zero, 5e-324, 1e-300, 1e300,
mixed in one accumulator), offsets up to 1e9, split into parts merged in any order; the
compiled loops against their numpy twins, to the bit; states, pickles and bad input."""

from __future__ import annotations

import math
import pickle
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelaverage import _momentkernels
from parallelaverage.stats import Covariance, Moments, Welford
from moments_oracle import exact_covariance, exact_moments

TARGET = 1e-12
WEIGHT_KINDS = ["none", "uniform", "with_zeros", "tiny", "small", "huge", "mixed"]
DTYPES = [np.float64, np.float32, np.float16, np.int32, np.uint8, np.bool_]


def draw_weights(rng: np.random.Generator, kind: str, n: int) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "uniform":
        return rng.uniform(0.0, 2.0, n)
    if kind == "with_zeros":
        w = rng.uniform(0.0, 2.0, n)
        w[rng.integers(0, n, max(1, n // 3))] = 0.0
        return w
    if kind == "tiny":
        return 5e-324 * rng.integers(1, 5, n).astype(float)
    if kind == "small":
        return 1e-300 * rng.uniform(0.5, 2.0, n)
    if kind == "huge":
        return 1e300 * rng.uniform(0.5, 2.0, n)
    return rng.choice([0.0, 5e-324, 1e-300, 1.0, 1e300], n)


def draw_samples(rng: np.random.Generator, dtype: type, shape: tuple[int, ...], n: int, offset: float) -> np.ndarray:
    kind = np.dtype(dtype).kind
    if kind in "iub":
        top = 2 if kind == "b" else 200
        return rng.integers(0, top, (n, *shape)).astype(dtype)
    if dtype == np.float16:
        offset = min(offset, 1e3)
    scale = 1e-6 if offset >= 1e9 else 10.0
    # skewed noise: an exponential part, so the third moment is not ~0
    raw = offset + scale * (rng.standard_normal((n, *shape)) + rng.exponential(1.0, (n, *shape)))
    return raw.astype(dtype)


def split_and_merge(make, samples, cuts, order, weights):
    bounds = [0, *sorted(cuts), len(samples)]
    parts = []
    for a, b in zip(bounds, bounds[1:]):
        acc = make()
        for i in range(a, b):
            acc.add(samples[i], None if weights is None else weights[i])
        parts.append(acc)
    total = make()
    for index in order:
        total.merge(parts[index % len(parts)])
    return total


def spread_underflows(samples: np.ndarray, weights) -> np.ndarray:
    """Per element: whether its spread comes only from samples lighter than 1e-290 of the
    heaviest weight (``mixed`` weights: 5e-324 and 1e-300 beside 1e300), which the state,
    normalised by the total weight, cannot hold: its moments are then NaN or inf, where the
    exact ones are beyond float64 or nearly (docs/statistics.md)."""
    n = samples.shape[0]
    flat = samples.reshape(n, -1).astype(float)
    if weights is None or not np.any(weights > 0):
        return np.zeros(flat.shape[1], bool).reshape(samples.shape[1:])
    heavy = weights >= 1e-290 * weights.max()
    varies = np.array([np.unique(flat[weights > 0, j]).size > 1 for j in range(flat.shape[1])])
    heavy_varies = np.array([np.unique(flat[heavy, j]).size > 1 for j in range(flat.shape[1])])
    return (varies & ~heavy_varies).reshape(samples.shape[1:])


def close(got, truth, scale, name, lenient=None):
    if lenient is not None:  # NaN or inf accepted there (see spread_underflows)
        got = np.where(lenient & ~np.isfinite(np.asarray(got, float)), truth, got)
    got, truth, scale = np.broadcast_arrays(np.asarray(got, float), np.asarray(truth, float), np.asarray(scale, float))
    # a true value beyond float64 (1e300 weights beside 5e-324 ones, where the spread comes
    # from the light samples only) is that infinity, or NaN where the spread underflowed
    beyond = np.isinf(truth)
    np.testing.assert_array_equal(np.isnan(got) & ~beyond, np.isnan(truth), err_msg=name)
    assert np.all((got[beyond] == truth[beyond]) | np.isnan(got[beyond])), (name, got, truth)
    defined = np.isfinite(truth)
    error = np.abs(got - truth)
    bound = TARGET * scale + 1e-300
    assert np.all(error[defined] <= bound[defined]), (name, got, truth)


def column_truths(samples: np.ndarray, weights) -> dict[str, np.ndarray]:
    n = samples.shape[0]
    flat = samples.reshape(n, -1)
    rows = [exact_moments(flat[:, j].tolist(), None if weights is None else list(weights)) for j in range(flat.shape[1])]
    keys = ["mean", "variance", "m2", "m3", "m4", "skewness", "kurtosis", "skewness_adjusted", "kurtosis_adjusted"]
    return {key: np.array([row[key] for row in rows], dtype=float).reshape(samples.shape[1:]) for key in keys}


def ill_conditioned(samples: np.ndarray, weights, edge: int) -> bool:
    """Whether Kish's n_eff is within float64 resolution of ``edge`` (2 for G1, 3 for G2),
    where the adjusted estimators divide by n_eff - edge: 1e300 weights beside 1e-300 ones."""
    if weights is None:
        return False
    w = [Fraction(float(v)) for v in weights]
    W, S = sum(w, Fraction(0)), sum((v * v for v in w), Fraction(0))
    return S > 0 and abs(float(W * W / S) - edge) < 1e-9 * edge


shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@settings(max_examples=120, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES), n=st.integers(1, 24), seed=st.integers(0, 2**32 - 1),
       offset=st.sampled_from([0.0, 1e3, 1e9]), weight_kind=st.sampled_from(WEIGHT_KINDS),
       order=st.sampled_from([2, 3, 4]), data=st.data())
def test_moments_against_the_exact_oracle_in_any_split_and_merge_order(shape, dtype, n, seed, offset, weight_kind,
                                                                      order, data):
    rng = np.random.default_rng(seed)
    samples = draw_samples(rng, dtype, shape, n, offset)
    weights = draw_weights(rng, weight_kind, n)
    cuts = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=3, unique=True)) if n > 1 else []
    merge_order = data.draw(st.permutations(range(len(cuts) + 1)))
    acc = split_and_merge(lambda: Moments(order), samples, cuts, merge_order, weights)
    truth = column_truths(samples, weights)
    assert acc.count == n and acc.shape == shape and acc.order == order
    spread = np.sqrt(np.where(np.isnan(truth["m2"]), 0.0, truth["m2"]))
    # the mean as Welford's (the same shifts and updates): 1e300 weights beside 1e-300 ones
    # round away the light samples' share of it at ~1e-23 of the data (Welford does too)
    magnitude = np.max(np.abs(samples.astype(float)), axis=0) if n else 0.0
    close(acc.mean, truth["mean"], np.abs(truth["mean"]) + spread + (1e-10 * magnitude if weight_kind == "mixed" else 0),
          "mean")
    close(acc.variance, truth["variance"], truth["variance"], "variance")
    for p in range(2, order + 1):
        close(acc.central_moment(p), truth[f"m{p}"], np.maximum(spread**p, np.abs(truth[f"m{p}"])), f"m{p}")
    lenient = spread_underflows(samples, weights)
    if order >= 3:
        close(acc.skewness, truth["skewness"], np.maximum(1.0, np.abs(truth["skewness"])), "skewness", lenient)
        if not ill_conditioned(samples, weights, 2):
            close(acc.skewness_by("adjusted"), truth["skewness_adjusted"],
                  np.maximum(1.0, np.abs(truth["skewness_adjusted"])), "skewness adjusted", lenient)
    if order >= 4:
        close(acc.excess_kurtosis, truth["kurtosis"], np.maximum(1.0, np.abs(truth["kurtosis"])), "kurtosis", lenient)
        if not ill_conditioned(samples, weights, 3):
            close(acc.excess_kurtosis_by("adjusted"), truth["kurtosis_adjusted"],
                  np.maximum(1.0, np.abs(truth["kurtosis_adjusted"])), "kurtosis adjusted", lenient)


@settings(max_examples=80, deadline=None)
@given(d=st.integers(1, 5), n=st.integers(1, 20), seed=st.integers(0, 2**32 - 1),
       offset=st.sampled_from([0.0, 1e3, 1e9]), weight_kind=st.sampled_from(WEIGHT_KINDS), data=st.data())
def test_covariance_against_the_exact_oracle_in_any_split_and_merge_order(d, n, seed, offset, weight_kind, data):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d))
    samples = draw_samples(rng, np.float64, (d,), n, 0.0)
    samples = offset + (samples @ mixing) * (1e-6 if offset >= 1e9 else 1.0)  # correlated elements
    weights = draw_weights(rng, weight_kind, n)
    cuts = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=3, unique=True)) if n > 1 else []
    merge_order = data.draw(st.permutations(range(len(cuts) + 1)))
    acc = split_and_merge(Covariance, samples, cuts, merge_order, weights)
    cov, cor = exact_covariance(samples, weights)
    scale = np.sqrt(np.outer(np.abs(np.diagonal(cov)), np.abs(np.diagonal(cov))))
    close(acc.covariance, cov, scale, "covariance")
    close(acc.correlation, cor, np.ones_like(cor), "correlation")
    welford = split_and_merge(Welford, samples, cuts, merge_order, weights)
    np.testing.assert_array_equal(acc.variance, welford.variance)  # the diagonal is Welford's, to the bit


@pytest.mark.parametrize("offset", [0.0, 1e6, 1e9])
def test_long_runs_at_offsets_stay_within_the_target(offset):
    rng = np.random.default_rng(7)
    samples = offset + (rng.standard_normal((2_000, 2)) + rng.exponential(1.0, (2_000, 2))) * max(1e-6, offset * 1e-15)
    moments, covariance = Moments(), Covariance()
    for x in samples:
        moments.add(x)
        covariance.add(x)
    truth = column_truths(samples[:, :1], None)
    assert abs(moments.skewness[0] - truth["skewness"][0]) <= TARGET
    assert abs(moments.excess_kurtosis[0] - truth["kurtosis"][0]) <= TARGET
    cov, _ = exact_covariance(samples, None)
    assert np.all(np.abs(covariance.covariance - cov) <= TARGET * np.abs(cov).max())


def test_merge_is_the_same_bits_in_either_order_and_an_empty_one_is_neutral():
    rng = np.random.default_rng(1)
    x = 1e9 + rng.standard_normal((30, 4))
    for make in (Moments, Covariance, lambda: Moments(3)):
        a, b = make(), make()
        for row in x[:11]:
            a.add(row, 0.5)
        for row in x[11:]:
            b.add(row, 2.0)
        assert (a + b) == (b + a)
        assert (a + make()) == a and (make() + a) == a
        zeros = make()
        zeros.add(np.zeros(4), 0.0)
        merged = a.copy().merge(zeros)
        assert merged.count == a.count + 1 and np.array_equal(merged.mean, a.mean)


def test_degenerate_cases_are_nan_never_numbers_that_look_valid():
    acc = Moments()
    with pytest.raises(ValueError, match="empty"):
        acc.skewness
    acc.add(3.0)
    assert math.isnan(acc.variance) and math.isnan(acc.skewness) and acc.mean == 3.0
    acc.add(3.0)
    assert acc.variance == 0.0 and math.isnan(acc.skewness) and math.isnan(acc.excess_kurtosis)
    acc.add(np.nan)
    assert math.isnan(acc.variance) and math.isnan(acc.mean)
    zero = Moments()
    zero.add(1.0, 0.0)
    assert math.isnan(zero.mean) and zero.count == 1
    cov = Covariance()
    cov.add(np.array([1.0, np.inf, 2.0]))
    cov.add(np.array([2.0, 1.0, 5.0]))
    matrix = cov.covariance
    assert np.all(np.isnan(matrix[1])) and np.all(np.isnan(matrix[:, 1])) and matrix[0, 2] == pytest.approx(1.5, rel=1e-15)


def test_order_and_estimators_are_checked():
    with pytest.raises(ValueError, match="order=5"):
        Moments(5)
    acc = Moments(2)
    acc.add(1.0)
    acc.add(2.0)
    with pytest.raises(ValueError, match="order=3"):
        acc.skewness
    with pytest.raises(ValueError, match="estimator"):
        Moments().skewness_by("fisher")


def test_complex_and_bad_samples_are_refused_with_the_fix():
    with pytest.raises(TypeError, match="real and imaginary"):
        Moments().add(np.array([1j]))
    with pytest.raises(TypeError, match="real and imaginary"):
        Covariance().add(1 + 2j)
    acc = Covariance()
    acc.add(np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros(4))
    with pytest.raises(ValueError, match="weight"):
        acc.add(np.zeros(3), -1.0)
    with pytest.raises(TypeError):
        acc.merge(Moments())


def test_covariance_shapes_estimators_and_the_covariance_of_the_mean():
    rng = np.random.default_rng(2)
    samples = rng.standard_normal((50, 2, 3))
    acc, welford = Covariance(), Welford()
    for x in samples:
        acc.add(x)
        welford.add(x)
    assert acc.covariance.shape == (2, 3, 2, 3)
    flat = samples.reshape(50, 6)
    np.testing.assert_allclose(acc.covariance.reshape(6, 6), np.cov(flat.T), rtol=1e-13)
    np.testing.assert_allclose(acc.covariance_by("original").reshape(6, 6), np.cov(flat.T), rtol=1e-13)
    np.testing.assert_allclose(np.diagonal(acc.covariance_of_mean.reshape(6, 6)), welford.sem.reshape(6) ** 2,
                               rtol=1e-13)
    np.testing.assert_allclose(acc.correlation.reshape(6, 6), np.corrcoef(flat.T), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("make", [Moments, lambda: Moments(3), Covariance])
def test_states_and_pickles_round_trip_and_bad_states_are_named(make):
    acc = make()
    for x in np.random.default_rng(3).standard_normal((9, 2)):
        acc.add(x, 0.3)
    for copy in (type(acc).from_state(acc.to_state()), pickle.loads(pickle.dumps(acc))):
        assert copy == acc and copy.spec == acc.spec
    assert make().to_state()["packed"] is None and type(acc).from_state(make().to_state()) == make()
    state = acc.to_state()
    for field, value, message in [("schema", 9, "schema"), ("kind", "histogram", "kind"),
                                  ("packed", state["packed"][:-1], "holds"), ("shape", [3], "holds")]:
        with pytest.raises(ValueError, match=message):
            type(acc).from_state({**state, field: value})
    broken = state["packed"].copy()
    broken[0] = -1.0  # count
    with pytest.raises(ValueError, match="count"):
        type(acc).from_state({**state, "packed": broken})
    broken = state["packed"].copy()
    broken[-1] = -5.0  # a variance (covariance: the last diagonal value) or u4, u3's end
    if not (isinstance(acc, Moments) and acc.order == 3):
        with pytest.raises(ValueError, match="negative"):
            type(acc).from_state({**state, "packed": broken})


# ------------------------------------------------------------------ the twins
pytestmark_native = pytest.mark.skipif(not _momentkernels.NATIVE, reason="the compiled extension is not built")


def _bits(state: np.ndarray) -> bytes:
    return np.where(np.isnan(state), np.nan, state).tobytes()


def _replay(make, steps, reference: bool):
    """The same adds and merges, through the compiled loops or the numpy twins."""
    names = ("moments_add", "moments_merge", "covariance_add", "covariance_merge")
    with pytest.MonkeyPatch.context() as patch:
        if reference:
            for name in names:
                patch.setattr(_momentkernels, name, getattr(_momentkernels, f"{name}_reference"))
        accs = [make(), make()]
        for kind, which, x, w in steps:
            if kind == "add":
                accs[which].add(x, w)
            else:
                accs[which].merge(accs[1 - which].copy())
        return accs


@pytestmark_native
@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 40), n=st.integers(1, 60), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["moments2", "moments3", "moments4", "covariance"]), special=st.booleans())
def test_the_compiled_loops_equal_their_numpy_twins_to_the_bit(k, n, seed, kind, special):
    rng = np.random.default_rng(seed)
    make = Covariance if kind == "covariance" else (lambda: Moments(int(kind[-1])))
    k = min(k, 12) if kind == "covariance" else k
    steps = []
    for _ in range(n):
        if rng.random() < 0.15:
            steps.append(("merge", int(rng.integers(0, 2)), None, None))
            continue
        x = rng.choice([1e9, 0.0, -1e5]) + rng.standard_normal(k)
        if special and rng.random() < 0.2:
            x[rng.integers(0, k)] = rng.choice([np.inf, -np.inf, np.nan])
        steps.append(("add", int(rng.integers(0, 2)), x, float(rng.choice([1.0, 0.0, 5e-324, 1e-300, 1e300, 0.37]))))
    native = _replay(make, steps, False)
    twin = _replay(make, steps, True)
    for a, b in zip(native, twin):
        if a._state is None:
            assert b._state is None
        else:
            assert _bits(a._state) == _bits(b._state)


@pytestmark_native
def test_the_compiled_loops_refuse_what_is_not_a_state():
    from parallelaverage import _native_moments as native

    state = Moments()._empty_state(3)
    with pytest.raises(ValueError, match="x has"):
        native.moments_add(state, np.zeros(4), (0.0,) * 8, False)
    with pytest.raises(TypeError, match="tuple of 8"):
        native.moments_add(state, np.zeros(3), (0.0,) * 7, False)
    with pytest.raises(ValueError, match="not a packed Covariance"):
        native.covariance_add(state, np.zeros(3), (0.0,) * 3, False)
    with pytest.raises(ValueError, match="first or the second"):
        native.moments_merge(state, state.copy(), state.copy(), (0.0,) * 11)
    with pytest.raises(TypeError, match="float64"):
        native.moments_add(state, np.zeros(3, dtype=np.float32), (0.0,) * 8, False)
