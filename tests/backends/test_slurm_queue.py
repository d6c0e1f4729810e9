"""The queue watcher's policy, on a fake clock and a fake ``squeue``: when it asks, and
what the files answer instead. The same paths against a real controller, with the
RPCs counted by ``sdiag``, are in ``tests/slurm/test_slurm_scheduler.py``.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest

from parallelaverage.jobfiles import rankstatus
from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.jobfiles.rankstatus import RankStatus
from parallelaverage.backends.slurm_limits import read_submit_limits, submit_limit_refusal
from parallelaverage.backends.slurm_queue import JobRow, QueueWatcher

START_WALL = 1.8e9  # the fake wall clock at fake monotonic 0


class FakeQueue:
    """A controller that lists the jobs it was told, counting the calls; a fake clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.jobs: dict[str, JobRow] = {}
        self.calls: list[float] = []
        self.failing = False
        self.cached: dict[tuple[str, int], str] = {}
        self.watcher = QueueWatcher(self.list_jobs, self.cache, self.cached_state,
                                    clock=lambda: self.now, wall=lambda: START_WALL + self.now)

    def list_jobs(self, uid: int) -> dict[str, JobRow]:
        self.calls.append(self.now)
        if self.failing:
            raise RuntimeError("squeue failed (exit status 1):\nsqueue: error: Socket timed out on send/recv operation")
        return dict(self.jobs)

    def cache(self, files: JobFiles, launch_no: int, job_id: str, row: JobRow) -> None:
        self.cached[(str(files.dir), launch_no)] = row.state

    def cached_state(self, files: JobFiles, launch_no: int, job_id: str) -> str | None:
        return self.cached.get((str(files.dir), launch_no))

    def run_until(self, end: float, launches, step: float = 0.25) -> list[str]:
        """Poll like wait() does, every ``step`` s, until ``end``; the last answers."""
        answers = self.watcher.states(launches)
        while self.now + step <= end + 1e-9:
            self.now += step
            answers = self.watcher.states(launches)
        return answers


def launch(tmp_path, name: str, job_id: str, *, submitted_at: float | None = None):
    """A launch folder with its launch.json, written ``submitted_at`` (fake monotonic) s."""
    files = JobFiles(tmp_path / name)
    files.launch_dir(1).mkdir(parents=True)
    info = {"backend": "slurm", "job_id": job_id}
    files.launch(1).write_text(json.dumps(info))
    if submitted_at is not None:
        os.utime(files.launch(1), (START_WALL + submitted_at, START_WALL + submitted_at))
    return files, 1, info


def rank_writes(files: JobFiles, at: float, *, host: str = "node-elsewhere", stage: str = "running") -> RankStatus:
    """Rank 0 of the launch, on another host, published its counts at fake time ``at``."""
    status = RankStatus(files.rank_status(1, 0))
    data = host.encode().ljust(rankstatus._HOST_BYTES, b"\0")
    status._map[rankstatus._HOST_AT : rankstatus._HOST_AT + rankstatus._HOST_BYTES] = data
    status.slots[rankstatus._S_STARTED_US] = int((START_WALL + at) * 1e6)
    status.slots[RankStatus.PUBLISHED_US] = int((START_WALL + at) * 1e6)
    status.set_stage(stage)
    return status


def test_a_pending_launch_is_asked_after_2_s_then_ever_more_rarely(tmp_path):
    queue = FakeQueue()
    files, launch_no, info = launch(tmp_path, "1_f", "101")
    queue.jobs["101"] = JobRow("PENDING", "Priority")
    queue.watcher.submitted(files, launch_no, "101")
    assert queue.run_until(300, [(files, launch_no, info)]) == ["running"]
    # each wait is half the launch's age (2 s at least, 60 s at most)
    assert queue.calls == [2, 4, 8, 16, 32, 64, 124, 184, 244]


def test_progress_in_the_rank_records_needs_no_question(tmp_path):
    queue = FakeQueue()
    files, launch_no, info = launch(tmp_path, "1_f", "101")
    queue.jobs["101"] = JobRow("RUNNING")
    queue.watcher.submitted(files, launch_no, "101")
    status = rank_writes(files, at=1.0)  # started 1 s after submission
    for second in range(1, 200):  # publishes every second
        status.slots[RankStatus.PUBLISHED_US] = int((START_WALL + second) * 1e6)
        assert queue.run_until(second, [(files, launch_no, info)]) == ["running"]
    assert queue.calls == []
    # a rank that stops publishing (a node that died) leaves it to squeue, after progress_fresh_s
    assert queue.run_until(199 + 60 + 2 + 1, [(files, launch_no, info)]) == ["running"]
    assert len(queue.calls) == 1 and queue.calls[0] >= 199 + 60
    del queue.jobs["101"]  # the controller forgot it: ended
    assert queue.run_until(queue.calls[0] + 5, [(files, launch_no, info)]) == ["ended"]
    assert len(queue.calls) == 2


