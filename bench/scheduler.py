"""Scheduler load of a user loop: submit K jobs, then wait for each in turn.

Usage (needs a SLURM cluster no one else uses meanwhile: ``sdiag`` counts every client;
e.g. ``SLURM_TEST_DIR=/tmp/my-slurm bash tests/slurm/cluster.sh up --nodes 2``)::

    python bench/scheduler.py [--jobs 20] [--wait-s 60] [--no-baseline] [--submit-limit N]

The loop of the issue: ``f(k)`` for k = 0..K-1 (each submits a job of 2 ranks whose 20
runs sleep 0.2 + 0.25 k s: jobs of 2 to 50 s, more CPUs than the cluster has, so some
wait for others), then ``Job.watch`` of each job in turn until ``--wait-s`` have passed
since the waiting began; the jobs still running are then cancelled (not counted).
Counted per phase (submitting, waiting):

* the commands the caller ran: ``sbatch``, ``squeue``, ``scancel`` (shims first on PATH
  log each call, then run the real command);
* the RPCs the controller served for them (``sdiag``, by message type; the jobs' own
  ``srun`` RPCs are left out).

Baseline, in the same run: the same jobs submitted with plain ``sbatch``, each waited
for by asking ``squeue --jobs=ID`` once a second (a hand-written loop; parallelaverage's
``wait()`` asked about as often before it had a queue watcher).

``--submit-limit N`` (a cluster with accounting: ``cluster.sh up --accounting``) then
sets ``MaxSubmitJobs=N`` for this user with ``sacctmgr`` and times a loop of ``--jobs``
calls of short jobs (20 runs of 0.1 s on 2 ranks), which must wait for room: the
``sbatch`` calls (refusals among them), the ``squeue`` calls and RPCs until the last
call returned; the limit is lifted afterwards.

Prints a table, then one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import parallelaverage  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parallelaverage import parallel_average
from parallelaverage.job import Job

CLUSTER_ENV = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/parallelaverage-slurm")) / "env"
CALLER_RPCS = frozenset({
    "REQUEST_SUBMIT_BATCH_JOB", "REQUEST_JOB_INFO", "REQUEST_JOB_USER_INFO", "REQUEST_JOB_INFO_SINGLE",
    "REQUEST_FED_INFO", "REQUEST_PARTITION_INFO", "REQUEST_KILL_JOB", "REQUEST_CANCEL_JOB_STEP",
    "REQUEST_BUILD_INFO", "REQUEST_PING",
})
COMMANDS = ("sbatch", "squeue", "scancel")
THIS = sys.modules[__name__]


def need_cluster() -> None:
    if not os.environ.get("SLURM_CONF") and CLUSTER_ENV.exists():
        for word in shlex.split(CLUSTER_ENV.read_text()):
            if word.startswith("SLURM_CONF="):
                os.environ["SLURM_CONF"] = word.split("=", 1)[1]
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        sys.exit("no SLURM cluster answers: start one with 'bash tests/slurm/cluster.sh up' (see tests/slurm/README.md)")


def install_shims(bin_dir: Path, log: Path) -> None:
    """``sbatch``/``squeue``/``scancel`` first on PATH: log the call, run the real command."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        real = shutil.which(name)
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\necho {name} >> {shlex.quote(str(log))}\nexec {shlex.quote(str(real))} \"$@\"\n")
        shim.chmod(0o755)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def commands(log: Path) -> dict[str, int]:
    lines = log.read_text().split() if log.exists() else []
    return {name: lines.count(name) for name in COMMANDS}


def rpc_counts() -> dict[str, int]:
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    section = out.split("by message type", 1)[1].split("by user", 1)[0]
    return {name: int(count) for name, count in re.findall(r"^\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)", section, re.M)}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if k in CALLER_RPCS and after[k] != before.get(k, 0)}


def minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def by_type(rpcs: dict[str, int]) -> str:
    return ", ".join(f"{name.replace('REQUEST_', '')}={count}" for name, count in rpcs.items())


