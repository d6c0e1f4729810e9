"""Load balancing of the run counter against the ideal schedule of the same durations.

    python bench/balance.py [--ranks 4] [--runs 256] [--reps 3] [--hold-s 5]
                            [--layout one-node|nolocal|cliques] [--async-progress]

256 runs sleep for lognormal durations (mean 0.05 s, sigma 1, numpy default_rng(1)) on
4 ranks, claimed from a ``RunCounter``. The makespan (common start after a Barrier to
the end of the last run) is compared with greedy list scheduling simulated on the same
durations in run order (a run goes to the first free rank: the best any dynamic
scheduler without foresight achieves) and with the static round-robin split of the
original.

``--hold-s S``: rank 0's first run lasts S seconds instead, without any MPI call (it
sleeps), as a long run on the rank that hosts the global counter. The simulation then
starts with rank 0 busy for S seconds and that run removed; besides the makespan, it
gives when the other ranks finish, which is what a counter waiting on rank 0 delays.
With ``--layout nolocal`` (MPICH) every rank is treated as on a node of its own, so
that every claim of another rank goes through the network to rank 0's window.

Starts itself under ``mpiexec``; the last line printed is one JSON object of the figures.
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


def greedy_finish_times(times: np.ndarray, ranks: int, busy_until: list[float] | None = None) -> list[float]:
    """List scheduling in run order: each run starts on the rank that frees first.
    Returns when each rank finishes; ``busy_until`` gives when each rank is first free."""
    free_at = [(start, rank) for rank, start in enumerate(busy_until or [0.0] * ranks)]
    heapq.heapify(free_at)
    for t in times:
        start, rank = heapq.heappop(free_at)
        heapq.heappush(free_at, (start + t, rank))
    finish = [0.0] * ranks
    for end, rank in free_at:
        finish[rank] = end
    return finish


def static_makespan(times: np.ndarray, ranks: int) -> float:
    return max(times[r::ranks].sum() for r in range(ranks))


def child(n_runs: int, reps: int, hold_s: float) -> None:
    from mpi4py import MPI

    from parallelaverage.mpi import RunCounter

    comm = MPI.COMM_WORLD
    times = durations(n_runs)
    makespans, finishes, held, runs_per_rank, remote = [], [], [], [], []
    for _ in range(reps):
        comm.Barrier()
        start = comm.bcast(time.time())
        mine, end, first, held_run = 0, start, True, -1
        with RunCounter(n_runs, comm) as counter:
            for run in counter:
                if comm.rank == 0 and first and hold_s > 0:
                    time.sleep(hold_s)
                    held_run = run
                else:
                    time.sleep(times[run])
                first = False
                mine += 1
                end = time.time()
            accesses = counter.remote_accesses
        finish = comm.allgather(end - start)
        finishes.append(finish)
        makespans.append(max(finish))
        held.append(comm.bcast(held_run))
        runs_per_rank = comm.gather(mine)
        remote.append(comm.allreduce(accesses))
    if comm.rank == 0:
        print(json.dumps({"makespans_s": makespans, "finish_s": finishes, "held_runs": held,
                          "runs_per_rank": runs_per_rank, "remote_accesses": remote}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--runs", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--hold-s", type=float, default=0.0, help="rank 0's first run lasts this long (sleeping)")
    _launch.add_layout_options(parser)
    args = parser.parse_args()
    if _launch.is_child():
        child(args.runs, args.reps, args.hold_s)
        return
    times = durations(args.runs)
    measured = _launch.run_under_mpiexec(
        __file__, args.ranks, [f"--runs={args.runs}", f"--reps={args.reps}", f"--hold-s={args.hold_s}"],
        env=_launch.layout_env(args))
    # the ideal schedules of what was measured: in each repetition rank 0 held the run it claimed first
    greedy, greedy_others = [], []
    for held in measured["held_runs"]:
        if args.hold_s > 0:
            finish = greedy_finish_times(np.delete(times, held), args.ranks, [args.hold_s] + [0.0] * (args.ranks - 1))
        else:
            finish = greedy_finish_times(times, args.ranks)
        greedy.append(max(finish))
        greedy_others.append(max(finish[1:]) if args.ranks > 1 else 0.0)
    median = statistics.median
    makespan = median(measured["makespans_s"])
    others = median(max(f[1:]) for f in measured["finish_s"]) if args.ranks > 1 else 0.0
    static = static_makespan(times, args.ranks)
    figures = {
        "bench": "balance", "ranks": args.ranks, "runs": args.runs, "hold_s": args.hold_s,
        "layout": args.layout, "async_progress": args.async_progress,
        "sum_s": float(times.sum()), "greedy_s": median(greedy), "greedy_others_s": median(greedy_others),
        "static_s": static, "measured_median_s": makespan, "measured_all_s": measured["makespans_s"],
        "others_median_s": others, "runs_per_rank": measured["runs_per_rank"],
        "remote_accesses": measured["remote_accesses"],
        "measured_over_greedy": makespan / median(greedy),
        "others_over_greedy": others / median(greedy_others) if args.ranks > 1 else None,
    }
    print(f"{args.runs} runs, {args.ranks} ranks, sum of durations {times.sum():.2f} s, layout {args.layout}"
          + (", MPICH async progress" if args.async_progress else "")
          + (f", rank 0's first run held {args.hold_s:g} s" if args.hold_s else ""))
    if not args.hold_s:
        print(f"lower bound max(sum/P, max)  {max(times.sum() / args.ranks, times.max()):.3f} s")
        print(f"static round-robin           {static:.3f} s ({static / median(greedy):.3f}x greedy)")
    print(f"greedy list scheduling       {median(greedy):.3f} s; the other ranks done at {median(greedy_others):.3f} s")
    print(f"RunCounter, measured         {makespan:.3f} s ({figures['measured_over_greedy']:.3f}x greedy); "
          f"the other ranks done at {others:.3f} s"
          + (f" ({figures['others_over_greedy']:.3f}x greedy)" if args.ranks > 1 else ""))
    print(f"runs per rank {measured['runs_per_rank']}, remote accesses {measured['remote_accesses']} (medians of "
          f"{args.reps}: {measured['makespans_s']})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
