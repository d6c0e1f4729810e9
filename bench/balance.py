"""Load balancing of dynamic_range against the ideal schedule of the same durations.

    python bench/balance.py [--ranks 4] [--runs 256] [--reps 3]

256 runs sleep for lognormal durations (mean 0.05 s, sigma 1, numpy default_rng(1)) on
4 ranks. The makespan (common start after a Barrier to the end of the last run) is
compared with greedy list scheduling simulated on the same durations in run order (a
run goes to the first free rank: the best any dynamic scheduler without foresight
achieves) and with the static round-robin split of the original. Starts itself under
``mpiexec``; the last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import statistics
import time

import numpy as np

import _launch


def durations(n_runs: int, mean_s: float = 0.05, sigma: float = 1.0, seed: int = 1) -> np.ndarray:
    mu = math.log(mean_s) - sigma**2 / 2  # so that the mean of the lognormal is mean_s
    return np.random.default_rng(seed).lognormal(mu, sigma, n_runs)


def greedy_makespan(times: np.ndarray, ranks: int) -> float:
    """List scheduling in run order: each run starts on the rank that frees first."""
    free_at = [0.0] * ranks
    for t in times:
        heapq.heappush(free_at, heapq.heappop(free_at) + t)
    return max(free_at)


def static_makespan(times: np.ndarray, ranks: int) -> float:
    return max(times[r::ranks].sum() for r in range(ranks))


def child(n_runs: int, reps: int) -> None:
    from mpi4py import MPI

    from parallelaverage import mpi

    comm = MPI.COMM_WORLD
    times = durations(n_runs)
    makespans, runs_per_rank = [], []
    for _ in range(reps):
        comm.Barrier()
        start = comm.bcast(time.time())
        mine = 0
        for run in mpi.dynamic_range(n_runs, comm):
            time.sleep(times[run])
            mine += 1
            end = time.time()
        makespans.append(comm.allreduce(end - start if mine else 0.0, op=MPI.MAX))
        runs_per_rank = comm.gather(mine)
    if comm.rank == 0:
        print(json.dumps({"makespans_s": makespans, "runs_per_rank": runs_per_rank}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--runs", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if _launch.is_child():
        child(args.runs, args.reps)
        return
    times = durations(args.runs)
    greedy = greedy_makespan(times, args.ranks)
    static = static_makespan(times, args.ranks)
    lower = max(times.sum() / args.ranks, times.max())
    measured = _launch.run_under_mpiexec(__file__, args.ranks, [f"--runs={args.runs}", f"--reps={args.reps}"])
    median = statistics.median(measured["makespans_s"])
    figures = {
        "bench": "balance", "ranks": args.ranks, "runs": args.runs,
        "sum_s": float(times.sum()), "lower_bound_s": float(lower),
        "greedy_s": greedy, "static_s": static, "measured_median_s": median,
        "measured_all_s": measured["makespans_s"], "runs_per_rank": measured["runs_per_rank"],
        "measured_over_greedy": median / greedy, "static_over_greedy": static / greedy,
    }
    print(f"{args.runs} runs, {args.ranks} ranks, sum of durations {times.sum():.2f} s")
    print(f"lower bound max(sum/P, max) {lower:.3f} s")
    print(f"greedy list scheduling      {greedy:.3f} s")
    print(f"static round-robin          {static:.3f} s ({static / greedy:.3f}x greedy)")
    print(f"dynamic_range, measured     {median:.3f} s ({median / greedy:.3f}x greedy; runs per rank {measured['runs_per_rank']})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
