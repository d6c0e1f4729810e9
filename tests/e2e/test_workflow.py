"""The seed's workflow end to end, through real mpiexec processes and real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import (
    JobEndedWarning,
    NoJobError,
    RunsFailedWarning,
    WeightedSample,
    cancel_job,
    do_submit,
    dont_submit,
    parallel,
    parallel_average,
    re_submit,
    wait,
)

from pa_testing import jobs_in, launch_pid, process_tree, settle

THIS = sys.modules[__name__]


def test_the_seed_example(tmp_path, capsys):
    @parallel(N_runs=10, N_tasks=5, time="00:02:00", mem="1G", queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def my_function(L):
        return np.random.rand(L)

    assert my_function(L=64) is None
    assert "[parallelaverage] submitting job 1_my_function (10 runs on 5 MPI ranks, local)" in capsys.readouterr().out
    outputs = wait(my_function)(L=64)
    assert len(outputs) == 10 and list(outputs) == list(range(10))
    assert outputs[0].shape == (64,) and outputs[0].dtype == np.float64
    assert len({float(outputs[i][0]) for i in outputs}) == 10  # every run its own output
    # caching: the same call (positional or keyword) creates no job
    again = my_function(64)
    assert len(again) == 10 and np.array_equal(again[3], outputs[3])
    assert jobs_in(tmp_path) == ["1_my_function"]
    # different arguments: a new job
    assert my_function(L=8) is None
    assert jobs_in(tmp_path) == ["1_my_function", "2_my_function"]
    assert wait(my_function)(L=8)[9].shape == (8,)
    # do_submit: a new job for a known call
    assert do_submit(my_function)(L=64) is None
    assert len(jobs_in(tmp_path)) == 3
    assert len(wait(my_function)(L=64)) == 10


def test_average_run_id_rng_and_recorded_queue_options(tmp_path):
    @parallel_average(N_runs=200, N_tasks=3, seed=7, queuing_system="local", path=tmp_path, pickle_by_value=[THIS], partition="debug")
    def noisy(offset):
        return offset + pa.rng().standard_normal(4) + 0 * pa.run_id()

    result = wait(noisy)(1e9)
    expected = pa.Welford()
    for run in range(200):
        expected.add(1e9 + np.random.default_rng(np.random.SeedSequence(7, spawn_key=(run,))).standard_normal(4))
    assert isinstance(result, pa.AveragedResult) and result.successful_run_ids == list(range(200))
    assert np.allclose(result.data, expected.mean, rtol=1e-15, atol=0)  # merge order: a few ulps of 1e9
    assert np.allclose(result.estimated_variance, expected.variance, rtol=1e-12)
    assert np.allclose(result.estimated_error, expected.sem, rtol=1e-12)
    assert np.allclose(result - 1e9, expected.mean - 1e9) and result[0] == result.data[0]
    assert np.asarray(result).shape == (4,) and result.failed_run_ids == []
    record = next((tmp_path / ".parallelaverage").glob("1_noisy/job.json")).read_text()
    assert '"partition": "debug"' in record and '"status": "completed"' in record


def test_large_outputs_merge_slice_by_slice_on_an_odd_rank_count(tmp_path):
    # a state just over the slice threshold on 3 ranks (two ranks are folded into one)
    from parallelaverage import mpi

    elements = mpi.SPLIT_MIN_BYTES_PER_RANK * 3 // 24 + 1000

    @parallel_average(N_runs=30, N_tasks=3, seed=3, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def field(offset, n):
        return offset + pa.rng().standard_normal(n)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the worker's merge succeeded: no job ended early
        result = wait(field)(1e9, elements)
    # the ranks' own merge wrote the result (the caller could also have merged the
    # snapshots after a crash, so a right answer alone would not prove it)
    launch_no = tmp_path / ".parallelaverage" / "1_field" / "attempts" / "1"
    assert (launch_no / "exit_code").read_text().strip() == "0", (launch_no / "stderr.txt").read_text()
    assert (launch_no / "result.pkl").is_file()
    expected = pa.Welford()
    for run in range(30):
        expected.add(1e9 + np.random.default_rng(np.random.SeedSequence(3, spawn_key=(run,))).standard_normal(elements))
    assert result.successful_run_ids == list(range(30)) and result.data.shape == (elements,)
    assert np.allclose(result.data, expected.mean, rtol=1e-15, atol=0)
    assert np.allclose(result.estimated_variance, expected.variance, rtol=1e-12, atol=0)


def test_a_merge_that_breaks_in_the_ranks_is_reported_and_the_snapshots_still_count(tmp_path):
    @parallel_average(N_runs=8, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def sabotaged():
        from parallelaverage import mpi

        def broken(*args, **kwargs):
            raise RuntimeError("the merge broke")

        mpi.allreduce = broken  # in this rank's process only: the worker's final merge fails
        return float(pa.run_id())

    with pytest.warns(pa.JobWarning, match="exited with code [1-9].* without writing its result"):
        result = wait(sabotaged)()
    assert result.data == pytest.approx(3.5, rel=1e-15) and result.successful_run_ids == list(range(8))
    launch_no = tmp_path / ".parallelaverage" / "1_sabotaged" / "attempts" / "1"
    assert "the merge broke" in (launch_no / "stderr.txt").read_text()


def test_run_ids_are_visible_inside_runs(tmp_path):
    @parallel(N_runs=(2, 3), N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def which():
        return (pa.run_id(), os.environ["RUN_ID"])

    outputs = wait(which)()
    assert list(outputs) == [(i, j) for i in range(2) for j in range(3)]
    assert all(outputs[run] == (run, str(run)) for run in outputs)


def test_tuple_returns_and_partial_averaging(tmp_path):
    @parallel_average(N_runs=20, N_tasks=2, average_results=[0, 1], queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def several():
        return np.full(3, float(pa.run_id())), pa.run_id() ** 2, "label"

    first, second, label = wait(several)()
    assert np.allclose(first.data, 9.5) and np.isclose(second.data, np.mean(np.arange(20) ** 2))
    assert np.isclose(second.estimated_variance, np.var(np.arange(20) ** 2, ddof=1))
    assert label == "label"


def test_weighted_samples(tmp_path):
    @parallel_average(N_runs=30, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def weighted():
        run = pa.run_id()
        return WeightedSample(np.array([run, 2.0 * run]), weight=1.0 + run % 3)

    result = wait(weighted)()
    runs = np.arange(30)
    weights = 1.0 + runs % 3
    assert np.allclose(result.data, [np.average(runs, weights=weights), 2 * np.average(runs, weights=weights)])
    m2 = np.sum(weights * (runs - np.average(runs, weights=weights)) ** 2)
    total, squares = weights.sum(), np.sum(weights**2)
    # the unbiased variance with reliability weights, and Kish's effective count (docs/statistics.md)
    assert np.isclose(result.estimated_variance[0], m2 / (total - squares / total))
    assert np.isclose(result.estimated_error[0], np.sqrt(result.estimated_variance[0] * squares / total**2))


@pytest.mark.parametrize("encoding", ["pickle", "json"])
def test_encodings_round_trip_outputs(tmp_path, encoding):
    @parallel(N_runs=6, N_tasks=2, encoding=encoding, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def varied():
        run = pa.run_id()
        return {"run": run, "array": np.arange(run, dtype=np.int32), "z": 1j * run, "pair": (run, "x")}

    outputs = wait(varied)()
    assert (tmp_path / ".parallelaverage/1_varied/attempts/1").glob(f"outputs-r*.{'jsonl' if encoding == 'json' else 'pkl'}")
    for run in range(6):
        out = outputs[run]
        assert out["run"] == run and out["z"] == 1j * run and tuple(out["pair"]) == (run, "x")
        assert np.array_equal(out["array"], np.arange(run)) and out["array"].dtype == np.int32


def test_keep_runs_with_averaging(tmp_path):
    @parallel_average(N_runs=8, N_tasks=2, keep_runs=True, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def kept():
        return float(pa.run_id())

    result = wait(kept)()
    assert result.data == pytest.approx(3.5, rel=1e-15) and dict(result.runs) == {i: float(i) for i in range(8)}


def test_failed_runs_are_reported_and_re_submitted(tmp_path):
    marker = tmp_path / "fail-once"
    marker.write_text("")

    @parallel_average(N_runs=12, N_tasks=3, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def flaky(marker_path):
        if pa.run_id() in (3, 7) and os.path.exists(marker_path):
            raise RuntimeError(f"run {pa.run_id()} broke")
        return float(pa.run_id())

    with pytest.warns(RunsFailedWarning, match=r"(?s)2 / 12 runs failed; the first error \(run \d+\):\n.*in flaky.*RuntimeError: run \d broke"):
        partial = wait(flaky)(str(marker))
    assert partial.failed_run_ids == [3, 7] and len(partial.successful_run_ids) == 10
    marker.unlink()
    assert re_submit(flaky)(str(marker)) is None
    result = wait(flaky)(str(marker))
    assert result.successful_run_ids == list(range(12)) and result.failed_run_ids == []
    assert result.data == 5.5 and np.isclose(result.estimated_variance, np.var(np.arange(12.0), ddof=1))


def test_unaverageable_outputs_fail_with_a_clear_message(tmp_path):
    @parallel_average(N_runs=4, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def mixed():
        return "text" if pa.run_id() == 2 else float(pa.run_id())

    with pytest.warns(RunsFailedWarning, match="returned str 'text', which cannot be averaged.*@parallel"):
        result = wait(mixed)()
    assert result.successful_run_ids == [0, 1, 3] and result.data == pytest.approx(4 / 3)


def test_dont_submit_an_unknown_call_lists_the_closest(tmp_path):
    @parallel(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def known(L):
        return L

    wait(known)(L=64)
    with pytest.raises(NoJobError, match=r"no job for .*known\(L=65\).*closest stored calls: .*known\(L=64\)"):
        dont_submit(known)(L=65)
    assert jobs_in(tmp_path) == ["1_known"]


def test_partial_results_while_running(tmp_path, monkeypatch):
    monkeypatch.setenv("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "0")
    go = tmp_path / "go"

    @parallel_average(N_runs=20, N_tasks=2, dynamic_load_balancing=False, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def gated(go_path):
        if pa.run_id() >= 10:
            while not os.path.exists(go_path):
                time.sleep(0.01)
        return float(pa.run_id())

    gated(str(go))
    deadline = time.monotonic() + 30
    while True:  # static split: each rank finishes its 5 quick runs, then waits at the gate
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            partial = gated(str(go))
        if partial is not None and len(partial.successful_run_ids) == 10 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert partial.successful_run_ids == list(range(10)) and partial.data == 4.5
    assert any("10 / 20 runs are not ready yet!" in str(w.message) for w in caught)
    go.write_text("")
    result, caught = settle(gated, str(go))
    assert result.successful_run_ids == list(range(20)) and not caught


def test_cancel_a_running_job_and_report_it_ended(tmp_path):
    @parallel_average(N_runs=4, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def slow():
        time.sleep(60)
        return 1.0

    slow()
    time.sleep(0.5)
    tree = process_tree(launch_pid(tmp_path, "1_slow"))
    assert len(tree) >= 4  # wrapper, mpiexec, proxy, 2 ranks
    assert cancel_job(slow)() is None
    assert not [pid for pid in tree if process_tree(pid)], "processes of the cancelled job survive"
    with pytest.warns(JobEndedWarning, match="job was cancelled with 4 of 4 runs missing; use re_submit"):
        assert slow() is None
    assert '"status": "cancelled"' in (tmp_path / ".parallelaverage/1_slow/job.json").read_text()


def test_killed_job_is_reported_as_ended_not_running(tmp_path):
    @parallel(N_runs=3, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def stuck():
        time.sleep(60)

    stuck()
    time.sleep(0.5)
    for pid in process_tree(launch_pid(tmp_path, "1_stuck")):  # the whole job, as a node failure would
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stuck()
        messages = [str(w.message) for w in caught]
        if any("job ended with 3 of 3 runs missing; use re_submit" in m for m in messages):
            break
        assert time.monotonic() < deadline, messages
        time.sleep(0.1)


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from parallelaverage import parallel_average, wait

    SCALE = 3.0  # a global of a notebook-style __main__ function

    @parallel_average(N_runs=10, N_tasks=2, queuing_system="local", path=sys.argv[1])
    def scaled(x):
        return SCALE * x

    {action}
""")


