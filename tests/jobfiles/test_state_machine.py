"""The caller's state machine on hand-made job folders: no mpiexec, no daemon, milliseconds.

Each test writes the files a launch leaves behind in one situation (a caller making a
launch, one killed before it started, a refused submission, a rank killed in a run, a
segfault, a rank that could not write) and checks what ``_state`` concludes. The same
situations are produced for real, with real processes, in ``tests/reliability``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from parallelaverage.jobfiles.layout import Creator, JobFiles, LaunchPlan
from parallelaverage.jobfiles.rankstatus import RankStatus, read_rank_status
from parallelaverage.jobfiles.tally import Group, Tally, layout_of
from parallelaverage.jobfiles.trust import write_pickle
from parallelaverage._state import combine, read_job_state, read_launch
from parallelaverage.runspace import Positions, RunSpace
from parallelaverage.stats import Welford

SPACE = RunSpace(10)


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


@pytest.fixture
def files(tmp_path) -> JobFiles:
    return JobFiles(tmp_path / "1_f")


def make_launch(files: JobFiles, launch_no: int, *, positions: Positions = SPACE.all(), creator_alive: bool = True,
                launch: dict | None = None, exit_code: int | None = None) -> None:
    files.launch_dir(launch_no).mkdir(parents=True)
    creator = Creator.now() | {"backend": "local"}
    if not creator_alive:
        creator["pid"] = dead_pid()
    files.creator(launch_no).write_text(json.dumps(creator))
    files.write_plan(launch_no, LaunchPlan(positions), SPACE)
    if launch is not None:
        files.launch(launch_no).write_text(json.dumps({"backend": "local", **launch}))
    if exit_code is not None:
        files.exit_code(launch_no).write_text(f"{exit_code}\n")


def ended_launch(files: JobFiles, launch_no: int = 1, **kwargs) -> None:
    """A local launch whose launcher has gone and left its exit code."""
    make_launch(files, launch_no, creator_alive=False, launch={"pid": dead_pid(), "start_ticks": 1},
                exit_code=kwargs.pop("exit_code", 0), **kwargs)


def tally_of(done: list[int], failed: dict[int, str] | None = None, value: float = 1.0) -> Tally:
    tally = Tally()
    for position in done:
        layout, prepared = layout_of(value, "all")
        group = tally.group_for(layout)
        group.accumulators.setdefault(0, Welford()).add(prepared[0][1])
        if group.runs is not None:  # the first group lists its runs implicitly, as on a rank
            group.runs.add(position)
        tally.done.add(position)
    for position, message in (failed or {}).items():
        tally.fail(position, message)
    return tally


def rank_status(files: JobFiles, launch_no: int, rank: int, *, stage: str, in_flight: int | None = None,
                report: str = "", exit_code: int | None = None) -> None:
    """A rank's status record as a rank that has died would have left it."""
    status = RankStatus(files.rank_status(launch_no, rank))
    status.slots[1] = dead_pid()  # the process is gone
    status.set_stage(stage)
    status.slots[RankStatus.IN_FLIGHT] = -1 if in_flight is None else in_flight
    if exit_code is not None:
        status.slots[8] = exit_code
    status.flush()
    if report:
        with open(files.rank_status(launch_no, rank), "ab") as f:
            f.write(report.encode())


# ------------------------------------------------------------------ launch phases
def test_a_launch_being_made_by_a_living_caller_is_launching_and_its_runs_pending(files):
    make_launch(files, 1)
    launch = read_launch(files, 1, SPACE)
    assert launch.phase == "launching" and launch.live
    state = combine([launch], SPACE)
    assert state.status == "running" and len(state.pending) == 10 and len(state.missing_positions) == 10


def test_a_launch_whose_maker_died_before_starting_it_is_abandoned(files):
    make_launch(files, 1, creator_alive=False)
    launch = read_launch(files, 1, SPACE)
    assert launch.phase == "abandoned" and "was never started" in launch.message
    assert combine([launch], SPACE).status == "not_launched"


def test_a_refused_submission_is_final_at_once(files):
    make_launch(files, 1)
    files.submit_error(1).write_text("sbatch: error: invalid partition specified: nosuch")
    state = read_job_state(files, SPACE)
    assert state.status == "submit_failed" and state.latest.message.endswith("nosuch")


def test_a_launcher_that_failed_before_any_rank_started_says_so(files):
    ended_launch(files, exit_code=1)
    files.stderr(1).write_text("srun: error: plugin pmix not found\n")
    state = read_job_state(files, SPACE)
    assert state.status == "ended" and "failed before any rank started (exit code 1)" in state.fatal
    assert "plugin pmix not found" in state.fatal and str(files.stderr(1)) in state.fatal


def test_a_rank_that_could_not_start_gives_its_reason(files):
    ended_launch(files, exit_code=1)
    files.fatal(1, 0).write_text("ModuleNotFoundError: No module named 'mymodel'\n")
    state = read_job_state(files, SPACE)
    assert "could not start its runs" in state.fatal and "mymodel" in state.fatal


# ------------------------------------------------------------------ what a launch achieved
def test_the_result_is_preferred_then_the_snapshots_and_a_torn_snapshot_is_named(files):
    ended_launch(files, exit_code=1)
    write_pickle(files.snapshot(1, 0), tally_of([0, 1, 2]))
    files.snapshot(1, 1).write_bytes(b"\x80\x05garbage")
    state = read_job_state(files, SPACE)
    assert list(state.done) == [0, 1, 2] and any("is corrupt" in p for p in state.problems)
    write_pickle(files.result(1), tally_of(list(range(10))))
    assert read_job_state(files, SPACE).status == "completed"


