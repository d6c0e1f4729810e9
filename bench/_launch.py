"""Start a benchmark script under mpiexec and collect the JSON line each run prints."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from parallelaverage.backends.mpiexec import find_mpiexec, mpi_flavour, mpiexec_command

CHILD_ENV = "PARALLELAVERAGE_BENCH_CHILD"

LAYOUTS = {
    "one-node": {},
    "nolocal": {"MPIR_CVAR_NOLOCAL": "1"},  # MPICH: every rank as if on a node of its own
    "cliques": {"MPIR_CVAR_NUM_CLIQUES": "2"},  # MPICH: two emulated nodes of several ranks
}
"""How the ranks of one machine are presented as nodes (the last two need MPICH)."""


def add_layout_options(parser: argparse.ArgumentParser) -> None:
    """``--layout`` and ``--async-progress``, read back by :func:`layout_env`."""
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="one-node",
                        help="one-node (as launched), nolocal (MPIR_CVAR_NOLOCAL=1: every rank a node "
                             "of its own, as on many nodes) or cliques (MPIR_CVAR_NUM_CLIQUES=2); MPICH only "
                             "for the last two")
    parser.add_argument("--async-progress", action="store_true",
                        help="MPIR_CVAR_ASYNC_PROGRESS=1: MPICH's own progress thread on every rank")


def layout_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(LAYOUTS[args.layout])
    if args.async_progress:
        env["MPIR_CVAR_ASYNC_PROGRESS"] = "1"
    if env and mpi_flavour(find_mpiexec()) != "mpich":
        sys.exit(f"--layout {args.layout} / --async-progress set MPICH control variables; the active MPI is not MPICH")
    return env


def is_child() -> bool:
    """True inside the MPI ranks started by :func:`run_under_mpiexec`."""
    return os.environ.get(CHILD_ENV) == "1"


def run_under_mpiexec(script: str, n_tasks: int, args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `script` on `n_tasks` ranks; return the JSON object its rank 0 printed last."""
    command, launch_env = mpiexec_command(n_tasks, [sys.executable, os.path.abspath(script), *args])
    result = subprocess.run(
        command, env={**os.environ, **launch_env, **(env or {}), CHILD_ENV: "1"}, capture_output=True, text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"{script} failed on {n_tasks} ranks:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])
