"""The ``parallelaverage`` command on real jobs: real mpiexec launches, real subprocess calls.

Read-only commands share one database of finished jobs (made once per module);
commands that change jobs (wait, cancel, resubmit, cleanup) make their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import parallel, parallel_average, wait

from cli_helpers import cli, cli_json, one_error_line
from pa_testing import launch_pid, process_tree

THIS = sys.modules[__name__]
COMMANDS = ["list", "status", "show", "wait", "cancel", "resubmit", "cleanup", "view"]


def curve(L, model="ising"):
    return np.linspace(0.0, 1.0, L) + pa.rng().standard_normal(L)


def energy(T):
    if pa.run_id() in (3, 7):
        raise RuntimeError(f"diverged at run {pa.run_id()}")
    return T + pa.rng().standard_normal()


def raw(n):
    return list(range(n))


def pair():
    return np.full(3, float(pa.run_id())), pa.run_id() ** 2, "label"


def flaky(flag):
    """Runs 1 and 4 fail while the file ``flag`` exists."""
    if pa.run_id() in (1, 4) and os.path.exists(flag):
        raise ValueError("flag file present")
    return 1.0


def sleepy(seconds):
    time.sleep(seconds)
    hold = os.environ.get("CLI_TEST_HOLD")  # set by a test that needs the job running until it says
    while hold and pa.run_id() >= 10 and os.path.exists(hold):
        time.sleep(0.05)
    return seconds


def _decorate(path, function, average=True, **options):
    decorator = parallel_average if average else parallel
    settings = dict(N_runs=20, N_tasks=2, queuing_system="local", path=path, pickle_by_value=[THIS])
    return decorator(**{**settings, **options})(function)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A database of finished jobs: 1_curve, 2_curve, 3_energy (2 runs failed), 4_raw, 5_pair."""
    path = tmp_path_factory.mktemp("db")
    with pytest.warns(pa.RunsFailedWarning):
        wait(_decorate(path, curve))(L=16)
        wait(_decorate(path, curve))(L=8, model="potts")
        wait(_decorate(path, energy))(T=2.5)
    wait(_decorate(path, raw, average=False, N_runs=5))(3)
    wait(_decorate(path, pair, average_results=[0, 1]))()
    return path


# ------------------------------------------------------------------ reading

def test_list_newest_first_with_filters(db):
    done = cli("list", cwd=db)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["JOB", "STATUS", "DONE", "FAILED", "SUBMITTED", "CALL"]
    assert [line.split()[0] for line in lines[1:]] == ["5_pair", "4_raw", "3_energy", "2_curve", "1_curve"]
    assert "18/20" in lines[3] and "energy(T=2.5)" in lines[3]
    names = lambda *args: [j["job_name"] for j in cli_json("list", *args, cwd=db)["jobs"]]  # noqa: E731
    assert names("--function", "curve") == ["2_curve", "1_curve"]
    assert names("--function", f"{__name__}.curve") == ["2_curve", "1_curve"]
    assert names("--arg", "L=16") == ["1_curve"]
    assert names("--arg", "model=potts") == ["2_curve"]       # the stored value is "'potts'"
    assert names("--arg", "T=2.50") == ["3_energy"]           # numbers compare as numbers
    assert names("--function", "curve", "--arg", "L=8", "--arg", "model=potts") == ["2_curve"]
    assert names("--arg", "L=17") == []
    assert names("--status", "completed") == ["5_pair", "4_raw", "3_energy", "2_curve", "1_curve"]
    assert names("--status", "running") == []


def test_list_json_keys(db):
    data = cli_json("list", "--path", str(db), cwd=db.parent)
    assert data["path"] == str(db)
    energy_job = data["jobs"][2]
    assert set(energy_job) == {"job_name", "function", "call", "arguments", "N_runs", "status", "submitted_at",
                               "queue", "queue_job_id", "runs"}
    assert energy_job["arguments"] == {"T": "2.5"} and energy_job["N_runs"] == 20
    assert energy_job["runs"] == {"total": 20, "successful": 18, "failed": 2, "missing": 0}
    assert energy_job["status"] == "completed" and energy_job["queue"] == "local"


