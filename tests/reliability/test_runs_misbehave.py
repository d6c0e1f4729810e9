"""Runs that misbehave: every outcome explicit, with real mpiexec processes and real signals.

A run may raise anything (``sys.exit``, ``KeyboardInterrupt``, a ``BaseException`` of
its own), kill its process (segfault, ``abort``, ``os._exit``), return what its
encoding cannot store, or fail at random; a rank may be stopped from outside. Each
test shows what the caller then sees: which runs are done, failed, crashed or missing,
the message, the line a warning points at, and what ``re_submit`` runs next. The
table "Runs that misbehave" of ``docs/reliability.md`` lists them.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings

import numpy as np
import pytest

import parallelaverage as pa
from pa_testing import launch_pid, process_tree
from parallelaverage import (
    Job, JobEndedWarning, JobNotFoundError, JobWarning, NotReadyWarning, ParallelAverageError, RunsFailedError,
    RunsFailedWarning, cancel_job, dont_submit, load_job, parallel, parallel_average, re_submit, wait,
)

THIS = sys.modules[__name__]
RANKS = [1, 2, 4]


# ---------------------------------------------------------------- helpers
def local(tmp_path, **extra):
    """Options of a local job in ``tmp_path`` whose functions travel by value."""
    return dict(queuing_system="local", path=tmp_path, pickle_by_value=[THIS], **extra)


def call(function, *args):
    """Call; return the result and the job warnings the call emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args)
    return result, [w for w in caught if issubclass(w.category, JobWarning)]


def texts(caught, category=JobWarning) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, category)]