def test_notebook_style_function_using_globals(tmp_path):
    script = SCRIPT.format(action="print('RESULT', float(wait(scaled)(2.0).data))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RESULT 6.0" in done.stdout


def test_job_completes_after_the_caller_exits(tmp_path):
    script = SCRIPT.format(action="scaled(5.0)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "submitting job 1_scaled" in done.stdout, done.stderr
    check = SCRIPT.format(action="print('RESULT', float(wait(scaled)(5.0).data))")
    done = subprocess.run([sys.executable, "-c", check, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert "RESULT 15.0" in done.stdout and "submitting" not in done.stdout, done.stderr


@pytest.mark.parametrize("options, error, message", [
    (dict(N_runs=0, N_tasks=1), ValueError, "N_runs=0: must be at least 1"),
    (dict(N_runs=-3, N_tasks=1), ValueError, "N_runs=-3"),
    (dict(N_runs=2.5, N_tasks=1), TypeError, "N_runs=2.5"),
    (dict(N_runs=(2, 0), N_tasks=1), ValueError, "every dimension must be at least 1"),
    (dict(N_runs=4, N_tasks=0), ValueError, "N_tasks=0: must be between 1 and the number of runs"),
    (dict(N_runs=4, N_tasks=5), ValueError, "N_tasks=5"),
    (dict(N_runs=4, N_tasks=2, queuing_system="pbs"), ValueError, "queuing_system='pbs'"),
    (dict(N_runs=4, N_tasks=2, encoding="xml"), ValueError, "encoding='xml'"),
    (dict(N_runs=4, N_tasks=2, time="1:00\n#SBATCH --x"), ValueError, "newline or control character"),
    (dict(N_runs=4, N_tasks=2, path="/no/such/dir"), ValueError, "no such directory"),
    (dict(N_runs=4, N_tasks=2, average_results="some"), ValueError, "average_results='some'"),
    (dict(N_runs=4, N_tasks=2, keep_runs="yes"), TypeError, "keep_runs='yes'"),
])
def test_bad_options_fail_at_decoration_time(options, error, message):
    decorator = parallel_average if "average_results" in options or "keep_runs" in options else parallel
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        decorator(**options)


def test_print_output_load_job_code_change_and_cleanup(tmp_path, capsys):
    @parallel_average(N_runs=4, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def chatty(x):
        print(f"hello from run {pa.run_id()}")
        return x

    wait(chatty)(2.0)
    capsys.readouterr()
    pa.print_job_output(chatty)(2.0)
    printed = capsys.readouterr().out
    assert "stdout.txt" in printed and all(f"hello from run {i}" in printed for i in range(4))
    loaded = pa.load_job("1_chatty", path=tmp_path)
    assert loaded.data == 2.0 and loaded.job_name == "1_chatty"

    @parallel_average(N_runs=4, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def chatty(x):  # noqa: F811 - the same function, edited
        return 2 * x

    with pytest.warns(pa.CodeChangedWarning, match="changed since job 1_chatty.*@do_submit"):
        assert chatty(2.0).data == 2.0  # the stored result, as the original did
    do_submit(chatty)(2.0)
    assert wait(chatty)(2.0).data == 4.0
    # cleanup: the replaced job goes, and redundant snapshots on request; the current stays
    removed = pa.cleanup(tmp_path, superseded=True, redundant_snapshots=True)
    assert tmp_path / ".parallelaverage/1_chatty" in removed
    assert not (tmp_path / ".parallelaverage/1_chatty").exists()
    assert not list((tmp_path / ".parallelaverage/2_chatty").rglob("snapshot-r*.pkl"))
    assert dont_submit(chatty)(2.0).data == 4.0


def test_an_argument_that_cannot_be_stored_fails_before_anything_is_written(tmp_path):
    import threading

    @parallel(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def takes(lock):
        return 1

    with pytest.raises(TypeError, match="argument 'lock' of takes"):
        takes(threading.Lock())
    assert not (tmp_path / ".parallelaverage").exists() or jobs_in(tmp_path) == []


def test_a_waiting_caller_polls_no_sooner_than_a_hundred_times_its_poll_s_cost(tmp_path, monkeypatch):
    """``Job.watch`` on a launch whose state is slow to read (1,000 ranks' records: ~26 ms
    here): after the first 2 s it sleeps at least 100x a poll's duration. A real job is
    watched; its state reads and the clock are replaced by a clock that only the reads
    and the sleeps advance, so the sleeps asked for are exact."""
    import dataclasses

    from parallelaverage import job as job_module
    from parallelaverage.job import Job

    @parallel_average(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def small():
        return 1.0

    wait(small)()
    job = Job.load("1_small", tmp_path)
    finished = job.state(light=True)
    running = dataclasses.replace(finished, status="running")
    clock = {"now": 0.0}
    slept: list[float] = []

    class FakeTime:
        @staticmethod
        def monotonic() -> float:
            return clock["now"]

        @staticmethod
        def sleep(seconds: float) -> None:
            slept.append(seconds)
            clock["now"] += seconds

    def slow_state(light: bool = False):
        clock["now"] += 0.026  # one read of 1,000 status records
        return running if clock["now"] < 60.0 else finished

    monkeypatch.setattr(job_module, "time", FakeTime)
    monkeypatch.setattr(job, "state", slow_state)
    assert job.watch(progress=False).status == "completed"
    early = [s for s, at in zip(slept, np.cumsum(slept)) if at < 2.0]
    later = slept[len(early) + 1:]
    assert early and all(s == pytest.approx(0.01) for s in early[:3]), early  # a short job is seen at once
    assert later and all(s >= 100 * 0.026 - 1e-9 for s in later), later
    assert len(slept) < len(early) + 60 / 2.6 + 2