def step(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def durations(jobs: int) -> list[float]:
    return [0.2 + 0.25 * k for k in range(jobs)]


def run_parallelaverage(root: Path, log: Path, jobs: int, wait_s: float) -> dict:
    f = parallel_average(N_runs=20, N_tasks=2, time="00:10:00", queuing_system="slurm", path=root,
                         pickle_by_value=[THIS])(step)
    rpc0, cmd0 = rpc_counts(), commands(log)
    for seconds in durations(jobs):
        f(seconds)
    rpc1, cmd1 = rpc_counts(), commands(log)
    names = sorted((p.name for p in (root / ".parallelaverage").iterdir() if p.name[0].isdigit()),
                   key=lambda name: int(name.split("_")[0]))
    deadline = time.monotonic() + wait_s
    ended = 0
    for name in names:
        try:
            state = Job.load(name, root).watch(progress=False, timeout_s=max(0.0, deadline - time.monotonic()))
            ended += state.status != "running"
        except TimeoutError:
            pass
    rpc2, cmd2 = rpc_counts(), commands(log)
    for name in names:
        Job.load(name, root).cancel()
    return {"submit": {"commands": minus(cmd1, cmd0), "rpcs": delta(rpc0, rpc1)},
            "wait": {"commands": minus(cmd2, cmd1), "rpcs": delta(rpc1, rpc2)}, "ended": ended}


def run_baseline(root: Path, log: Path, jobs: int, wait_s: float) -> dict:
    rpc0, cmd0 = rpc_counts(), commands(log)
    ids = []
    for k, seconds in enumerate(durations(jobs)):
        out = subprocess.run(["sbatch", "--parsable", "-n", "2", "-t", "10", "-J", f"baseline{k}", "-o", "/dev/null",
                              "--wrap", f"srun --mpi=pmi2 sleep {10 * seconds:g}"],
                             capture_output=True, text=True, check=True, cwd=root).stdout
        ids.append(out.strip().split(";")[0])
    rpc1, cmd1 = rpc_counts(), commands(log)
    deadline = time.monotonic() + wait_s
    ended = 0
    for job in ids:
        while time.monotonic() < deadline:
            shown = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True,
                                   text=True).stdout.strip()
            if shown not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                ended += 1
                break
            time.sleep(1.0)
    rpc2, cmd2 = rpc_counts(), commands(log)
    subprocess.run(["scancel", *ids], capture_output=True)
    return {"submit": {"commands": minus(cmd1, cmd0), "rpcs": delta(rpc0, rpc1)},
            "wait": {"commands": minus(cmd2, cmd1), "rpcs": delta(rpc1, rpc2)}, "ended": ended}


def run_limited(root: Path, log: Path, jobs: int, limit: int) -> dict:
    import getpass

    user = getpass.getuser()
    subprocess.run(["sacctmgr", "-i", "modify", "user", user, "set", f"MaxSubmitJobs={limit}"], check=True,
                   capture_output=True)
    (root / "limited").mkdir()
    try:
        f = parallel_average(N_runs=20, N_tasks=2, time="00:10:00", queuing_system="slurm", path=root / "limited",
                             pickle_by_value=[THIS])(step)
        rpc0, cmd0 = rpc_counts(), commands(log)
        started = time.monotonic()
        for k in range(jobs):
            f(0.1 + 1e-6 * k)
        took = time.monotonic() - started
        rpc1, cmd1 = rpc_counts(), commands(log)
    finally:
        subprocess.run(["sacctmgr", "-i", "modify", "user", user, "set", "MaxSubmitJobs=-1"], capture_output=True)
    return {"submit": {"commands": minus(cmd1, cmd0), "rpcs": delta(rpc0, rpc1)}, "took_s": took}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--wait-s", type=float, default=60.0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--submit-limit", type=int, default=None, metavar="N",
                        help="also time a loop under MaxSubmitJobs=N (needs accounting)")
    parser.add_argument("--dir", type=Path, default=None, help="where the job database goes (default: a temp dir)")
    args = parser.parse_args()
    need_cluster()
    root = Path(tempfile.mkdtemp(prefix="pa-bench-scheduler-", dir=args.dir))
    os.chdir(root)
    log = root / "commands.log"
    install_shims(root / "bin", log)
    results = {"parallelaverage": run_parallelaverage(root, log, args.jobs, args.wait_s)}
    if not args.no_baseline:
        time.sleep(5)  # let the cancelled jobs' nodes drain
        results["baseline: squeue --jobs=ID every 1 s"] = run_baseline(root, log, args.jobs, args.wait_s)
    limited = None
    if args.submit_limit is not None:
        time.sleep(5)
        limited = run_limited(root, log, args.jobs, args.submit_limit)
    print(f"\n{args.jobs} jobs submitted, then waited on in turn for {args.wait_s:g} s")
    print(f"{'caller':<40} {'phase':<7} {'sbatch':>6} {'squeue':>6} {'RPCs':>5}  RPCs by type")
    figures: dict = {"jobs": args.jobs, "wait_s": args.wait_s}
    for caller, result in results.items():
        for phase in ("submit", "wait"):
            part = result[phase]
            total = sum(part["rpcs"].values())
            print(f"{caller:<40} {phase:<7} {part['commands']['sbatch']:>6} {part['commands']['squeue']:>6} "
                  f"{total:>5}  {by_type(part['rpcs'])}")
            key = "pa" if caller == "parallelaverage" else "baseline"
            figures[f"{key}_{phase}_rpcs"] = total
            figures[f"{key}_{phase}_squeue"] = part["commands"]["squeue"]
        figures[f"{'pa' if caller == 'parallelaverage' else 'baseline'}_ended"] = result["ended"]
    if limited is not None:
        part = limited["submit"]
        print(f"\nMaxSubmitJobs={args.submit_limit}: {args.jobs} calls returned after {limited['took_s']:.1f} s, "
              f"{part['commands']['sbatch']} sbatch ({part['commands']['sbatch'] - args.jobs} refused), "
              f"{part['commands']['squeue']} squeue, {sum(part['rpcs'].values())} RPCs: {by_type(part['rpcs'])}")
        figures.update(limit=args.submit_limit, limited_took_s=round(limited["took_s"], 2),
                       limited_sbatch=part["commands"]["sbatch"], limited_squeue=part["commands"]["squeue"],
                       limited_rpcs=sum(part["rpcs"].values()))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
