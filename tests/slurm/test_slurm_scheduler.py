"""Gentle on the scheduler, against the real controller of tests/slurm/cluster.sh.

What the caller asks ``slurmctld`` while it waits for jobs is counted twice: the
``squeue`` commands the backend runs, and the RPCs the controller served (``sdiag``,
by message type: only the kinds a caller makes, not the jobs' own ``srun`` traffic).
``sdiag`` counts every client of the cluster: run these tests on a cluster no one else
uses at the same time (CI's, or your own: ``SLURM_TEST_DIR=/tmp/my-slurm bash
tests/slurm/cluster.sh up``). The submit-limit test needs a cluster with accounting
(``cluster.sh up --accounting``) and is skipped on others.
"""

from __future__ import annotations

import getpass
import re
import subprocess
import sys
import time

import pytest

from parallelaverage import parallel, parallel_average, wait
from parallelaverage.backends import slurm as slurm_backend
from parallelaverage.job import Job

from test_slurm_e2e import counting_subprocess_runs, slurm_cluster, squeue  # noqa: F401

pytestmark = pytest.mark.slurm

THIS = sys.modules[__name__]

CALLER_RPCS = frozenset({
    "REQUEST_SUBMIT_BATCH_JOB",  # sbatch
    "REQUEST_JOB_INFO", "REQUEST_JOB_USER_INFO", "REQUEST_JOB_INFO_SINGLE",  # squeue: all, one user, one job
    "REQUEST_FED_INFO", "REQUEST_PARTITION_INFO",  # squeue, besides
    "REQUEST_KILL_JOB", "REQUEST_CANCEL_JOB_STEP",  # scancel
    "REQUEST_BUILD_INFO", "REQUEST_PING",  # scontrol show config
})
"""The RPCs a caller's commands make (a job's own srun makes others: step create/complete...)."""


