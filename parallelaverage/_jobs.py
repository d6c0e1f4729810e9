"""A job's life seen from the caller: launch it, read its state, build its result.

Sits between the decorators and the lower layers: it writes the payload and run
lists (``_jobfiles``), starts launches through a backend, merges the snapshots and
results of every launch into one ``JobState``, and turns that into what a call
returns.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parallelaverage._jobfiles import (
    JobFiles, OutputIndex, Progress, UntrustedFileError, iter_snapshot_progress, read_pickle, write_pickle,
)
from parallelaverage.backends.base import Backend
from parallelaverage._atomic import atomic_write_bytes
from parallelaverage.errors import (
    CodeChangedWarning, JobEndedWarning, JobWarning, NotReadyWarning, RunsFailedWarning,
)
from parallelaverage.results import AveragedResult, RunOutputs

__all__ = ["JobState", "launch", "read_state", "build_result", "backend_for", "JobWarning",
           "NotReadyWarning", "RunsFailedWarning", "JobEndedWarning", "CodeChangedWarning"]

LAUNCH_GRACE_S = 30.0
"""A created job with no launch after this long was abandoned by its submitter."""


def backend_for(name: str) -> Backend:
    """The backend object for a queuing system name."""
    if name == "local":
        from parallelaverage.backends.local import LocalBackend

        return LocalBackend()
    if name == "slurm":
        from parallelaverage.backends.slurm import SlurmBackend

        return SlurmBackend()
    raise ValueError(f"unknown queuing system {name!r}")


def launch(files: JobFiles, backend: Backend, runs: list[Any], n_tasks: int,
           queue_options: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Start a new launch of the job for ``runs``; return its number and launch info.

    Earlier launches are sealed first (see :func:`seal`): ``runs`` was computed from them.
    """
    for earlier in files.attempts():
        seal(files, earlier)
    attempt = len(files.attempts()) + 1
    while True:
        try:
            os.makedirs(files.attempt_dir(attempt), mode=0o700)  # claims the number atomically
            break
        except FileExistsError:
            attempt += 1
    try:
        files.write_runs(attempt, runs)
        info = backend.submit(files, attempt, min(n_tasks, len(runs)), queue_options)
    except BaseException:
        # nothing was started: leave no launch behind that would look like one running
        shutil.rmtree(files.attempt_dir(attempt), ignore_errors=True)
        raise
    atomic_write_bytes(files.launch(attempt), json.dumps(info).encode())
    return attempt, info


@dataclass
class JobState:
    """Everything known about a job right now, merged over all its launches."""

    status: str  # "running", "completed", "ended", "cancelled", "not_launched"
    progress: Progress
    all_runs: list[Any]
    successful: list[Any] = field(default_factory=list)
    failed: dict[Any, str] = field(default_factory=dict)
    missing: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fatal: str | None = None
    launches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def not_ready(self) -> int:
        return len(self.missing)


def seal(files: JobFiles, attempt: int) -> None:
    """Freeze what an ended launch achieved before another launch re-runs the rest.

    Later readers use the sealed progress instead of the snapshots, so that a write
    by a straggling rank of the old launch can never count a run twice.
    """
    if not files.result(attempt).exists() and not files.sealed(attempt).exists():
        write_pickle(files.sealed(attempt), _launch_progress(files, attempt, []))


def _launch_progress(files: JobFiles, attempt: int, problems: list[str]) -> Progress:
    """A launch's progress: sealed or result if written and whole, else its ranks' snapshots."""
    sealed = files.sealed(attempt)
    if sealed.exists():
        try:
            return read_pickle(sealed)
        except ValueError as error:
            problems.append(f"{error}; using the snapshots")
    result_path = files.result(attempt)
    if result_path.exists():
        try:
            result = read_pickle(result_path)
            if isinstance(result, Progress):
                return result
            problems.append(f"{result_path} is not a result file; using the snapshots")
        except UntrustedFileError:
            raise
        except (OSError, ValueError) as error:
            problems.append(f"{error}; using the snapshots")
    merged = Progress()
    for path, progress, unreadable in iter_snapshot_progress(files, attempt):
        if progress is None:
            problems.append(f"{unreadable}; its runs count as missing")
            continue
        try:
            merged.merge(progress)
        except ValueError as error:
            problems.append(f"{path}: {error}; its runs count as missing")
    return merged


