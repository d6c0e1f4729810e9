"""A million trivial runs through the library, end to end, against a bare mpiexec loop.

    python bench/endtoend.py [--runs 1000000] [--ranks 2] [--rounds 5]

Each round times, in turn:

* **library**: a new job of ``N`` runs of ``return x`` on ``R`` local ranks, from the first
  call (``wait(f)(x)``: submission, launch, runs, merge, result) until it returns the
  averaged result;
* **bare**: ``mpiexec -n R python loop.py N``, where each rank calls the same function on its
  share of the runs, adds the outputs, and one ``allreduce`` sums them — the least any
  MPI program doing this work can cost, interpreter start-up included.

It prints the median of the per-round ratios (library / bare); the fixed costs (the same
for 1,000 runs) and so the cost per run and rank of each; ``Welford.add`` and the
function's call timed in this process; and, last, one JSON line.
Run it on an installed package (``pip install .``), not an editable one, whose import hook
checks the build on every import of every rank.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parallelaverage import parallel_average, wait
from parallelaverage.backends.mpiexec import mpiexec_command

LOOP = """
import sys
from mpi4py import MPI

def trivial(x):
    return x

comm = MPI.COMM_WORLD
n, rank, size = int(sys.argv[1]), comm.Get_rank(), comm.Get_size()
total = 0.0
for run in range(n * rank // size, n * (rank + 1) // size):
    total += trivial(1.0)
assert comm.allreduce(total) == n
"""


def bare_s(loop: Path, runs: int, ranks: int) -> float:
    command, env = mpiexec_command(ranks, [sys.executable, str(loop), str(runs)])
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, **env})
    return time.perf_counter() - start


def library_s(function, argument: float) -> float:
    quiet = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        result = wait(function)(argument)
    elapsed = time.perf_counter() - start
    assert result.count == function.__wrapped_runs__ and float(result.data) == argument
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as path:
        loop = Path(path) / "loop.py"
        loop.write_text(LOOP)

        @parallel_average(N_runs=args.runs, N_tasks=args.ranks, queuing_system="local", path=path)
        def trivial(x):
            return x

        @parallel_average(N_runs=FEW, N_tasks=args.ranks, queuing_system="local", path=path)
        def few(x):
            return x

        trivial.__wrapped_runs__ = args.runs  # type: ignore[attr-defined]
        few.__wrapped_runs__ = FEW  # type: ignore[attr-defined]
        library, bare, library_few, bare_few = [], [], [], []
        for round_ in range(args.rounds):
            library.append(library_s(trivial, float(round_ + 1)))  # a new argument: a new job
            bare.append(bare_s(loop, args.runs, args.ranks))
            library_few.append(library_s(few, float(round_ + 1)))
            bare_few.append(bare_s(loop, FEW, args.ranks))
    ratios = [a / b for a, b in zip(library, bare)]
    # per run, on each rank: the difference between N and FEW runs, which takes away the
    # fixed costs (interpreters, imports, submission, merge, result)
    per_run_us = [(a - b) / ((args.runs - FEW) / args.ranks) * 1e6 for a, b in zip(library, library_few)]
    bare_per_run_us = [(a - b) / ((args.runs - FEW) / args.ranks) * 1e6 for a, b in zip(bare, bare_few)]
    figures = {
        "bench": "endtoend", "runs": args.runs, "ranks": args.ranks,
        "library_s": statistics.median(library), "bare_s": statistics.median(bare),
        "ratio_median": statistics.median(ratios), "ratios": [round(r, 3) for r in ratios],
        "library_fixed_s": statistics.median(library_few), "bare_fixed_s": statistics.median(bare_few),
        "library_us_per_run_per_rank": statistics.median(per_run_us),
        "bare_us_per_run_per_rank": statistics.median(bare_per_run_us),
        "welford_add_us": welford_add_us(), "function_us": function_us(),
    }
    print(f"{args.runs:,} trivial runs on {args.ranks} ranks, first call -> result: "
          f"library {figures['library_s']:.3f} s, bare mpiexec loop {figures['bare_s']:.3f} s, "
          f"ratio {figures['ratio_median']:.2f}x (median of {args.rounds} rounds timed in turn)")
    print(f"fixed costs ({FEW:,} runs): library {figures['library_fixed_s']:.3f} s, bare {figures['bare_fixed_s']:.3f} s; "
          f"per run and rank: library {figures['library_us_per_run_per_rank']:.2f} us, "
          f"bare {figures['bare_us_per_run_per_rank']:.2f} us; in this process, Welford.add of a float "
          f"{figures['welford_add_us']:.2f} us, the function call {figures['function_us']:.2f} us")
    print(json.dumps(figures))


FEW = 1000
"""Runs of the job that measures the fixed costs."""


def welford_add_us(n: int = 200_000) -> float:
    """One ``Welford.add`` of a Python float, as the worker's fallback path would call it."""
    from parallelaverage.stats import Welford

    acc = Welford()
    add = acc.add
    start = time.perf_counter()
    for _ in range(n):
        add(1.0)
    return (time.perf_counter() - start) / n * 1e6


def function_us(n: int = 1_000_000) -> float:
    def trivial(x):
        return x

    start = time.perf_counter()
    for _ in range(n):
        trivial(1.0)
    return (time.perf_counter() - start) / n * 1e6


if __name__ == "__main__":
    main()