def poll(condition, what: str, timeout_s: float = 120):
    """Poll ``condition`` until it returns something true (a generous deadline, no fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def until_stopped(function, *args):
    """``dont_submit(function)(*args)`` until the job no longer runs: the last result and warnings."""
    def stopped():
        result, caught = call(dont_submit(function), *args)
        return None if texts(caught, NotReadyWarning) else (result, caught)

    return poll(stopped, "the job to stop")


def static_blocks(n_runs: int, n_tasks: int) -> list[range]:
    """The runs of each rank with ``dynamic_load_balancing=False`` (the worker's split)."""
    return [range(n_runs * rank // n_tasks, n_runs * (rank + 1) // n_tasks) for rank in range(n_tasks)]


def rank_of(run: int, n_runs: int, n_tasks: int) -> int:
    return next(rank for rank, block in enumerate(static_blocks(n_runs, n_tasks)) if run in block)


def logged(log) -> list[tuple[int, int]]:
    """``(run, pid)`` of each line a run appended to ``log``."""
    if not os.path.exists(log):
        return []
    with open(log) as file:
        return [(int(run), int(pid)) for run, pid in (line.split() for line in file if line.endswith("\n"))]


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """``python -m parallelaverage ...`` as users run it, from ``cwd``."""
    return subprocess.run([sys.executable, "-m", "parallelaverage", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


# ------------------------------------------------- 1. anything a run raises
class Diverged(BaseException):
    """A BaseException of the user's own (not an Exception)."""


RAISED = {1: "sys.exit", 7: "KeyboardInterrupt", 12: "SystemExit", 18: "GeneratorExit", 20: "Diverged"}
"""run -> what it raises; each is early in its rank's static block on 1, 2 and 4 ranks (blocks of 6)."""

LAST_LINES = {1: "SystemExit: diverged", 7: "KeyboardInterrupt: pressed in run 7", 12: "SystemExit: 4",
              18: "GeneratorExit: closed in run 18", 20: f"{__name__}.Diverged: went to infinity"}


def raise_as(kind: str, run: int) -> None:
    if kind == "sys.exit":
        sys.exit("diverged")
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt(f"pressed in run {run}")
    if kind == "SystemExit":
        raise SystemExit(4)
    if kind == "GeneratorExit":
        raise GeneratorExit(f"closed in run {run}")
    raise Diverged("went to infinity")


def stubborn(log_path):
    run = pa.run_id()
    with open(log_path, "a") as log:
        log.write(f"{run} {os.getpid()}\n")
    if run in RAISED:
        raise_as(RAISED[run], run)
    return float(run)


@pytest.mark.parametrize("n_tasks", RANKS)
def test_a_run_that_raises_a_base_exception_fails_alone_and_its_rank_goes_on(tmp_path, n_tasks):
    log = tmp_path / "runs.log"
    function = parallel_average(N_runs=24, N_tasks=n_tasks, dynamic_load_balancing=False, **local(tmp_path))(stubborn)
    result, caught = call(wait(function), str(log))
    others = [run for run in range(24) if run not in RAISED]
    assert result.failed_run_ids == sorted(RAISED) and result.successful_run_ids == others
    assert result.count == 19 and result.data == pytest.approx(np.mean(others), rel=1e-15)
    assert Job.load("1_stubborn", tmp_path).status == "completed"
    # one warning, with the first failed run's traceback down to the user's line
    [warning] = caught
    assert warning.category is RunsFailedWarning, texts(caught)
    message = str(warning.message)
    assert message.startswith("[parallelaverage] 5 / 24 runs failed; the first error (run 1):\nTraceback")
    assert f'File "{__file__}", line' in message and "sys.exit(\"diverged\")" in message
    assert message.rstrip().endswith("SystemExit: diverged")
    failed = Job.load(1, tmp_path).state().failed
    assert {run: failed[run].rstrip().splitlines()[-1] for run in failed} == LAST_LINES
    # the rank that ran a failing run ran the next run of its block too, and it succeeded
    pid_of = dict(logged(log))
    assert sorted(pid_of) == list(range(24))
    for run in RAISED:
        assert pid_of[run + 1] == pid_of[run] and run + 1 in result.successful_run_ids


# -------------------------------------------- 1. a signal from outside a rank
def wait_once_for_a_signal(log_path, waiting_path) -> None:
    """The first run, on any rank, that starts after its rank finished 5 runs says so in
    ``waiting_path`` and waits there (at most 2 minutes) for the test's signal."""
    if os.path.exists(waiting_path) or sum(pid == os.getpid() for _, pid in logged(log_path)) < 5:
        return
    try:
        fd = os.open(waiting_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another rank waits
    os.write(fd, f"{pa.run_id()} {os.getpid()}\n".encode())
    os.close(fd)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.01)


def steady(log_path, waiting_path):
    wait_once_for_a_signal(log_path, waiting_path)
    time.sleep(0.01)
    with open(log_path, "a") as log:  # the run is finished once logged
        log.write(f"{pa.run_id()} {os.getpid()}\n")
    return float(pa.run_id())


@pytest.mark.parametrize("n_tasks", RANKS)
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_from_outside_stops_the_rank_after_a_checkpoint_and_re_submit_completes(
        tmp_path, signal_name, n_tasks):
    number = getattr(signal, signal_name)
    n_runs, log, waiting = 400, tmp_path / "finished.log", tmp_path / "waiting"
    function = parallel_average(N_runs=n_runs, N_tasks=n_tasks, **local(tmp_path))(steady)
    function(str(log), str(waiting))
    run, pid = poll(lambda: logged(waiting), "a run to wait for the signal")[0]
    os.kill(pid, number)  # the rank is inside the user's function
    result, caught = until_stopped(function, str(log), str(waiting))
    poll(lambda: not process_tree(launch_pid(tmp_path, "1_steady")), "every process of the launch to end")
    messages = texts(caught)
    [stopped] = [rank for rank in Job.load(1, tmp_path).state().launches[0].ranks if rank.pid == pid]
    assert stopped.stage == "stopped" and stopped.signal == number  # its status record says so
    # the launch's exit code is the first rank's to end: the stopped one's (128 + signal)
    # or, with MPICH, one it then killed (9); the warning names the stopped rank either way
    assert any("launch 1 exited with code " in m and f"without writing its result: rank {stopped.rank} was "
               f"stopped by signal {number}, {signal_name}, after a checkpoint" in m for m in messages), messages
    missing = n_runs - len(result.successful_run_ids)
    assert any(f"job ended with {missing} of {n_runs} runs missing; use re_submit" in m for m in messages), messages
    # a stop from outside is no failure; the run it interrupted is missing
    assert result.failed_run_ids == [] and run not in result.successful_run_ids
    # the stopped rank wrote a checkpoint first: every run it finished is kept, though the
    # snapshot interval (2 s) had not come round again
    finished_by_rank = {done for done, by in logged(log) if by == pid}
    assert len(finished_by_rank) >= 5 and finished_by_rank <= set(result.successful_run_ids)
    assert result.count == len(result.successful_run_ids)
    print(f"{signal_name} to rank {stopped.rank} of {n_tasks}: its {len(finished_by_rank)} finished runs kept "
          f"({stopped.n_snapshots} snapshots), {missing} of {n_runs} runs missing")
    assert re_submit(function)(str(log), str(waiting)) is None
    final = wait(function)(str(log), str(waiting))
    assert final.successful_run_ids == list(range(n_runs)) and final.failed_run_ids == []
    assert final.count == n_runs and final.data == pytest.approx((n_runs - 1) / 2, rel=1e-15)  # none counted twice


# ------------------------------------------------ 2. a run that kills its process
CRASH_RUN, CRASH_RUNS_TOTAL = 17, 24
CRASHES = {"segfault": "signal 11, SIGSEGV", "abort": "signal 6, SIGABRT", "os._exit": None}


def crash(how: str) -> None:
    if how == "segfault":
        ctypes.string_at(0)
    elif how == "abort":
        os.abort()
    else:
        os._exit(3)


def in_flight_at_the_crash(n_tasks: int) -> set[int]:
    """The third run of every other rank's static block: it is running when run 17 crashes."""
    crash_rank = rank_of(CRASH_RUN, CRASH_RUNS_TOTAL, n_tasks)
    return {block[2] for rank, block in enumerate(static_blocks(CRASH_RUNS_TOTAL, n_tasks)) if rank != crash_rank}


def fragile(how, folder, n_tasks):
    """Armed (launch 1): each rank but run 17's finishes two runs and then stays in its
    third, and run 17 crashes its rank once they all do. Disarmed: every run returns."""
    run = pa.run_id()
    armed = os.path.exists(os.path.join(folder, "armed"))
    if armed and run == CRASH_RUN:
        deadline = time.monotonic() + 120
        while len([n for n in os.listdir(folder) if n.startswith("in-flight-")]) < n_tasks - 1:
            assert time.monotonic() < deadline, "the other ranks never started their third run"
            time.sleep(0.01)
        print(f"run {run} is about to crash", file=sys.stderr, flush=True)
        crash(how)
    if armed and run in in_flight_at_the_crash(n_tasks):
        open(os.path.join(folder, f"in-flight-{run}"), "w").close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until MPICH ends this rank
            time.sleep(0.01)
    return float(run)


def crashed_job(tmp_path, monkeypatch, how: str, n_tasks: int):
    """Run ``fragile`` armed until its job ends; the decorated function and what the call saw."""
    monkeypatch.setenv("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "0")  # every finished run is in a snapshot
    (tmp_path / "armed").write_text("")
    function = parallel_average(N_runs=CRASH_RUNS_TOTAL, N_tasks=n_tasks, dynamic_load_balancing=False,
                                **local(tmp_path))(fragile)
    args = (how, str(tmp_path), n_tasks)
    function(*args)
    return function, args, until_stopped(function, *args)


def crash_headline(how: str, rank: int) -> str:
    if CRASHES[how] is None:
        return f"run {CRASH_RUN} ended its rank's process (rank {rank}) with os._exit(3)"
    return f"run {CRASH_RUN} crashed the rank (rank {rank}, {CRASHES[how]})"


@pytest.mark.parametrize("n_tasks", RANKS)
@pytest.mark.parametrize("how", list(CRASHES))
def test_a_run_that_kills_its_process_is_a_crashed_run_and_re_submit_runs_it_only_when_asked(
        tmp_path, monkeypatch, capsys, how, n_tasks):
    function, args, (result, caught) = crashed_job(tmp_path, monkeypatch, how, n_tasks)
    blocks = static_blocks(CRASH_RUNS_TOTAL, n_tasks)
    crash_rank = rank_of(CRASH_RUN, CRASH_RUNS_TOTAL, n_tasks)
    in_flight = in_flight_at_the_crash(n_tasks)
    done = {run for rank, block in enumerate(blocks)
            for run in (range(block.start, CRASH_RUN) if rank == crash_rank else block[:2])}
    # the crashed run failed; the runs MPICH killed in flight, and those never started, are missing
    assert result.successful_run_ids == sorted(done) and result.failed_run_ids == [CRASH_RUN]
    state = Job.load(1, tmp_path).state()
    assert list(state.space.ids(state.crashed)) == [CRASH_RUN]
    assert set(state.missing) == set(range(CRASH_RUNS_TOTAL)) - done - {CRASH_RUN} and in_flight <= set(state.missing)
    [failed] = texts(caught, RunsFailedWarning)
    exit_code = state.launches[0].exit_code
    assert exit_code not in (None, 0)
    stderr_path = tmp_path / ".parallelaverage/1_fragile/attempts/1/stderr.txt"
    assert failed.startswith(f"[parallelaverage] 1 / 24 runs failed (1 crashed their rank); the first error (run 17):\n"
                             f"{crash_headline(how, crash_rank)}\nlaunch 1 exited with code {exit_code}")
    if CRASHES[how] is not None:  # faulthandler's report, down to the user's line
        assert "Fatal Python error: " in failed and f'File "{__file__}", line' in failed and " in crash" in failed
    assert failed.rstrip().endswith(f"last lines of {stderr_path}:\nrun 17 is about to crash")
    missing = CRASH_RUNS_TOTAL - len(done) - 1
    assert any(f"job ended with {missing} of 24 runs missing; use re_submit" in m for m in texts(caught, JobEndedWarning))
    # re_submit runs the missing runs, not the crashed one
    (tmp_path / "armed").unlink()
    capsys.readouterr()
    re_submit(function)(*args)
    assert f"re-submitting {missing} runs of job 1_fragile" in capsys.readouterr().out
    state = Job.load(1, tmp_path).state()
    assert set(state.space.ids(state.launches[1].plan.positions)) == set(state.missing)  # 17 left out
    result, caught = call(wait(function), *args)
    assert result.successful_run_ids == [run for run in range(24) if run != CRASH_RUN]
    assert result.failed_run_ids == [CRASH_RUN] and result.count == 23
    [failed] = texts(caught, RunsFailedWarning)
    assert crash_headline(how, crash_rank) in failed and not texts(caught, JobEndedWarning)
    assert re_submit(function)(*args) is None
    assert ("job 1_fragile has no missing or failed runs; nothing to re-submit (1 runs that crashed their rank "
            "are left out: re_submit(include_crashed=True) runs them)") in capsys.readouterr().out
    # include_crashed=True runs it again (disarmed now: it returns)
    re_submit(function, include_crashed=True)(*args)
    result, caught = call(wait(function), *args)
    assert result.successful_run_ids == list(range(24)) and result.failed_run_ids == [] and not caught
    assert result.count == 24 and result.data == pytest.approx(11.5, rel=1e-15)


def test_a_crash_before_any_run_succeeded_raises_runs_failed_error_naming_the_signal(tmp_path):
    @parallel_average(N_runs=3, N_tasks=1, **local(tmp_path))
    def doomed():
        crash("segfault")

    doomed()
    poll(Job.load(1, tmp_path).done, "the job to stop")
    with pytest.raises(RunsFailedError) as raised, pytest.warns(JobEndedWarning, match="2 of 3 runs missing"):
        doomed()
    error = raised.value
    assert isinstance(error, ParallelAverageError) and isinstance(error, RuntimeError)
    assert error.failed_run_ids == [0] and error.job_name == "1_doomed"
    assert error.first_traceback.startswith("run 0 crashed the rank (rank 0, signal 11, SIGSEGV)\nlaunch 1 exited")
    assert "Fatal Python error: Segmentation fault" in error.first_traceback
    assert str(error).startswith("every run of job 1_doomed that ran failed: 1 of 3 (1 crashed their rank); "
                                 "2 more are missing. The first error (run 0):\nrun 0 crashed the rank")


def viewer_job_details(path, job_name: str) -> dict:
    """``/api/jobs/<name>`` of a real viewer of ``path``, serving in a thread."""
    from parallelaverage.viewer import make_server

    server, url = make_server(path)
    threading.Thread(target=server.serve_forever, name="viewer", daemon=True).start()
    try:
        base, token = url.split("/?token=")
        with urllib.request.urlopen(f"{base}/api/jobs/{job_name}?token={token}", timeout=30) as response:
            return json.loads(response.read())
    finally:
        server.shutdown()
        server.server_close()


def test_a_crash_is_shown_with_its_signal_and_exit_code_by_show_json_and_the_viewer_and_resubmit_include_crashed(
        tmp_path, monkeypatch):
    function, args, _ = crashed_job(tmp_path, monkeypatch, "segfault", 2)
    headline = "run 17 crashed the rank (rank 1, signal 11, SIGSEGV)"
    exit_code = Job.load(1, tmp_path).state().launches[0].exit_code
    shown = cli("show", "1", cwd=tmp_path)
    assert shown.returncode == 1, shown.stderr
    assert f"launches   1 ended (exit code {exit_code})" in shown.stdout
    assert f"crashed    {headline} in launch 1 (exit code {exit_code})" in shown.stdout
    assert "parallelaverage resubmit 1_fragile --include-crashed" in shown.stdout
    summary = json.loads(cli("show", "1", "--json", cwd=tmp_path).stdout)
    assert summary["crashed_runs"] == [17] and summary["failed_runs"] == [17]
    assert summary["crashes"] == [{"run": 17, "launch": 1, "rank": 1, "signal": 11, "signal_name": "SIGSEGV",
                                   "exit_code": None, "launch_exit_code": exit_code, "message": headline}]
    assert summary["launches"][0]["exit_code"] == exit_code
    assert summary["first_failure"]["traceback"].startswith(f"{headline}\nlaunch 1 exited with code {exit_code}\n")
    details = viewer_job_details(tmp_path, "1_fragile")
    assert details["state"]["crashed"] == 1 and details["state"]["crashes"] == summary["crashes"]
    assert details["state"]["launches"][0]["exit_code"] == exit_code
    assert details["failures"][0]["error"] == headline and details["failures"][0]["runs"] == [17]
    # the command line's resubmit leaves the crashed run out unless --include-crashed
    (tmp_path / "armed").unlink()
    assert cli("resubmit", "1", cwd=tmp_path).returncode == 0
    result, _ = call(wait(function), *args)
    assert result.failed_run_ids == [17] and len(result.successful_run_ids) == 23
    resubmitted = cli("resubmit", "1_fragile", "--include-crashed", cwd=tmp_path)
    assert resubmitted.returncode == 0 and "re-submitting 1 runs of job 1_fragile" in resubmitted.stdout
    result, caught = call(wait(function), *args)
    assert result.successful_run_ids == list(range(24)) and not caught
    assert json.loads(cli("show", "1", "--json", cwd=tmp_path).stdout)["crashes"] == []


# ------------------------------------------ 3. an output the encoding cannot store
UNSTORABLE_RUN = 5


def unstorable(kind, averaged):
    """Every run returns plain data but run 5: a set (JSON has none) or a generator (no pickle)."""
    run = pa.run_id()
    value = [run, run + 1]
    if run == UNSTORABLE_RUN:
        value = {run} if kind == "set" else (i for i in range(run))
    return (float(run), value) if averaged else value


@pytest.mark.parametrize("n_tasks", RANKS)
@pytest.mark.parametrize("kept_by", ["parallel", "parallel_average(keep_runs=True)"])
@pytest.mark.parametrize("encoding, kind", [("json", "set"), ("pickle", "generator")])
def test_an_output_the_encoding_cannot_store_fails_its_run_alone_with_a_one_line_message(
        tmp_path, encoding, kind, kept_by, n_tasks):
    averaged = kept_by != "parallel"
    decorate = parallel_average(N_runs=12, N_tasks=n_tasks, average_results=[0], keep_runs=True, encoding=encoding,
                                **local(tmp_path)) if averaged else \
        parallel(N_runs=12, N_tasks=n_tasks, encoding=encoding, **local(tmp_path))
    function = decorate(unstorable)
    result, caught = call(wait(function), kind, averaged)
    others = [run for run in range(12) if run != UNSTORABLE_RUN]
    outputs = result[0].runs if averaged else result
    expected = {run: (float(run), [run, run + 1]) if averaged else [run, run + 1] for run in others}
    assert list(outputs) == others and {run: outputs[run] for run in outputs} == expected
    if averaged:
        assert result[0].failed_run_ids == [UNSTORABLE_RUN] and result[0].successful_run_ids == others
        assert result[0].data == pytest.approx(np.mean(others), rel=1e-15) and result[0].count == 11
    [warning] = caught
    assert warning.category is RunsFailedWarning
    message = Job.load(1, tmp_path).state().failed[UNSTORABLE_RUN]
    assert str(warning.message) == f"[parallelaverage] 1 / 12 runs failed; the first error (run 5):\n{message}"
    assert "\n" not in message and message.startswith(f"run 5 returned a {'tuple' if averaged else kind}")
    assert f"'{kind}'" in message or f"type {kind} " in message  # the type it could not store, by name
    assert f"which encoding='{encoding}' cannot store" in message


# ------------------------------------------------------------ 4. every run fails
def hopeless(gate_path):
    """Every run fails; the last run of each rank's static block first waits at the gate."""
    run = pa.run_id()
    if run in (2, 5):
        deadline = time.monotonic() + 120
        while not os.path.exists(gate_path) and time.monotonic() < deadline:
            time.sleep(0.01)
    raise ValueError(f"run {run} diverged")


@pytest.mark.parametrize("decorator", [parallel_average, parallel])
def test_when_every_run_fails_a_call_returns_none_while_the_job_runs_then_raises_runs_failed_error(
        tmp_path, monkeypatch, decorator):
    monkeypatch.setenv("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "0")  # each failure visible at once
    gate = tmp_path / "gate"
    function = decorator(N_runs=6, N_tasks=2, dynamic_load_balancing=False, **local(tmp_path))(hopeless)
    assert function(str(gate)) is None  # submitted
    # runs 0, 1, 3 and 4 fail, 2 and 5 wait: the job runs on, and a call returns None with the warnings
    def four_failed():
        result, caught = call(function, str(gate))
        return (result, caught) if any("4 / 6 runs failed" in m for m in texts(caught)) else None

    result, caught = poll(four_failed, "four runs to fail")
    assert result is None and Job.load(1, tmp_path).status == "running"
    assert sorted(w.category.__name__ for w in caught) == ["NotReadyWarning", "RunsFailedWarning"]
    assert "2 / 6 runs are not ready yet!" in texts(caught, NotReadyWarning)[0]
    assert texts(caught, RunsFailedWarning)[0].rstrip().endswith("ValueError: run 0 diverged")
    # once the job has stopped, a call raises
    gate.write_text("")
    poll(Job.load(1, tmp_path).done, "the job to stop")
    for how in (function, dont_submit(function), wait(function)):
        with pytest.raises(RunsFailedError) as raised:
            how(str(gate))
        error = raised.value
        assert isinstance(error, ParallelAverageError) and isinstance(error, RuntimeError)
        assert error.failed_run_ids == list(range(6)) and error.job_name == "1_hopeless"
        assert error.first_traceback.startswith("Traceback") and 'in hopeless\n' in error.first_traceback
        assert error.first_traceback.rstrip().endswith("ValueError: run 0 diverged")
        assert str(error).startswith("every run of job 1_hopeless that ran failed: 6 of 6. The first error (run 0):\n")
    with pytest.raises(RunsFailedError):
        load_job(1, path=tmp_path)


# ------------------------------------------------ 5. the streams of re-run runs
STREAM_SEED, THRESHOLD = 11, 0.5


def unlucky(threshold):
    """Fails when its stream's first draw is below the threshold: a stochastic failure."""
    draw = pa.rng().random()
    if draw < threshold:
        raise ValueError(f"unlucky draw {draw!r}")
    return draw


def first_draw(run: int, generation: int) -> float:
    """Run ``run``'s first draw in stream generation ``generation`` (docs/workflow.md)."""
    entropy = STREAM_SEED if generation == 0 else (STREAM_SEED, generation)
    return float(np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(run,))).random())


def test_re_submit_repeats_the_streams_of_failed_runs_and_fresh_streams_gives_new_ones(tmp_path):
    n_runs = 20
    function = parallel(N_runs=n_runs, N_tasks=2, seed=STREAM_SEED, **local(tmp_path))(unlucky)

    def failed_in(generation: int, runs) -> set[int]:
        return {run for run in runs if first_draw(run, generation) < THRESHOLD}

    def outputs_and_errors():
        outputs, _ = call(wait(function), THRESHOLD)
        failed = Job.load(1, tmp_path).state().failed
        return dict(outputs), {run: failed[run].rstrip().splitlines()[-1] for run in failed}

    unlucky_runs = failed_in(0, range(n_runs))
    assert unlucky_runs and unlucky_runs - failed_in(3, unlucky_runs), "choose another STREAM_SEED"
    outputs, errors = outputs_and_errors()  # launch 1
    assert outputs == {run: first_draw(run, 0) for run in range(n_runs) if run not in unlucky_runs}
    assert errors == {run: f"ValueError: unlucky draw {first_draw(run, 0)!r}" for run in unlucky_runs}
    # re_submit: the same streams, so the same runs fail with the same draws
    re_submit(function)(THRESHOLD)  # launch 2
    assert outputs_and_errors() == (outputs, errors)
    # fresh_streams=True: generation 3 (the launch's number) for the re-run runs
    re_submit(function, fresh_streams=True)(THRESHOLD)  # launch 3
    still_failed = failed_in(3, unlucky_runs)
    fresh, errors = outputs_and_errors()
    assert fresh == {**outputs, **{run: first_draw(run, 3) for run in unlucky_runs - still_failed}}
    assert errors == {run: f"ValueError: unlucky draw {first_draw(run, 3)!r}" for run in still_failed}
    # the command line's --fresh-streams: generation 4 for launch 4
    done = cli("resubmit", "1", "--fresh-streams", cwd=tmp_path)
    assert done.returncode == 0 and "(launch 4)" in done.stdout, done.stderr
    last, errors = outputs_and_errors()
    assert last == {**fresh, **{run: first_draw(run, 4) for run in still_failed - failed_in(4, still_failed)}}
    assert errors == {run: f"ValueError: unlucky draw {first_draw(run, 4)!r}" for run in failed_in(4, still_failed)}


def crash_then_raise(folder):
    """Run 2 crashes while ``armed`` exists, raises while ``raising`` exists, else returns."""
    if pa.run_id() == 2:
        if os.path.exists(os.path.join(folder, "armed")):
            crash("segfault")
        if os.path.exists(os.path.join(folder, "raising")):
            raise ValueError("run 2 raised this time")
    return float(pa.run_id())


def test_a_crashed_run_that_raises_when_run_again_is_an_ordinary_failed_run(tmp_path):
    for name in ("armed", "raising"):
        (tmp_path / name).write_text("")
    function = parallel_average(N_runs=4, N_tasks=1, **local(tmp_path))(crash_then_raise)
    function(str(tmp_path))
    poll(Job.load(1, tmp_path).done, "the job to stop")
    (tmp_path / "armed").unlink()
    re_submit(function, include_crashed=True)(str(tmp_path))
    result, caught = call(wait(function), str(tmp_path))
    [failed] = texts(caught, RunsFailedWarning)
    assert "1 / 4 runs failed; the first error (run 2)" in failed and "crashed" not in failed
    assert failed.rstrip().endswith("ValueError: run 2 raised this time")
    assert result.failed_run_ids == [2] and list(Job.load(1, tmp_path).state().crashed) == []
    (tmp_path / "raising").unlink()
    re_submit(function)(str(tmp_path))  # an ordinary failed run: re_submit runs it
    result, caught = call(wait(function), str(tmp_path))
    assert result.successful_run_ids == [0, 1, 2, 3] and not caught


# ----------------------------------------- 6. tracebacks name the user's code
MODULE = '''\
def simulate(x):
    return helper(x)


def helper(x):
    raise ValueError(f"x={x} is out of range")
'''


def test_a_failed_run_traceback_names_the_file_line_and_source_of_a_function_in_an_importable_module(
        tmp_path, monkeypatch):
    source = tmp_path / "importable_simulation.py"
    source.write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # the ranks get the caller's sys.path
    import importable_simulation

    # not pickle_by_value: the ranks import the module by name
    function = parallel_average(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path)(
        importable_simulation.simulate)
    function(7)
    poll(Job.load(1, tmp_path).done, "the job to stop")
    with pytest.raises(RunsFailedError) as raised:
        function(7)
    text = raised.value.first_traceback
    assert (f'File "{source}", line 2, in simulate\n    return helper(x)\n' in text
            and f'File "{source}", line 6, in helper\n    raise ValueError(f"x={{x}} is out of range")\n' in text), text
    assert "<dynamic-code>" not in text and text.rstrip().endswith("ValueError: x=7 is out of range")


SCRIPT = '''\
import json
import sys
import warnings

from parallelaverage import parallel_average, wait


def helper(run):
    raise ValueError(f"run {run} is out of range")


@parallel_average(N_runs=4, N_tasks=2, queuing_system="local", path=sys.argv[1])
def simulate(x):
    from parallelaverage import run_id

    if run_id() % 2:
        helper(run_id())
    return x


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    wait(simulate)(2.0)  # line 23
print(json.dumps([[w.category.__name__, w.filename, w.lineno, str(w.message)] for w in caught]))
'''


def test_a_failed_run_traceback_names_the_file_line_and_source_of_a_script_function_sent_by_value(tmp_path):
    script = tmp_path / "simulation.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [(category, filename, lineno, message)] = json.loads(done.stdout.splitlines()[-1])
    assert category == "RunsFailedWarning" and (filename, lineno) == (str(script), 23)  # the script's line
    assert (f'File "{script}", line 17, in simulate\n    helper(run_id())\n' in message
            and f'File "{script}", line 9, in helper\n    raise ValueError(f"run {{run}} is out of range")\n'
            in message), message
    assert "<dynamic-code>" not in message and message.rstrip().endswith("ValueError: run 1 is out of range")


# --------------------------------------- 7. every warning points at the user's line
def test_every_warning_a_call_emits_points_at_the_callers_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "0")
    gate = str(tmp_path / "gate")
    options = dict(N_runs=4, N_tasks=2, dynamic_load_balancing=False, **local(tmp_path))

    @parallel_average(**options)
    def slow_and_broken(gate_path):
        """Run 0 fails at once; run 3 (the second rank's last) waits at the gate."""
        run = pa.run_id()
        if run == 0:
            raise ValueError("run 0 broke")
        if run == 3:
            deadline = time.monotonic() + 120
            while not os.path.exists(gate_path) and time.monotonic() < deadline:
                time.sleep(0.01)
        return float(run)

    function = slow_and_broken
    function(gate)
    seen: dict[str, int] = {}

    def check(caught, line: int) -> None:
        assert caught, "the call warned nothing"
        for warning in caught:
            assert (warning.filename, warning.lineno) == (__file__, line), (warning.category, warning.filename)
            seen[warning.category.__name__] = seen.get(warning.category.__name__, 0) + 1

    deadline = time.monotonic() + 120
    while True:  # NotReadyWarning and RunsFailedWarning while it runs
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = sys._getframe().f_lineno + 1
            function(gate)
        check(caught, line)
        if any(issubclass(w.category, RunsFailedWarning) for w in caught):
            break
        assert time.monotonic() < deadline, "run 0 never failed"
    cancel_job(function)(gate)
    for action in (lambda f: f, dont_submit, wait):  # JobEndedWarning (and RunsFailedWarning), by every action
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = sys._getframe().f_lineno + 1
            action(function)(gate)
        check(caught, line)

    @parallel_average(**options)
    def slow_and_broken(gate_path):  # noqa: F811 - the same function, edited
        return 0.0

    edited = slow_and_broken
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        edited(gate)
    check(caught, line)
    assert set(seen) == {"NotReadyWarning", "RunsFailedWarning", "JobEndedWarning", "CodeChangedWarning"}, seen


# ------------------------------------------------ 8. load_job and the Job handle
def chatty(x):
    print(f"run {pa.run_id()} says {x}")
    return x + pa.run_id()


def sleeper():
    time.sleep(120)
    return 0.0


def test_load_job_by_number_and_the_job_handle_work_as_documented(tmp_path, capsys):
    function = parallel_average(N_runs=4, N_tasks=2, **local(tmp_path))(chatty)
    wait(function)(1.0)
    wait(function)(2.0)  # job 2_chatty
    by_name = load_job("2_chatty", path=tmp_path)
    for number in ("2", 2):
        same = load_job(number, path=tmp_path)
        assert same.job_name == "2_chatty" and same.data == by_name.data == 3.5
    with pytest.raises(JobNotFoundError, match="no job '7'.*parallelaverage list"):
        load_job(7, path=tmp_path)
    for name in ("2_chatty", "2", 2):
        job = Job.load(name, tmp_path)
        assert job.name == "2_chatty" and job.status == "completed" and job.done()
    assert job.result().data == 3.5 and job.result().successful_run_ids == [0, 1, 2, 3]
    stdout = job.stdout()
    assert stdout.startswith(f"----- {tmp_path / '.parallelaverage/2_chatty/attempts/1/stdout.txt'} -----\n")
    assert all(f"run {run} says 2.0" in stdout for run in range(4))
    # cancel: a running job stops with every process it started, and says so
    slow = parallel(N_runs=2, N_tasks=2, **local(tmp_path))(sleeper)
    slow()
    job = Job.load(3, tmp_path)
    assert job.name == "3_sleeper" and job.status == "running" and not job.done()
    poll(lambda: len(process_tree(launch_pid(tmp_path, "3_sleeper"))) >= 4, "the ranks to start")
    tree = process_tree(launch_pid(tmp_path, "3_sleeper"))
    capsys.readouterr()
    job.cancel()
    assert "cancelled job 3_sleeper" in capsys.readouterr().out
    assert job.status == "cancelled" and job.done() and not [pid for pid in tree if process_tree(pid)]
    with pytest.warns(JobEndedWarning, match="3_sleeper: job was cancelled with 2 of 2 runs missing"):
        assert job.result() is None
    job.cancel()  # not running: nothing to do, and said so
    assert "job 3_sleeper is not running (cancelled); nothing to cancel" in capsys.readouterr().out
    assert Job.load(2, tmp_path).status == "completed"


# ------------------------------------------------------ 9. the truth of a result
def test_if_result_raises_a_type_error_that_says_what_to_use(tmp_path):
    result = wait(parallel_average(N_runs=2, N_tasks=1, **local(tmp_path))(chatty))(0.0)
    with pytest.raises(TypeError, match=r"ambiguous: .*use `result is not None`.*`np\.any\(result\.data\)`"):
        if result:
            pass
    assert result is not None and bool(result.data) and np.any(result.data)
