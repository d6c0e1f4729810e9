"""mpi.allreduce of every accumulator besides Welford against the exact oracle, on every rank.

Run as ``mpiexec -n P python accumulators_allreduce.py``; prints ``ACCUMULATORS-OK <P>`` on
rank 0 when every check passed on every rank (an AssertionError aborts the job
otherwise). Samples are dealt to the ranks round robin and in contiguous blocks; the
last rank's samples may all have weight 0, and with more ranks than samples some ranks
have none. Checks: the merged estimates equal the exact ones (1e-12), every rank holds
the same bits, and merging all of them in one collective (allreduce_many, as the worker
does) gives the same bits as one collective each.
"""

import math
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stats"))
from moments_oracle import exact_binning, exact_covariance, exact_jackknife, exact_moments, exact_sum  # noqa: E402

from parallelaverage import _collective, mpi  # noqa: E402
from parallelaverage.stats import Batches, Covariance, Histogram, LogBinning, Moments, jackknife  # noqa: E402

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
TARGET = 1e-12


def same_bits(acc) -> bool:
    state = acc._packed_state()
    canonical = b"" if state is None else np.where(np.isnan(state), np.nan, state).tobytes()
    return all(other == canonical for other in comm.allgather(canonical))


def near(got, truth, scale, what):
    got, truth = np.asarray(got, float), np.asarray(truth, float)
    assert np.array_equal(np.isnan(got), np.isnan(truth)), (what, got, truth)
    ok = ~np.isnan(truth)
    assert np.all(np.abs(got - truth)[ok] <= TARGET * np.asarray(scale, float)[ok] if np.ndim(scale) else
                  np.abs(got - truth)[ok] <= TARGET * scale), (what, got, truth)


def fill(make, samples, weights, owner, keyed=False):
    acc = make()
    for i in np.nonzero(owner == rank)[0]:
        if keyed:
            acc.add(samples[i], weights[i], key=int(i))
        else:
            acc.add(samples[i], weights[i])
    return acc


rng = np.random.default_rng(2026)  # the same data on every rank
n, d = 24, 3
checked = 0
for case in ("round robin", "blocks", "last rank weightless", "tiny and huge weights"):
    samples = 1e9 + 1e-6 * (rng.standard_normal((n, d)) + rng.exponential(1.0, (n, d)))
    owner = np.arange(n) % size if case != "blocks" else np.minimum(np.arange(n) * size // n, size - 1)
    weights = rng.uniform(0.5, 2.0, n)
    if case == "last rank weightless" and size > 1:
        weights[owner == size - 1] = 0.0
    if case == "tiny and huge weights":
        weights = rng.choice([5e-324, 1e-300, 1e300], n) * rng.integers(1, 4, n)

    merged = []
    # moments, order 4
    moments = mpi.allreduce(fill(Moments, samples, weights, owner), comm)
    merged.append(moments)
    for j in range(d):
        truth = exact_moments(samples[:, j].tolist(), weights.tolist())
        near(moments.skewness[j], truth["skewness"], max(1.0, abs(truth["skewness"])), f"{case}: skewness")
        near(moments.excess_kurtosis[j], truth["kurtosis"], max(1.0, abs(truth["kurtosis"])), f"{case}: kurtosis")
        near(moments.variance[j], truth["variance"], truth["variance"], f"{case}: variance")
    # covariance
    covariance = mpi.allreduce(fill(Covariance, samples, weights, owner), comm)
    merged.append(covariance)
    cov, cor = exact_covariance(samples, weights.tolist())
    near(covariance.covariance, cov, np.abs(cov).max(), f"{case}: covariance")
    near(covariance.correlation, cor, 1.0, f"{case}: correlation")
    # batches: the jackknife of a ratio of two elements
    batches = mpi.allreduce(fill(lambda: Batches(5), samples - 1e9, weights, owner, keyed=True), comm)
    merged.append(batches)
    value, error, _ = exact_jackknife(lambda m: m[0] / m[1], [samples - 1e9], list(range(n)), 5, weights.tolist())
    estimate = jackknife(lambda m: m[0] / m[1], batches)
    assert math.isclose(estimate.value, value, rel_tol=TARGET), (case, estimate, value)
    assert math.isclose(estimate.error, error, rel_tol=1e-10), (case, estimate, error)
    # histogram, weighted
    histogram = mpi.allreduce(fill(lambda: Histogram(6, (1e9, 1e9 + 4e-6), weighted=True), samples, weights, owner), comm)
    merged.append(histogram)
    for j in range(d):
        counts, edges = np.histogram(samples[weights > 0, j], bins=6, range=(1e9, 1e9 + 4e-6))
        assert np.array_equal(histogram.counts[j], counts), (case, histogram.counts[j], counts)
        index = np.clip(np.searchsorted(edges, samples[:, j], side="right") - 1, 0, 5)
        inside = (samples[:, j] >= edges[0]) & (samples[:, j] <= edges[-1])
        for b in range(6):
            truth = exact_sum(weights[inside & (index == b)])
            assert math.isclose(histogram.weights[j, b], truth, rel_tol=TARGET), (case, histogram.weights[j, b], truth)
    # log-binning: each "run" returns a series of 8 samples of d observables
    series = samples[: n // 8 * 8].reshape(n // 8, 8, d)
    series_owner = np.arange(len(series)) % size
    binning = mpi.allreduce(fill(LogBinning, series, weights[: len(series)], series_owner), comm)
    merged.append(binning)
    for j in range(d):
        levels = exact_binning([s[:, j] for s in series], weights[: len(series)].tolist())
        for level, truth in enumerate(levels):
            near(binning.errors[level, j], truth["sem"], truth["sem"], f"{case}: level {level}")

    for acc in merged:
        assert same_bits(acc), f"{case}: ranks disagree on the merged bits of {acc!r}"
    # all of them in one collective, as the worker merges a job's statistics
    mine = [fill(Moments, samples, weights, owner), fill(Covariance, samples, weights, owner),
            fill(lambda: Batches(5), samples - 1e9, weights, owner, keyed=True),
            fill(lambda: Histogram(6, (1e9, 1e9 + 4e-6), weighted=True), samples, weights, owner),
            fill(LogBinning, series, weights[: len(series)], series_owner)]
    for one, together in zip(merged, _collective.allreduce_many(mine, comm)):
        assert one == together, f"{case}: one collective for all differs from one each: {one!r}"
    checked += 1

# a spec or shape mismatch is an error on every rank, never a hang or a wrong merge
for mismatch in ("spec", "shape"):
    acc = Histogram(4 if mismatch == "shape" or rank == 0 else 5, (0, 1))
    acc.add(np.zeros(2 if mismatch == "spec" or rank == 0 else 3))
    try:
        mpi.allreduce(acc, comm)
    except ValueError as error:
        assert size > 1, error
    else:
        assert size == 1, f"a {mismatch} mismatch between ranks was not refused"

# ranks without any sample (the result is empty of the right spec)
empty = mpi.allreduce(Moments(3), comm)
assert empty.count == 0 and empty.spec == "moments:order=3"

comm.Barrier()
if rank == 0:
    print(f"ACCUMULATORS-OK {size} ({checked} cases)")
sys.stdout.flush()
