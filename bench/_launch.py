"""Start a benchmark script under mpiexec and collect the JSON line each run prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from parallelaverage.backends.mpiexec import mpiexec_command

CHILD_ENV = "PARALLELAVERAGE_BENCH_CHILD"


def is_child() -> bool:
    """True inside the MPI ranks started by :func:`run_under_mpiexec`."""
    return os.environ.get(CHILD_ENV) == "1"


def run_under_mpiexec(script: str, n_tasks: int, args: list[str]) -> dict:
    """Run `script` on `n_tasks` ranks; return the JSON object its rank 0 printed last."""
    command, env = mpiexec_command(n_tasks, [sys.executable, os.path.abspath(script), *args])
    result = subprocess.run(
        command, env={**os.environ, **env, CHILD_ENV: "1"}, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"{script} failed on {n_tasks} ranks:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])
