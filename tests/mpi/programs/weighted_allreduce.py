"""allreduce of weighted samples against the exact oracle, asserted on every rank.

Run as ``mpiexec -n P python weighted_allreduce.py``; prints ``WEIGHTED-OK <P>`` on rank 0
when every check passed on every rank (an AssertionError aborts the job otherwise). Each
case runs through both merge paths: one ``MPI_Allreduce`` with the merge as a user op,
and the reduce-scatter + allgather of slices.
"""

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stats"))
from welford_oracle import exact_columns  # noqa: E402

from parallelaverage import mpi  # noqa: E402
from parallelaverage.stats import Welford  # noqa: E402

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
TARGET = 1e-13


def same_bits(state: np.ndarray) -> bool:
    canonical = np.where(np.isnan(state), np.nan, state).tobytes()
    return all(other == canonical for other in comm.allgather(canonical))


def check(name, samples, weights, owner, split):
    """Rank owner[i] adds sample i; every rank compares the merged result with the exact one."""
    acc = Welford()
    for i in np.nonzero(owner == rank)[0]:
        acc.add(samples[i], weights[i])
    default = mpi.SPLIT_MIN_BYTES_PER_RANK
    mpi.SPLIT_MIN_BYTES_PER_RANK = 0 if split else 1 << 40
    try:
        total = mpi.allreduce(acc, comm)
    finally:
        mpi.SPLIT_MIN_BYTES_PER_RANK = default
    expected = exact_columns(samples, weights.tolist())
    assert total.count == len(samples), name
    assert same_bits(total._state), f"{name}: ranks disagree on the merged bits"
    got = {"mean": total.mean, "variance": total.variance, "sem": total.sem,
           "variance_original": total.variance_by("original"), "sem_original": total.sem_by("original")}
    scale = np.abs(expected["mean"]) + np.sqrt(expected["variance"])
    for key, value in got.items():
        truth = expected[key]
        bound = TARGET * (scale if key == "mean" else np.abs(truth))
        assert np.all(np.abs(value - truth) <= bound), (name, split, key, value, truth)


rng = np.random.default_rng(2026)  # the same data on every rank
n, k = 48, 5
for split in (False, True):
    noise = 1e9 + 1e-6 * rng.standard_normal((n, k))
    owner = np.arange(n) % size
    ones = np.ones(n)
    check("unit weights at 1e9 + 1e-6 N(0, 1)", noise, ones, owner, split)
    # the last rank's runs all had weight 0, and its first sample is an outlier
    zero_last = np.where(owner == size - 1, 0.0, 1.0) if size > 1 else ones
    outlier = noise.copy()
    outlier[np.nonzero(owner == size - 1)[0][0]] = 0.0
    check("one rank of zero weights", outlier, zero_last, owner, split)
    # a light first sample on every rank
    light = noise.copy()
    light[:size] = -5.0
    tiny_first = np.where(np.arange(n) < size, 5e-324, 1.0)
    check("a tiny-weight outlier first on every rank", light, tiny_first, owner, split)
    for scale in (5e-324, 1e-300, 1e300):
        weights = scale * rng.integers(1, 5, n).astype(float)
        check(f"weights of scale {scale}", noise, weights, owner, split)
    mixed = rng.choice([0.0, 5e-324, 1e-300, 1.0, 1e300], n)
    mixed[0] = 1.0  # at least one positive weight
    check("mixed scales", noise, mixed, owner, split)
    # contiguous blocks: one rank sees only the heaviest samples
    block_owner = np.minimum(np.arange(n) * size // n, size - 1)
    check("contiguous blocks, skewed weights", noise, np.linspace(0.0, 3.0, n) ** 4, block_owner, split)
    complex_samples = noise + 1j * (2.0 - rng.standard_normal((n, k)))
    check("complex", complex_samples, rng.uniform(0, 2, n), owner, split)

# values beyond 2**1021 on some ranks (the scaled path): the mean is exact, the
# variance (beyond float64 here) inf, and its sign never flips
for split in (False, True):
    huge = 1e9 + rng.standard_normal((n, k))
    huge[:, 0] = np.where(np.arange(n) % 3 == 0, 1.7e308, -1.6e308)
    acc = Welford()
    for i in np.nonzero(owner == rank)[0]:
        acc.add(huge[i])
    default = mpi.SPLIT_MIN_BYTES_PER_RANK
    mpi.SPLIT_MIN_BYTES_PER_RANK = 0 if split else 1 << 40
    try:
        total = mpi.allreduce(acc, comm)
    finally:
        mpi.SPLIT_MIN_BYTES_PER_RANK = default
    expected = exact_columns(huge, [1.0] * n)
    assert np.all(np.abs(total.mean - expected["mean"]) <= 1e-15 * np.abs(expected["mean"])), (total.mean, expected["mean"])
    assert total.variance[0] == np.inf and np.all(np.isfinite(total.variance[1:]))
    assert same_bits(total._state)

# a rank whose only samples have weight 0 contributes its count and nothing else
acc = Welford()
acc.add(np.full(3, float(rank)), weight=0.0 if rank == 0 else 1.0)
total = mpi.allreduce(acc, comm)
assert total.count == size
if size == 1:
    assert np.all(np.isnan(total.mean)), "all weights zero: the mean is undefined"
else:
    assert np.allclose(total.mean, np.mean(np.arange(1, size))), total.mean

comm.Barrier()
if rank == 0:
    print(f"WEIGHTED-OK {size}")
sys.stdout.flush()
