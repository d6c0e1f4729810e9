"""Collective properties of the MPI engine, one function each, checked on every rank.

    mpiexec -n P python engine_properties.py [NAME ...]

runs the named properties (all by default) one after the other. For each, rank 0
prints one line, ``PROPERTY <name> PASSED`` or ``PROPERTY <name> FAILED <json message>``.
A property ends in collective assertions (:func:`agree`, :func:`check`): every rank
decides on the same gathered data, so a failure fails the property on every rank alike,
and the ranks stay in step for the next one. ``tests/mpi/test_engine.py`` reads the
``@collective(...)`` decorators below (with ``ast``, without importing MPI) to know the
properties, and the rank counts and node layouts each one runs on.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
import warnings

import numpy as np
from mpi4py import MPI

import parallelaverage
from parallelaverage import mpi
from parallelaverage.mpi import RunCounter
from parallelaverage.stats import Welford

ALL_LAYOUTS = ("one-node", "nolocal", "cliques")  # see LAYOUTS in tests/mpi/test_engine.py
PROPERTIES = {}


def collective(ranks=(1, 2, 3, 4), layouts=("one-node",)):
    """Register a property, run under ``mpiexec -n r`` for each ``r`` in ``ranks``, for
    each node layout in ``layouts`` (literals: the test module reads them with ``ast``)."""

    def register(function):
        PROPERTIES[function.__name__] = function
        return function

    return register


def check(condition, message):
    """A collective assertion on data every rank holds alike (gathered or computed)."""
    if not condition:
        raise AssertionError(message)


def agree(local_ok, message, comm):
    """A collective assertion on a per-rank verdict: fails on every rank if one rank's fails."""
    failing = [rank for rank, ok in enumerate(comm.allgather(bool(local_ok))) if not ok]
    if failing:
        raise AssertionError(f"{message} (on rank {', '.join(map(str, failing))})")


def node_layouts(comm):
    """``(name, node_comm)``: the nodes MPI reports, each node split in two halves, every
    rank a node of its own: the counter's shared-memory blocks and its global counter
    run on any MPI, even on one machine."""
    yield "MPI's nodes", None
    if comm.Get_size() == 1:
        return
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    halves = node.Split(node.Get_rank() % 2, node.Get_rank())
    alone = comm.Split(comm.Get_rank(), 0)
    try:
        yield "nodes split in two", halves
        yield "every rank alone", alone
    finally:
        for c in (halves, alone, node):
            c.Free()


def sample(run):
    """A deterministic sample per run id: 1e9 offset + noise, 3x2 elements."""
    return 1e9 + np.random.default_rng(run).standard_normal((3, 2))


# -------------------------------------------------------------------- the counter
@collective(layouts=ALL_LAYOUTS)
def every_run_is_claimed_exactly_once(comm):
    size = comm.Get_size()
    one_machine = comm.Split_type(MPI.COMM_TYPE_SHARED)
    on_one_node = comm.allreduce(one_machine.Get_size()) == size * size
    one_machine.Free()
    for layout, node in node_layouts(comm):
        for n_runs in (0, 1, size - 1, size, 3 * size + 1, 5000):
            for chunk in (None, 1, 7):
                mine = []
                with RunCounter(n_runs, comm, chunk=chunk, node_comm=node) as counter:
                    for run in counter:
                        mine.append(run)
                    remote = counter.remote_accesses
                    finished = counter.finished
                everyone = comm.allgather(mine)
                claimed = sorted(run for part in everyone for run in part)
                case = f"{layout}, {n_runs} runs, chunk={chunk}"
                check(claimed == list(range(n_runs)), f"{case}: claimed {claimed[:20]}...")
                check(all(part == sorted(part) for part in everyone), f"{case}: a rank saw runs out of order")
                agree(finished, f"{case}: the iteration ended without seeing every run claimed", comm)
                if node is None and on_one_node:
                    check(comm.allreduce(remote) == 0, f"{case}: one node, yet the global counter was used")
        # the generator form hands out the same
        mine = list(mpi.dynamic_range(1000, comm))
        claimed = sorted(run for part in comm.allgather(mine) for run in part)
        check(claimed == list(range(1000)), f"{layout}: dynamic_range claimed {claimed[:20]}...")


