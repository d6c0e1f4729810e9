"""Submissions that fail, against the real cluster of tests/slurm/cluster.sh.

A job that ``sbatch`` refuses, a launch whose ``srun`` fails before any rank starts,
a re-launch with another backend, and a cancel that comes while another caller is
still making the launch: what the caller, ``dont_submit``, ``wait``, the command line
and the next call see, and how the job is fixed and completed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import parallelaverage as pa
from parallelaverage import dont_submit, parallel, parallel_average, re_submit, wait
from parallelaverage.backends import slurm as slurm_backend
from parallelaverage.backends.slurm import SlurmBackend
from parallelaverage.job import Job

from test_slurm_e2e import launch_dir, job_id, job_processes, ranks, record, slurm_cluster, squeue  # noqa: F401

pytestmark = pytest.mark.slurm

THIS = sys.modules[__name__]
CONTROLLER_DOWN = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
"""What sbatch 22.05 prints when slurmctld does not answer (seen with a wrong SlurmctldPort)."""


# ----------------------------------------------------------------- helpers
def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m parallelaverage ...`` in a subprocess, as a user runs it (``--path`` = ``cwd``)."""
    return subprocess.run([sys.executable, "-m", "parallelaverage", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def sbatch_shim(tmp_path: Path, monkeypatch, fail_while: Path | None = None) -> Path:
    """Put an ``sbatch`` first on PATH that logs every call, and, while ``fail_while``
    exists, prints SLURM's "Unable to contact slurm controller" error and exits 1 (a
    controller that is down); otherwise it runs the real sbatch. Return its call log."""
    log = tmp_path / "sbatch-calls"
    log.write_text("")
    flag = fail_while if fail_while is not None else tmp_path / "never-exists"
    (tmp_path / "bin").mkdir()
    shim = tmp_path / "bin" / "sbatch"
    shim.write_text(f"""#!/bin/sh
echo "$*" >> {shlex.quote(str(log))}
if [ -e {shlex.quote(str(flag))} ]; then
  echo {shlex.quote(CONTROLLER_DOWN)} >&2
  exit 1
fi
exec {shlex.quote(shutil.which("sbatch") or "sbatch")} "$@"
""")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(SlurmBackend, "retry_delays_s", (0.05, 0.1, 0.2))  # 4 tries of a transient failure
    return log


def calls(log: Path) -> int:
    return len(log.read_text().splitlines())


def averaging(tmp_path: Path, **options):
    """The same call under any options: queue options are not part of a call's identity."""
    def refused():
        return float(pa.run_id())

    return parallel_average(N_runs=4, N_tasks=2, time="00:02:00", path=tmp_path, pickle_by_value=[THIS],
                            **{"queuing_system": "slurm", **options})(refused)


def until_terminal(slurm_job: str, timeout_s: float = 60) -> str:
    """The job's terminal SLURM state (its exit_code file comes before SLURM's last word)."""
    deadline = time.monotonic() + timeout_s
    while (shown := squeue(slurm_job)) and shown["state"] not in slurm_backend.TERMINAL_STATES:
        assert time.monotonic() < deadline, f"SLURM job {slurm_job} still {shown['state']} after {timeout_s} s"
        time.sleep(0.2)
    assert shown is not None, f"SLURM job {slurm_job} is unknown to the controller"
    return shown["state"]


# ----------------------------------------------------------------- sbatch refuses the job
REFUSALS = {
    # cause: (decorator options, what the error says, sbatch calls of one refused submission)
    "bad-partition": ({"partition": "nosuch"}, "Batch job submission failed: Invalid partition name specified", 1),
    "template-error": ({}, "unknown placeholder(s) {{lanuch}}", 0),
    "controller-down": ({}, CONTROLLER_DOWN, 4),
}


@pytest.mark.parametrize("cause", list(REFUSALS))
def test_a_refused_submission_is_explicit_and_the_fixed_call_completes_it(tmp_path, monkeypatch, capsys, cause):
    """sbatch (or the job script before it) refuses the job: the call raises
    SubmissionError with the reason, and every later look at the job says so at once;
    ``re_submit`` is refused by the queue again (not as "still running"); once the cause
    is fixed, the next call submits the same job again as a new launch, which completes."""
    options, says, tries = REFUSALS[cause]
    down = tmp_path / "controller-down"
    log = sbatch_shim(tmp_path, monkeypatch, fail_while=down if cause == "controller-down" else None)
    template = tmp_path / "config" / "slurm.sbatch"
    if cause == "controller-down":
        down.write_text("")
    if cause == "template-error":
        template.parent.mkdir()
        template.write_text("#!/bin/bash\n{{sbatch_options}}\n{{environment}}\n{{lanuch}}\n")
        monkeypatch.setenv("PARALLELAVERAGE_CONFIG_DIR", str(template.parent))
    refused = averaging(tmp_path, **options)

    started = time.monotonic()
    with pytest.raises(pa.SubmissionError) as raised:
        refused()
    assert isinstance(raised.value, pa.ParallelAverageError)
    assert str(raised.value).startswith("job 1_refused, launch 1: slurm did not start it: ")
    assert says in str(raised.value)
    assert time.monotonic() - started < 30
    assert calls(log) == tries
    assert record(tmp_path, "1_refused")["status"] == "submit_failed"  # at once, no state read needed
    first = launch_dir(tmp_path, "1_refused")
    assert says in (first / "submit_error.txt").read_text() and not (first / "launch.json").exists()

    # every later look says why at once: no "running" grace period, no blocking
    started = time.monotonic()
    with pytest.raises(pa.SubmissionError, match=r"job 1_refused was never launched: (?s:.*)Fix the cause and call "
                                                 r"the function again \(without @dont_submit\)") as raised:
        dont_submit(refused)()
    assert says in str(raised.value)
    with pytest.raises(pa.SubmissionError, match="job 1_refused was never launched"):
        Job.load("1_refused", tmp_path).wait(progress=False, timeout_s=60)
    assert time.monotonic() - started < 5
    assert calls(log) == tries  # reading asked sbatch nothing

    listed = cli("list", "--status", "submit_failed", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:2] == ["1_refused", "submit_failed"]
    assert "no jobs match" in cli("list", "--status", "running", cwd=tmp_path).stderr
    shown = cli("show", "1_refused", cwd=tmp_path)
    assert shown.returncode == 1 and "error" not in shown.stderr, shown.stderr  # 1: runs missing from a stopped job
    assert re.search(r"^status +submit_failed$", shown.stdout, re.MULTILINE), shown.stdout
    assert "the queue refused the job's launch:\n" in shown.stdout
    assert says in shown.stdout

    # re_submit before the fix: refused by the queue again, not as "still running"
    capsys.readouterr()
    with pytest.raises(pa.SubmissionError, match=r"job 1_refused, launch 2: slurm did not start it") as raised:
        re_submit(refused)()
    assert says in str(raised.value)
    out = capsys.readouterr().out
    assert "already running" not in out and "re-submitting 4 runs of job 1_refused on 2 MPI ranks, slurm (launch 2)" in out
    assert record(tmp_path, "1_refused")["status"] == "submit_failed"
    assert calls(log) == 2 * tries

    # the user fixes the cause; the next call submits the same job again, as launch 3
    if cause == "controller-down":
        down.unlink()
        resubmitted = cli("resubmit", "1_refused", cwd=tmp_path)  # nothing to change in the call: the CLI will do
        assert resubmitted.returncode == 0, resubmitted.stderr
        assert "re-submitting 4 runs of job 1_refused on 2 MPI ranks, slurm (launch 3)" in resubmitted.stdout
        fixed = refused
    else:
        if cause == "template-error":
            template.unlink()
        fixed = averaging(tmp_path, **({"partition": "debug"} if cause == "bad-partition" else {}))
        assert fixed() is None
        assert "submitting again 4 runs of job 1_refused on 2 MPI ranks, slurm (launch 3)" in capsys.readouterr().out
    assert calls(log) == 2 * tries + 1
    result = wait(fixed)()
    assert result.data == 1.5 and sorted(result.successful_run_ids) == [0, 1, 2, 3] and result.failed_run_ids == []
    job_dir = tmp_path / ".parallelaverage"
    assert sorted(p.name for p in job_dir.iterdir() if p.name[0].isdigit()) == ["1_refused"]  # the same job
    assert sorted(p.name for p in (job_dir / "1_refused" / "attempts").iterdir()) == ["1", "2", "3"]
    assert [(launch_dir(tmp_path, "1_refused", k) / "launch.json").exists() for k in (1, 2, 3)] == [False, False, True]
    assert record(tmp_path, "1_refused")["status"] == "completed"
    assert record(tmp_path, "1_refused")["queue_job_id"] == job_id(tmp_path, "1_refused", 3)
    assert until_terminal(job_id(tmp_path, "1_refused", 3)) == "COMPLETED"


# ----------------------------------------------------------------- the backend of each launch
def test_a_refused_job_relaunched_from_a_local_decorator_runs_locally(tmp_path, monkeypatch, capsys):
    """The job keeps the backend of each launch; a re-launch (plain call or re_submit)
    uses the backend of the decorator that asks for it, not the one of the refused launch."""
    log = sbatch_shim(tmp_path, monkeypatch)

    def where(x):
        return x, pa.run_id(), os.environ.get("SLURM_JOB_ID")

    def decorated(queuing_system):
        return parallel(N_runs=4, N_tasks=2, time="00:02:00", partition="nosuch", queuing_system=queuing_system,
                        path=tmp_path, pickle_by_value=[THIS])(where)

    on_slurm, on_laptop = decorated("slurm"), decorated("local")  # one call: the backend is not part of it
    for x in (1, 2):
        with pytest.raises(pa.SubmissionError, match="Invalid partition name specified"):
            on_slurm(x)
    assert calls(log) == 2
    capsys.readouterr()

    assert on_laptop(1) is None  # a plain call launches the refused job again, locally
    assert "submitting again 4 runs of job 1_where on 2 MPI ranks, local (launch 2)" in capsys.readouterr().out
    assert re_submit(on_laptop)(2) is None
    assert "re-submitting 4 runs of job 2_where on 2 MPI ranks, local (launch 2)" in capsys.readouterr().out
    for x, name in ((1, "1_where"), (2, "2_where")):
        outputs = wait(on_laptop)(x)
        assert {run: outputs[run] for run in outputs} == {run: (x, run, None) for run in range(4)}  # not in SLURM
        creators = [json.loads((launch_dir(tmp_path, name, k) / "creator.json").read_text())["backend"] for k in (1, 2)]
        assert creators == ["slurm", "local"]
        assert json.loads((launch_dir(tmp_path, name, 2) / "launch.json").read_text())["backend"] == "local"
        assert record(tmp_path, name)["queue"] == "local" and record(tmp_path, name)["status"] == "completed"
        # the slurm decorator reads the same job: each launch is read with its own backend
        assert dict(dont_submit(on_slurm)(x)) == dict(outputs)
    assert calls(log) == 2  # sbatch was never called again


# ----------------------------------------------------------------- srun fails before any rank
def _pmix_works() -> bool:
    done = subprocess.run(["srun", "--mpi=pmix", "-n1", "-t1", "true"], capture_output=True, text=True, timeout=60)
    return done.returncode == 0


SRUN_FAILURES = {
    # mpi=: what srun says. On the test cluster SLURM has the pmix plugin but not the PMIx
    # library (no libpmix-dev); a plugin that does not exist fails on every cluster.
    "pmix": "can not load PMIx library",
    "nosuch": "Couldn't find the specified plugin name for mpi/nosuch",
}


@pytest.mark.parametrize("mpi", list(SRUN_FAILURES))
def test_a_launcher_that_starts_no_rank_raises_launch_error(tmp_path, mpi):
    """srun fails before any rank starts: the call raises LaunchError saying that the
    launch failed, with its exit code, the last lines of stderr.txt and the file's path
    (no warning that suggests re_submit as if runs had been lost); ``show`` says the same;
    ``re_submit`` with a working plugin completes the job."""
    if mpi == "pmix" and _pmix_works():
        pytest.skip("this cluster's srun --mpi=pmix works (libpmix-dev is installed)")
    failing = averaging(tmp_path, mpi=mpi)
    assert failing() is None
    slurm_job = job_id(tmp_path, "1_refused")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(pa.LaunchError) as raised:
            wait(failing)()
    assert [str(w.message) for w in caught if issubclass(w.category, pa.JobWarning)] == []
    launch = launch_dir(tmp_path, "1_refused")
    stderr = launch / "stderr.txt"
    tail = "\n".join(stderr.read_text().rstrip().splitlines()[-8:])
    message = str(raised.value)
    assert isinstance(raised.value, pa.ParallelAverageError)
    assert message.startswith(f"job 1_refused: launch 1 failed before any rank started (exit code 1)\n"
                              f"last lines of {stderr}:\n{tail}\n"), message
    assert SRUN_FAILURES[mpi] in tail
    assert "re_submit the call to launch its runs again" in message
    assert (launch / "exit_code").read_text() == "1\n"
    assert not [p for p in launch.iterdir() if p.name.startswith(("rank-", "snapshot", "result", "outputs"))]
    assert until_terminal(slurm_job) == "FAILED"
    with pytest.raises(pa.LaunchError) as again:
        dont_submit(failing)()
    assert str(again.value) == message
    assert record(tmp_path, "1_refused")["status"] == "ended"

    shown = cli("show", "1_refused", cwd=tmp_path)
    assert shown.returncode == 1 and "error" not in shown.stderr, shown.stderr
    fatal = message.split("job 1_refused: ", 1)[1].split("\nOnce the cause is fixed", 1)[0]
    assert "the job could not start its runs:\n" + "\n".join("    " + line for line in fatal.splitlines()) in shown.stdout
    data = json.loads(cli("show", "1_refused", "--json", cwd=tmp_path).stdout)
    assert data["fatal"] == fatal and data["status"] == "ended"
    assert [(l["phase"], l["backend"], l["exit_code"], l["queue_job_id"]) for l in data["launches"]] == [
        ("ended", "slurm", 1, slurm_job)]

    fixed = averaging(tmp_path, mpi="pmi2")
    assert re_submit(fixed)() is None
    result = wait(fixed)()
    assert result.data == 1.5 and sorted(result.successful_run_ids) == [0, 1, 2, 3]


# ----------------------------------------------------------------- a cancel during a launch
CALLER = """
import sys, time
from parallelaverage import parallel_average

@parallel_average(N_runs=4, N_tasks=2, time="00:05:00", queuing_system="slurm", path=sys.argv[1])
def sleeper():
    time.sleep(300)
    return 1.0

print("RETURNED", sleeper(), flush=True)
"""


def test_a_job_cancelled_while_another_caller_launches_it_is_stopped_as_it_starts(tmp_path):
    """A caller is between sbatch's answer and writing launch.json (held there 5 s by a
    test hook) when the job is cancelled: the cancel marks the launch; the caller, once
    it has recorded the launch, sees the mark and scancels the SLURM job itself."""
    caller = tmp_path / "caller.py"
    caller.write_text(CALLER)
    script = launch_dir(tmp_path, "1_sleeper") / "job.sbatch"
    env = {**os.environ, "PARALLELAVERAGE_TEST_HOOKS": "launch_submitted=sleep:5"}
    process = subprocess.Popen([sys.executable, str(caller), str(tmp_path)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        slurm_job = None
        while slurm_job is None:  # sbatch accepted the launch: the controller knows a job from our script
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the caller's job never reached the queue"
            listed = subprocess.run(["squeue", "--noheader", "--name=1_sleeper", "--format=%i|%o"],
                                    capture_output=True, text=True, timeout=30).stdout.split()
            slurm_job = next((line.split("|")[0] for line in listed if line.endswith("|" + str(script))), None)
            time.sleep(0.05)
        job = Job.load("1_sleeper", tmp_path)
        assert job.state().latest.phase == "launching"
        job.cancel()
        assert not (script.parent / "launch.json").exists(), \
            "the caller recorded its launch before the cancel: this test did not cancel during the launch"
        assert record(tmp_path, "1_sleeper")["status"] == "cancelled"
        out, err = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, out + err
    assert "RETURNED None" in out
    assert f"job 1_sleeper was cancelled while launch 1 was being made: stopped SLURM job {slurm_job}" in out
    assert job_id(tmp_path, "1_sleeper") == slurm_job
    assert squeue(slurm_job)["state"] == "CANCELLED"  # the caller's cancel waited for it
    assert ranks(slurm_job) == []
    deadline = time.monotonic() + 30
    while job_processes(slurm_job):
        assert time.monotonic() < deadline, f"processes of the cancelled job survive: {job_processes(slurm_job)}"
        time.sleep(0.1)
    assert record(tmp_path, "1_sleeper")["status"] == "cancelled"  # not overwritten with "running"
    job = Job.load("1_sleeper", tmp_path)
    assert job.status == "cancelled"
    with pytest.warns(pa.JobEndedWarning, match="job was cancelled with 4 of 4 runs missing; use re_submit"):
        assert job.result() is None
