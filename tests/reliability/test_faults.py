"""Faults with real processes and real signals: killed ranks, torn files, killed writers."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import parallelaverage as pa
from pa_testing import launch_pid, rank_pids
from parallelaverage import JobEndedWarning, JobWarning, NotReadyWarning, dont_submit, parallel_average, re_submit, wait

THIS = sys.modules[__name__]
N_RUNS, N_TASKS, SEED = 90, 3, 5


def expected_statistics() -> pa.Welford:
    """What one clean job computes: each run's sample depends only on (seed, run id)."""
    acc = pa.Welford()
    for run in range(N_RUNS):
        acc.add(1e9 + np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(run,))).standard_normal(3))
    return acc


def call_and_collect(function, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = dont_submit(function)(*args)
    return result, [w for w in caught if issubclass(w.category, JobWarning)]


def wait_until_ended(function, *args, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result, caught = call_and_collect(function, *args)
        if not any(issubclass(w.category, NotReadyWarning) for w in caught):
            return result, caught
        time.sleep(0.05)
    raise TimeoutError("the job did not end")


def logged_runs(log) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_killed_ranks_lose_only_runs_in_flight_and_re_submit_completes(tmp_path, monkeypatch):
    monkeypatch.setenv("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "0")  # a snapshot after every run
    log = tmp_path / "finished.log"

    @parallel_average(N_runs=N_RUNS, N_tasks=N_TASKS, seed=SEED, queuing_system="local",
                      path=tmp_path, pickle_by_value=[THIS])
    def sample(log_path):
        time.sleep(0.03)
        value = 1e9 + pa.rng().standard_normal(3)
        with open(log_path, "a") as f:  # the run is finished once logged
            f.write(f"{pa.run_id()}\n")
        return value

    kills = 0
    for cycle in range(3):
        before = len(logged_runs(log))
        (sample if cycle == 0 else re_submit(sample))(str(log))
        deadline = time.monotonic() + 30
        while len(logged_runs(log)) < before + 8:  # mid-job: some runs done, many left
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.01)
        victim = random.choice(rank_pids(launch_pid(tmp_path, "1_sample", launch_no=cycle + 1)))
        os.kill(victim, signal.SIGKILL)
        kills += 1
        result, caught = wait_until_ended(sample, str(log))
        successful = set(result.successful_run_ids)
        missing = N_RUNS - len(successful)
        assert missing > 0, "the kill came too late to test anything"
        assert any(f"job ended with {missing} of {N_RUNS} runs missing; use re_submit" in str(w.message)
                   for w in caught), [str(w.message) for w in caught]
        # every finished run is kept, except at most one in flight per rank
        lost = set(logged_runs(log)) - successful
        assert len(lost) <= N_TASKS, (cycle, sorted(lost))
    re_submit(sample)(str(log))
    final = wait(sample)(str(log))
    assert final.successful_run_ids == list(range(N_RUNS)) and final.failed_run_ids == []
    expected = expected_statistics()
    assert np.all(np.abs(final.data - expected.mean) <= 1e-12 * np.abs(expected.mean))
    assert np.all(np.abs(final.estimated_variance - expected.variance) <= 1e-12 * expected.variance)
    assert kills == 3


def test_torn_and_garbage_files_are_named_and_their_runs_count_as_missing(tmp_path):
    @parallel_average(N_runs=20, N_tasks=2, seed=1, queuing_system="local", path=tmp_path,
                      pickle_by_value=[THIS])
    def value():
        return float(pa.run_id())

    clean = wait(value)()
    launch = tmp_path / ".parallelaverage/1_value/attempts/1"
    result_file = launch / "result.pkl"
    result_file.write_bytes(result_file.read_bytes()[: result_file.stat().st_size // 2])  # torn
    result, caught = call_and_collect(value)
    assert any(str(result_file) in str(w.message) and "using the snapshots" in str(w.message) for w in caught)
    assert result.successful_run_ids == list(range(20)) and result.data == clean.data  # snapshots hold it all
    snapshot = launch / "snapshot-r0.pkl"
    snapshot.write_bytes(b"\x00garbage\xff" * 10)
    result, caught = call_and_collect(value)
    messages = [str(w.message) for w in caught]
    assert any(str(snapshot) in m and "count as missing" in m for m in messages), messages
    missing = 20 - len(result.successful_run_ids)
    assert missing > 0 and any(f"job ended with {missing} of 20 runs missing" in m for m in messages)
    re_submit(value)()
    repaired = wait(value)()
    assert repaired.successful_run_ids == list(range(20)) and repaired.data == pytest.approx(9.5, rel=1e-15)


def test_a_copied_launch_folder_is_named_and_no_run_counts_twice(tmp_path):
    import shutil

    @parallel_average(N_runs=20, N_tasks=2, seed=1, queuing_system="local", path=tmp_path,
                      pickle_by_value=[THIS])
    def value():
        return float(pa.run_id() % 4)

    clean = wait(value)()
    attempts = tmp_path / ".parallelaverage/1_value/attempts"
    shutil.copytree(attempts / "1", attempts / "2")  # a restored backup, a sync gone wrong
    result, caught = call_and_collect(value)
    messages = [str(w.message) for w in caught]
    assert any("launch 2 holds 20 runs that an earlier launch also did (the first: run 0)" in m
               and "attempts/2" in m for m in messages), messages
    assert result.successful_run_ids == list(range(20)) and result.count == clean.count == 20
    assert (result.data, result.estimated_variance) == (clean.data, clean.estimated_variance)
    assert result.data == pytest.approx(1.5, rel=1e-15)
    assert not any("runs missing" in m for m in messages), messages


WRITER = textwrap.dedent("""
    import sys
    from parallelaverage.jobdb import JobDatabase, call_key, new_record

    def f(i):
        return i

    db = JobDatabase(sys.argv[1])
    start = int(sys.argv[2])
    for i in range(start, start + 10_000):
        key = call_key(f, (i,), N_runs=1)
        record, _ = db.get_or_create(key, lambda name: new_record(key, name, code_hash="0"),
                                     files={"payload.pkl": b"x" * 4096})
        db.update(record.job_name, status="completed")
        print(key.digest, record.job_name, flush=True)
""")


def test_sigkill_in_the_middle_of_database_writes_never_loses_a_submission(tmp_path):
    from parallelaverage.jobdb import CorruptFileError, JobDatabase
    from parallelaverage.jobdb.index import entry_path, read_entry

    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    database = tmp_path / "db"
    database.mkdir()
    completed: dict[str, str] = {}
    rng = random.Random(0)
    for trial in range(20):
        writer = subprocess.Popen([sys.executable, str(script), str(database), str(trial * 10_000)],
                                  stdout=subprocess.PIPE, text=True)
        # once the writer is at work (its first submission done, however slowly it started),
        # kill it at a random moment: a fixed sleep would, on a loaded machine, kill it
        # before it ever wrote anything
        first = writer.stdout.readline()
        time.sleep(rng.random() * 0.3)
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate()
        for line in (first + out).splitlines():
            fields = line.split()
            if len(fields) == 2 and len(fields[0]) == 64:  # the kill may cut the last line short
                completed[fields[0]] = fields[1]
        db = JobDatabase(database)
        scan = db.scan()
        assert scan.problems == [], scan.problems  # every job.json whole and readable
        for digest, name in completed.items():
            assert read_entry(entry_path(db.root, digest), digest) == name
            assert db.load(name).status == "completed"
    assert len(completed) >= 20  # every writer got work done before its kill
    print(f"20 writers killed, {len(completed)} completed submissions, all found")
    with pytest.raises(CorruptFileError):
        bad = entry_path(JobDatabase(database).root, "f" * 64)
        bad.parent.mkdir(parents=True, exist_ok=True)
        bad.write_text("{not json")
        read_entry(bad, "f" * 64)


def test_a_killed_launcher_whose_ranks_live_on_is_still_running_and_counts_once(tmp_path):
    @parallel_average(N_runs=30, N_tasks=2, seed=SEED, queuing_system="local", path=tmp_path,
                      pickle_by_value=[THIS])
    def slowish():
        time.sleep(0.05)
        return float(pa.run_id())

    slowish()
    time.sleep(0.4)
    os.kill(launch_pid(tmp_path, "1_slowish"), signal.SIGKILL)  # the wrapper only: mpiexec and ranks go on
    _, caught = call_and_collect(slowish)
    assert any(issubclass(w.category, NotReadyWarning) for w in caught)  # not "ended": its ranks still run
    result, caught = wait_until_ended(slowish)
    assert result.successful_run_ids == list(range(30)) and result.count == 30 and result.data == pytest.approx(14.5)
    assert not [w for w in caught if issubclass(w.category, JobEndedWarning)]