@collective()
def runs_may_be_any_sequence_of_ids(comm):
    for ids in ([17, 3, 250, 4, 99, 100, 8], [(i, j) for i in range(3) for j in range(4)],
                np.arange(5, 105, 7), range(10, 0, -1)):
        with RunCounter(ids, comm) as counter:
            mine = list(counter)
        claimed = [run for part in comm.allgather(mine) for run in part]
        expected = list(ids)
        check(sorted(claimed) == sorted(expected) and len(claimed) == len(expected), f"{ids!r}: claimed {claimed}")


@collective(ranks=(1, 2, 4))
def run_id_names_the_run_being_executed(comm):
    seen_right = True
    with RunCounter(50, comm) as counter:
        for run in counter:
            seen_right &= parallelaverage.run_id() == run
        while (run := counter.claim()) is not None:  # nothing left: claim() says so
            seen_right = False
    agree(seen_right, "run_id() differed from the run being executed", comm)
    for form in ("RunCounter", "dynamic_range"):
        if form == "RunCounter":
            with RunCounter(10, comm) as counter:
                first = counter.claim()
                seen_right = first is None or parallelaverage.run_id() == first
        else:
            for run in mpi.dynamic_range(10, comm):
                seen_right &= parallelaverage.run_id() == run
        try:
            parallelaverage.run_id()
        except RuntimeError as error:
            outside = "only defined inside a run" in str(error)
        else:
            outside = False
        agree(seen_right, f"{form}: run_id() differed from the run being executed", comm)
        agree(outside, f"{form}: run_id() did not raise after the runs", comm)


@collective(ranks=(1, 2, 4))
def rng_gives_each_run_its_own_stream(comm):
    draws, same_generator = {}, True
    for run in mpi.dynamic_range(40, comm, seed=123):
        generator = parallelaverage.rng()
        draws[run] = generator.random(3).tolist() + [parallelaverage.rng().random()]
        same_generator &= parallelaverage.rng() is generator
    agree(same_generator, "rng() gave another generator within one run", comm)
    merged = {}
    for part in comm.allgather(draws):
        merged.update(part)
    for run in range(40):
        # four draws within a run continue one stream: the run's own, whichever rank ran it
        expected = np.random.default_rng(np.random.SeedSequence(123, spawn_key=(run,))).random(4)
        check(merged[run] == expected.tolist(), f"run {run}: draws {merged[run]} are not its stream {expected}")
    check(len({tuple(v) for v in merged.values()}) == 40, "two runs drew the same numbers")


@collective(ranks=(1, 2, 3))
def claim_hands_out_runs_then_none_and_free_is_final(comm):
    with RunCounter(7, comm, chunk=2) as counter:
        mine = []
        while (run := counter.claim()) is not None:
            mine.append(run)
        again = counter.claim()
    counter.free()  # a second free does nothing
    try:
        counter.claim()
    except RuntimeError as error:
        refused = "freed" in str(error)
    else:
        refused = False
    claimed = sorted(run for part in comm.allgather(mine) for run in part)
    check(claimed == list(range(7)), f"claimed {claimed}")
    agree(again is None, "claim() after the last run did not return None", comm)
    agree(refused, "claim() on a freed counter did not raise RuntimeError", comm)


