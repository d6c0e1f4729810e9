"""The MPI engine against plain MPI, measured in the same run.

    python bench/mpi.py [--ranks 2 4] [--sizes 1e5 1e6 1e7] [--crossover]
                        [--layout one-node|nolocal|cliques] [--async-progress]

* allreduce of a Welford state of n float64 elements (3n + 10 doubles on the wire)
  versus a plain SUM ``Allreduce`` of the same number of doubles, with separate send
  and receive buffers; ``allreduce(inplace=True)`` versus an in-place SUM
  ``Allreduce(MPI.IN_PLACE, ...)``, the best MPICH can do for the same bytes;
* per-run engine overhead: a trivial function returning 10 floats, 20,000 runs,
  ``RunCounter`` + ``Welford.add`` + ``allreduce``, minus the function alone, the two
  timed in turn (the run counter's own figures are in ``bench/counter.py``);
* with ``--crossover``: both allreduce algorithms forced (one ``MPI_Allreduce`` with the
  merge op, and the slice-by-slice reduce-scatter), on small states, to place
  ``mpi.SPLIT_MIN_BYTES_PER_RANK``.

Each time is the median of several samples of back-to-back calls after a Barrier,
max over ranks; what is compared is timed in turn within each sample, and each ratio
(or difference) is the median of those within a sample. Starts itself under
``mpiexec -n P``; the last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

import _launch


def timed_in_turn(comm, functions: dict, samples: int, inner: int) -> dict[str, list[float]]:
    """Max-over-ranks seconds per call of each function, each sample timing them in turn,
    so that a load change on the shared host hits all of them within one sample."""
    from mpi4py import MPI

    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(samples):
        for name, function in functions.items():
            comm.Barrier()
            start = time.perf_counter()
            for _ in range(inner):
                function()
            seconds[name].append(comm.allreduce((time.perf_counter() - start) / inner, op=MPI.MAX))
    return seconds


def median_ratio(times: list[float], baseline: list[float]) -> float:
    """Median over the samples of a time over the baseline's time in the same sample."""
    return statistics.median(t / b for t, b in zip(times, baseline, strict=True))


