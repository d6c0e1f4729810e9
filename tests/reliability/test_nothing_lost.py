"""Nothing lost, nothing counted twice, never "running" forever: races between callers,
odd-shaped runs on many ranks, lost index entries, callers killed mid-submission.

Every test runs real processes (callers as subprocesses, ranks under mpiexec) and, where
a moment matters, stops a caller at a named point (``PARALLELAVERAGE_TEST_HOOKS``,
see ``parallelaverage/_testhooks.py``) instead of hoping for a lucky timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import (
    JobWarning, NotReadyWarning, RunsFailedWarning, dont_submit, parallel_average, re_submit, wait,
)
from parallelaverage.job import Job
from parallelaverage.backends.local import LocalBackend

THIS = sys.modules[__name__]
HOOKS = "PARALLELAVERAGE_TEST_HOOKS"


def calls(function, *args, action=dont_submit):
    """Call ``action(function)(*args)``; return the result and the job warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = action(function)(*args)
    return result, [w for w in caught if issubclass(w.category, JobWarning)]


def until_stopped(path: Path, job_name: str, timeout_s: float = 120) -> Job:
    """Poll the job until it stops running; fail (never hang) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    job = Job.load(job_name, path)
    while job.state().status == "running":
        assert time.monotonic() < deadline, f"{job_name} still running after {timeout_s} s"
        time.sleep(0.05)
    return job


# --------------------------------------------------------------------- re-submission races
JOBS_MODULE = textwrap.dedent("""
    import os, sys, time
    import parallelaverage as pa
    from parallelaverage import parallel_average

    @parallel_average(N_runs=20, N_tasks=2, queuing_system="local", path=os.environ["PA_TEST_DB"])
    def value(flag):
        if os.path.exists(flag) and pa.run_id() % 5 == 0:
            raise RuntimeError("not yet")
        time.sleep(0.05)
        return float(pa.run_id())
""")
RESUBMITTER = "import sys, racejobs; from parallelaverage import re_submit; re_submit(racejobs.value)(sys.argv[1])"


def import_jobs_module(tmp_path: Path, monkeypatch) -> object:
    """The module of the decorated function, importable by the test and by its callers alike."""
    (tmp_path / "racejobs.py").write_text(JOBS_MODULE)
    monkeypatch.setenv("PA_TEST_DB", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    import importlib

    sys.modules.pop("racejobs", None)
    return importlib.import_module("racejobs")


@pytest.mark.parametrize("stall", [False, True], ids=["at-once", "one-stalls-after-reading-the-state"])
def test_two_resubmits_of_one_job_launch_once_and_count_each_run_once(tmp_path, monkeypatch, stall):
    """The issue's race: both callers read the state, both launch the failed runs, which
    then count twice (count 24 for 20 runs). Re-submission is one critical section."""
    jobs = import_jobs_module(tmp_path, monkeypatch)
    flag = tmp_path / "flag"
    flag.touch()
    with pytest.warns(RunsFailedWarning, match="4 / 20 runs failed"):
        wait(jobs.value)(str(flag))
    flag.unlink()
    slow_env = {**os.environ, HOOKS: "state_read=sleep:2"} if stall else dict(os.environ)
    callers = [subprocess.Popen([sys.executable, "-c", RESUBMITTER, str(flag)], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for env in (slow_env, dict(os.environ))]
    outs = [caller.communicate(timeout=180) for caller in callers]
    assert all(caller.returncode == 0 for caller in callers), outs
    said = "".join(out for out, _ in outs)
    assert said.count("re-submitting 4 runs of job 1_value") == 1, said
    assert "already running as launch 2; not launching it twice" in said, said
    job = until_stopped(tmp_path, "1_value")
    assert job.files.launch_numbers() == [1, 2]
    result = wait(jobs.value)(str(flag))
    assert result.count == 20 and list(result.successful_run_ids) == list(range(20))
    assert result.failed_run_ids == [] and result.data == pytest.approx(9.5, rel=1e-15)


def test_many_simultaneous_resubmit_pairs_never_launch_twice(tmp_path):
    """10 pairs of callers re-submit 10 jobs at the same moment: 10 launches, not 20."""
    flag = tmp_path / "flag"
    flag.touch()
    script = tmp_path / "pairs.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        import parallelaverage as pa
        from parallelaverage import parallel_average, re_submit, wait

        @parallel_average(N_runs=6, N_tasks=1, queuing_system="local", path=sys.argv[1])
        def value(flag, job):
            import os
            if os.path.exists(flag) and pa.run_id() == 0:
                raise RuntimeError("not yet")
            return float(pa.run_id())

        if sys.argv[3] == "prepare":
            for job in range(10):
                try:
                    wait(value)(sys.argv[2], job)
                except Exception:
                    pass
        else:
            start = float(sys.argv[3])
            for job in range(10):
                time.sleep(max(0.0, start + job * 0.5 - time.time()))  # both callers at once
                re_submit(value)(sys.argv[2], job)
    """))
    done = subprocess.run([sys.executable, str(script), str(tmp_path), str(flag), "prepare"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    flag.unlink()
    start = str(time.time() + 3.0)
    pair = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(flag), start],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in pair]
    assert all(p.returncode == 0 for p in pair), outs
    said = "".join(out for out, _ in outs)
    assert said.count("re-submitting 1 runs") == 10, said
    for job in range(1, 11):
        stopped = until_stopped(tmp_path, f"{job}_value")
        assert stopped.files.launch_numbers() == [1, 2], job
        state = stopped.state()
        assert state.status == "completed" and len(state.done) == 6
        assert state.tally.main_group().accumulators[0].count == 6  # each run once


