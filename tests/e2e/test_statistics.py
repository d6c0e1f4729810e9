"""statistics=() end to end: real mpiexec jobs on 1 to 3 ranks collect covariance, moments,
batches, histograms and log-binning; the result equals a serial computation over the
same runs (the same seeds), whatever the ranks and their claim order."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import _context
from parallelaverage import StatisticNotCollectedError, WeightedSample, parallel_average, wait
from parallelaverage.stats import Batches, Covariance, Histogram, LogBinning, Moments, jackknife

THIS = sys.modules[__name__]


def ising_magnetisation(L, beta, sweeps):
    """A small Metropolis Ising chain (the worked example of docs/statistics.md): the
    magnetisation per spin after ``sweeps`` sweeps, with its square and fourth power."""
    rng = pa.rng()
    spins = rng.choice([-1, 1], size=(L, L))
    for _ in range(sweeps):
        for _ in range(L * L):
            i, j = rng.integers(0, L, 2)
            field = spins[(i + 1) % L, j] + spins[i - 1, j] + spins[i, (j + 1) % L] + spins[i, j - 1]
            if rng.random() < math.exp(-2.0 * beta * spins[i, j] * field):
                spins[i, j] *= -1
    m = abs(spins.mean())
    return np.array([m, m**2, m**4])


@pytest.mark.parametrize("n_tasks", [1, 3])
def test_a_binder_cumulant_with_its_jackknife_error_and_the_other_statistics(tmp_path, n_tasks):
    specs = ("covariance", "moments", "jackknife:8", "histogram:bins=10,range=(0,1)")

    @parallel_average(N_runs=64, N_tasks=n_tasks, seed=3, statistics=specs, queuing_system="local", path=tmp_path,
                      pickle_by_value=[THIS])
    def ising(L, beta):
        return ising_magnetisation(L, beta, 3)

    result = wait(ising)(L=4, beta=0.4)
    # the same runs, serially: the same streams
    expected = {kind: acc for kind, acc in zip(["covariance", "moments", "jackknife", "histogram"],
                                               [Covariance(), Moments(), Batches(8), Histogram(10, (0, 1))])}
    for run in range(64):
        _context.enter_run(run)
        _context.set_job_seed(3)
        output = ising_magnetisation(4, 0.4, 3)
        for acc in expected.values():
            acc.add(output, key=run) if isinstance(acc, Batches) else acc.add(output)
    _context.leave_runs()
    assert set(result.statistics) == {"covariance", "moments", "jackknife", "histogram"}
    np.testing.assert_allclose(result.covariance, expected["covariance"].covariance, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(result.correlation, expected["covariance"].correlation, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(result.skewness, expected["moments"].skewness, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.excess_kurtosis, expected["moments"].excess_kurtosis, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(result.histogram.counts, expected["histogram"].counts)
    np.testing.assert_array_equal(result.statistics["jackknife"].counts, np.full(8, 8))  # run id mod 8

    def binder(m):
        return 1.0 - m[2] / (3.0 * m[1] ** 2)

    value, error = result.jackknife(binder)
    serial = jackknife(binder, expected["jackknife"])
    assert value == pytest.approx(serial.value, rel=1e-13) and error == pytest.approx(serial.error, rel=1e-10)
    assert value == pytest.approx(binder(result.data), rel=1e-13) and 0 < error < 1
    with pytest.raises(StatisticNotCollectedError, match="collected no autocorrelation"):
        result.autocorrelation_time
    assert not hasattr(result, "autocorrelation")


def test_a_ratio_of_two_outputs_and_a_chain_per_run(tmp_path):
    """<s O> / <s> from two tuple elements (jackknife across elements), weights, and a
    time series per run with its autocorrelation time; statistics for one element only."""

    @parallel_average(N_runs=30, N_tasks=2, seed=5, statistics={0: ("jackknife:5", "autocorrelation"), 1: ("jackknife:5",)},
                      queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def chain(phi):
        rng = pa.rng()
        x, series = 0.0, np.empty(256)
        for t in range(256):
            x = phi * x + rng.standard_normal()
            series[t] = x
        s = 1.0 + 0.2 * rng.standard_normal()
        return series, WeightedSample(s, 1.0)

    series_result, s_result = wait(chain)(0.8)
    estimate = series_result.jackknife(lambda so, s: so.mean() / s, s_result)
    assert np.isfinite(estimate.value) and estimate.error > 0
    tau = series_result.autocorrelation_time
    assert 2.0 < tau < 8.0  # (1 + 0.8) / (2 (1 - 0.8)) = 4.5
    serial = LogBinning()
    for run in range(30):
        _context.enter_run(run)
        _context.set_job_seed(5)
        rng = pa.rng()
        x, series = 0.0, np.empty(256)
        for t in range(256):
            x = 0.8 * x + rng.standard_normal()
            series[t] = x
        serial.add(series)
    _context.leave_runs()
    assert series_result.autocorrelation.error == pytest.approx(float(serial.error), rel=1e-12)
    with pytest.raises(StatisticNotCollectedError):
        s_result.autocorrelation


def test_a_run_that_a_statistic_refuses_fails_alone(tmp_path):
    @parallel_average(N_runs=6, N_tasks=2, statistics=("autocorrelation",), queuing_system="local", path=tmp_path,
                      pickle_by_value=[THIS])
    def sometimes_scalar():
        return 1.0 if pa.run_id() == 2 else np.arange(4.0) + pa.run_id()

    with pytest.warns(pa.RunsFailedWarning, match="time series"):
        result = wait(sometimes_scalar)()
    assert list(result.failed_run_ids) == [2] and result.autocorrelation.count == 5


@pytest.mark.parametrize("bad, message", [
    (("covarianse",), "did you mean 'covariance'"), (("histogram:20",), "range"),
    ({3: ("moments",)}, "not averaged"), (("moments", "moments:3"), "twice"),
])
def test_bad_statistics_fail_at_decoration_time(tmp_path, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        parallel_average(N_runs=4, N_tasks=1, average_results=(0, 1), statistics=bad, path=tmp_path)


def test_parallel_refuses_statistics(tmp_path):
    with pytest.raises(pa.OptionError, match="statistics"):
        pa.parallel(N_runs=4, N_tasks=1, statistics=("moments",), path=tmp_path)
