"""JobDatabase under real concurrent processes (multiprocessing, 'spawn')."""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter

import pytest
from jobdb_helpers import create_many_worker, key_of, race_worker

from parallelaverage.jobdb import JobDatabase
from parallelaverage._atomic import TEMP_MARKER

CTX = multiprocessing.get_context("spawn")


def run_workers(target, argsets, *, timeout_s=120):
    """Start one spawned process per argument tuple; return their reported results."""
    results = CTX.Queue()
    procs = [CTX.Process(target=target, args=(*args, results)) for args in argsets]
    for proc in procs:
        proc.start()
    try:
        reports = [results.get(timeout=timeout_s) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    errors = [report for report in reports if report[0] != "ok"]
    assert not errors, f"worker processes failed: {errors}"
    return [report[2] for report in reports]


def assert_clean(db):
    """No temporary or staging leftovers, and every job folder readable."""
    names = [p for p in db.root.rglob("*") if TEMP_MARKER in p.name or p.name.startswith(".creating-")]
    assert names == []
    assert db.scan().problems == []


N_RACERS = 8
ROUNDS = 5


@pytest.mark.parametrize("soft", [False, True], ids=["flock", "soft"])
def test_simultaneous_get_or_create_makes_exactly_one_job(tmp_path, soft):
    barrier = CTX.Barrier(N_RACERS)
    outcomes = run_workers(race_worker, [(str(tmp_path), soft, False, ROUNDS, barrier)] * N_RACERS)
    db = JobDatabase(tmp_path, soft_locks=soft)
    for round_ in range(ROUNDS):
        seen = [(name, created) for outcome in outcomes for r, name, created in outcome if r == round_]
        assert len(seen) == N_RACERS
        assert sum(created for _, created in seen) == 1, f"round {round_}: {seen}"
        assert len({name for name, _ in seen}) == 1, f"round {round_}: {seen}"
        assert db.lookup(key_of(round_)).job_name == seen[0][0]
    jobs = db.jobs()
    assert len(jobs) == ROUNDS
    assert sorted(r.index for r in jobs) == list(range(1, ROUNDS + 1))
    assert_clean(db)


@pytest.mark.parametrize("soft", [False, True], ids=["flock", "soft"])
def test_four_processes_creating_fifty_jobs_each_lose_nothing(tmp_path, soft):
    barrier = CTX.Barrier(4)
    outcomes = run_workers(create_many_worker, [(str(tmp_path), soft, worker, 50, barrier) for worker in range(4)])
    db = JobDatabase(tmp_path, soft_locks=soft)
    jobs = db.jobs()
    assert len(jobs) == 200
    assert sorted(r.index for r in jobs) == list(range(1, 201))  # no index given twice
    assert len({r.key_digest for r in jobs}) == 200
    assert sorted(name for names in outcomes for name in names) == sorted(r.job_name for r in jobs)
    for worker in range(4):
        for i in range(50):
            assert db.lookup(key_of(worker, seed=i)) is not None
    assert_clean(db)


def test_without_working_locks_the_cost_is_duplicated_work_not_corruption(tmp_path):
    """Every lock is a no-op in the workers (as on a filesystem whose flock lies)."""
    barrier = CTX.Barrier(N_RACERS)
    outcomes = run_workers(race_worker, [(str(tmp_path), False, True, ROUNDS, barrier)] * N_RACERS)
    db = JobDatabase(tmp_path)
    jobs = db.jobs()
    assert_clean(db)  # every job folder whole and readable
    by_name = {r.job_name: r for r in jobs}
    assert len(by_name) == len(jobs)  # no two jobs share a folder
    for round_ in range(ROUNDS):
        key = key_of(round_)
        names = {name for outcome in outcomes for r, name, _ in outcome if r == round_}
        assert names <= by_name.keys()
        assert all(by_name[name].key_digest == key.digest for name in names)
        assert db.lookup(key).job_name in names  # the index names one of them
    created = Counter(r.key_digest for r in jobs)
    print(f"jobs created without locks for {ROUNDS} calls x {N_RACERS} processes: {sum(created.values())}")
    assert os.path.isdir(db.root / "index")