def bench_allreduce(comm, n: int) -> dict:
    from mpi4py import MPI

    from parallelaverage import mpi
    from parallelaverage.stats import Welford

    rng = np.random.default_rng(comm.rank)
    acc = Welford()
    for _ in range(3):
        acc.add(1e6 + rng.standard_normal(n))
    doubles = acc._state.size
    send, receive = np.ones(doubles), np.empty(doubles)
    in_place_sum = np.zeros(doubles)  # zeros: summing in place leaves them zeros, however often
    samples, inner = (5, 2) if n >= 10**7 else (9, max(1, 10**6 // n))
    # inplace merges into acc, so time it on a copy whose state is restored each call
    work, pristine = acc.copy(), acc._state.copy()

    def merge_in_place():
        np.copyto(work._state, pristine)
        mpi.allreduce(work, comm, inplace=True)

    seconds = timed_in_turn(comm, {
        "sum": lambda: comm.Allreduce(send, receive, op=MPI.SUM),
        "sum_in_place": lambda: comm.Allreduce(MPI.IN_PLACE, in_place_sum, op=MPI.SUM),
        "ours": lambda: mpi.allreduce(acc, comm),
        "restore": lambda: np.copyto(work._state, pristine),
        "inplace": merge_in_place,
    }, samples, inner)
    in_place = [t - r for t, r in zip(seconds["inplace"], seconds["restore"], strict=True)]
    median = statistics.median
    return {"n": n, "sum_allreduce_s": median(seconds["sum"]), "welford_allreduce_s": median(seconds["ours"]),
            "ratio": median_ratio(seconds["ours"], seconds["sum"]),
            "sum_allreduce_in_place_s": median(seconds["sum_in_place"]),
            "welford_allreduce_inplace_s": median(in_place),
            "ratio_inplace": median_ratio(in_place, seconds["sum"]),
            "ratio_inplace_to_sum_in_place": median_ratio(in_place, seconds["sum_in_place"])}


def bench_crossover(comm, sizes: list[int]) -> list[dict]:
    """Both allreduce algorithms forced, against SUM, where the choice between them flips."""
    from mpi4py import MPI

    from parallelaverage import mpi
    from parallelaverage.stats import Welford

    def forced(acc, threshold: int) -> None:
        mpi.SPLIT_MIN_BYTES_PER_RANK = threshold
        mpi.allreduce(acc, comm)

    rows = []
    default = mpi.SPLIT_MIN_BYTES_PER_RANK
    try:
        for n in sizes:
            acc = Welford()
            for seed in range(3):
                acc.add(np.random.default_rng([comm.rank, seed]).standard_normal(n))
            send, receive = np.ones(acc._state.size), np.empty(acc._state.size)
            seconds = timed_in_turn(comm, {
                "sum": lambda: comm.Allreduce(send, receive, op=MPI.SUM),
                "whole": lambda: forced(acc, 1 << 62),
                "split": lambda: forced(acc, 0),
            }, samples=15, inner=max(1, 200_000 // n))
            median = statistics.median
            rows.append({"n": n, "state_bytes": send.nbytes, "sum_allreduce_s": median(seconds["sum"]),
                         "ratio_whole": median_ratio(seconds["whole"], seconds["sum"]),
                         "ratio_split": median_ratio(seconds["split"], seconds["sum"])})
    finally:
        mpi.SPLIT_MIN_BYTES_PER_RANK = default
    return rows


def trivial(i: int) -> np.ndarray:
    return np.full(10, float(i))


def bench_overhead(comm, n_runs: int = 20_000) -> dict:

    from parallelaverage import mpi
    from parallelaverage.stats import Welford

    def engine():
        acc = Welford()
        with mpi.RunCounter(n_runs, comm) as counter:
            for run in counter:
                acc.add(trivial(run))
        return mpi.allreduce(acc, comm)

    def function_alone():
        for run in range(n_runs // comm.size):
            trivial(run)

    seconds = timed_in_turn(comm, {"engine": engine, "alone": function_alone}, samples=7, inner=1)
    per_run = comm.size / n_runs * 1e6
    median = statistics.median
    return {
        "runs": n_runs,
        "per_run_total_us": median(seconds["engine"]) * per_run,
        "per_run_function_us": median(seconds["alone"]) * per_run,
        # the difference within each sample, where both saw the same load
        "per_run_engine_overhead_us": median(e - a for e, a in zip(seconds["engine"], seconds["alone"])) * per_run,
    }


def child(sizes: list[int], crossover: bool) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if crossover:
        figures = {"ranks": comm.size, "mpi": MPI.Get_library_version().splitlines()[0].strip(),
                   "crossover": bench_crossover(comm, sizes)}
        if comm.rank == 0:
            print(json.dumps(figures), flush=True)
        return
    figures = {
        "ranks": comm.size,
        "mpi": MPI.Get_library_version().splitlines()[0].strip(),
        "allreduce": [bench_allreduce(comm, n) for n in sizes],
        "overhead": bench_overhead(comm),
    }
    if comm.rank == 0:
        print(json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--sizes", type=float, nargs="+", default=None,
                        help="state sizes in elements (default 1e5 1e6 1e7; 3e2..1e5 with --crossover)")
    parser.add_argument("--crossover", action="store_true",
                        help="time both allreduce algorithms on small states instead")
    _launch.add_layout_options(parser)
    args = parser.parse_args()
    default_sizes = [3e2, 1e3, 3e3, 1e4, 3e4, 1e5] if args.crossover else [1e5, 1e6, 1e7]
    sizes = [int(s) for s in (args.sizes or default_sizes)]
    if _launch.is_child():
        child(sizes, args.crossover)
        return
    results = []
    for ranks in args.ranks:
        extra = ["--crossover"] if args.crossover else []
        figures = _launch.run_under_mpiexec(__file__, ranks, ["--sizes", *map(str, sizes), *extra],
                                            env=_launch.layout_env(args))
        figures["layout"], figures["async_progress"] = args.layout, args.async_progress
        results.append(figures)
        print(f"\n{ranks} ranks ({args.layout}{', MPICH async progress' if args.async_progress else ''}), "
              f"{figures['mpi']}")
        if args.crossover:
            print(f"{'n':>10} {'state':>10} {'SUM Allreduce':>14} {'one Allreduce':>14} {'slices':>8}")
            for row in figures["crossover"]:
                print(f"{row['n']:>10.0e} {row['state_bytes'] / 1e3:>7.0f} kB {row['sum_allreduce_s'] * 1e6:>11.1f} us "
                      f"{row['ratio_whole']:>13.2f}x {row['ratio_split']:>7.2f}x")
            continue
        print(f"{'n':>10} {'SUM':>11} {'allreduce':>12} {'ratio':>7} {'SUM in place':>13} {'inplace':>11} "
              f"{'ratio':>7}")
        for row in figures["allreduce"]:
            print(f"{row['n']:>10.0e} {row['sum_allreduce_s'] * 1e3:>8.2f} ms {row['welford_allreduce_s'] * 1e3:>9.2f} ms "
                  f"{row['ratio']:>6.2f}x {row['sum_allreduce_in_place_s'] * 1e3:>10.2f} ms "
                  f"{row['welford_allreduce_inplace_s'] * 1e3:>8.2f} ms {row['ratio_inplace_to_sum_in_place']:>6.2f}x")
        o = figures["overhead"]
        print(f"per run ({o['runs']} runs): {o['per_run_total_us']:.2f} us total, "
              f"{o['per_run_function_us']:.2f} us the function, {o['per_run_engine_overhead_us']:.2f} us engine")
    print(json.dumps({"bench": "mpi" if not args.crossover else "mpi-crossover", "results": results}))


if __name__ == "__main__":
    sys.exit(main())