def test_ranks_that_finished_or_were_stopped_vouch_for_nothing(tmp_path):
    queue = FakeQueue()
    files, launch_no, info = launch(tmp_path, "1_f", "101")
    queue.jobs["101"] = JobRow("COMPLETING")
    queue.watcher.submitted(files, launch_no, "101")
    rank_writes(files, at=0.0, stage="stopped")  # SIGTERM from scancel or the time limit
    assert queue.run_until(2, [(files, launch_no, info)]) == ["running"]
    assert queue.calls == [2]
    queue.jobs["101"] = JobRow("CANCELLED")
    assert queue.run_until(4, [(files, launch_no, info)]) == ["ended"]
    assert queue.cached == {(str(files.dir), 1): "CANCELLED"}  # never asked again
    assert queue.run_until(100, [(files, launch_no, info)]) == ["ended"] and queue.calls == [2, 4]


def test_a_rank_whose_process_is_gone_outweighs_one_that_lives(tmp_path):
    """On the test cluster a "dead" node's ranks live on (only its slurmd stopped) while
    SLURM kills the others: one gone rank means the launch may be over, so squeue is asked."""
    queue = FakeQueue()
    files, launch_no, info = launch(tmp_path, "1_f", "101")
    queue.jobs["101"] = JobRow("RUNNING")
    queue.watcher.submitted(files, launch_no, "101")
    RankStatus(files.rank_status(1, 0)).set_stage("running")  # this process: alive, on this host
    assert queue.run_until(30, [(files, launch_no, info)]) == ["running"] and queue.calls == []
    gone = RankStatus(files.rank_status(1, 1))
    gone.set_stage("running")
    gone.slots[rankstatus._S_PID] = 2**22 + 12345  # no such process
    queue.jobs["101"] = JobRow("NODE_FAIL")
    assert queue.run_until(40, [(files, launch_no, info)]) == ["ended"]
    assert len(queue.calls) == 1 and 32 <= queue.calls[0] <= 34  # seen within look_s, asked 2 s later


def test_the_files_answer_first(tmp_path):
    queue = FakeQueue()
    files, launch_no, info = launch(tmp_path, "1_f", "101")
    queue.watcher.submitted(files, launch_no, "101")
    files.exit_code(launch_no).write_text("0\n")  # written by the job script as it ends
    assert queue.run_until(100, [(files, launch_no, info)]) == ["ended"]
    assert queue.calls == []


def test_one_listing_answers_every_launch(tmp_path):
    """Many jobs, of this process and of others, old and new: one squeue per look."""
    queue = FakeQueue()
    queue.now = 1000.0
    old = [launch(tmp_path, f"{i}_old", str(200 + i), submitted_at=10.0 * i) for i in range(50)]
    for i in range(0, 50, 2):
        queue.jobs[str(200 + i)] = JobRow("PENDING")  # the odd ones are long gone
    new = []
    for i in range(10):
        files, launch_no, info = launch(tmp_path, f"{i}_new", str(300 + i))
        queue.jobs[str(300 + i)] = JobRow("PENDING")
        queue.watcher.submitted(files, launch_no, str(300 + i))
        new.append((files, launch_no, info))
    answers = queue.watcher.states(old + new)  # old launches first seen: asked at once
    assert queue.calls == [1000.0]
    assert answers == ["running", "ended"] * 25 + ["running"] * 10  # new ones: submitted after the listing
    assert queue.run_until(1100, old + new)[:50] == ["running", "ended"] * 25
    assert queue.calls == [1000, 1002, 1004, 1008, 1016, 1032, 1064]  # the newest launch sets the pace


def test_a_launch_submitted_after_the_listing_is_not_taken_for_ended(tmp_path):
    queue = FakeQueue()
    first = launch(tmp_path, "1_f", "101")
    queue.jobs["101"] = JobRow("PENDING")
    queue.watcher.submitted(first[0], 1, "101")
    queue.run_until(2, [first])
    assert queue.calls == [2]
    queue.now = 2.5
    second = launch(tmp_path, "2_f", "102", submitted_at=2.5)  # by another process, missing from the listing
    assert queue.watcher.states([first, second]) == ["running", "running"]
    queue.jobs["102"] = JobRow("PENDING")
    assert queue.run_until(10, [first, second]) == ["running", "running"]
    # 4: the first launch's own look, which cannot vouch for the second (its launch.json
    # is from 2.5, and another host's clock may be 2 s off); 6: the second's first look
    # covers it; 9.5: the second, at age 7, waits 3.5 s
    assert queue.calls == [2, 4, 6, 9.5]


