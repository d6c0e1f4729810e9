"""Jobs on several nodes of the test cluster, and a node that dies under a job.

The nodes are the slurmd daemons of ``tests/slurm/cluster.sh up --nodes K`` (n1..nK),
all on this machine. A test that needs more nodes than the cluster has is skipped
with the reason (failed when ``CI=true``, where CI starts 4 nodes). A node "dies"
when its slurmd is stopped by pid: SLURM then declares it DOWN after
``SlurmdTimeout`` and ends its jobs ``NODE_FAIL``, while the ranks on it live on
(only their slurmd stopped) until the slurmd comes back.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import parallel_average, wait
from parallelaverage.job import Job

from test_slurm_e2e import (  # noqa: F401
    launch_dir, job_id, mpich_segments, ranks, record, settle, slurm_cluster, squeue,
)

pytestmark = pytest.mark.slurm

THIS = sys.modules[__name__]
HOW = "start one with 'bash tests/slurm/cluster.sh up --nodes 4' (see tests/slurm/README.md)"


# ----------------------------------------------------------------- the cluster's nodes
def slurm(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(argv)} failed: {done.stderr}"
    return done.stdout


def node_names() -> list[str]:
    return sorted(set(slurm("sinfo", "--noheader", "--Node", "--format=%N").split()))


def node_state(node: str) -> str:
    return slurm("sinfo", "--noheader", f"--nodes={node}", "--format=%t").strip()


def hostnames(nodelist: str) -> list[str]:
    """``n[1-3]`` -> ``["n1", "n2", "n3"]``, as SLURM expands it."""
    return slurm("scontrol", "show", "hostnames", nodelist).split()


def job_nodes(job: str, settle_s: float = 60.0) -> list[str]:
    """The nodes of a job's allocation. While a job is COMPLETING, squeue lists only the
    nodes still completing (the others' epilogs are done): wait until it has left that
    state."""
    deadline = time.monotonic() + settle_s
    while True:
        fields = slurm("squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%T %N").split()
        if not fields:
            return []
        if fields[0] != "COMPLETING" or time.monotonic() > deadline:
            return hostnames(fields[1]) if len(fields) > 1 else []
        time.sleep(0.2)


def need_nodes(count: int) -> list[str]:
    """The cluster's nodes; skip (fail when CI=true) if it has fewer than ``count``."""
    names = node_names()
    if len(names) < count:
        message = f"the test cluster has {len(names)} node(s), this test needs {count}; {HOW}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the multi-node SLURM tests to run: {message}")
        pytest.skip(message)
    return names


def wait_node(node: str, states: tuple[str, ...], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := node_state(node)) not in states:
        assert time.monotonic() < deadline, f"node {node} is {state!r}, not {states}, after {timeout_s} s"
        time.sleep(0.2)
    return state


def slurmd_pid_file(node: str) -> Path:
    """The pid file of the node's slurmd, from the cluster's own slurm.conf (``%n`` = node)."""
    conf = Path(os.environ["SLURM_CONF"]).read_text()
    found = re.search(r"^SlurmdPidFile=(\S+)$", conf, re.MULTILINE)
    assert found, f"no SlurmdPidFile in {os.environ['SLURM_CONF']}"
    return Path(found.group(1).replace("%n", node).replace("%h", node))


class StoppedSlurmd:
    """Stop one node's slurmd by its pid; start it again with the same command line."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.pid = int(slurmd_pid_file(node).read_text())
        proc = Path(f"/proc/{self.pid}")
        assert (proc / "comm").read_text().strip() == "slurmd", f"pid {self.pid} of {node} is not a slurmd"
        self.argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        assert f"-N {node}" in " ".join(self.argv), self.argv
        self.log = Path(os.environ["SLURM_CONF"]).parent / "log" / f"slurmd-{node}.out"
        self.stopped = False

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        self.stopped = True
        deadline = time.monotonic() + 30
        while Path(f"/proc/{self.pid}").exists():
            assert time.monotonic() < deadline, f"slurmd of {self.node} (pid {self.pid}) did not stop"
            time.sleep(0.1)

    def restart(self) -> None:
        """The slurmd daemonizes; its node returns to service when it registers
        (``ReturnToService=2``), and SLURM kills the ranks it left running."""
        if not self.stopped:
            return
        with open(self.log, "ab") as log:
            subprocess.run(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                           check=True, timeout=60)
        self.stopped = False
        wait_node(self.node, ("idle",), timeout_s=60)


# ----------------------------------------------------------------- jobs on K nodes
@pytest.mark.parametrize("nodes", [2, 3, 4])
def test_a_job_on_several_nodes_has_ranks_on_each_and_averages_right(tmp_path, nodes):
    """``nodes=K`` (with 2 ranks per node) reaches sbatch; each rank reports the node
    SLURM started it on: K distinct ones, 2 ranks each, in one MPI world; the runs'
    average over all nodes is exact."""
    need_nodes(nodes)
    n_runs = 12 * nodes

    @parallel_average(N_runs=n_runs, N_tasks=2 * nodes, nodes=nodes, ntasks_per_node=2, average_results=0,
                      keep_runs=True, time="00:02:00", queuing_system="slurm", path=tmp_path,
                      pickle_by_value=[THIS])
    def where():
        from mpi4py import MPI

        time.sleep(0.3)  # long enough that every rank gets runs (dynamic load balancing)
        world = MPI.COMM_WORLD
        return float(pa.run_id()), os.environ["SLURMD_NODENAME"], world.Get_rank(), world.Get_size()

    assert where() is None
    job = job_id(tmp_path, "1_where")
    script = (launch_dir(tmp_path, "1_where") / "job.sbatch").read_text()
    assert f"#SBATCH --nodes={nodes}\n#SBATCH --ntasks-per-node=2\n" in script

    mean, *_ = wait(where)()
    reports = {run: mean.runs[run][1:] for run in range(n_runs)}
    assert {size for _, _, size in reports.values()} == {2 * nodes}, "not one MPI world over the nodes"
    node_of: dict[int, set[str]] = {}
    for node, rank, _ in reports.values():
        node_of.setdefault(rank, set()).add(node)
    assert sorted(node_of) == list(range(2 * nodes)), f"ranks without a run: {node_of}"
    assert all(len(names) == 1 for names in node_of.values()), node_of
    per_node = [node_of[2 * i] | node_of[2 * i + 1] for i in range(nodes)]  # block distribution
    assert all(len(names) == 1 for names in per_node), node_of
    assert sorted(name for names in per_node for name in names) == sorted(job_nodes(job))
    assert len(set().union(*per_node)) == nodes

    assert sorted(mean.successful_run_ids) == list(range(n_runs)) and mean.failed_run_ids == []
    runs = np.arange(n_runs, dtype=float)
    np.testing.assert_allclose(mean.data, runs.mean(), rtol=1e-14)
    np.testing.assert_allclose(mean.estimated_variance, runs.var(ddof=1), rtol=1e-12)
    assert record(tmp_path, "1_where")["status"] == "completed"
    assert squeue(job)["state"] in ("COMPLETING", "COMPLETED")


# ----------------------------------------------------------------- a node dies
N_RUNS = 300
SEED = 20240611


def noisy(slow_marker):
    """A run whose output is its own random stream's: equal whichever launch, rank or node ran it."""
    if os.path.exists(slow_marker):
        time.sleep(1.0)
    return pa.rng().standard_normal(3) * (1.0 + pa.run_id() % 7)


