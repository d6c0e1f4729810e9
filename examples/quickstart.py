"""Quickstart: average a noisy computation over 1,000 runs on 2 local MPI ranks.

    python examples/quickstart.py

Starts itself under ``mpiexec -n 2`` (the MPI of the active environment), hands the
runs out with the shared counter, merges the ranks' statistics and prints them.
"""

import os
import subprocess
import sys

N_RUNS, N_TASKS = 1000, 2


def simulate(run: int, L: int = 8):
    """One sample of a stochastic computation: L noisy values around 1e9."""
    from parallelaverage import rng

    return 1e9 + rng().standard_normal(L)


def main_on_ranks() -> None:
    from mpi4py import MPI

    from parallelaverage import mpi
    from parallelaverage.stats import Welford

    acc = Welford()
    for run in mpi.dynamic_range(N_RUNS, MPI.COMM_WORLD, seed=1):
        acc.add(simulate(run))
    total = mpi.allreduce(acc, MPI.COMM_WORLD)
    print(f"rank {MPI.COMM_WORLD.rank} ran {acc.count} of {total.count} runs", flush=True)
    MPI.COMM_WORLD.Barrier()
    if MPI.COMM_WORLD.rank == 0:
        print("mean - 1e9:", total.mean - 1e9)
        print("variance:  ", total.variance)
        print("error:     ", total.sem)


if __name__ == "__main__":
    if os.environ.get("QUICKSTART_ON_RANKS"):
        main_on_ranks()
    else:
        from parallelaverage.backends.mpiexec import mpiexec_command

        command, env = mpiexec_command(N_TASKS, [sys.executable, os.path.abspath(__file__)])
        sys.exit(subprocess.call(command, env={**os.environ, **env, "QUICKSTART_ON_RANKS": "1"}))
