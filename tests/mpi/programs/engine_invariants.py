"""Collective invariants of the MPI engine, asserted on every rank.

Run as ``mpiexec -n P python engine_invariants.py``; prints ``ENGINE-OK <P>`` on rank 0
when every check passed on every rank (an AssertionError aborts the job otherwise).
"""

import sys

import numpy as np
from mpi4py import MPI

import parallelaverage
from parallelaverage import mpi
from parallelaverage.stats import Welford

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def sample(run):
    """A deterministic sample per run id: 1e9 offset + noise, 3x2 elements."""
    key = run if isinstance(run, int) else hash(run) % 2**31
    return 1e9 + np.random.default_rng(key).standard_normal((3, 2))


def claimed_everywhere(runs, **options):
    mine = []
    for run in mpi.dynamic_range(runs, comm, **options):
        assert parallelaverage.run_id() == run
        mine.append(run)
    everyone = comm.allgather(mine)
    return mine, [run for part in everyone for run in part]


# 1. every index exactly once, for fewer, equal and many more runs than ranks
for n_runs in (0, 1, size - 1, size, 3 * size + 1, 5000):
    for chunk in (None, 1, 7):
        mine, claimed = claimed_everywhere(n_runs, chunk=chunk)
        assert sorted(claimed) == list(range(n_runs)), (n_runs, chunk, sorted(claimed)[:20])
        assert mine == sorted(mine)  # each rank sees increasing counter order

# 2. an explicit list of run ids (re-running only some runs)
ids = [17, 3, 250, 4, 99, 100, 8]
_, claimed = claimed_everywhere(ids)
assert sorted(claimed) == sorted(ids)
tuple_ids = [(i, j) for i in range(3) for j in range(4)]
_, claimed = claimed_everywhere(tuple_ids)
assert sorted(claimed) == tuple_ids

# 3. allreduce equals the serial merge on every rank (to 1e-13)
n_runs = 400
acc = Welford()
for run in mpi.dynamic_range(n_runs, comm):
    acc.add(sample(run))
total = mpi.allreduce(acc, comm)
serial = Welford()
for run in range(n_runs):
    serial.add(sample(run))
assert total.count == n_runs
assert np.all(np.abs(total.mean - serial.mean) <= 1e-13 * np.abs(serial.mean))
assert np.all(np.abs(total.variance - serial.variance) <= 1e-13 * serial.variance)
everyone = comm.allgather(total._state.tobytes())
assert all(state == everyone[0] for state in everyone), "ranks disagree on the merged bits"
assert acc.count <= n_runs  # the local accumulator is left alone
local_count = acc.count
merged = mpi.allreduce(acc, comm, inplace=True)
assert merged is acc and acc.count == n_runs and comm.allreduce(local_count) == n_runs
assert np.all(np.abs(acc.variance - serial.variance) <= 1e-13 * serial.variance)

# 4. ranks without samples take part; weights and complex samples
acc = Welford()
if rank == size - 1:
    for run in range(10):
        acc.add(sample(run) * (1 + 1j), weight=run + 1.0)
total = mpi.allreduce(acc, comm)
serial = Welford()
for run in range(10):
    serial.add(sample(run) * (1 + 1j), weight=run + 1.0)
assert total.count == 10 and np.iscomplexobj(total.mean)
assert np.allclose(total.mean, serial.mean, rtol=1e-14) and np.allclose(total.variance, serial.variance, rtol=1e-12)
assert mpi.allreduce(Welford(), comm).count == 0

# 5. real on some ranks, complex on others: promoted, not corrupted
acc = Welford()
acc.add(np.array([1.0, 2.0]) * (1j if rank % 2 else 1))
total = mpi.allreduce(acc, comm)
assert total.count == size and np.iscomplexobj(total.mean) == (size > 1)

# 5b. scalars and many dimensions keep their shape through the gathered layouts
acc = Welford()
acc.add(float(rank))
total = mpi.allreduce(acc, comm)
assert total.shape == () and total.count == size and total.mean == (size - 1) / 2
acc = Welford()
if rank == 0:
    acc.add(np.ones((1, 2, 1, 3, 1, 1, 2)))
assert mpi.allreduce(acc, comm).shape == (1, 2, 1, 3, 1, 1, 2)

# 6. different shapes on different ranks: a clear error on every rank
for mine in ((2 if rank == 0 else 3,), (2, 3) if rank == 0 else (3, 2)):
    acc = Welford()
    acc.add(np.zeros(mine))
    try:
        mpi.allreduce(acc, comm)
        assert size == 1, "shape mismatch not detected"
    except ValueError as error:
        assert "different shapes" in str(error)

# 7. rng(): one reproducible stream per run, whichever rank ran it
draws = {}
for run in mpi.dynamic_range(40, comm, seed=123):
    draws[run] = parallelaverage.rng().random(3).tolist()
    assert parallelaverage.rng().random() is not None  # same generator within the run
merged = {}
for part in comm.allgather(draws):
    merged.update(part)