# --------------------------------------------------------------------- odd shapes
@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
@pytest.mark.parametrize("n_tasks", [1, 2, 4])
@pytest.mark.parametrize("odd", [0, 7], ids=["first-run-odd", "a-middle-run-odd"])
def test_one_run_of_another_shape_fails_alone_on_any_number_of_ranks(tmp_path, n_tasks, dynamic, odd):
    @parallel_average(N_runs=12, N_tasks=n_tasks, queuing_system="local", path=tmp_path,
                      dynamic_load_balancing=dynamic, pickle_by_value=[THIS])
    def shapes(odd_run):
        return np.zeros(3 if pa.run_id() == odd_run else 2) + pa.run_id()

    with pytest.warns(RunsFailedWarning, match=rf"run {odd} returned an array of shape \(3,\), but 11 other runs "
                                               r"returned an array of shape \(2,\)"):
        result = wait(shapes)(odd)
    others = [run for run in range(12) if run != odd]
    assert result.failed_run_ids == [odd] and list(result.successful_run_ids) == others
    assert result.count == 11 and np.allclose(result.data, np.mean(others))
    # the ranks' result and their snapshots agree: the odd run is failed, not silently lost
    job = Job.load(1, tmp_path)
    state = job.state()
    assert state.status == "completed" and list(state.failed) == [odd]
    # re-running it makes it fail again, and changes nothing else
    re_submit(shapes)(odd)
    until_stopped(tmp_path, "1_shapes")
    result, caught = calls(shapes, odd)
    assert result.failed_run_ids == [odd] and result.count == 11 and np.allclose(result.data, np.mean(others))


