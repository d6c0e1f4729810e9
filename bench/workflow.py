"""The decorator workflow on the local backend, end to end, against bare mpiexec.

    python bench/workflow.py [--reps 7]

* start-up: from the first call of a new job to its complete result (``wait``), 1,000
  trivial runs on 2 ranks; baseline: a bare ``mpiexec -n 2 python -c "from mpi4py
  import MPI; import numpy"`` measured in the same run;
* keep every output: ``@parallel`` with 10,000 runs of ``np.zeros(10)`` on 2 ranks,
  from the first call to the complete result, and the time to load all outputs back.

Medians over ``--reps`` jobs (each with new arguments, so each is a new job). The
last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from parallelaverage import parallel, parallel_average, wait
from parallelaverage.backends.mpiexec import mpiexec_command


def bare_mpiexec_s(reps: int) -> float:
    command, env = mpiexec_command(2, [sys.executable, "-c", "from mpi4py import MPI; import numpy"])
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(command, check=True, env={**__import__("os").environ, **env})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_call_to_result_s(function, rep: int) -> tuple[float, object]:
    quiet = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        function(rep)
        result = wait(function)(rep)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as path:

        @parallel_average(N_runs=1000, N_tasks=2, queuing_system="local", path=path)
        def trivial(rep):
            return 1.0

        @parallel(N_runs=10_000, N_tasks=2, queuing_system="local", path=path)
        def zeros(rep):
            return np.zeros(10)

        startup = [first_call_to_result_s(trivial, rep)[0] for rep in range(args.reps)]
        kept, loads = [], []
        for rep in range(max(3, args.reps // 2)):
            seconds, outputs = first_call_to_result_s(zeros, rep)
            assert len(outputs) == 10_000
            kept.append(seconds)
            start = time.perf_counter()
            sum(float(outputs[run][0]) for run in outputs)
            loads.append(time.perf_counter() - start)
    bare = bare_mpiexec_s(args.reps)
    figures = {
        "bench": "workflow",
        "startup_1000_runs_2_ranks_s": statistics.median(startup),
        "startup_all_s": startup,
        "bare_mpiexec_2_ranks_s": bare,
        "keep_10000_runs_2_ranks_s": statistics.median(kept),
        "load_10000_outputs_s": statistics.median(loads),
    }
    print(f"first call -> complete result, 1,000 trivial runs, 2 ranks: {figures['startup_1000_runs_2_ranks_s']:.3f} s "
          f"(bare mpiexec -n 2 with mpi4py+numpy: {bare:.3f} s)")
    print(f"@parallel, 10,000 runs of np.zeros(10), 2 ranks, end to end: {figures['keep_10000_runs_2_ranks_s']:.3f} s; "
          f"loading all outputs back: {figures['load_10000_outputs_s']:.3f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