def test_a_sealed_launch_ignores_a_stragglers_late_snapshot(files):
    ended_launch(files)
    write_pickle(files.sealed(1), tally_of([0, 1]))
    write_pickle(files.snapshot(1, 0), tally_of([0, 1, 2, 3]))  # written after the seal
    assert list(read_job_state(files, SPACE).done) == [0, 1]


def test_a_segfault_in_a_run_is_a_crashed_run_the_others_in_flight_are_missing(files):
    ended_launch(files, exit_code=139)
    write_pickle(files.snapshot(1, 0), tally_of([0, 1]))
    write_pickle(files.snapshot(1, 1), tally_of([5, 6]))
    rank_status(files, 1, 0, stage="running", in_flight=2,
                report="Fatal Python error: Segmentation fault\n\nCurrent thread:\n  File \"sim.py\", line 3 in f\n")
    rank_status(files, 1, 1, stage="running", in_flight=7)  # killed by mpiexec afterwards: no report
    state = read_job_state(files, SPACE)
    assert state.status == "ended"
    assert list(state.crashed) == [2] and list(state.failed) == [2]
    assert "run 2 crashed the rank (rank 0, signal 11, SIGSEGV)" in state.failed[2]
    assert 7 in state.missing_positions  # only in flight: re_submit runs it


def test_a_run_that_called_os_exit_is_a_crashed_run(files):
    ended_launch(files, exit_code=3)
    rank_status(files, 1, 0, stage="exited_in_run", in_flight=4, exit_code=3)
    state = read_job_state(files, SPACE)
    assert list(state.crashed) == [4] and "os._exit(3)" in state.failed[4]


def test_a_rank_that_could_not_write_says_why(files):
    make_launch(files, 1, launch={"pid": os.getpid(), "start_ticks": None})  # still running
    status = RankStatus(files.rank_status(1, 0))
    status.set_stage("running")
    status.set_error("cannot write its snapshot x: No space left on device")
    info = read_rank_status(files.rank_status(1, 0), 0)
    assert info.alive() and info.error.endswith("No space left on device")
    assert any("No space left on device" in p for p in read_launch(files, 1, SPACE).problems)


# ------------------------------------------------------------------ polling (light reads)
def light_count(files: JobFiles, backend_says: str) -> int:
    """Runs done as a polling caller counts them (``Job.state(light=True)``), with the
    backend's answer for launch 1 given (SLURM's comes from a cached ``squeue``)."""
    state = combine([read_launch(files, 1, SPACE, states={1: backend_says}, light=True)], SPACE)
    state.light = state.status == "running"  # as read_job_state sets it
    return state.counts()[0]


def test_a_poll_counts_the_earlier_lives_tallies_and_the_current_lifes_ranks(files):
    """A requeued launch in its second life: life 0's result (it stopped at its time limit)
    plus what life 1's ranks report."""
    make_launch(files, 1, launch={"pid": 1, "start_ticks": 1})
    write_pickle(files.result(1, 0), tally_of([0, 1, 2, 3, 4, 5]))
    files.life_dir(1, 1).mkdir()
    status = RankStatus(files.rank_status(1, 0, life=1))
    status.slots[RankStatus.DONE] = 2
    status.flush()
    assert light_count(files, "running") == 6 + 2


def test_a_poll_never_counts_less_when_a_life_ended_before_the_backend_saw_it(files):
    """A requeued life whose ranks died while starting (no life folder yet) left its exit
    code, while SLURM still lists the job: the files say the launch is over, so the poll
    reads its tally (6 runs), not the ranks it no longer lists (it counted 0 for ~7 s:
    `test_slurm_lives.py` saw progress 58 -> 0 -> 58)."""
    make_launch(files, 1, launch={"pid": 1, "start_ticks": 1}, exit_code=138)
    write_pickle(files.result(1, 0), tally_of([0, 1, 2, 3, 4, 5]))
    for rank in (0, 1):
        rank_status(files, 1, rank, stage="finished")
    assert light_count(files, "running") == 6
    assert light_count(files, "ended") == 6


# ------------------------------------------------------------------ merging launches
def test_runs_being_run_again_are_pending_not_failed(files):
    ended_launch(files)
    write_pickle(files.result(1), tally_of([0, 1, 2, 3, 4, 5, 6, 7], {8: "boom", 9: "boom"}))
    make_launch(files, 2, positions=Positions.of([8, 9]))  # a re-submission being made now
    state = read_job_state(files, SPACE)
    assert state.status == "running" and list(state.pending) == [8, 9] and not state.failed_positions


def test_done_in_any_launch_wins_over_failed_in_another(files):
    ended_launch(files)
    write_pickle(files.result(1), tally_of([0, 1], {2: "boom"}))
    ended_launch(files, 2)
    write_pickle(files.result(2), tally_of([2]))
    state = read_job_state(files, SPACE)
    assert list(state.done) == [0, 1, 2] and not state.failed_positions


def test_one_run_of_another_layout_fails_alone_whichever_order_the_pieces_merge():
    one = tally_of([0, 1, 2])
    odd = Tally()
    layout, prepared = layout_of(np.zeros(3), "all")
    group = odd.group_for(layout)
    group.accumulators[0] = Welford()
    group.accumulators[0].add(prepared[0][1])
    odd.done.add(3)
    for merged in (one.merged(odd), odd.merged(one)):
        resolved = merged.resolved()
        assert list(resolved.done) == [0, 1, 2] and list(resolved.failed) == [3]
        assert "returned an array of shape (3,), but 3 other runs returned a number" in resolved.errors[3]
        assert resolved.main_group().accumulators[0].count == 3
    assert isinstance(Group(layout), Group)
