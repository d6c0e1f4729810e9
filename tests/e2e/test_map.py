"""``f.map``: many calls as one launch (one mpiexec here, one SLURM job on a cluster),
each call still its own job, through real mpiexec processes and real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import Job, RunsFailedWarning, cancel_job, parallel_average, re_submit, wait
from parallelaverage._testhooks import HOOKS_ENV

from pa_testing import jobs_in, process_tree

THIS = sys.modules[__name__]


def launch_info(path, job_name: str, launch_no: int = 1) -> dict:
    return json.loads((path / ".parallelaverage" / job_name / "attempts" / str(launch_no) / "launch.json").read_text())


def test_map_runs_every_new_call_in_one_launch_and_each_call_keeps_its_own_job(tmp_path, capsys):
    @parallel_average(N_runs=30, N_tasks=3, seed=5, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def shifted(x, scale=1.0):
        return x + scale * pa.rng().standard_normal(2)

    assert wait(shifted)(0.0).count == 30  # a call with a job already: map returns its result
    calls = [{"x": 1.0}, (2.0,), {"x": 3.0, "scale": 0.5}, {"x": 1.0}, (0.0,)]
    results = shifted.map(calls)
    assert results[:4] == [None, None, None, None] and isinstance(results[4], pa.AveragedResult)
    out = capsys.readouterr().out
    assert "submitting 3 jobs as one launch (2_shifted ... 4_shifted: 90 runs on 3 MPI ranks, local)" in out
    assert jobs_in(tmp_path) == ["1_shifted", "2_shifted", "3_shifted", "4_shifted"]  # x=1.0 given twice: one job
    infos = [launch_info(tmp_path, f"{n}_shifted") for n in (2, 3, 4)]
    assert len({info["pid"] for info in infos}) == 1 and len({info["batch"] for info in infos}) == 1
    assert [info["batch_member"] for info in infos] == [0, 1, 2]

    for x, scale in ((1.0, 1.0), (2.0, 1.0), (3.0, 0.5)):
        result = wait(shifted)(x, scale=scale) if scale != 1.0 else wait(shifted)(x)
        assert result.successful_run_ids == list(range(30)) and result.failed_run_ids == []
        # each job's runs drew its own streams: its seed (the decorator's) and its run ids
        expected = [x + scale * np.random.default_rng(np.random.SeedSequence(5, spawn_key=(run,))).standard_normal(2)
                    for run in range(30)]
        assert np.allclose(result.data, np.mean(expected, axis=0), rtol=1e-13, atol=1e-13)
        assert np.allclose(result.estimated_variance, np.var(expected, axis=0, ddof=1), rtol=1e-10)
    assert shifted(2.0).count == 30  # later, a plain call returns the cached result
    assert jobs_in(tmp_path) == ["1_shifted", "2_shifted", "3_shifted", "4_shifted"]
    assert [Job.load(n, tmp_path).record.status for n in (2, 3, 4)] == ["completed"] * 3


def test_a_failing_member_fails_alone_and_is_re_submitted_alone(tmp_path):
    flag = tmp_path / "flag"
    flag.touch()

    @parallel_average(N_runs=12, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def picky(x, flag_path):
        if x == 2 and os.path.exists(flag_path) and pa.run_id() % 3 == 0:
            raise ValueError(f"run {pa.run_id()} of x=2 is picky")
        return float(x)

    picky.map([(x, str(flag)) for x in (1, 2, 3)])
    for x in (1, 3):
        assert wait(picky)(x, str(flag)).successful_run_ids == list(range(12))
    with pytest.warns(RunsFailedWarning, match=r"4 / 12 runs failed; the first error \(run \d+\):\n(?s:.*)of x=2 is picky"):
        two = wait(picky)(2, str(flag))
    assert two.failed_run_ids == [0, 3, 6, 9] and Job.load("2_picky", tmp_path).state().failed[3].rstrip().endswith(
        "ValueError: run 3 of x=2 is picky")

    flag.unlink()
    re_submit(picky)(2, str(flag))  # its own launch 2, not the batch
    assert launch_info(tmp_path, "2_picky", 2).get("batch") is None
    assert wait(picky)(2, str(flag)).successful_run_ids == list(range(12))
    assert [Job.load(n, tmp_path).files.launch_numbers() for n in (1, 2, 3)] == [[1], [1, 2], [1]]


def test_a_run_that_kills_the_shared_launch_is_a_crash_of_its_own_job_only(tmp_path):
    flag = tmp_path / "flag"
    flag.touch()

    @parallel_average(N_runs=12, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def fatal(x, flag_path):
        if x == 3 and os.path.exists(flag_path) and pa.run_id() == 7:
            os._exit(9)  # the rank dies, and with it the launch of all three jobs
        time.sleep(0.01)
        return float(x)

    fatal.map([(x, str(flag)) for x in (1, 2, 3)])
    states = {}
    for x in (1, 2, 3):
        states[x] = Job.load(f"{x}_fatal", tmp_path)
        deadline = time.monotonic() + 60
        while states[x].state().status == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    three = states[3].state()
    assert list(three.space.ids(three.crashed)) == [7] and "ended its rank's process" in three.failed[7]
    assert "os._exit(9)" in three.failed[7]
    for x in (1, 2):  # not blamed for x=3's run
        assert len(states[x].state().crashed) == 0 and len(states[x].state().failed) == 0
    flag.unlink()
    for x in (1, 2, 3):  # what the crash cut short is missing, and a re-submission runs it
        if states[x].state().status != "completed":
            re_submit(fatal, include_crashed=True)(x, str(flag))
        assert wait(fatal)(x, str(flag)).successful_run_ids == list(range(12))


def test_cancelling_one_member_stops_the_shared_launch_and_says_so(tmp_path, capsys):
    @parallel_average(N_runs=200, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def slow(x):
        time.sleep(0.05)
        return float(x)

    slow.map([(1,), (2,)])
    pid = launch_info(tmp_path, "1_slow")["pid"]
    deadline = time.monotonic() + 60
    while not Job.load("1_slow", tmp_path).state().done:  # the first job's runs come first
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancel_job(slow)(2)
    out = capsys.readouterr().out
    assert "cancelled job 2_slow" in out
    assert "job 2_slow ran in one launch with 1_slow (f.map): that launch was stopped" in out
    assert process_tree(pid) == []
    one, two = (Job.load(f"{x}_slow", tmp_path).state() for x in (1, 2))
    assert two.status == "cancelled" and one.status == "ended" and 0 < len(one.done) < 200
    re_submit(slow)(1)  # the other job keeps its runs; a re-submission runs the rest
    assert wait(slow)(1).successful_run_ids == list(range(200))
    assert Job.load("1_slow", tmp_path).files.launch_numbers() == [1, 2]


KILLED_MODULE = textwrap.dedent("""
    import os
    import parallelaverage as pa
    from parallelaverage import parallel_average

    @parallel_average(N_runs=8, N_tasks=2, queuing_system="local", path=os.environ["PA_TEST_DB"])
    def mapped(x):
        return float(x) + pa.run_id()