@collective(ranks=(2, 3, 4), layouts=ALL_LAYOUTS)
def a_rank_that_leaves_early_does_not_hang_the_others(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    leaver = size - 1
    for how in ("break", "exception"):
        for layout, node in node_layouts(comm):
            done = []
            try:
                with RunCounter(200, comm, chunk=1, node_comm=node) as counter:
                    runs = iter(counter)  # held: the garbage collector cannot free anything
                    for run in runs:
                        done.append(run)
                        time.sleep(0.001)
                        if rank == leaver:
                            if how == "exception":
                                raise KeyError(run)
                            break
            except KeyError:
                pass
            # a collective right after the block: reached by every rank, in step
            everyone = comm.allgather(done)
            executed = sorted(run for part in everyone for run in part)
            case = f"{how}, {layout}"
            check(len(executed) == len(set(executed)), f"{case}: a run was executed twice")
            check(len(everyone[leaver]) == 1, f"{case}: the leaving rank ran {everyone[leaver]}")
            # what nobody ran is what the leaving rank had claimed for later: the rest of
            # its node's block if it is alone on its node (with chunk=1, nothing else)
            missing = sorted(set(range(200)) - set(executed))
            after = everyone[leaver][0] + 1
            check(missing == list(range(after, after + len(missing))), f"{case}: runs {missing} were lost")


@collective(ranks=(1, 2))
def leaving_dynamic_range_early_warns_what_to_do(comm):
    leaver = comm.Get_size() - 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = mpi.dynamic_range(100, comm, chunk=1)
        for _ in runs:
            if comm.Get_rank() == leaver:
                break
            time.sleep(0.01)  # the others are slow: runs are surely left when the leaver leaves
        # closed here, explicitly: leaving it to the garbage collector (a reference cycle
        # can delay it past this block) is exactly what the warning warns against
        runs.close()
    texts = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if comm.Get_rank() == leaver:
        agree(len(texts) == 1 and "with parallelaverage.mpi.RunCounter(runs, comm) as counter" in texts[0]
              and "hang" in texts[0], f"the leaving rank was warned {texts}", comm)
    else:
        agree(not texts, f"a rank that iterated to the end was warned {texts}", comm)


HOLD_S = 1.5


@collective(ranks=(4,), layouts=ALL_LAYOUTS)
def claims_do_not_wait_for_a_busy_rank_0(comm):
    """Rank 0 spends its first run without any MPI call; the others claim all the rest
    meanwhile. (Before the node blocks and rank 0's progress thread, with MPICH's
    ``MPIR_CVAR_NOLOCAL=1`` every other rank waited for rank 0's run to end.)"""
    rank = comm.Get_rank()
    for busy in ("sleeping", "computing in Python"):
        comm.Barrier()
        start = time.monotonic()
        finished, first = 0.0, True
        with RunCounter(60, comm) as counter:
            for run in counter:
                if rank == 0 and first:
                    first = False
                    if busy == "sleeping":
                        time.sleep(HOLD_S)
                    else:
                        x = 0
                        while time.monotonic() - start < HOLD_S:
                            x += 1
                else:
                    time.sleep(0.005)
                finished = time.monotonic() - start
        times = comm.allgather(finished)
        check(max(times[1:]) < 0.8 * HOLD_S,
              f"rank 0 {busy} for {HOLD_S} s: the others finished at {[round(t, 2) for t in times[1:]]} s")


@collective(ranks=(2, 4))
def remote_traffic_per_run_falls_as_runs_get_shorter(comm):
    """Every rank a node of its own, so that every refill is a remote access."""
    alone = comm.Split(comm.Get_rank(), 0)
    per_run = {}
    try:
        for run_s, n_runs in ((2e-3, 100), (2e-4, 1000), (2e-6, 20000)):
            comm.Barrier()
            with RunCounter(n_runs, comm, node_comm=alone) as counter:
                for _ in counter:
                    end = time.perf_counter() + run_s
                    while time.perf_counter() < end:
                        pass
                remote = comm.allreduce(counter.remote_accesses)
            per_run[run_s] = remote / n_runs
    finally:
        alone.Free()
    ratios = [per_run[s] for s in sorted(per_run, reverse=True)]
    check(all(a > b for a, b in zip(ratios, ratios[1:])) and ratios[-1] < 0.01,
          f"remote accesses per run for runs of 2 ms, 0.2 ms, 2 us: {ratios}")


# ------------------------------------------------------------------ allreduce
@collective()
def allreduce_equals_the_serial_merge_on_every_rank(comm):
    n_runs = 400
    acc = Welford()
    for run in mpi.dynamic_range(n_runs, comm):
        acc.add(sample(run))
    total = mpi.allreduce(acc, comm)
    serial = Welford()
    for run in range(n_runs):
        serial.add(sample(run))
    check(total.count == n_runs, f"count {total.count}")
    check(np.all(np.abs(total.mean - serial.mean) <= 1e-13 * np.abs(serial.mean)), "mean")
    check(np.all(np.abs(total.variance - serial.variance) <= 1e-13 * serial.variance), "variance")
    everyone = comm.allgather(total._state.tobytes())
    check(all(state == everyone[0] for state in everyone), "ranks disagree on the merged bits")
    local_count = acc.count
    agree(local_count <= n_runs, "the local accumulator was changed", comm)
    merged = mpi.allreduce(acc, comm, inplace=True)
    agree(merged is acc and acc.count == n_runs, "inplace=True did not merge into the accumulator", comm)
    check(comm.allreduce(local_count) == n_runs, "local counts do not add up")
    agree(np.all(np.abs(acc.variance - serial.variance) <= 1e-13 * serial.variance), "inplace variance", comm)


@collective()
def ranks_without_samples_weights_and_complex_samples_merge(comm):
    acc = Welford()
    if comm.Get_rank() == comm.Get_size() - 1:
        for run in range(10):
            acc.add(sample(run) * (1 + 1j), weight=run + 1.0)
    total = mpi.allreduce(acc, comm)
    serial = Welford()
    for run in range(10):
        serial.add(sample(run) * (1 + 1j), weight=run + 1.0)
    check(total.count == 10 and np.iscomplexobj(total.mean), f"count {total.count}, mean {total.mean.dtype}")
    check(np.allclose(total.mean, serial.mean, rtol=1e-14), "mean")
    check(np.allclose(total.variance, serial.variance, rtol=1e-12), "variance")
    check(mpi.allreduce(Welford(), comm).count == 0, "empty everywhere: not empty")


@collective()
def real_and_complex_states_are_promoted_not_corrupted(comm):
    acc = Welford()
    acc.add(np.array([1.0, 2.0]) * (1j if comm.Get_rank() % 2 else 1))
    total = mpi.allreduce(acc, comm)
    size = comm.Get_size()
    check(total.count == size and np.iscomplexobj(total.mean) == (size > 1), f"{total.count}, {total.mean}")
    expected = np.mean([np.array([1.0, 2.0]) * (1j if r % 2 else 1) for r in range(size)], axis=0)
    check(np.allclose(total.mean, expected), f"mean {total.mean}, expected {expected}")


@collective()
def scalars_and_many_dimensions_keep_their_shape(comm):
    size = comm.Get_size()
    acc = Welford()
    acc.add(float(comm.Get_rank()))
    total = mpi.allreduce(acc, comm)
    check(total.shape == () and total.count == size and total.mean == (size - 1) / 2, f"{total.shape}, {total.mean}")
    acc = Welford()
    if comm.Get_rank() == 0:
        acc.add(np.ones((1, 2, 1, 3, 1, 1, 2)))
    shape = mpi.allreduce(acc, comm).shape
    check(shape == (1, 2, 1, 3, 1, 1, 2), f"shape {shape}")


@collective()
def different_shapes_fail_on_every_rank(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    for mine in ((2 if rank == 0 else 3,), (2, 3) if rank == 0 else (3, 2)):
        acc = Welford()
        acc.add(np.zeros(mine))
        try:
            mpi.allreduce(acc, comm)
            verdict = size == 1
        except ValueError as error:
            verdict = "different shapes" in str(error)
        agree(verdict, f"shapes {mine} on rank 0: no clear error", comm)


@collective()
def result_buffers_are_recycled_only_when_nothing_holds_them(comm):
    acc = Welford()
    acc.add(np.full(50, float(comm.Get_rank())))
    first = mpi.allreduce(acc, comm)
    kept = first.mean.copy()
    second = mpi.allreduce(acc, comm)
    agree(first._state is not second._state and np.array_equal(first.mean, kept), "a held result was reused", comm)
    del first
    third = mpi.allreduce(acc, comm)
    agree(third._state is not second._state and np.array_equal(third.mean, second.mean), "recycled wrongly", comm)


def split_case(comm, k, weighted, complex_on, empty_ranks, inplace):
    rank, size = comm.Get_rank(), comm.Get_size()
    acc, serial = Welford(), Welford()
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
    case = f"k={k}, weighted={weighted}, complex on {complex_on}, empty {empty_ranks}, inplace={inplace}"
    check(total.count == serial.count, f"{case}: count {total.count}")
    if serial.count == 0:
        return
    check(total._state.tobytes() == other_way._state.tobytes(), f"{case}: in place or not, other bits")
    check(np.isclose(total.total_weight, serial.total_weight), f"{case}: weight")
    check(np.allclose(total.mean, serial.mean, rtol=1e-15, atol=0), f"{case}: mean")
    check(np.allclose(total.variance, serial.variance, rtol=1e-13, atol=0), f"{case}: variance")
    agree((total is acc) == inplace, f"{case}: inplace returned the wrong object", comm)
    states = comm.allgather(total._state.tobytes())
    check(all(state == states[0] for state in states), f"{case}: ranks disagree on the merged bits")


@collective()
def large_states_merge_slice_by_slice_like_the_serial_merge(comm):
    """Any rank count, odd element counts, empty ranks, weights, complex samples, in
    place or not: the result of the serial merge, the same bits on every rank."""
    size = comm.Get_size()
    mpi.SPLIT_MIN_BYTES_PER_RANK, default_split = 0, mpi.SPLIT_MIN_BYTES_PER_RANK
    try:
        for k in (size, 2 * size + 1, 1001):
            split_case(comm, k, weighted=False, complex_on=(), empty_ranks=(), inplace=False)
        split_case(comm, 1001, weighted=True, complex_on=(), empty_ranks=(), inplace=True)
        split_case(comm, 257, weighted=False, complex_on={size - 1}, empty_ranks=(), inplace=False)
        split_case(comm, 257, weighted=True, complex_on=(), empty_ranks={0}, inplace=False)
        split_case(comm, 257, weighted=False, complex_on=(), empty_ranks=set(range(1, size)), inplace=True)
        split_case(comm, 257, weighted=False, complex_on=(), empty_ranks={size // 2}, inplace=True)
    finally:
        mpi.SPLIT_MIN_BYTES_PER_RANK = default_split
    over_default = mpi.SPLIT_MIN_BYTES_PER_RANK * size // 24 + 1  # 3 doubles per element
    split_case(comm, over_default, weighted=True, complex_on=(), empty_ranks=(), inplace=False)


@collective()
def slice_exchanges_cannot_match_a_pending_receive(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    pending = np.full(1, -1.0)
    request = comm.Irecv(pending, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG)
    over_default = mpi.SPLIT_MIN_BYTES_PER_RANK * size // 24 + 1
    split_case(comm, over_default, weighted=False, complex_on=(), empty_ranks=(), inplace=True)
    comm.Send(np.full(1, float(rank)), dest=(rank + 1) % size, tag=7)
    status = MPI.Status()
    request.Wait(status)
    agree(status.Get_tag() == 7 and pending[0] == (rank - 1) % size, f"received {status.Get_tag()}, {pending}", comm)


@collective()
def merges_in_two_threads_on_two_communicators_stay_apart(comm):
    if MPI.Query_thread() != MPI.THREAD_MULTIPLE:
        return
    rank, size = comm.Get_rank(), comm.Get_size()
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
    for c in comms:
        c.Free()
    agree(not errors, f"a merging thread raised {errors}", comm)
    for which in (0, 1):
        serial = Welford()
        for source in range(size):
            for run in range(3):
                serial.add(which * 1000.0 + np.random.default_rng([which, source, run]).standard_normal(k))
        for result in results[which]:
            check(np.allclose(result.mean, serial.mean, rtol=1e-13, atol=1e-12), f"thread {which}: mean")
            check(np.allclose(result.variance, serial.variance, rtol=1e-12, atol=0), f"thread {which}: variance")


# ------------------------------------------------------------------------ main
def main(names):
    comm = MPI.COMM_WORLD
    unknown = sorted(set(names) - set(PROPERTIES))
    if unknown:
        sys.exit(f"unknown properties {unknown}; known: {sorted(PROPERTIES)}")
    for name in names or PROPERTIES:
        try:
            PROPERTIES[name](comm)
            verdict = None
        except Exception:
            verdict = traceback.format_exc()
            # on stderr now too: if this rank alone failed before a collective call, the
            # ranks are out of step, and the gathering below may never return
            print(f"rank {comm.Get_rank()}: {name} failed:\n{verdict}", file=sys.stderr, flush=True)
        verdicts = comm.allgather(verdict)
        if comm.Get_rank() == 0:
            failures = {rank: text for rank, text in enumerate(verdicts) if text is not None}
            if failures:
                first = min(failures)
                message = f"rank {first} of {comm.Get_size()}:\n{failures[first]}"
                print(f"PROPERTY {name} FAILED {json.dumps(message)}", flush=True)
            else:
                print(f"PROPERTY {name} PASSED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