def test_show_text_with_failures_and_result(db):
    done = cli("show", "3", cwd=db)
    assert done.returncode == 1, "a job with failed runs exits 1"
    out = done.stdout
    assert "job        3_energy" in out and "call       energy(T=2.5)" in out
    assert "18 of 20 done, 2 failed, 0 missing" in out
    assert "2 runs failed: 3, 7" in out and "the first failure (run 3):" in out
    assert "RuntimeError: diverged at run 3" in out and "diverged at run 7" not in out
    result_line = next(line for line in out.splitlines() if line.startswith("result"))
    assert "±" in result_line and "(18 runs)" in result_line
    ok = cli("show", "1_curve", cwd=db)
    assert ok.returncode == 0, ok.stderr
    assert "shape (16,), mean from" in ok.stdout and "(20 runs)" in ok.stdout
    assert "the outputs of 5 runs" in cli("show", "4_raw", cwd=db).stdout


def test_show_json(db):
    data = cli_json("show", "3_energy", cwd=db)
    assert data["job_name"] == "3_energy" and data["failed_runs"] == [3, 7] and data["missing_runs"] == []
    assert data["first_failure"]["run"] == 3 and "diverged at run 3" in data["first_failure"]["traceback"]
    assert data["folder"].endswith(os.path.join(".parallelaverage", "3_energy"))
    assert data["options"]["N_tasks"] == 2 and data["fatal"] is None and data["problems"] == []
    (element,) = data["result"]["elements"]
    assert data["result"]["kind"] == "average" and data["result"]["tuple"] is False
    with pytest.warns(pa.RunsFailedWarning):
        result = wait(_decorate(db, energy))(T=2.5)
    assert element["shape"] == [] and element["count"] == 18
    assert element["mean"] == pytest.approx(float(result.data), rel=1e-12)
    assert element["error"] == pytest.approx(float(result.estimated_error), rel=1e-12)

    curve_data = cli_json("show", "1", cwd=db)
    (element,) = curve_data["result"]["elements"]
    mean = wait(_decorate(db, curve))(L=16).data
    assert element["shape"] == [16] and element["mean"] is None
    assert element["min"] == pytest.approx(mean.min()) and element["max"] == pytest.approx(mean.max())

    first, second, label = cli_json("show", "5_pair", cwd=db)["result"]["elements"]
    assert first["shape"] == [3] and first["max"] == pytest.approx(9.5)
    assert second["mean"] == pytest.approx(np.mean(np.arange(20) ** 2))
    assert label == {"index": 2, "averaged": False, "type": "str", "text": "'label'", "shape": None, "count": None,
                     "mean": None, "error": None, "variance": None, "min": None, "max": None, "error_max": None,
                     "series": None, "statistics": {}}
    assert second["index"] == 1 and second["variance"] == pytest.approx(np.var(np.arange(20) ** 2, ddof=1))
    assert cli_json("show", "4_raw", cwd=db)["result"] == {"kind": "outputs", "runs": 5}


def test_unknown_job_is_a_usage_error_naming_the_closest(db):
    done = cli("show", "3_enrgy", cwd=db)
    assert done.returncode == 2
    assert "no job '3_enrgy'" in one_error_line(done) and "closest: 3_energy" in done.stderr
    done = cli("show", "curve", cwd=db)  # a function name: its newest jobs
    assert done.returncode == 2 and "closest: 2_curve, 1_curve" in one_error_line(done)
    for bad in ("99", "../../etc", "0_x"):
        done = cli("wait", bad, cwd=db)
        assert done.returncode == 2 and "no job" in one_error_line(done)


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["show"], "the following arguments are required: JOB"),
    (["list", "--status", "runing"], "did you mean running?"),
    (["list", "--arg", "L"], "give NAME=VALUE"),
    (["list", "--arg", "Q=1"], "no job has an argument 'Q'; the arguments are: L, T, model, n"),
    (["resubmit", "1", "--tasks", "0"], "--tasks 0: must be at least 1"),
    (["resubmit", "1", "--tasks", "many"], "invalid int value: 'many'"),
    (["status", "--interval", "0"], "--interval 0.0: must be > 0"),
    (["--path", "/nonexistent/place", "list"], "--path /nonexistent/place: no such directory"),
])
def test_usage_errors_exit_2_with_one_line(db, args, message):
    done = cli(*args, cwd=db)
    assert done.returncode == 2, done
    assert message in one_error_line(done)
    assert done.stdout == ""


def test_help_of_every_command_has_an_example(tmp_path):
    top = cli("--help", cwd=tmp_path)
    assert top.returncode == 0 and "exit codes" in top.stdout
    for command in COMMANDS:
        assert command in top.stdout
        done = cli(command, "--help", cwd=tmp_path)
        assert done.returncode == 0
        assert f"example:\n  parallelaverage {command}" in done.stdout, done.stdout
        assert "--path DIR" in done.stdout


