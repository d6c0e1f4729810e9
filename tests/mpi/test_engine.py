"""The MPI engine under real mpiexec processes, 1 to 4 ranks (more ranks than cores).

Each collective property of ``programs/engine_properties.py`` is one test, per rank
count and node layout: ``one-node`` (as launched), ``nolocal`` (MPICH's
``MPIR_CVAR_NOLOCAL=1``: every rank is treated as on a node of its own, so the counter
goes through the network and needs rank 0's progress) and ``cliques`` (MPICH's
``MPIR_CVAR_NUM_CLIQUES=2``: two emulated nodes of several ranks). The properties of
one rank count and layout run in one launch; one that the launch did not report (it
crashed or hung there) runs again alone, so one failure never hides another.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from parallelaverage.backends.mpiexec import find_mpiexec, mpi_flavour, mpiexec_command

PROGRAMS = Path(__file__).parent / "programs"
PROPERTIES_PROGRAM = PROGRAMS / "engine_properties.py"
LAYOUTS = {
    "one-node": {},
    "nolocal": {"MPIR_CVAR_NOLOCAL": "1"},
    "cliques": {"MPIR_CVAR_NUM_CLIQUES": "2"},
}
BATCH_TIMEOUT_S = 300
ALONE_TIMEOUT_S = 120


def run_mpi(n_tasks: int, program: str, *args: str, timeout_s: float = 240,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a program under mpiexec; on a timeout kill the whole launch (mpiexec and its
    ranks), and return what it printed with returncode None."""
    command, launch_env = mpiexec_command(n_tasks, [sys.executable, str(PROGRAMS / program), *args])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **launch_env, **(env or {})}, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return subprocess.CompletedProcess(command, None, stdout, stderr + f"\n[killed after {timeout_s} s]")  # type: ignore[arg-type]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def declared_properties() -> list[tuple[str, tuple[int, ...], tuple[str, ...]]]:
    """``(name, rank counts, layouts)`` of each ``@collective(...)`` function of the program."""
    tree = ast.parse(PROPERTIES_PROGRAM.read_text())
    constants = {target.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name) and target.id.isupper()
                 and isinstance(node.value, (ast.Tuple, ast.Constant))}
    found = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "collective":
                options = {"ranks": (1, 2, 3, 4), "layouts": ("one-node",)}
                for keyword in decorator.keywords:
                    value = keyword.value
                    options[keyword.arg] = constants[value.id] if isinstance(value, ast.Name) else ast.literal_eval(value)
                found.append((node.name, tuple(options["ranks"]), tuple(options["layouts"])))
    return found


PROPERTIES = declared_properties()
CASES = [(name, n, layout) for name, ranks, layouts in PROPERTIES for n in ranks for layout in layouts
         if not (layout != "one-node" and n == 1)]  # one rank is one node whatever the layout


def verdicts(stdout: str) -> dict[str, str | None]:
    """``{property: None if it passed, else the failure}`` from the lines of rank 0."""
    found: dict[str, str | None] = {}
    for line in stdout.splitlines():
        if line.startswith("PROPERTY "):
            _, name, outcome, *rest = line.split(" ", 3)
            found[name] = None if outcome == "PASSED" else json.loads(rest[0]) if rest else outcome
    return found


@functools.lru_cache(maxsize=None)
def batch(n_tasks: int, layout: str) -> tuple[dict[str, str | None], str]:
    """Every property of this rank count and layout, in one launch."""
    names = [name for name, n, case_layout in CASES if n == n_tasks and case_layout == layout]
    result = run_mpi(n_tasks, PROPERTIES_PROGRAM.name, *names, timeout_s=BATCH_TIMEOUT_S, env=LAYOUTS[layout])
    return verdicts(result.stdout), f"exit code {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def skip_unless_layout_applies(layout: str) -> None:
    if layout != "one-node" and mpi_flavour(find_mpiexec()) != "mpich":
        pytest.skip(f"the {layout!r} layout is emulated with MPICH's control variables; "
                    "engine_properties.py splits nodes itself on every MPI")


@pytest.mark.parametrize("name, n_tasks, layout", CASES, ids=[f"{name}-{n}ranks-{layout}" for name, n, layout in CASES])
def test_engine_property(name, n_tasks, layout):
    skip_unless_layout_applies(layout)
    found, launch = batch(n_tasks, layout)
    if name not in found:  # the shared launch died or hung before reporting it: alone now
        result = run_mpi(n_tasks, PROPERTIES_PROGRAM.name, name, timeout_s=ALONE_TIMEOUT_S, env=LAYOUTS[layout])
        found = verdicts(result.stdout)
        launch = f"exit code {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        assert name in found, f"{name} on {n_tasks} ranks ({layout}) reported nothing:\n{launch}"
    assert found[name] is None, found[name]


def test_every_property_is_declared_for_at_least_one_launch():
    assert len(PROPERTIES) >= 15 and all(ranks and layouts for _, ranks, layouts in PROPERTIES)
    assert len({name for name, _, _ in PROPERTIES}) == len(PROPERTIES)


def test_flavour_of_the_active_mpi_is_known():
    assert mpi_flavour(find_mpiexec()) in ("mpich", "openmpi")


@pytest.mark.parametrize("n_tasks", [1, 2, 3, 4])
def test_weighted_allreduce_is_exact_on_every_rank(n_tasks):
    """Weights zero, 5e-324, 1e-300, 1e300 and mixed, a rank of zero weights, offsets
    1e9 + 1e-6 N(0, 1): every estimate within 1e-13 of the exact (rational) value, on
    both merge paths, with the same bits on every rank."""
    result = run_mpi(n_tasks, "weighted_allreduce.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"WEIGHTED-OK {n_tasks}" in result.stdout


@pytest.mark.parametrize("n_tasks", [1, 2, 3, 4])
def test_every_accumulator_merges_exactly_on_every_rank(n_tasks):
    """Moments, Covariance, Batches (the jackknife), Histogram and LogBinning through
    mpi.allreduce against the exact oracle: weights tiny, huge, zero on a whole rank,
    ranks without samples; the same bits on every rank; one collective for all of them
    equal to one each."""
    result = run_mpi(n_tasks, "accumulators_allreduce.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ACCUMULATORS-OK {n_tasks}" in result.stdout