for run in range(40):
    expected = np.random.default_rng(np.random.SeedSequence(123, spawn_key=(run,))).random(3)
    assert merged[run] == expected.tolist()
assert len({tuple(v) for v in merged.values()}) == 40

# 8. result buffers are recycled only when nothing holds the previous result
acc = Welford()
acc.add(np.full(50, float(rank)))
first = mpi.allreduce(acc, comm)
kept = first.mean.copy()
second = mpi.allreduce(acc, comm)
assert first._state is not second._state and np.array_equal(first.mean, kept)
del first
third = mpi.allreduce(acc, comm)
assert third._state is not second._state and np.array_equal(third.mean, second.mean)

# 9. large states are merged slice by slice (reduce-scatter + allgather): the same
# result as the serial merge, identical bits on every rank, for any rank count, odd
# element counts, empty ranks, weights, complex samples, in place or not
def split_case(k, weighted, complex_on, empty_ranks, inplace):
    acc = Welford()
    serial = Welford()
    for source in range(size):
        for run in range(3 + source):
            if source in empty_ranks:
                continue
            x = 1e9 + np.random.default_rng(1000 * source + run).standard_normal(k)
            x = x * (1 + 1j) if source in complex_on else x
            w = (run + 0.5) if weighted else None
            serial.add(x, weight=w)
            if source == rank:
                acc.add(x, weight=w)
    other_way = mpi.allreduce(acc.copy(), comm, inplace=not inplace)
    total = mpi.allreduce(acc, comm, inplace=inplace)
    assert total.count == serial.count
    if serial.count == 0:
        return
    assert total._state.tobytes() == other_way._state.tobytes(), "in place or not: the same bits"
    assert np.isclose(total.total_weight, serial.total_weight)
    assert np.allclose(total.mean, serial.mean, rtol=1e-15, atol=0)
    assert np.allclose(total.variance, serial.variance, rtol=1e-13, atol=0), (k, weighted, complex_on, empty_ranks)
    assert (total is acc) == inplace
    states = comm.allgather(total._state.tobytes())
    assert all(state == states[0] for state in states), "ranks disagree on the merged bits"


mpi.SPLIT_MIN_BYTES_PER_RANK, default_split = 0, mpi.SPLIT_MIN_BYTES_PER_RANK
try:
    for k in (size, 2 * size + 1, 1001):
        split_case(k, weighted=False, complex_on=(), empty_ranks=(), inplace=False)
    split_case(1001, weighted=True, complex_on=(), empty_ranks=(), inplace=True)
    split_case(257, weighted=False, complex_on={size - 1}, empty_ranks=(), inplace=False)
    split_case(257, weighted=True, complex_on=(), empty_ranks={0}, inplace=False)
    split_case(257, weighted=False, complex_on=(), empty_ranks=set(range(1, size)), inplace=True)
    split_case(257, weighted=False, complex_on=(), empty_ranks={size // 2}, inplace=True)
finally:
    mpi.SPLIT_MIN_BYTES_PER_RANK = default_split
over_default = mpi.SPLIT_MIN_BYTES_PER_RANK * size // 24 + 1  # 3 doubles per element
split_case(over_default, weighted=True, complex_on=(), empty_ranks=(), inplace=False)

# 10. the slice exchanges cannot be matched by a receive the program has pending
pending = np.full(1, -1.0)
request = comm.Irecv(pending, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG)
split_case(over_default, weighted=False, complex_on=(), empty_ranks=(), inplace=True)
comm.Send(np.full(1, float(rank)), dest=(rank + 1) % size, tag=7)
status = MPI.Status()
request.Wait(status)
assert status.Get_tag() == 7 and pending[0] == (rank - 1) % size, (status.Get_tag(), pending)

# 11. merges running at the same time in two threads (two communicators) stay apart
if MPI.Query_thread() == MPI.THREAD_MULTIPLE:
    import threading

    comms = [comm.Dup(), comm.Dup()]
    k = 100_000
    results, errors = {}, []
    start_together = threading.Barrier(2)

    def merge_in_thread(which):
        try:
            acc = Welford()
            for run in range(3):
                acc.add(which * 1000.0 + np.random.default_rng([which, rank, run]).standard_normal(k))
            start_together.wait()
            results[which] = [mpi.allreduce(acc, comms[which]) for _ in range(4)]
        except BaseException as error:  # reported below, on the main thread
            errors.append(error)

    threads = [threading.Thread(target=merge_in_thread, args=(which,)) for which in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for which in (0, 1):
        serial = Welford()
        for source in range(size):
            for run in range(3):
                serial.add(which * 1000.0 + np.random.default_rng([which, source, run]).standard_normal(k))
        for result in results[which]:
            assert np.allclose(result.mean, serial.mean, rtol=1e-13, atol=1e-12)
            assert np.allclose(result.variance, serial.variance, rtol=1e-12, atol=0)
    for c in comms:
        c.Free()

comm.Barrier()
if rank == 0:
    print(f"ENGINE-OK {size}")
sys.stdout.flush()
