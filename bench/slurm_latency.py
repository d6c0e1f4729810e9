"""SLURM latency: from a decorated call to its complete result, 100 trivial runs on 4 ranks.

Usage (needs the test cluster, ``bash tests/slurm/cluster.sh up``)::

    python bench/slurm_latency.py [--repeats 5] [--runs 100] [--ranks 4] [--dir PATH]

Measures, each ``--repeats`` times (median, min, max):

* ``parallelaverage slurm``: ``wait(f)(i)`` with ``queuing_system="slurm"`` for a new
  call: sbatch, the scheduler tick, ``srun --mpi=pmi2`` starting the ranks, the runs,
  the merge, and the caller noticing the end (``squeue`` / the exit-code file);
* baseline ``sbatch + srun (ideal)``: a hand-written job script whose ``srun`` starts
  the same Python on the same ranks and only initialises MPI (``MPI.COMM_WORLD.Barrier``),
  followed by polling ``squeue`` every 20 ms: the floor that any SLURM submission pays;
* reference ``parallelaverage local``: the same call with ``queuing_system="local"``.

Target: parallelaverage slurm <= 3 s on the single-node test cluster (whose scheduler
starts batch jobs on a ~1 s tick). Prints a table, then one JSON line of the figures
(seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

try:
    import parallelaverage  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parallelaverage import parallel_average, wait

TARGET_S = 3.0
CLUSTER_ENV = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/parallelaverage-slurm")) / "env"


def need_cluster() -> None:
    """Use the test cluster's SLURM_CONF if none is set; exit with the fix if none answers."""
    if not os.environ.get("SLURM_CONF") and CLUSTER_ENV.exists():
        for word in shlex.split(CLUSTER_ENV.read_text()):
            if word.startswith("SLURM_CONF="):
                os.environ["SLURM_CONF"] = word.split("=", 1)[1]
    try:
        probe = subprocess.run(["sinfo", "--noheader"], capture_output=True, text=True, timeout=30)
        ok = probe.returncode == 0 and probe.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        sys.exit("no SLURM cluster answers: start it with 'bash tests/slurm/cluster.sh up' "
                 "and 'source /tmp/parallelaverage-slurm/env'")


def trivial(offset: float) -> float:
    """The benchmark's run: no work at all, so only the overhead is measured."""
    from parallelaverage import run_id

    return offset + run_id()


def time_decorated(directory: Path, system: str, runs: int, ranks: int, i: int) -> float:
    """Seconds from a new call (argument ``i``, never used before) to its complete result."""
    function = parallel_average(N_runs=runs, N_tasks=ranks, queuing_system=system, path=str(directory),
                                time="00:05:00")(trivial)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = wait(function)(float(i))
    elapsed = time.perf_counter() - started
    if result is None or len(result.successful_run_ids) != runs:
        sys.exit(f"{system}: the job did not complete all {runs} runs")
    return elapsed


def time_bare_job(directory: Path, ranks: int, i: int) -> float:
    script = directory / f"bare-{i}.sbatch"
    script.write_text(
        f"#!/bin/bash\n#SBATCH --ntasks={ranks}\n#SBATCH --time=00:05:00\n"
        f"#SBATCH --output={directory}/bare-{i}.out\n"
        f"srun --mpi=pmi2 --kill-on-bad-exit=1 {shlex.quote(sys.executable)} -c "
        "'from mpi4py import MPI; MPI.COMM_WORLD.Barrier()'\n"
    )
    started = time.perf_counter()
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                         check=True).stdout.strip().split(";")[0]
    while True:
        state = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%T"],
                               capture_output=True, text=True).stdout.strip()
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    if state != "COMPLETED":
        sys.exit(f"the baseline job {job} ended {state}: see {directory}/bare-{i}.out")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--dir", default=None, help="where the temporary job database goes")
    args = parser.parse_args()
    need_cluster()
    with tempfile.TemporaryDirectory(prefix="pa-slurm-latency-", dir=args.dir) as tmp:
        directory = Path(tmp)
        time_decorated(directory, "slurm", args.runs, args.ranks, -1)  # warm-up: imports, first job
        rows = {
            "sbatch + srun (ideal)": [time_bare_job(directory, args.ranks, i) for i in range(args.repeats)],
            "parallelaverage slurm": [time_decorated(directory, "slurm", args.runs, args.ranks, i)
                                      for i in range(args.repeats)],
            "parallelaverage local": [time_decorated(directory, "local", args.runs, args.ranks, 1000 + i)
                                      for i in range(args.repeats)],
        }
    print(f"submit -> complete result, {args.runs} trivial runs on {args.ranks} ranks, "
          f"{args.repeats} repeats (seconds)")
    print(f"{'':24s} {'median':>8s} {'min':>8s} {'max':>8s}")
    for name, times in rows.items():
        print(f"{name:24s} {statistics.median(times):8.2f} {min(times):8.2f} {max(times):8.2f}")
    slurm = statistics.median(rows["parallelaverage slurm"])
    ideal = statistics.median(rows["sbatch + srun (ideal)"])
    print(f"parallelaverage slurm: {slurm:.2f} s ({slurm - ideal:+.2f} s over the bare job; "
          f"target <= {TARGET_S:g} s: {'met' if slurm <= TARGET_S else 'MISSED'})")
    print(json.dumps({
        "runs": args.runs, "ranks": args.ranks, "repeats": args.repeats,
        "slurm_submit_to_result_s": round(slurm, 3),
        "bare_sbatch_srun_s": round(ideal, 3),
        "local_submit_to_result_s": round(statistics.median(rows["parallelaverage local"]), 3),
        "target_s": TARGET_S,
    }))


if __name__ == "__main__":
    main()
