"""A job finishes by itself: launches that reach their time limit or that SLURM requeues
run again as their next *life*, resume where they stopped, and complete with no user call.

Each life seals what the earlier ones did before it runs anything and runs only what they
left, so no run counts twice and progress never goes back. SLURM holds a requeued job for
about two minutes before it may start again (its ``BeginTime``): these tests take minutes,
and run their two jobs at once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import JobWarning, parallel_average
from parallelaverage.job import Job

from test_slurm_e2e import (  # noqa: F401
    launch_dir, job_id, openmpi_python, remove_leaked_segments, slurm_cluster, squeue,
)

pytestmark = pytest.mark.slurm

THIS = sys.modules[__name__]
SEED = 23


def timed_run(markers: str, seconds: float) -> float:
    """A run of ``seconds`` that leaves a marker when it finishes (to count runs done twice)."""
    time.sleep(seconds)
    run = pa.run_id()
    Path(markers, f"{run}-{os.getpid()}-{time.monotonic_ns()}").touch()
    return float(run) + pa.rng().standard_normal()


def clean_statistics(n_runs: int) -> pa.Welford:
    acc = pa.Welford()
    for run in range(n_runs):
        acc.add(float(run) + np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(run,))).standard_normal())
    return acc


def watch_until_done(job: Job, timeout_s: float) -> list[int]:
    """Poll the job as ``wait()`` does until it stops; the done counts seen on the way."""
    seen, deadline = [], time.monotonic() + timeout_s
    while True:
        state = job.state(light=True)
        seen.append(state.counts()[0])
        if state.status != "running":
            return seen
        assert time.monotonic() < deadline, f"{job.name} still running after {timeout_s} s: {seen[-5:]}"
        time.sleep(1.0)


def test_launches_stopped_by_their_time_limit_or_by_a_requeue_complete_by_themselves(tmp_path):
    """Two jobs at once, no user call between the submission and the result:

    * **time limit**: 100 runs of 1.5 s on 2 ranks (75 s each) in 1-minute allocations: the
      ranks stop claiming runs 15 s before the limit, the launch requeues itself, and its
      next life runs what is left;
    * **scontrol requeue** (an administrator, preemption): SLURM stops the ranks (SIGTERM:
      they checkpoint) and runs the script again; the next life resumes.
    """
    markers = {name: tmp_path / f"markers-{name}" for name in ("limit", "requeue", "never")}
    for folder in markers.values():
        folder.mkdir()
    limited = parallel_average(N_runs=100, N_tasks=2, seed=SEED, time="00:01:00", queuing_system="slurm",
                               path=tmp_path, pickle_by_value=[THIS])(timed_run)
    requeued = parallel_average(N_runs=60, N_tasks=2, seed=SEED, time="00:05:00", queuing_system="slurm",
                                path=tmp_path, pickle_by_value=[THIS])(timed_run)
    never = parallel_average(N_runs=100, N_tasks=2, seed=SEED, time="00:01:00", max_relaunches=0,
                             queuing_system="slurm", path=tmp_path, pickle_by_value=[THIS])(timed_run)
    limited(str(markers["limit"]), 1.5)
    requeued(str(markers["requeue"]), 0.5)
    never(str(markers["never"]), 1.5)  # max_relaunches=0: stops before its limit, and stays stopped
    jobs = {"limit": Job.load(1, tmp_path), "requeue": Job.load(2, tmp_path)}
    first_id = job_id(tmp_path, "2_timed_run")
    deadline = time.monotonic() + 120
    while jobs["requeue"].state(light=True).counts()[0] < 10:  # well into its first life
        assert time.monotonic() < deadline, squeue(first_id)
        time.sleep(0.5)
    done = subprocess.run(["scontrol", "requeue", first_id], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr

    counts = {name: watch_until_done(job, timeout_s=600) for name, job in jobs.items()}
    for name, function, n_runs in (("limit", limited, 100), ("requeue", requeued, 60)):
        job = jobs[name]
        assert counts[name] == sorted(counts[name]), f"progress went back: {counts[name]}"
        with warnings.catch_warnings():
            warnings.simplefilter("error", JobWarning)  # complete: no warning at all
            result = job.result()
        assert list(result.successful_run_ids) == list(range(n_runs)) and result.count == n_runs
        clean = clean_statistics(n_runs)
        np.testing.assert_allclose(result.data, clean.mean, rtol=1e-12)
        np.testing.assert_allclose(result.estimated_variance, clean.variance, rtol=1e-12)
        finished = [p.name.split("-")[0] for p in markers[name].iterdir()]
        assert sorted(map(int, finished)) == list(range(n_runs)), f"{name}: a run was computed twice"
        state = job.state()
        assert state.status == "completed" and job.files.launch_numbers() == [1]  # one launch, several lives
        assert len(state.launches[0].history) >= 1, state.launches[0].history
    # max_relaunches=0: the launch stopped before its time limit, with runs left, and says so
    stopped = Job.load(3, tmp_path)
    watch_until_done(stopped, timeout_s=120)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        partial = stopped.result()
    said = " ".join(str(w.message) for w in caught)
    assert 0 < partial.count < 100 and "stopped before its time limit with" in said and "re_submit" in said, said
    assert stopped.files.lives(1) == [0]
    assert "stopped before its time limit" in jobs["limit"].state().launches[0].history[0]
    assert "requeued by SLURM" in jobs["requeue"].state().launches[0].history[0]
    print(f"\ntime limit: {len(jobs['limit'].files.lives(1))} lives; scontrol requeue: "
          f"{len(jobs['requeue'].files.lives(1))} lives; both complete, every run once")


SLOW_START = '''
import os, signal, time
marks = os.environ.get("PARALLELAVERAGE_TEST_SLOW_START")
if marks and os.environ.get("SLURM_STEP_ID", "batch") != "batch":  # a rank, not the batch script
    rank = os.environ.get("SLURM_PROCID", "x") + "-" + os.environ.get("SLURM_RESTART_COUNT", "0")
    ignored = signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    open(os.path.join(marks, "started-" + rank + ("-ignored" if ignored else "-default")), "w").close()
    # see the warning arrive while the rank starts, then leave the disposition as it was
    signal.signal(signal.SIGUSR1, lambda *_: open(os.path.join(marks, "usr1-" + rank), "w").close())
    time.sleep(35)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN if ignored else signal.SIG_DFL)
'''


def test_the_time_limit_warning_during_the_ranks_start_up_does_not_kill_them(tmp_path, monkeypatch):
    """With a 1-minute limit the default ``--signal=USR1@60`` is due as the job starts, and
    SLURM sends it at its next check (every 30 s): a rank still starting Python then died of
    it (SIGUSR1's default action), and the launch "failed before any rank started (exit code
    138, signal 10, SIGUSR1)". Each rank's Python now starts with SIGUSR1 ignored until the
    worker handles it. A ``sitecustomize`` holds every rank 35 s in its start-up: it records
    how the rank started and that the warning came meanwhile; the job completes."""
    site, marks = tmp_path / "site", tmp_path / "marks"
    site.mkdir()
    marks.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_START)
    monkeypatch.syspath_prepend(str(site))  # the job script's PYTHONPATH is the caller's sys.path
    monkeypatch.setenv("PARALLELAVERAGE_TEST_SLOW_START", str(marks))
    quick = parallel_average(N_runs=6, N_tasks=2, seed=SEED, time="00:01:00", queuing_system="slurm",
                             path=tmp_path, pickle_by_value=[THIS])(timed_run)
    quick(str(tmp_path), 0.2)
    job = Job.load(1, tmp_path)
    watch_until_done(job, timeout_s=600)  # a life that ran out of time requeues itself: still no call
    with warnings.catch_warnings():
        warnings.simplefilter("error", JobWarning)
        result = job.result()
    assert list(result.successful_run_ids) == list(range(6)), job.state().fatal
    seen = sorted(p.name for p in marks.iterdir())
    assert [m for m in seen if m.startswith("started-")] and all(
        m.endswith("-ignored") for m in seen if m.startswith("started-")), seen
    assert any(m.startswith("usr1-") for m in seen), f"SLURM sent no SIGUSR1 while the ranks started: {seen}"


WARNED_CALLER = """
import os, sys, time, warnings
import parallelaverage as pa
from parallelaverage import JobWarning, parallel_average, wait