# --------------------------------------------------------------------- lost index entries
def test_a_job_whose_index_entry_was_removed_is_found_not_run_again(tmp_path):
    @parallel_average(N_runs=4, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def indexed(x):
        return float(x + pa.run_id())

    first = wait(indexed)(1)
    entries = list((tmp_path / ".parallelaverage" / "index").rglob("*.json"))
    assert len(entries) == 1
    entries[0].unlink()  # a user cleaning by hand, a half-synced copy
    again = dont_submit(indexed)(1)  # found by its folder, not "no job" (and nothing written)
    assert again.job_name == first.job_name == "1_indexed" and again.data == first.data
    assert not entries[0].exists()
    assert indexed(1).job_name == "1_indexed"  # a plain call re-indexes it: no second job
    assert entries[0].exists()
    assert sorted(p.name for p in (tmp_path / ".parallelaverage").iterdir() if p.name[0].isdigit()) == ["1_indexed"]


def test_a_new_call_reads_no_record_of_other_jobs_and_a_lost_index_is_rebuilt_once(tmp_path, monkeypatch):
    """Looking for an unindexed job of a call must not read every job's record on each new
    call (at 10,000 jobs that cost 0.5 s per call): the index's ``digests`` file says which
    folder answers which call. With the whole index folder gone, the next creation reads
    the records once and writes the file again; the job is found, not run twice."""
    import shutil

    from parallelaverage.jobdb import JobDatabase, call_key, new_record

    db = JobDatabase(tmp_path)
    for i in range(200):
        key = call_key(_filler, (i,), N_runs=10)
        db.get_or_create(key, lambda name, key=key: new_record(key, name, code_hash="0"))
    reads = []
    real_read = JobDatabase._read_record
    monkeypatch.setattr(JobDatabase, "_read_record", lambda self, name: reads.append(name) or real_read(self, name))
    key = call_key(_filler, (200,), N_runs=10)
    record, created = JobDatabase(tmp_path).get_or_create(key, lambda name: new_record(key, name, code_hash="0"))
    assert created and reads == [], reads
    # the index lost entirely (a half-synced copy): found by its folder, and the file rebuilt
    shutil.rmtree(db.root / "index")
    key = call_key(_filler, (7,), N_runs=10)
    found, created = JobDatabase(tmp_path).get_or_create(key, lambda name: new_record(key, name, code_hash="0"))
    assert not created and found.job_name == "8__filler" and len(reads) >= 201
    reads.clear()
    key = call_key(_filler, (3,), N_runs=10)
    found, created = JobDatabase(tmp_path).get_or_create(key, lambda name: new_record(key, name, code_hash="0"))
    assert not created and found.job_name == "4__filler" and reads == ["4__filler"], reads


def _filler(i):
    return i


def test_cleanup_reindex_restores_every_missing_entry(tmp_path):
    @parallel_average(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def indexed(x):
        return float(x)

    for x in range(3):
        wait(indexed)(x)
    for entry in (tmp_path / ".parallelaverage" / "index").rglob("*.json"):
        entry.unlink()
    done = subprocess.run([sys.executable, "-m", "parallelaverage", "cleanup", "--reindex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(line for line in done.stdout.splitlines() if line.startswith("re-indexed")) == [
        "re-indexed 1_indexed", "re-indexed 2_indexed", "re-indexed 3_indexed"]
    assert [dont_submit(indexed)(x).job_name for x in range(3)] == ["1_indexed", "2_indexed", "3_indexed"]


# --------------------------------------------------------------------- callers killed mid-way
KILLED_MODULE = textwrap.dedent("""
    import os, time
    import parallelaverage as pa
    from parallelaverage import parallel_average

    @parallel_average(N_runs=8, N_tasks=2, queuing_system="local", path=os.environ["PA_TEST_DB"])
    def killed(flag):
        if os.path.exists(flag) and pa.run_id() % 4 == 0:
            raise RuntimeError("not yet")
        return float(pa.run_id())
""")


def import_killed_module(tmp_path: Path, monkeypatch) -> object:
    (tmp_path / "killjobs.py").write_text(KILLED_MODULE)
    monkeypatch.setenv("PA_TEST_DB", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    import importlib

    sys.modules.pop("killjobs", None)
    return importlib.import_module("killjobs")


def run_killed(tmp_path: Path, point: str, code: str) -> None:
    caller = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, HOOKS: f"{point}=kill"},
                            capture_output=True, text=True, timeout=120)
    assert caller.returncode == -9, (point, caller.stdout, caller.stderr)  # killed at the point, not before


@pytest.mark.parametrize("point", ["job_created", "launch_submitted", "launch_recorded"])
def test_a_caller_killed_while_submitting_never_leaves_the_job_running_forever(tmp_path, monkeypatch, point):
    jobs = import_killed_module(tmp_path, monkeypatch)
    run_killed(tmp_path, point, "import killjobs; killjobs.killed('no-flag')")
    job = until_stopped(tmp_path, "1_killed")  # the launch ran by itself, or is known never to have started
    state = job.state()
    if point == "job_created":  # killed before its first launch started: a plain call launches it
        assert state.status == "not_launched" and "was never started" in state.latest.message
        assert jobs.killed("no-flag") is None
    result = wait(jobs.killed)("no-flag")
    assert result.count == 8 and list(result.successful_run_ids) == list(range(8))
    assert Job.load(1, tmp_path).files.launch_numbers() == ([1, 2] if point == "job_created" else [1])


def test_a_local_launch_whose_script_has_not_yet_written_its_pid_file_is_running_not_abandoned(tmp_path, monkeypatch):
    """A caller killed right after it started a local launch (``launch_submitted``): the
    launch's script writes its pid file once it has started mpiexec, on a loaded machine
    long after. Meanwhile a reader took the launch for one that was never started (the
    soak saw it: "launch 2 was never started", 6 runs of 8, while its ranks were about to
    run the other 2). The script's own process says that the launch runs. Here a
    stand-in script that sleeps is that process, started as the backend starts it."""
    jobs = import_killed_module(tmp_path, monkeypatch)
    run_killed(tmp_path, "job_created", "import killjobs; killjobs.killed('no-flag')")
    job = Job.load(1, tmp_path)
    launch = job.files.launch_dir(1)
    assert not (launch / "launch.json").exists() and job.state().status == "not_launched"
    script = (launch / "launch.sh").resolve()
    script.write_text("sleep 120\n")
    started = subprocess.run(LocalBackend().submit_argv(job.files, 1, script), capture_output=True, text=True,
                             timeout=30, check=True)  # detached, as the backend starts it: prints its pid
    wrapper = int(started.stdout.split()[-1])
    try:
        state = job.state()
        assert state.status == "running" and state.latest.phase == "running", state.latest.message
        # recovered by the shell that detached the script, gone since: the script's process still counts
        gone = {"backend": "local", "pid": 2**22 + 1, "start_ticks": None, "recovered": True}
        assert LocalBackend().state(job.files, 1, gone) == "running"
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(wrapper)], timeout=30)  # its sleep
        os.kill(wrapper, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while LocalBackend().recover(job.files, 1) is not None:  # until it is gone (a zombie has no arguments)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    state = job.state()
    assert state.status == "not_launched" and "was never started" in state.latest.message
    assert jobs.killed("no-flag") is None  # a plain call launches it
    result = wait(jobs.killed)("no-flag")
    assert result.count == 8 and list(result.successful_run_ids) == list(range(8))


@pytest.mark.parametrize("point", ["state_read", "launch_created", "launch_submitted", "launch_recorded"])
def test_a_caller_killed_while_resubmitting_never_leaves_the_job_running_forever(tmp_path, monkeypatch, point):
    jobs = import_killed_module(tmp_path, monkeypatch)
    flag = tmp_path / "flag"
    flag.touch()
    with pytest.warns(RunsFailedWarning, match="2 / 8 runs failed"):
        wait(jobs.killed)(str(flag))
    flag.unlink()
    run_killed(tmp_path, point, f"import killjobs; from parallelaverage import re_submit; "
                                f"re_submit(killjobs.killed)({str(flag)!r})")
    job = until_stopped(tmp_path, "1_killed")
    launched = point in ("launch_submitted", "launch_recorded")  # mpiexec was started before the kill
    if not launched:
        # nothing runs: cancel has nothing to do, and re_submit is not refused as "still running"
        assert job.state().status == "completed" and len(job.state().failed) == 2
        re_submit(jobs.killed)(str(flag))
    result = wait(jobs.killed)(str(flag))
    assert result.count == 8 and list(result.successful_run_ids) == list(range(8)) and result.failed_run_ids == []
    expected = {"state_read": [1, 2], "launch_created": [1, 2, 3]}.get(point, [1, 2])
    assert job.files.launch_numbers() == expected


# --------------------------------------------------------------------- what a kill loses
PROMISE_S = 2.0  # the default: the first snapshot after a rank's first run, then every 2 s


@pytest.mark.parametrize("ranks, interval_s", [(1, 2.0), (4, 2.0), (500, 2.0), (1000, 4.0), (4000, 16.0)])
def test_the_snapshot_interval_is_the_promise_and_grows_only_with_a_big_launch_or_a_slow_disk(ranks, interval_s):
    """The clock of the promise: a snapshot after the first run, then every 2 s; over 500
    ranks the launch writes at most 250 snapshots per second (a parallel file system's
    metadata server serves the whole cluster); a slow write stretches it to 100x its time,
    never beyond 60 s."""
    from parallelaverage.worker import SnapshotClock

    clock = SnapshotClock(ranks=ranks)
    assert PROMISE_S == 2.0 and clock.due(0.0)  # the first finished run triggers the first snapshot
    clock.written(10.0, 10.001)
    assert clock.interval_s == interval_s and not clock.due(10.001 + interval_s - 1e-6) and clock.due(10.001 + interval_s)
    clock.written(20.0, 20.1)  # 0.1 s to write: at least 10 s
    assert clock.interval_s == pytest.approx(max(interval_s, 10.0))
    clock.written(30.0, 31.0)
    assert clock.interval_s == 60.0
    assert SnapshotClock(min_s=0.0, ranks=ranks).min_s == 0.0  # tests only: after every run


@pytest.mark.parametrize("victim", ["rank", "mpiexec"])
def test_a_kill_loses_at_most_the_last_snapshot_interval_of_each_rank_at_the_default_settings(tmp_path, victim):
    """docs/reliability.md's promise, at the default snapshot settings: every run a rank
    finished more than one interval before the kill is kept, and so is each rank's first."""
    from pa_testing import launch_pid, process_tree, rank_pids

    log = tmp_path / "finished.log"

    @parallel_average(N_runs=400, N_tasks=4, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def timed(log_path):
        time.sleep(0.1)
        with open(log_path, "a") as f:  # what finished when, outside the library
            f.write(f"{pa.run_id()} {os.getpid()} {time.time()}\n")
        return float(pa.run_id())

    timed(str(log))
    deadline = time.monotonic() + 60
    while True:  # until every rank has finished several runs (its first snapshot is then written)
        lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
        per_rank: dict[str, int] = {}
        for _, pid, _ in lines:
            per_rank[pid] = per_rank.get(pid, 0) + 1
        if len(per_rank) == 4 and min(per_rank.values()) >= 5 and time.monotonic() > deadline - 57:
            break
        assert time.monotonic() < deadline, per_rank
        time.sleep(0.05)
    launcher = launch_pid(tmp_path, "1_timed")
    if victim == "rank":
        target = rank_pids(launcher)[1]  # MPICH then takes every rank down
    else:
        target = next(pid for pid in process_tree(launcher)
                      if b"mpiexec" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0])
    killed_at = time.time()
    os.kill(target, 9)
    until_stopped(tmp_path, "1_timed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dont_submit(timed)(str(log))
    kept = set(result.successful_run_ids)
    finished = [(int(run), pid, float(when)) for run, pid, when in
                (line.split() for line in log.read_text().splitlines())]
    old = {run for run, _, when in finished if when < killed_at - PROMISE_S - 1.0}  # 1 s for the write itself
    assert old <= kept, f"runs finished > {PROMISE_S} s before the kill were lost: {sorted(old - kept)}"
    first_of_rank = {}
    for run, pid, when in finished:
        first_of_rank.setdefault(pid, run)
    assert set(first_of_rank.values()) <= kept, "a rank's first snapshot comes after its first run"
    lost = [(run, when) for run, _, when in finished if run not in kept]
    assert all(when >= killed_at - PROMISE_S - 1.0 for _, when in lost)
    print(f"{victim} killed: {len(finished)} runs finished, {len(kept)} kept, {len(lost)} lost "
          f"(all within the last {PROMISE_S:g} s of their rank)")


# --------------------------------------------------------------------- pending re-runs
def test_runs_being_run_again_are_not_ready_not_failed(tmp_path):
    gate = tmp_path / "gate"
    flag = tmp_path / "flag"
    flag.touch()

    @parallel_average(N_runs=20, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def gated(flag_path, gate_path):
        if os.path.exists(flag_path) and pa.run_id() % 5 == 0:
            raise RuntimeError("not yet")
        while os.path.exists(gate_path):
            time.sleep(0.02)
        return float(pa.run_id())

    with pytest.warns(RunsFailedWarning, match="4 / 20 runs failed"):
        wait(gated)(str(flag), str(gate))
    flag.unlink()
    gate.touch()
    re_submit(gated)(str(flag), str(gate))
    result, caught = calls(gated, str(flag), str(gate))
    messages = [str(w.message) for w in caught]
    assert any("4 / 20 runs are not ready yet!" in m for m in messages), messages
    assert not any("runs failed" in m for m in messages), messages  # being re-run: pending, not failed
    assert result.failed_run_ids == [] and len(result.successful_run_ids) == 16
    gate.unlink()
    result = wait(gated)(str(flag), str(gate))
    assert result.count == 20 and result.failed_run_ids == []


# --------------------------------------------------------------------- huge and impossible N_runs
def test_a_billion_runs_cost_no_list_and_too_many_are_refused_before_anything_is_written(tmp_path):
    @parallel_average(N_runs=10**9, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def trivial():
        time.sleep(0.001)
        return 1.0

    trivial()
    plan = tmp_path / ".parallelaverage" / "1_trivial" / "attempts" / "1" / "runs.json"
    assert json.loads(plan.read_text())["positions"] == [[0, 10**9]] and plan.stat().st_size < 200
    started = time.perf_counter()
    result, caught = calls(trivial)
    took_s = time.perf_counter() - started
    assert any(issubclass(w.category, NotReadyWarning) and "/ 1000000000 runs are not ready yet" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    summary = subprocess.run([sys.executable, "-m", "parallelaverage", "show", "1", "--json"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    shown = json.loads(summary.stdout)
    assert shown["runs"]["total"] == 10**9 and len(shown["missing_runs"]) == 1000
    pa.cancel_job(trivial)()
    assert Job.load(1, tmp_path).state().status == "cancelled"
    print(f"a call on a running job of 10**9 runs took {took_s * 1e3:.1f} ms")
    with pytest.raises(pa.OptionError, match=r"more than one job can hold \(9\.01e\+15 = 2\*\*53\)"):
        parallel_average(N_runs=(2**27, 2**27), N_tasks=2, queuing_system="local", path=tmp_path)
    assert [p.name for p in (tmp_path / ".parallelaverage").iterdir() if p.name[0].isdigit()] == ["1_trivial"]


# --------------------------------------------------------------------- read-only and full file systems
def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        message = f"mount {' '.join(args)} failed (needs root): {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires this test to run: {message}")
        pytest.skip(message)


def test_a_read_only_database_can_be_read_and_refuses_changes_by_name(tmp_path):
    writable = tmp_path / "project"
    writable.mkdir()

    def decorate(path, **options):
        def averaged(x):
            if x == "fail" and pa.run_id() == 1:
                raise RuntimeError("one failure")
            return float(pa.run_id())
        return parallel_average(N_runs=4, N_tasks=2, queuing_system="local", path=path,
                                pickle_by_value=[THIS], **options)(averaged)

    def kept(x):
        return {"run": pa.run_id()}

    with pytest.warns(RunsFailedWarning):
        wait(decorate(writable))("fail")
    wait(pa.parallel(N_runs=3, N_tasks=1, queuing_system="local", path=writable, pickle_by_value=[THIS])(kept))(1)
    archive = tmp_path / "archive"
    archive.mkdir()
    _mount("--bind", str(writable), str(archive))
    try:
        _mount("-o", "remount,ro,bind", str(archive))
        with pytest.raises(OSError):
            (archive / "probe").write_text("")  # really read-only, even for root
        reader = decorate(archive)
        with pytest.warns(RunsFailedWarning, match="1 / 4 runs failed"):
            assert reader("fail").count == 3
        outputs = dont_submit(pa.parallel(N_runs=3, N_tasks=1, queuing_system="local", path=archive,
                                          pickle_by_value=[THIS])(kept))(1)
        assert outputs[2] == {"run": 2}
        assert pa.load_job(1, archive).count == 3
        for command in (["list"], ["show", "1"], ["show", "2", "--json"]):
            done = subprocess.run([sys.executable, "-m", "parallelaverage", *command], cwd=archive,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode in (0, 1) and "Traceback" not in done.stderr, (command, done.stderr)
        from parallelaverage.viewer import _details
        from parallelaverage.jobdb import JobDatabase

        details, _ = _details.job_details(JobDatabase(archive), "1_averaged")
        assert details["state"]["successful"] == 3
        with pytest.raises(pa.ReadOnlyDatabaseError, match="read-only for this user"):
            re_submit(reader)("fail")
        with pytest.raises(pa.ReadOnlyDatabaseError, match="read-only"):
            reader("a new call")
    finally:
        subprocess.run(["umount", str(archive)], check=False)


def test_a_full_disk_is_reported_by_name_and_loses_no_written_run(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small))
    pause = tmp_path / "pause"  # outside the small file system
    try:
        @parallel_average(N_runs=60, N_tasks=2, queuing_system="local", path=small, pickle_by_value=[THIS])
        def filling(pause_path):
            while pa.run_id() >= 10 and os.path.exists(pause_path):
                time.sleep(0.02)
            time.sleep(0.02)
            return np.full(1000, float(pa.run_id()))

        pause.touch()
        filling(str(pause))
        job = Job.load(1, small)
        deadline = time.monotonic() + 60
        while not any(r.n_snapshots for launch in job.state().launches for r in launch.ranks):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        filler = small / "filler"
        with open(filler, "wb") as f:  # fill the file system to the last block
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        record_before = (small / ".parallelaverage" / "1_filling" / "job.json").read_bytes()
        pause.unlink()
        deadline = time.monotonic() + 60
        while True:  # reading never fails for want of space, and says why the ranks are stuck
            result, caught = calls(filling, str(pause))
            messages = " ".join(str(w.message) for w in caught)
            if "No space left on device" in messages:
                break
            assert time.monotonic() < deadline, messages
            time.sleep(0.1)
        assert "cannot write its snapshot" in messages
        assert (small / ".parallelaverage" / "1_filling" / "job.json").read_bytes() == record_before
        filler.unlink()  # space again: the next snapshots and the result are written
        result = wait(filling)(str(pause))
        assert result.count == 60 and list(result.successful_run_ids) == list(range(60))
        assert np.allclose(result.data, 29.5)
    finally:
        pause.unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(small)], check=False)


# --------------------------------------------------------------------- foreign pickles
def test_every_unpickling_goes_through_the_trust_gate():
    """A new pickle.load/loads anywhere else in the package fails this test."""
    import re

    package = Path(pa.__file__).parent
    calls_outside = [f"{path.relative_to(package)}:{number}: {line.strip()}"
                     for path in package.rglob("*.py") if path.relative_to(package) != Path("jobfiles", "trust.py")
                     for number, line in enumerate(path.read_text().splitlines(), 1)
                     if re.search(r"\b(c?pickle|cloudpickle|_pickle)\.(loads?|Unpickler)\b", line)
                     or re.search(r"\bnp\.load\(.*allow_pickle\s*=\s*True", line)]
    assert calls_outside == []


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")


@needs_root
@pytest.mark.parametrize("kind", ["result", "snapshot", "sealed", "outputs", "legacy-outputs", "payload"])
def test_each_kind_of_pickle_written_by_another_user_is_refused(tmp_path, kind, monkeypatch):
    """A group-writable job folder lets another user plant pickles: each kind is refused
    before it is unpickled (UntrustedFileError names the owner and the way to allow it)."""
    flag = tmp_path / "flag"
    flag.touch()

    @parallel_average(N_runs=4, N_tasks=1, keep_runs=True, queuing_system="local", path=tmp_path,
                      pickle_by_value=[THIS])
    def planted(flag_path):
        if os.path.exists(flag_path) and pa.run_id() == 3:
            raise RuntimeError("not yet")
        return float(pa.run_id())

    with pytest.warns(RunsFailedWarning):
        wait(planted)(str(flag))
    job_dir = tmp_path / ".parallelaverage" / "1_planted"
    launch = job_dir / "attempts" / "1"
    refused = pytest.raises(pa.UntrustedFileError, match=r"belongs to user id 4242.*PARALLELAVERAGE_TRUST_UIDS=4242")
    if kind == "result":
        os.chown(launch / "result.pkl", 4242, 4242)
        with refused:
            dont_submit(planted)(str(flag))
    elif kind == "snapshot":
        (launch / "result.pkl").unlink()
        os.chown(launch / "snapshot-r0.pkl", 4242, 4242)
        with refused:
            dont_submit(planted)(str(flag))
    elif kind == "sealed":
        flag.unlink()
        (launch / "result.pkl").unlink()  # a launch that ended without its result is sealed from its snapshots
        re_submit(planted)(str(flag))
        until_stopped(tmp_path, "1_planted")
        os.chown(launch / "sealed.pkl", 4242, 4242)
        with refused:
            dont_submit(planted)(str(flag))
    elif kind == "outputs":
        os.chown(launch / "outputs-r0.bin", 4242, 4242)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = dont_submit(planted)(str(flag)).runs
        with refused:
            runs[0]
    elif kind == "legacy-outputs":
        import pickle
        import struct

        legacy = launch / "outputs-r9.pkl"  # the format before positions: pickled run ids
        key, value = pickle.dumps(0), pickle.dumps(99.0)
        legacy.write_bytes(struct.pack("<II", len(key), len(value)) + key + value)
        os.chown(legacy, 4242, 4242)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = dont_submit(planted)(str(flag)).runs
        with refused:
            runs[0]  # indexing the files unpickles their keys: refused before that
    else:  # the ranks of a re-submission load payload.pkl: they refuse it, and say so
        flag.unlink()
        os.chown(job_dir / "payload.pkl", 4242, 4242)
        re_submit(planted)(str(flag))
        until_stopped(tmp_path, "1_planted")
        result, caught = calls(planted, str(flag))
        messages = " ".join(str(w.message) for w in caught)
        assert "could not start its runs" in messages and "belongs to user id 4242" in messages, messages
        assert result.count == 3  # what the first launch did is still there
    monkeypatch.setenv("PARALLELAVERAGE_TRUST_UIDS", "4242")  # allowed on purpose: read as one's own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dont_submit(planted)(str(flag))
    assert result is not None and result.runs is not None