def test_empty_and_missing_databases(tmp_path):
    done = cli("list", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "" and "no .parallelaverage folder" in done.stderr
    assert cli_json("list", cwd=tmp_path) == {"path": str(tmp_path), "jobs": []}
    assert cli_json("status", cwd=tmp_path) == {"path": str(tmp_path), "jobs": []}
    done = cli("status", cwd=tmp_path)
    assert done.returncode == 0 and "no running jobs" in done.stderr
    done = cli("show", "1", cwd=tmp_path)
    assert done.returncode == 2 and "there is no job in" in one_error_line(done)


def test_warnings_are_single_lines(db, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(db, copy)
    (copy / ".parallelaverage" / "2_curve" / "job.json").write_text("{not json")
    done = cli("list", cwd=copy)
    assert done.returncode == 0
    warning_lines = done.stderr.splitlines()
    assert len(warning_lines) == 1, done.stderr
    assert warning_lines[0].startswith("[parallelaverage] skipping an unreadable job: ")
    assert "2_curve" in warning_lines[0] and "Warning" not in done.stderr
    assert "2_curve" not in done.stdout and "1_curve" in done.stdout
    done = cli("show", "2_curve", cwd=copy)  # a corrupt record is a runtime error: exit 1, one line
    assert done.returncode == 1 and "job.json" in one_error_line(done)


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "parallelaverage"
    assert script.exists(), "pip install the package: [project.scripts] makes the parallelaverage command"
    import subprocess
    done = subprocess.run([str(script), "list"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "no jobs" in done.stderr


# ------------------------------------------------------------------ acting

def test_status_cancel_and_show_of_a_running_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "0")  # a snapshot after every run
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv("CLI_TEST_HOLD", str(hold))  # 1_sleepy's runs 10-19 wait until it is removed
    assert _decorate(tmp_path, sleepy, N_runs=20)(0.5) is None   # 1_sleepy: ~2.5 s, then held
    assert _decorate(tmp_path, sleepy, N_runs=4)(600) is None    # 2_sleepy: runs until cancelled
    try:
        _status_cancel_and_show(tmp_path, hold)
    finally:
        cli("cancel", "2_sleepy", cwd=tmp_path)  # no process left behind if the test fails


def _status_cancel_and_show(tmp_path, hold):
    deadline = time.monotonic() + 60
    while True:  # until the first job has progress while it runs
        jobs = {j["job_name"]: j for j in cli_json("status", cwd=tmp_path)["jobs"]}
        first = jobs.get("1_sleepy")
        if first and first["runs"]["successful"] >= 2 and first["status"] == "running":
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(0.1)
    assert set(first) >= {"job_name", "runs", "status", "elapsed_s", "rate_runs_per_s", "eta_s"}
    assert first["rate_runs_per_s"] > 0 and first["eta_s"] >= 0 and first["elapsed_s"] > 0
    assert jobs["2_sleepy"]["status"] == "running" and jobs["2_sleepy"]["runs"]["missing"] == 4

    text = cli("status", "2_sleepy", cwd=tmp_path)
    assert text.returncode == 0
    assert text.stdout.startswith("2_sleepy:   0%|") and "| 0/4 runs [" in text.stdout
    assert "sleepy(seconds=600)" in text.stdout

    pid = launch_pid(tmp_path, "2_sleepy")
    assert process_tree(pid)
    done = cli("cancel", "2", cwd=tmp_path)
    assert done.returncode == 0 and "[parallelaverage] cancelled job 2_sleepy" in done.stdout
    assert process_tree(pid) == []
    shown = cli("show", "2_sleepy", "--json", cwd=tmp_path)
    assert shown.returncode == 1, "a cancelled job with missing runs exits 1"
    assert json.loads(shown.stdout)["status"] == "cancelled"
    again = cli("cancel", "2_sleepy", cwd=tmp_path)
    assert again.returncode == 0 and "not running (cancelled); nothing to cancel" in again.stdout

    # the watch starts while 1_sleepy is held (under load the calls above can outlast an
    # unheld job: it then showed only its end); released once the watch has drawn a line
    watch = subprocess.Popen([sys.executable, "-m", "parallelaverage", "status", "--watch", "--interval", "0.3",
                              "1_sleepy"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    release = threading.Timer(120, hold.unlink, kwargs={"missing_ok": True})  # a silent watch cannot hang the test
    release.start()
    try:
        lines = [watch.stdout.readline().rstrip("\n") for _ in range(2)]  # the call, then one interval's line
        assert "/20 runs" in lines[1] and "completed" not in lines[1], lines
        hold.unlink()
        rest, errors = watch.communicate(timeout=120)  # until the job stops
    finally:
        release.cancel()
        hold.unlink(missing_ok=True)
        watch.kill()
    assert watch.returncode == 0, errors
    lines += rest.splitlines()
    assert lines[0] == "1_sleepy: sleepy(seconds=0.5)" and len(lines) >= 3, lines  # a line per interval
    assert lines[-1].startswith("1_sleepy (completed): 100%|##########| 20/20 runs"), lines
    assert "\r" not in "".join(lines) + rest  # not a terminal: lines, not redraws
    done = cli("wait", "1_sleepy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("1_sleepy: 100%|##########| 20/20 runs")
    assert "completed: 20 of 20 runs done, 0 failed, 0 missing" in done.stdout
    assert "0.5 ± 0" in done.stdout


def test_resubmit_then_wait(tmp_path):
    flag = tmp_path / "flag"
    flag.touch()
    job = _decorate(tmp_path, flaky, N_runs=6, N_tasks=3)
    with pytest.warns(pa.RunsFailedWarning):
        wait(job)(str(flag))
    done = cli("wait", "1", cwd=tmp_path)
    assert done.returncode == 1 and "has failed or missing runs" in done.stderr
    assert "[parallelaverage] 1_flaky has failed or missing runs" in done.stderr
    flag.unlink()
    done = cli("resubmit", "1_flaky", "--tasks", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "re-submitting 2 runs of job 1_flaky on 1 MPI ranks" in done.stdout
    done = cli("wait", "1_flaky", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "completed: 6 of 6 runs done, 0 failed, 0 missing" in done.stdout
    assert cli_json("show", "1", cwd=tmp_path)["runs"] == {"total": 6, "successful": 6, "failed": 0, "missing": 0}
    done = cli("resubmit", "1", cwd=tmp_path)
    assert done.returncode == 0 and "nothing to re-submit" in done.stdout


def test_cleanup_dry_run_then_for_real(tmp_path):
    keeper = _decorate(tmp_path, raw, average=False, N_runs=4)
    wait(keeper)(2)
    pa.do_submit(keeper)(2)  # 2_raw supersedes 1_raw
    wait(keeper)(2)
    snapshots = sorted((tmp_path / ".parallelaverage").glob("*/attempts/*/snapshot-r*.pkl"))
    assert snapshots
    done = cli("cleanup", "--superseded", "--snapshots", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0
    assert "would remove .parallelaverage/1_raw\n" in done.stdout
    assert (tmp_path / ".parallelaverage" / "1_raw").is_dir() and all(p.exists() for p in snapshots)
    done = cli("cleanup", "--superseded", "--snapshots", cwd=tmp_path)
    assert done.returncode == 0 and "removed .parallelaverage/1_raw\n" in done.stdout
    assert not (tmp_path / ".parallelaverage" / "1_raw").exists()
    assert not list((tmp_path / ".parallelaverage").glob("*/attempts/*/snapshot-r*.pkl"))
    assert cli("cleanup", cwd=tmp_path).stdout == "nothing to clean up\n"
    assert len(wait(keeper)(2)) == 4  # the newer job still answers


def test_cleanup_removes_old_leftovers_of_crashed_writers(tmp_path):
    from parallelaverage.jobdb import JobDatabase, call_key, new_record

    db = JobDatabase(tmp_path)
    key = call_key(raw, (1,), N_runs=2)
    record, _ = db.get_or_create(key, lambda name: new_record(key, name, code_hash="0" * 64))
    staging = db.root / ".creating-host-1-abcd"
    staging.mkdir()
    temp = db.job_dir(record) / ".job.json.tmp-host-1-abcd"
    temp.write_text("{")
    young = cli("cleanup", cwd=tmp_path)
    assert young.stdout == "nothing to clean up\n"  # younger than an hour: a writer may be at work
    for path in (staging, temp):
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    done = cli("cleanup", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["removed .parallelaverage/.creating-host-1-abcd",
                                        f"removed .parallelaverage/{record.job_name}/.job.json.tmp-host-1-abcd",
                                        "removed 2 files and folders"]
    assert not staging.exists() and not temp.exists() and db.load(record.job_name) == record