""")


@pytest.mark.parametrize("point", ["job_created", "launch_submitted", "launch_recorded"])
def test_a_caller_killed_while_mapping_loses_no_call_and_runs_none_twice(tmp_path, monkeypatch, point):
    """Killed after creating the first job, after the batch started (no job knows it yet),
    and after the first job's launch.json only: every call ends with all its runs, each
    done once, and a job the batch runs is never launched a second time."""
    (tmp_path / "mapjobs.py").write_text(KILLED_MODULE)
    monkeypatch.setenv("PA_TEST_DB", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    sys.modules.pop("mapjobs", None)
    import mapjobs

    caller = subprocess.run([sys.executable, "-c", "import mapjobs; mapjobs.mapped.map([(1,), (2,), (3,)])"],
                            cwd=tmp_path, env={**os.environ, HOOKS_ENV: f"{point}=kill"},
                            capture_output=True, text=True, timeout=120)
    assert caller.returncode == -9, (caller.stdout, caller.stderr)
    made = jobs_in(tmp_path)
    assert made == (["1_mapped"] if point == "job_created" else ["1_mapped", "2_mapped", "3_mapped"])
    for x in (1, 2, 3):
        result = wait(mapjobs.mapped)(x)
        assert result.count == 8 and result.successful_run_ids == list(range(8)), (x, point)
        assert result.data == pytest.approx(x + 3.5)  # every run once: the mean of x + 0..7
    # the batch ran every job it started exactly once; a job it never started (killed
    # before submitting) was launched by the plain call, as launch 2 after the abandoned 1
    assert Job.load("1_mapped", tmp_path).files.launch_numbers() == ([1, 2] if point == "job_created" else [1])
    for name in jobs_in(tmp_path)[1:]:
        assert Job.load(name, tmp_path).files.launch_numbers() == [1], name


def test_map_validates_every_call_before_any_job_is_made(tmp_path):
    @parallel_average(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def strict(x):
        return float(x)

    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        strict.map([(1,), {"y": 2}])
    assert not (tmp_path / ".parallelaverage").exists() or jobs_in(tmp_path) == []