marks = os.environ["PARALLELAVERAGE_TEST_USR1_MARKS"]

@parallel_average(N_runs=240, N_tasks=2, time="00:10:00", signal="USR1@300", launcher="mpiexec",
                  queuing_system="slurm", path=sys.argv[1])
def until_warned():
    if len(os.listdir(marks)) < 2:  # both ranks warned: the rest of the runs are quick
        time.sleep(1)
    return float(pa.run_id())

with warnings.catch_warnings():
    warnings.simplefilter("error", JobWarning)  # complete: no warning at all
    result = wait(until_warned)()
print("RESULT", result.count, result.data)
"""

USR1_SEEN = '''
import os, signal
marks = os.environ.get("PARALLELAVERAGE_TEST_USR1_MARKS")
if marks:  # a SIGUSR1 handler (the worker's) also leaves a mark per process
    install = signal.signal

    def signal_with_a_mark(signum, handler):
        if signum == signal.SIGUSR1 and callable(handler):
            inner = handler

            def handler(*args):
                open(os.path.join(marks, f"usr1-{os.getpid()}"), "w").close()
                return inner(*args)
        return install(signum, handler)

    signal.signal = signal_with_a_mark
'''


@pytest.mark.parametrize("mpi", ["mpich", "openmpi"])
def test_the_time_limit_warning_reaches_the_ranks_under_mpiexec_and_stops_nothing(tmp_path, mpi):
    """``launcher="mpiexec"`` inside SLURM, the time-limit warning sent by SLURM's own timer.

    SLURM sends ``--signal`` to the processes of the job's steps, and under ``mpiexec``
    those are the MPI's daemons, started by ``srun``. MPICH's proxies catch it and do
    nothing; the ranks get it too. Open MPI's ``prted`` died of it: ``mpiexec`` lost its
    ranks ("PRTE has lost communication with a remote daemon") and exited 0 without the
    launch's result, 60 s before the limit and without requeueing. For Open MPI the
    script now takes the warning in the batch shell (``B:``) and relays it to
    ``mpiexec``, which passes it to the ranks. The job is submitted with 10 minutes and
    ``USR1@300``; once runs are done the test shortens the limit to 5 minutes, so the
    warning is due at SLURM's next check; the runs go on until both ranks have it.
    """
    python = sys.executable if mpi == "mpich" else openmpi_python()
    site, marks = tmp_path / "site", tmp_path / "marks"
    site.mkdir()
    marks.mkdir()
    (site / "sitecustomize.py").write_text(USR1_SEEN)
    (tmp_path / "caller.py").write_text(WARNED_CALLER)
    env = dict(os.environ, PARALLELAVERAGE_TEST_USR1_MARKS=str(marks),
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    started = time.time()
    caller = subprocess.Popen([python, str(tmp_path / "caller.py"), str(tmp_path)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / ".parallelaverage" / "1_until_warned").exists() or \
                Job.load(1, tmp_path).state(light=True).counts()[0] < 2:  # the ranks run
            assert caller.poll() is None and time.monotonic() < deadline, caller.communicate(timeout=60)[0]
            time.sleep(0.5)
        updated = subprocess.run(["scontrol", "update", f"JobId={job_id(tmp_path, '1_until_warned')}",
                                  "TimeLimit=00:05:00"], capture_output=True, text=True, timeout=30)
        assert updated.returncode == 0, updated.stderr
        output, _ = caller.communicate(timeout=300)
    finally:
        if caller.poll() is None:
            caller.kill()
        remove_leaked_segments(started - 1)
    # the mean of 0..239, up to the order in which the ranks' runs were merged (119.49999999999999 seen)
    [(count, mean)] = re.findall(r"RESULT (\d+) (\S+)", output) or [(None, None)]
    assert caller.returncode == 0 and count == "240" and float(mean) == pytest.approx(119.5, rel=1e-14), output
    assert len({p.name for p in marks.iterdir()}) == 2, f"the ranks did not both get SIGUSR1: {output}"
    launch = launch_dir(tmp_path, "1_until_warned")
    assert (launch / "result.pkl").exists() and (launch / "exit_code").read_text() == "0\n"
    assert "lost communication" not in (launch / "stderr.txt").read_text(errors="replace")
    batch_only = "#SBATCH --signal=B:USR1@300\n" in (launch / "job.sbatch").read_text()
    assert batch_only == (mpi == "openmpi")
