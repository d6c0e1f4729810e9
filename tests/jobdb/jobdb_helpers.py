"""Shared pieces of the jobdb tests: sample functions and the bodies of worker processes.

Worker functions live here (not in a test module) so that processes started
with the 'spawn' method import them by a stable name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from parallelaverage.jobdb import CallKey, JobDatabase, JobRecord, call_key, code_hash, new_record
from parallelaverage.jobdb.locks import DatabaseLock

REPO_ROOT = Path(__file__).resolve().parents[2]


def simulate(L: int, T: float = 2.5, *, seed: int | None = None) -> float:
    """A stand-in for a user's stochastic function."""
    return L * T


def key_of(*args: Any, N_runs: int = 10, **kwargs: Any) -> CallKey:
    """The key of ``simulate(*args, **kwargs)``."""
    return call_key(simulate, args, kwargs, N_runs=N_runs)


def maker(key: CallKey, *, delay_s: float = 0.0, **options: Any):
    """A ``make_record`` for ``key`` that optionally dawdles (to widen race windows)."""

    def make(job_name: str) -> JobRecord:
        if delay_s:
            time.sleep(delay_s)
        return new_record(key, job_name, code_hash=code_hash(simulate), options=options)

    return make


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child interpreter that imports this repository."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; raise with its stderr if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(**env), capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise AssertionError(f"child interpreter failed ({done.returncode}):\n{done.stderr}")
    return done


def _disable_locks() -> None:
    """Make every database lock a no-op: the 'flock silently fails' scenario."""
    DatabaseLock.__enter__ = lambda self: self  # type: ignore[method-assign]
    DatabaseLock.__exit__ = lambda self, *exc: None  # type: ignore[method-assign]


def race_worker(path: str, soft: bool, broken_locks: bool, rounds: int, barrier: Any, results: Any) -> None:
    """Each round: wait for all workers, then get_or_create the round's key at once."""
    try:
        if broken_locks:
            _disable_locks()
        db = JobDatabase(path, soft_locks=soft)
        out = []
        for round_ in range(rounds):
            key = key_of(round_)
            barrier.wait(timeout=60)
            record, created = db.get_or_create(key, maker(key, delay_s=0.005))
            out.append((round_, record.job_name, created))
        results.put(("ok", os.getpid(), out))
    except BaseException as exc:  # report, so the parent fails with the reason
        results.put(("error", os.getpid(), repr(exc)))


def create_many_worker(path: str, soft: bool, worker: int, n: int, barrier: Any, results: Any) -> None:
    """Create ``n`` jobs with keys no other worker uses, starting with the others."""
    try:
        db = JobDatabase(path, soft_locks=soft)
        keys = [key_of(worker, seed=i) for i in range(n)]
        barrier.wait(timeout=60)
        names = []
        for key in keys:
            record, created = db.get_or_create(key, maker(key))
            if not created:
                raise RuntimeError(f"{key.call} already existed")
            names.append(record.job_name)
        results.put(("ok", os.getpid(), names))
    except BaseException as exc:
        results.put(("error", os.getpid(), repr(exc)))
