"""What the files cost as jobs grow: snapshots per rank, the caller's poll per rank, a finished job's call.

    python bench/scale.py [--quick]

* **snapshot**: the bytes and time of one rank's snapshot (the pickle of its tally, and
  the ranges appended to its done log since the previous one), by runs done before it
  (10^3 .. 10^7, claimed in chunks of 1,000 interleaved with another rank's, as the
  shared counter hands them out) and by output size (1 .. 10^6 elements); baseline: the
  same statistics with every finished run id in a list, as snapshots were written before.
* **poll**: one ``Job.state(light=True)`` (what ``wait()`` does every poll) and one full
  ``Job.state()`` of a running launch of K ranks (K = 1, 100, 1,000), each rank with its
  status record and a snapshot of 10^4 runs: the ranks are emulated by their files.
* **finished**: a decorated call of a completed job of 1,000 ranks and 3,000,000 runs
  (a cache hit), against the same of a 100-run job, in a database of 10,000 jobs
  (``--quick``: 1,000).

Prints tables, then one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from parallelaverage import parallel_average
from parallelaverage.jobdb import JobDatabase, call_key, code_fingerprint, code_hash, new_record
from parallelaverage.jobfiles.layout import Creator, JobFiles, LaunchPlan
from parallelaverage.jobfiles.rankstatus import RankStatus
from parallelaverage.jobfiles.tally import Tally, append_ranges, layout_of
from parallelaverage.jobfiles.trust import write_pickle
from parallelaverage.job import Job
from parallelaverage.runspace import Positions, RunSpace
from parallelaverage.stats import Welford


def timed(function, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rank_tally(runs: int, elements: int, rank: int = 0, chunk: int = 1000) -> Tally:
    """What a rank holds after ``runs`` runs claimed in chunks interleaved with another rank."""
    tally = Tally()
    sample = 1.0 if elements == 1 else np.ones(elements)
    layout, prepared = layout_of(sample, "all")
    group = tally.group_for(layout)
    group.accumulators[0] = Welford()
    group.accumulators[0].add(prepared[0][1])
    for start in range(rank * chunk, 2 * runs, 2 * chunk):
        tally.done.add_range(start, start + chunk)
    return tally


def snapshot_figures(folder: Path, runs: int, elements: int) -> dict[str, float]:
    tally = rank_tally(runs, elements)
    path = folder / f"snapshot-{runs}-{elements}.pkl"
    log = folder / f"done-{runs}-{elements}.ranges"
    new = tally.done.ranges_from(max(0, tally.done.n_ranges - 2))  # a 2-s interval's new chunks

    def write() -> None:
        append_ranges(log, new)
        write_pickle(path, Tally(Positions(), tally.failed, tally.errors, {}, tally.groups,
                                 done_log=(log.name, tally.done.n_ranges)))

    seconds = timed(write)
    before = len(pickle.dumps({"finished": list(range(runs)), "accumulators": tally.groups[0].accumulators},
                              protocol=5))
    return {"bytes": path.stat().st_size + 16 * len(new), "seconds": seconds, "bytes_before": before}


def running_launch(root: Path, ranks: int) -> Job:
    """A job folder with a running launch of ``ranks`` ranks, as their files show it."""
    root.mkdir()
    db = JobDatabase(root)

    def f(x):
        return x

    key = call_key(f, (ranks,), N_runs=10_000 * ranks)
    record, _ = db.get_or_create(key, lambda name: new_record(key, name, code_hash="0", options={"average": "all"}))
    files = JobFiles(db.job_dir(record))
    files.launch_dir(1).mkdir(parents=True)
    space = RunSpace(10_000 * ranks)
    files.creator(1).write_text(json.dumps({**Creator.now(), "backend": "local"}))
    files.write_plan(1, LaunchPlan(space.all()), space)
    files.launch(1).write_text(json.dumps({"backend": "local", "pid": os.getpid(), "start_ticks": None}))
    for rank in range(ranks):
        status = RankStatus(files.rank_status(1, rank))
        status.set_stage("running")
        status.slots[RankStatus.DONE] = 10_000
        tally = rank_tally(10_000, 1, rank)
        log = files.launch_dir(1) / f"done-r{rank}.ranges"
        append_ranges(log, tally.done.ranges())
        write_pickle(files.snapshot(1, rank), Tally(Positions(), tally.failed, tally.errors, {}, tally.groups,
                                                     done_log=(log.name, tally.done.n_ranges)))
    return Job(db, db.load(record.job_name))


def finished_call_ms(root: Path, n_jobs: int) -> tuple[float, float]:
    """A cache-hit call of a finished 3,000,000-run job of 1,000 ranks, and of a 100-run job."""
    root.mkdir()
    big = parallel_average(N_runs=3_000_000, N_tasks=1000, queuing_system="local", path=root)(lambda x: x)
    small = parallel_average(N_runs=100, N_tasks=2, queuing_system="local", path=root)(lambda x: x)
    db = JobDatabase(root)
    for i in range(n_jobs):  # a populated database
        key = call_key(_filler, (i,), N_runs=10)
        db.get_or_create(key, lambda name: new_record(key, name, code_hash="0"))
    for function, runs, ranks in ((big, 3_000_000, 1000), (small, 100, 2)):
        target = function.__wrapped__
        key = call_key(target, (1.0,), N_runs=runs)
        record, _ = db.get_or_create(key, lambda name: new_record(
            key, name, code_hash=code_hash(target), code_parts=code_fingerprint(target),
            options={"average": "all", "keep_runs": False}))
        files = JobFiles(db.job_dir(record))
        files.launch_dir(1).mkdir(parents=True)
        files.creator(1).write_text(json.dumps({**Creator.now(), "backend": "local"}))
        files.write_plan(1, LaunchPlan(RunSpace(runs).all()), RunSpace(runs))
        files.launch(1).write_text(json.dumps({"backend": "local", "pid": 1, "start_ticks": 1}))
        files.exit_code(1).write_text("0\n")
        result = Tally()
        for rank in range(ranks):
            part = rank_tally(runs // ranks, 1, rank, chunk=max(1, runs // (ranks * 300)))
            result = result.merged(part)
        write_pickle(files.result(1), Tally(RunSpace(runs).all(), Positions(), {}, {}, result.groups))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timed(lambda: big(1.0), 20) * 1e3, timed(lambda: small(1.0), 20) * 1e3


def _filler(i):
    return i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    figures: dict[str, object] = {"bench": "scale"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("snapshot of one rank: bytes written and seconds, by runs done and output size")
        print(f"{'runs':>10} {'elements':>9} {'bytes':>10} {'ms':>8} {'bytes before':>13}")
        snapshots = []
        runs_list = (10**3, 10**5, 10**7) if args.quick else (10**3, 10**4, 10**5, 10**6, 10**7)
        for runs in runs_list:
            for elements in (1, 1000, 10**6):
                row = snapshot_figures(folder, runs, elements)
                snapshots.append({"runs": runs, "elements": elements, **row})
                print(f"{runs:>10,} {elements:>9,} {row['bytes']:>10,} {row['seconds'] * 1e3:>8.2f} "
                      f"{row['bytes_before']:>13,}")
        figures["snapshots"] = snapshots
        print("\nthe caller's poll of a running launch, by ranks (emulated by their files)")
        polls = []
        for ranks in (1, 100) if args.quick else (1, 100, 1000):
            job = running_launch(folder / f"db-{ranks}", ranks)
            light = timed(lambda: job.state(light=True)) * 1e3
            full = timed(lambda: job.state(), 3) * 1e3
            polls.append({"ranks": ranks, "light_ms": light, "full_ms": full})
            print(f"{ranks:>6} ranks: light poll {light:8.2f} ms, full state {full:8.1f} ms")
        figures["polls"] = polls
        n_jobs = 1000 if args.quick else 10_000
        big_ms, small_ms = finished_call_ms(folder / "finished", n_jobs)
        figures.update(finished_3M_runs_1000_ranks_call_ms=big_ms, finished_100_runs_call_ms=small_ms, jobs=n_jobs)
        print(f"\na call of a finished job ({n_jobs:,} jobs in the database): 3,000,000 runs on 1,000 ranks "
              f"{big_ms:.2f} ms; 100 runs {small_ms:.2f} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.exit(main())