def read_state(files: JobFiles, backend: Backend, all_runs: list[Any], *, cancelled: bool = False,
               submitted_at: float | None = None) -> JobState:
    """Merge every launch of the job and ask the backend whether any still runs."""
    problems: list[str] = []
    total = Progress()
    running = False
    fatal = None
    launches = []
    infos: dict[int, Any] = {}
    for attempt in files.attempts():
        try:
            infos[attempt] = json.loads(files.launch(attempt).read_bytes())
        except FileNotFoundError:
            infos[attempt] = None  # being launched by another caller right now
        except ValueError:
            problems.append(f"{files.launch(attempt)} is corrupt")
            infos[attempt] = {}
    asked = [(files, attempt, info) for attempt, info in infos.items() if info]
    running_attempts = {attempt for (_, attempt, _), launch_state in zip(asked, backend.states(asked))
                        if launch_state == "running"}
    for attempt, info in infos.items():
        if info is None or attempt in running_attempts:
            running = True
        if info:
            launches.append(info)
        piece = _launch_progress(files, attempt, problems)
        fatal_files = sorted(files.attempt_dir(attempt).glob("fatal-r*.txt"))
        if fatal_files:
            fatal = fatal_files[0].read_text(errors="replace")
        try:
            total.merge(piece)
        except ValueError as error:
            problems.append(f"launch {attempt}: {error}")
    successful = list(dict.fromkeys(total.finished))
    done = set(successful)
    failed = {run: total.failed[run] for run in all_runs if run in total.failed and run not in done}
    missing = [run for run in all_runs if run not in done and run not in failed]
    if running:
        status = "running"
    elif cancelled:
        status = "cancelled"
    elif not files.attempts():
        recent = submitted_at is not None and time.time() - submitted_at < LAUNCH_GRACE_S
        status = "running" if recent else "not_launched"
    else:
        status = "ended" if missing else "completed"
    if status == "completed" and infos:
        unmerged = _merge_failure(files, max(infos))
        if unmerged:
            problems.append(unmerged)
    return JobState(status, total, all_runs, successful, failed, missing, problems, fatal, launches)


def _merge_failure(files: JobFiles, attempt: int) -> str | None:
    """Why an ended launch wrote no result, when it failed after its runs (else None).

    Its runs are all in the ranks' snapshots, so the result is whole; but the ranks'
    own merge broke, which the user should hear about rather than never notice.
    """
    if files.result(attempt).exists() or files.sealed(attempt).exists():
        return None
    try:
        code = int(files.exit_code(attempt).read_text())
    except (OSError, ValueError):
        return None
    if code == 0:
        return None
    return (f"launch {attempt} exited with code {code} after its runs, without writing its result "
            f"(see {files.stderr(attempt)}); the ranks' snapshots hold every run and were merged instead")


def report(state: JobState, job_name: str) -> None:
    """Warn about what the caller should know: missing, failed, broken files."""
    total = len(state.all_runs)
    for problem in state.problems:
        warnings.warn(f"[parallelaverage] {job_name}: {problem}", JobWarning, stacklevel=4)
    if state.fatal:
        warnings.warn(f"[parallelaverage] {job_name} could not start its runs:\n{state.fatal}",
                      JobEndedWarning, stacklevel=4)
    if state.failed:
        first = next(iter(state.failed.values()))
        warnings.warn(
            f"[parallelaverage] {len(state.failed)} / {total} runs failed; the first error:\n{first}",
            RunsFailedWarning, stacklevel=4,
        )
    if state.status == "running" and state.missing:
        warnings.warn(f"[parallelaverage] {len(state.missing)} / {total} runs are not ready yet!",
                      NotReadyWarning, stacklevel=4)
    elif state.status in ("ended", "cancelled", "not_launched") and state.missing:
        how = {"ended": "job ended", "cancelled": "job was cancelled",
               "not_launched": "job was never launched"}[state.status]
        warnings.warn(
            f"[parallelaverage] {job_name}: {how} with {len(state.missing)} of {total} runs missing; "
            "use re_submit to run them", JobEndedWarning, stacklevel=4,
        )


def _outputs(files: JobFiles, state: JobState) -> RunOutputs:
    paths = [p for attempt in files.attempts() for p in files.all_outputs(attempt)]
    return RunOutputs(OutputIndex(paths), state.successful)


def build_result(files: JobFiles, state: JobState, job_name: str, average: Any, keep_runs: bool) -> Any:
    """What the call returns: RunOutputs, an AveragedResult, a tuple of them, or None."""
    if average is None:
        return _outputs(files, state)
    progress = state.progress
    if not progress.accumulators:
        return None
    runs = _outputs(files, state) if keep_runs else None

    def averaged(index: int) -> AveragedResult:
        acc = progress.accumulators[index]
        with np.errstate(invalid="ignore", divide="ignore"):
            return AveragedResult(
                acc.mean, acc.sem, acc.variance, successful_run_ids=state.successful,
                failed_run_ids=list(state.failed), runs=runs, job_name=job_name,
                count=acc.count, total_weight=acc.total_weight,
            )

    if progress.tuple_length is None:
        return averaged(0)
    return tuple(
        averaged(i) if i in progress.accumulators else progress.last_values.get(i)
        for i in range(progress.tuple_length)
    )