def test_a_node_that_dies_mid_job_is_survived_by_the_job_which_completes_by_itself(tmp_path):
    """A 2-node job loses its second node (its slurmd is stopped by pid): SLURM declares the
    node DOWN and requeues the job; its next life seals what the first did (the stopped
    node's ranks live on and may still write there: ignored), runs the rest on the nodes
    still up, and the job completes with no user call: mean and variance equal a clean
    run's to 1e-12."""
    names = need_nodes(3)
    marker = tmp_path / "slow-runs"
    marker.write_text("")
    database = tmp_path / "db"
    database.mkdir()
    options = dict(N_runs=N_RUNS, N_tasks=4, seed=SEED, pickle_by_value=[THIS])
    on_slurm = parallel_average(**options, nodes=2, ntasks_per_node=2, time="00:05:00", queuing_system="slurm",
                                path=database)(noisy)

    on_slurm(str(marker))
    first = job_id(database, "1_noisy")
    launch = launch_dir(database, "1_noisy")
    assert "#SBATCH --requeue\n" in (launch / "job.sbatch").read_text()
    deadline = time.monotonic() + 90
    while len(list(launch.glob("snapshot-r*.pkl"))) < 4:  # every rank has finished a run
        assert time.monotonic() < deadline, f"the job's ranks did not all run: {squeue(first)}"
        time.sleep(0.2)
    batch_node, dying = job_nodes(first)
    assert dying != batch_node and {batch_node, dying} <= set(names)
    slurmd = StoppedSlurmd(dying)
    try:
        slurmd.stop()
        stopped_at = time.monotonic()
        orphans = []
        deadline = time.monotonic() + 120
        while not (launch / "life-1").exists():  # SLURM requeues the job: its second life begins
            orphans = orphans or ranks(first)
            assert time.monotonic() < deadline + 180, f"no second life: {squeue(first)}"
            time.sleep(1.0)
        marker.unlink()  # the second life runs fast
        job = Job.load(1, database)
        deadline = time.monotonic() + 300
        while job.state(light=True).status == "running":  # no user call: only looking
            assert time.monotonic() < deadline, squeue(first)
            time.sleep(1.0)
        completed_after_s = time.monotonic() - stopped_at
        result, messages = settle(on_slurm, str(marker), timeout_s=30, poll_s=1.0)
        assert not [m for m in messages if "missing" in m or "failed" in m], messages
        assert dying not in job_nodes(first), f"the second life ran on the dead node: {job_nodes(first)}"
        assert (launch / "sealed-life.pkl").exists()  # the first life, frozen by the second
        history = Job.load(1, database).state().launches[0].history
        assert history and "requeued by SLURM" in history[0], history
    finally:
        slurmd.restart()
    deadline = time.monotonic() + 180
    while ranks(first):  # the returning slurmd kills what its node left running (once it has re-registered)
        assert time.monotonic() < deadline, f"ranks of the failed job survive the node's return: {ranks(first)}"
        time.sleep(0.2)

    # the Epilog on the node that stayed up removed the failed job's segments of both nodes
    assert mpich_segments(first) == []
    assert sorted(result.successful_run_ids) == list(range(N_RUNS)) and result.failed_run_ids == []
    assert record(database, "1_noisy")["status"] == "completed"
    clean_path = tmp_path / "clean"
    clean_path.mkdir()
    clean = wait(parallel_average(**options, queuing_system="local", path=clean_path)(noisy))(str(marker))
    np.testing.assert_allclose(result.data, clean.data, rtol=1e-12, atol=0)
    np.testing.assert_allclose(result.estimated_variance, clean.estimated_variance, rtol=1e-12, atol=0)
    print(f"\nnode {dying} stopped: SLURM requeued the job, {len(orphans)} ranks lived on until the node "
          f"returned; the second life completed the job {completed_after_s:.1f} s after the node stopped")