def test_a_failing_squeue_keeps_the_last_answers_and_backs_off(tmp_path):
    queue = FakeQueue()
    files, launch_no, info = launch(tmp_path, "1_f", "101")
    queue.jobs["101"] = JobRow("PENDING")
    queue.watcher.submitted(files, launch_no, "101")
    queue.run_until(4, [(files, launch_no, info)])
    assert queue.calls == [2, 4]
    queue.failing = True
    with pytest.warns(RuntimeWarning, match=r"(?s)Socket timed out.*taken as still running; asking again in 4 s"):
        assert queue.run_until(120, [(files, launch_no, info)]) == ["running"]
    assert queue.calls == [2, 4, 8, 12, 20, 36, 68]  # after a failure: 4, 8, 16, 32 s... (60 at most)
    queue.failing = False
    del queue.jobs["101"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert queue.run_until(300, [(files, launch_no, info)]) == ["ended"]


def test_a_failing_first_squeue_raises(tmp_path):
    queue = FakeQueue()
    queue.failing = True
    old = launch(tmp_path, "1_f", "101", submitted_at=-100)
    with pytest.raises(RuntimeError, match="Socket timed out"):
        queue.watcher.states([old])


def test_active_jobs_counts_the_listing_and_this_process_s_launches(tmp_path):
    queue = FakeQueue()
    queue.jobs = {"1": JobRow("RUNNING", account="a"), "2": JobRow("PENDING", account="b"),
                  "3": JobRow("COMPLETED", account="a")}
    assert queue.watcher.active_jobs(refresh_after_s=0) == 2
    assert queue.watcher.active_jobs(account="a") == 1
    assert queue.calls == [0]
    queue.now = 1.0
    mine = [launch(tmp_path, f"{i}_f", str(10 + i)) for i in range(3)]
    for files, launch_no, info in mine:
        queue.watcher.submitted(files, launch_no, info["job_id"])
    assert queue.watcher.active_jobs() == 5  # submitted since the listing: counted without asking
    mine[0][0].exit_code(1).write_text("0\n")
    assert queue.watcher.active_jobs() == 4  # its exit_code says it has ended
    assert queue.watcher.active_jobs(refresh_after_s=0) == 4 and queue.calls == [0]  # not twice within 2 s
    queue.now = 3.0
    queue.jobs.update({"11": JobRow("PENDING"), "12": JobRow("PENDING")})
    assert queue.watcher.active_jobs(refresh_after_s=0) == 4 and queue.calls == [0, 3]
    queue.jobs["11"] = JobRow("RUNNING")
    mine[1][0].exit_code(1).write_text("0\n")
    assert queue.watcher.active_jobs() == 3  # listed as running, ended since by its files


def test_submit_limit_refusals_and_limits_from_sacctmgr():
    refused = ("sbatch: error: AssocMaxSubmitJobLimit\nsbatch: error: Batch job submission failed: "
               "Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)\n")
    assert submit_limit_refusal(refused) == "AssocMaxSubmitJobLimit"
    assert submit_limit_refusal("sbatch: error: QOSMaxSubmitJobPerUserLimit\n") == "QOSMaxSubmitJobPerUserLimit"
    assert submit_limit_refusal(refused.replace("AssocMaxSubmitJobLimit", "AssocMaxWallDurationPerJobLimit")) is None

    answers = {
        "show user": "root|patest|root||||normal\nroot|patest|proj||||normal\n",
        "account=root": "root||parent|\nroot|root|||\n",
        "account=parent": "parent||top|50\n",
        "show qos": "normal|20\n",
    }
    seen = []

    def run(argv):
        seen.append(" ".join(argv))
        return next((text for key, text in answers.items() if key in " ".join(argv)), None)

    limits = read_submit_limits(run, "root")
    assert [str(limit) for limit in limits] == ["MaxSubmitJobs=50 of the account parent",
                                                "MaxSubmitJobsPerUser=20 of the QOS normal"]
    assert limits[0].account == "root" and limits[1].qos == "normal"
    assert not any(command.startswith("scontrol") for command in seen)  # one cluster: no question to slurmctld
    assert read_submit_limits(lambda argv: None, "root") == []  # no accounting, or not allowed
