"""The run counter: claims per second, the cost of one claim, remote traffic per run.

    python bench/counter.py [--ranks 2 4] [--layout one-node|nolocal|cliques] [--async-progress]

* claims: ``RunCounter(chunk=1)`` with an empty loop body, claims per second per rank
  (the slowest rank, and the mean), 50,000 claims per rank;
* primitives, every rank claiming at once (one node only): the native compare-and-swap
  on a block in an MPI shared-memory window (what a claim costs now), MPI
  ``Fetch_and_op`` + ``Flush`` on that same shared window, and ``Fetch_and_op`` +
  ``Flush`` on one int64 on rank 0 (the counter before node blocks), ns per claim;
* traffic: runs of 2 ms down to 2 us (busy loops) and empty ones, remote accesses
  (``Fetch_and_op`` on rank 0's global counter) per run over all ranks, first with every
  rank a node of its own (every refill remote), then with MPI's own nodes. (The time
  per run of these loops is not a figure: busy loops on oversubscribed or shared cores
  measure the load; ``bench/mpi.py`` measures the engine's overhead per run.)

With ``--layout nolocal`` / ``cliques`` (MPICH) the ranks are treated as on separate
nodes. Each figure is the median of 3 samples. Starts itself under ``mpiexec -n P``;
the last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

import _launch

SAMPLES = 3


def bench_claims(comm, claims_per_rank: int = 50_000) -> dict:
    from parallelaverage.mpi import RunCounter

    rates = []
    for _ in range(SAMPLES):
        comm.Barrier()
        start = time.perf_counter()
        with RunCounter(claims_per_rank * comm.size, comm, chunk=1) as counter:
            mine = sum(1 for _ in counter)
        rates.append(comm.allgather(mine / (time.perf_counter() - start)))
    median = statistics.median
    return {"claims_per_s_per_rank_min": median(min(r) for r in rates),
            "claims_per_s_per_rank_mean": median(sum(r) / len(r) for r in rates)}


def bench_primitives(comm, claims: int = 50_000) -> dict | None:
    """ns per claim with every rank claiming at once, for three ways to claim."""
    from mpi4py import MPI

    from parallelaverage import _native

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    if node.size != comm.size:
        node.Free()
        return None  # several nodes: no window that every rank shares
    shared = MPI.Win.Allocate_shared(64 if comm.rank == 0 else 0, 8, comm=comm)
    memory, _ = shared.Shared_query(0)
    slots = np.frombuffer(memory, dtype=np.int64)
    on_rank_0 = MPI.Win.Allocate(8 if comm.rank == 0 else 0, 8, comm=comm)
    one, fetched = np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.int64)

    def reset() -> None:
        comm.Barrier()
        if comm.rank == 0:
            slots[:2] = (0, 1 << 60)
            np.frombuffer(on_rank_0.tomemory(), dtype=np.int64)[0] = 0
        comm.Barrier()

    def compare_and_swap() -> None:
        claim = _native.claim_block
        for _ in range(claims):
            claim(slots, 1)

    def fetch_and_op(window: MPI.Win):
        def run() -> None:
            for _ in range(claims):
                window.Fetch_and_op(one, fetched, 0, 0, MPI.SUM)
                window.Flush(0)
        return run

    shared.Lock_all()
    on_rank_0.Lock_all()
    ways = {"native compare-and-swap, shared window": compare_and_swap,
            "Fetch_and_op + Flush, shared window": fetch_and_op(shared),
            "Fetch_and_op + Flush, window on rank 0": fetch_and_op(on_rank_0)}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(SAMPLES):
        for name, way in ways.items():  # in turn, so that load changes hit all of them
            reset()
            start = time.perf_counter()
            way()
            seconds[name].append(max(comm.allgather(time.perf_counter() - start)))
    shared.Unlock_all()
    on_rank_0.Unlock_all()
    for window in (shared, on_rank_0):
        window.Free()
    node.Free()
    return {name: statistics.median(s) / claims * 1e9 for name, s in seconds.items()}


def bench_traffic(comm) -> list[dict]:
    """Remote accesses per run against the run length, for two ways to form nodes."""
    from parallelaverage.mpi import RunCounter

    alone = comm.Split(comm.rank, 0)
    rows = []
    for run_s, n_runs in ((2e-3, 400), (2e-4, 4000), (2e-5, 20000), (2e-6, 100000), (0.0, 200000)):
        row = {"run_s": run_s, "runs": n_runs}
        for nodes, node_comm in (("every_rank_alone", alone), ("mpi_nodes", None)):
            per_run = []
            for _ in range(SAMPLES):
                comm.Barrier()
                with RunCounter(n_runs, comm, node_comm=node_comm) as counter:
                    for _ in counter:
                        if run_s:
                            end = time.perf_counter() + run_s
                            while time.perf_counter() < end:
                                pass
                    remote = comm.allreduce(counter.remote_accesses)
                per_run.append(remote / n_runs)
            row[nodes] = statistics.median(per_run)
        rows.append(row)
    alone.Free()
    return rows


def child() -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    nodes = comm.allreduce(1 if node.rank == 0 else 0)
    node.Free()
    figures = {"ranks": comm.size, "nodes": nodes, "mpi": MPI.Get_library_version().splitlines()[0].strip(),
               "claims": bench_claims(comm), "primitives": bench_primitives(comm), "traffic": bench_traffic(comm)}
    if comm.rank == 0:
        print(json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    _launch.add_layout_options(parser)
    args = parser.parse_args()
    if _launch.is_child():
        child()
        return
    env = _launch.layout_env(args)
    results = []
    for ranks in args.ranks:
        figures = _launch.run_under_mpiexec(__file__, ranks, [], env=env)
        figures["layout"], figures["async_progress"] = args.layout, args.async_progress
        results.append(figures)
        print(f"\n{ranks} ranks on {figures['nodes']} node(s) ({args.layout}"
              f"{', MPICH async progress' if args.async_progress else ''}), {figures['mpi']}")
        c = figures["claims"]
        print(f"claims, chunk=1: {c['claims_per_s_per_rank_min']:,.0f} per s per rank (slowest rank), "
              f"{c['claims_per_s_per_rank_mean']:,.0f} mean")
        if figures["primitives"]:
            print("one claim, every rank claiming at once:")
            for name, ns in figures["primitives"].items():
                print(f"  {name:<42} {ns:>8.0f} ns")
        print("remote accesses per run:")
        print(f"{'run':>10} {'runs':>8} {'every rank alone':>18} {'MPI nodes':>12}")
        for row in figures["traffic"]:
            print(f"{row['run_s'] * 1e6:>8.0f}us {row['runs']:>8} {row['every_rank_alone']:>18.5f} "
                  f"{row['mpi_nodes']:>12.5f}")
    print(json.dumps({"bench": "counter", "results": results}))


if __name__ == "__main__":
    sys.exit(main())