def rpc_counts() -> dict[str, int]:
    """``sdiag``'s RPC counts by message type, since the controller started (or a reset)."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, timeout=30, check=True).stdout
    section = out.split("by message type", 1)[1].split("by user", 1)[0]
    return {name: int(count) for name, count in re.findall(r"^\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)", section, re.M)}


def caller_rpcs(*readings: dict[str, int]) -> list[tuple[dict[str, int], int]]:
    """The caller's RPCs between consecutive ``sdiag`` readings, and the job starts in each.

    A job script asks its own end time as it starts (SLURM before 23.02 does not export
    ``SLURM_JOB_END_TIME``): one ``squeue --jobs=ID``, i.e. a ``REQUEST_FED_INFO``, then a
    ``REQUEST_JOB_INFO_SINGLE``, then a ``REQUEST_PARTITION_INFO``. A caller that waits
    never asks for one job (its listings are ``squeue --me``; only ``cancel`` asks for one),
    so every ``REQUEST_JOB_INFO_SINGLE`` is a job start, and its two companions are taken
    off. A reading can fall inside such a squeue, and on a loaded machine inside several
    at once (the soak saw 4 of 20 job starts so): their FED_INFO then counts in the window
    before their JOB_INFO_SINGLE, their PARTITION_INFO in the window after. So a start's
    FED_INFO is looked for in its window and, failing that, in the one before; its
    PARTITION_INFO in its window and then in the ones after.
    """
    windows = [{name: after[name] - before.get(name, 0) for name in after if name in CALLER_RPCS}
               for before, after in zip(readings, readings[1:])]
    starts = [window.pop("REQUEST_JOB_INFO_SINGLE", 0) for window in windows]
    late = 0  # starts whose FED_INFO came before their window's reading: looked for one window earlier
    for window, n in reversed(list(zip(windows, starts))):
        fed = window.get("REQUEST_FED_INFO", 0)
        own = min(fed, n)
        earlier = min(fed - own, late)
        window["REQUEST_FED_INFO"] = fed - own - earlier
        late = n - own
    owed = 0  # starts whose PARTITION_INFO is still to come
    for window, n in zip(windows, starts):
        partition = window.get("REQUEST_PARTITION_INFO", 0)
        taken = min(partition, owed + n)
        window["REQUEST_PARTITION_INFO"] = partition - taken
        owed += n - taken
    return [({name: count for name, count in window.items() if count}, n) for window, n in zip(windows, starts)]


def test_ranks_that_report_progress_need_no_squeue(tmp_path, monkeypatch):
    """A job whose ranks publish their counts is watched from its files alone; the
    exit_code file says when it has ended."""
    @parallel_average(N_runs=40, N_tasks=2, time="00:02:00", queuing_system="slurm", path=tmp_path,
                      pickle_by_value=[THIS])
    def busy():
        time.sleep(0.2)
        return 1.0

    calls = counting_subprocess_runs(monkeypatch)
    assert busy() is None
    started = time.monotonic()
    assert wait(busy)().data == 1.0
    took = time.monotonic() - started
    assert took > 3.5
    # at most the first look, 2 s after the submission, if the ranks had not started by then
    assert calls.count("squeue") <= 1, (calls, took)


def test_a_pending_job_is_asked_about_ever_more_rarely(tmp_path, monkeypatch):
    """A job that cannot start yet: squeue at 2, 4, 8, 16 s... after its submission,
    one listing for it and every other job of the process."""
    @parallel(N_runs=1, N_tasks=1, time="00:02:00", begin="now+120", queuing_system="slurm", path=tmp_path,
              pickle_by_value=[THIS])
    def later(k):
        return k

    calls = counting_subprocess_runs(monkeypatch)
    for k in range(5):
        later(k)
    jobs = [Job.load(f"{k + 1}_later", tmp_path) for k in range(5)]
    assert calls == ["sbatch"] * 5
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            jobs[0].watch(progress=False, timeout_s=20)
        assert all(job.state(light=True).status == "running" for job in jobs)
        looks = calls.count("squeue")
        assert 3 <= looks <= 5, calls  # 2, 4, 8, 16 s
        assert slurm_backend.queue_watcher().calls == looks
        assert squeue(str(jobs[0].record.queue_job_id))["state"] == "PENDING"
    finally:
        for job in jobs:
            job.cancel()
    assert time.monotonic() - started < 60
    assert all(job.status == "cancelled" for job in jobs)


def test_twenty_jobs_waited_on_for_a_minute_make_few_rpcs(tmp_path, monkeypatch, capsys):
    """The issue's user loop: submit 20 jobs, then wait for each in turn for a minute.
    Some run (their ranks report progress), some wait for CPUs (pending), some end
    meanwhile. The controller serves ~1 RPC per submission and a few listings."""
    @parallel_average(N_runs=20, N_tasks=2, time="00:05:00", queuing_system="slurm", path=tmp_path,
                      pickle_by_value=[THIS])
    def step(seconds):
        time.sleep(seconds)
        return seconds

    calls = counting_subprocess_runs(monkeypatch)
    before = rpc_counts()
    for k in range(20):
        assert step(0.2 + 0.25 * k) is None
    submitted = rpc_counts()
    deadline = time.monotonic() + 60
    ended = 0
    for k in range(20):
        job = Job.load(f"{k + 1}_step", tmp_path)
        try:
            state = job.watch(progress=False, timeout_s=max(0.0, deadline - time.monotonic()))
            ended += state.status == "completed"
        except TimeoutError:
            pass
    waited = rpc_counts()
    for k in range(20):
        Job.load(f"{k + 1}_step", tmp_path).cancel()
    (submitting, starts_1), (waiting, starts_2) = caller_rpcs(before, submitted, waited)
    report = (f"20 jobs, {ended} ended within the minute: submitting {submitting}, waiting {waiting}; "
              f"commands while waiting: {calls.count('squeue')} squeue; job starts that asked their end time: "
              f"{starts_1} + {starts_2}")
    print(report)
    assert submitting.get("REQUEST_SUBMIT_BATCH_JOB") == 20, report
    assert sum(submitting.values()) <= 22, report  # a first look may fall within the submissions
    assert sum(waiting.values()) <= 20, report  # ~6 listings of 2-3 RPCs each
    assert calls.count("squeue") <= 8, report
    assert starts_1 + starts_2 <= 20, report  # at most one lookup per job start, none by the caller


# ----------------------------------------------------------------- submit limits
def accounting() -> str | None:
    """Why this cluster cannot enforce submit limits, or None if it can."""
    done = subprocess.run(["sacctmgr", "--noheader", "--parsable2", "show", "user", getpass.getuser(), "withassoc",
                           "format=account"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0 or not done.stdout.strip():
        return f"no accounting on this cluster ({(done.stderr or done.stdout).strip()[:120]})"
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    if "limits" not in (re.search(r"AccountingStorageEnforce\s*=\s*(\S+)", config) or ["", ""])[1]:
        return "the cluster does not enforce limits (AccountingStorageEnforce)"
    return None


@pytest.fixture
def max_submit_jobs():
    """Set MaxSubmitJobs of this user's associations for the test, and lift it after."""
    why = accounting()
    if why:
        pytest.skip(f"{why}; start a cluster with 'bash tests/slurm/cluster.sh up --accounting'")
    user = getpass.getuser()

    def limit(jobs: int) -> None:
        subprocess.run(["sacctmgr", "-i", "modify", "user", user, "set", f"MaxSubmitJobs={jobs}"],
                       capture_output=True, text=True, timeout=30, check=True)

    yield limit
    limit(-1)


def test_submissions_beyond_max_submit_jobs_wait_for_room(tmp_path, monkeypatch, capsys, max_submit_jobs):
    """MaxSubmitJobs=3 and a loop of 6 calls: sbatch refuses the 4th; it waits until one
    of the first 3 has ended, and so do the next ones, without sbatch refusing them again."""
    max_submit_jobs(3)
    user = getpass.getuser()

    @parallel_average(N_runs=4, N_tasks=1, time="00:02:00", queuing_system="slurm", path=tmp_path,
                      pickle_by_value=[THIS])
    def short(k):
        time.sleep(0.5)
        return float(k)

    calls = counting_subprocess_runs(monkeypatch)
    started = time.monotonic()
    for k in range(6):
        assert short(k) is None
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert re.search(r"launch 1 of job 4_short waits for room in the SLURM queue: sbatch said AssocMaxSubmitJobLimit "
                     rf"\(MaxSubmitJobs=3 of the association \w+/{user}\), with 3 of your jobs queued or running", err), err
    assert calls.count("sbatch") == 7, calls  # one refusal: then the known limit waits before sbatch
    assert calls.count("sacctmgr") >= 1
    assert took < 90
    for k in range(6):
        assert wait(short)(k).data == k
