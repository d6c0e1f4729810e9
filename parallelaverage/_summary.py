"""What the command line shows of a job, as JSON-able dicts: the ``--json`` schema.

Every dict here has fixed keys (documented in ``docs/cli.md``); values that are not
known are ``null``, never missing. Numbers that JSON cannot hold (nan, inf) become
``null``. Run ids are integers, or lists of integers for ``N_runs=(a, b, ...)``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from parallelaverage._display import array_range
from parallelaverage.job import Job
from parallelaverage.runspace import encode_run_id
from parallelaverage._state import Crash, JobState, LaunchState
from parallelaverage.jobdb import JobRecord, describe_value
from parallelaverage.results import AveragedResult, RunOutputs

__all__ = ["total_runs", "job_summary", "launch_rate", "status_summary", "detail_summary",
           "result_summary", "crash_summary", "json_number"]


def json_number(value: Any) -> float | None:
    """A finite float, or None (JSON has no nan or inf)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def total_runs(record: JobRecord) -> int:
    """All runs of a job: ``N_runs``, or the product of its dimensions."""
    n_runs = record.N_runs
    return math.prod(n_runs) if isinstance(n_runs, list) else n_runs


def job_summary(record: JobRecord) -> dict[str, Any]:
    """The keys of ``parallelaverage list --json``: who the job is and how far it got.

    The run counts are those stored in the record, which ``Job.state()`` refreshes.
    """
    return {
        "job_name": record.job_name,
        "function": record.function,
        "call": record.call,
        "arguments": dict(record.arguments),
        "N_runs": record.N_runs,
        "status": record.status,
        "submitted_at": record.submitted_at,
        "queue": record.queue,
        "queue_job_id": record.queue_job_id,
        "runs": {"total": total_runs(record), "successful": record.n_successful,
                 "failed": record.n_failed, "missing": record.n_not_ready},
    }


def launch_rate(job: Job, state: JobState) -> tuple[float | None, float | None]:
    """Runs processed per second by the job's latest launch, and seconds since it started.

    The launch started when its ``launch.json`` was written; the runs it processed
    are those it was given minus those still missing (failed runs count: they took
    time too). For a queued SLURM job the time includes the wait in the queue.

    Returns:
        ``(rate_per_s, elapsed_s)``; each None when not known (no launch yet).
    """
    launch_nos = job.files.launch_numbers()
    if not launch_nos:
        return None, None
    latest = launch_nos[-1]
    try:
        started = job.files.launch(latest).stat().st_mtime
        given = len(job.files.read_plan(latest, job.space).positions)
    except (OSError, ValueError):
        return None, None
    elapsed = max(time.time() - started, 0.0)
    processed = given - len(state.missing_positions)
    if elapsed <= 0 or processed <= 0:
        return None, elapsed
    return processed / elapsed, elapsed


def status_summary(job: Job, state: JobState) -> dict[str, Any]:
    """The keys of ``parallelaverage status --json``: a job summary with its pace."""
    rate, elapsed = launch_rate(job, state) if state.status == "running" else (None, None)
    eta = len(state.missing_positions) / rate if rate and state.missing_positions else (0.0 if rate else None)
    return {**job_summary(job.record), "elapsed_s": json_number(elapsed),
            "rate_runs_per_s": json_number(rate), "eta_s": json_number(eta)}


def _numbers(array: np.ndarray) -> list[float | None]:
    """A real array as a JSON list: nan and inf become None."""
    values = array.astype(np.float64)
    if np.isfinite(values).all():
        return values.tolist()
    return [json_number(v) for v in values.tolist()]


def _series(mean: np.ndarray, error: np.ndarray, points: int) -> dict[str, Any] | None:
    """A 1-D real mean and its error for a plot, thinned evenly to at most ``points``."""
    if mean.ndim != 1 or not mean.size or mean.dtype.kind not in "biuf":
        return None
    step = max(1, math.ceil(mean.size / points))
    return {"step": step, "x": list(range(0, mean.size, step)), "mean": _numbers(mean[::step]),
            "error": _numbers(np.broadcast_to(error, mean.shape)[::step])}


MAX_LISTED_VALUES = 64
"""Per-element statistics (skewness, correlations...) are listed for at most this many
elements; larger results give ``null`` there (the full arrays are in Python)."""


def _values(value: Any) -> Any:
    """A statistic as JSON: a number, a (nested) list of at most MAX_LISTED_VALUES numbers, or None."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return json_number(array)
    if array.size > MAX_LISTED_VALUES:
        return None
    return [_values(row) for row in array] if array.ndim > 1 else _numbers(array)


def _statistic_summary(kind: str, acc: Any) -> dict[str, Any]:
    """What the command line and the viewer show of one ``statistics=`` accumulator."""
    summary: dict[str, Any] = {"spec": acc.spec, "count": int(acc.count)}
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if kind == "covariance":
            summary["correlation"] = _values(acc.correlation)
        elif kind == "moments":
            summary["skewness"] = _values(acc.skewness) if acc.order >= 3 else None
            summary["excess_kurtosis"] = _values(acc.excess_kurtosis) if acc.order >= 4 else None
        elif kind == "jackknife":
            summary["batches"] = acc.batches
            summary["counts"] = acc.counts.tolist()
        elif kind == "histogram":
            counts = acc.counts
            per_element = counts.ndim > 1
            summary["edges"] = _numbers(acc.edges)
            summary["counts"] = counts.reshape(-1, counts.shape[-1]).sum(axis=0).tolist()
            summary["weights"] = _numbers(acc.weights.reshape(-1, counts.shape[-1]).sum(axis=0)) if acc._weighted else None
            summary["summed_over_elements"] = per_element
            summary["underflow"], summary["overflow"], summary["nan"] = (
                int(np.sum(acc.underflow)), int(np.sum(acc.overflow)), int(np.sum(acc.nan)))
        elif kind == "autocorrelation":
            summary["autocorrelation_time"] = _values(acc.autocorrelation_time)
            summary["error"] = _values(acc.error)
            summary["naive_error"] = _values(acc.naive_error)
            summary["converged"] = bool(np.all(acc.converged))
    return summary


def _statistics_summary(element: AveragedResult) -> dict[str, Any]:
    return {kind: _statistic_summary(kind, acc) for kind, acc in element.statistics.items() if acc.count}


def _element_summary(index: int, element: Any, plot_points: int | None) -> dict[str, Any]:
    """One element of a result: an average (mean, error, range) or a value kept as is."""
    if not isinstance(element, AveragedResult):
        return {"index": index, "averaged": False, "type": type(element).__name__, "text": describe_value(element),
                "shape": None, "count": None, "mean": None, "error": None, "variance": None,
                "min": None, "max": None, "error_max": None, "series": None, "statistics": {}}
    mean, error = np.asarray(element.data), np.asarray(element.estimated_error)
    scalar = mean.ndim == 0
    mean_range, error_range = array_range(mean), array_range(error)
    return {
        "index": index, "averaged": True, "type": mean.dtype.name, "text": None, "shape": list(mean.shape),
        "count": int(element.count),
        "mean": json_number(mean) if scalar else None, "error": json_number(error) if scalar else None,
        "variance": json_number(element.estimated_variance) if scalar else None,
        "min": mean_range[0] if mean_range else None, "max": mean_range[1] if mean_range else None,
        "error_max": error_range[1] if error_range else None,
        "series": _series(mean, error, plot_points) if plot_points else None,
        "statistics": _statistics_summary(element),
    }


def result_summary(result: Any, *, plot_points: int | None = None) -> dict[str, Any] | None:
    """The ``result`` key of ``parallelaverage show --json`` and of the viewer's job details.

    Args:
        result: What a call returns now (:meth:`Job.result`).
        plot_points: Give each 1-D average a ``series`` for a plot (the viewer's),
            thinned evenly to at most this many points; None leaves ``series`` null.

    Returns:
        None while nothing has finished; ``{"kind": "outputs", "runs": n}`` for a job
        that keeps outputs (``@parallel``); ``{"kind": "average", "tuple": bool,
        "elements": [...]}`` for an average, one element per averaged value (several
        when the function returns a tuple). The keys are in ``docs/cli.md``.
    """
    if result is None:
        return None
    if isinstance(result, RunOutputs):
        return {"kind": "outputs", "runs": len(result)}
    elements = result if isinstance(result, tuple) else (result,)
    return {"kind": "average", "tuple": isinstance(result, tuple),
            "elements": [_element_summary(i, e, plot_points) for i, e in enumerate(elements)]}


LISTED_IDS = 1000
"""``show --json`` lists at most this many failed, missing and crashed run ids (the counts
are in ``runs``): a job of 10**9 runs must not print 10**9 ids."""


def _first_ids(ids: Any) -> list[Any]:
    listed: list[Any] = []
    for run in ids:
        if len(listed) >= LISTED_IDS:
            break
        listed.append(encode_run_id(run))
    return listed


def launch_summary(launch: LaunchState) -> dict[str, Any]:
    """One launch of ``parallelaverage show --json``: its phase, backend, exit code and message."""
    return {
        "launch": launch.number, "phase": launch.phase, "backend": launch.backend,
        "queue_job_id": None if not launch.info else str(launch.info.get("job_id", launch.info.get("pid"))),
        "runs": None if launch.plan is None else len(launch.plan.positions),
        "exit_code": launch.exit_code, "message": launch.message,
    }


def crash_summary(state: JobState, crash: Crash) -> dict[str, Any]:
    """One run that crashed its rank: where, and the signal or ``os._exit`` code that ended it.

    ``exit_code`` is the code the run passed to ``os._exit`` (``null`` for a signal);
    ``launch_exit_code`` is the exit code of the whole launch (mpiexec, srun).
    """
    run = state.space.id_at(crash.position)
    return {"run": encode_run_id(run), "launch": crash.launch, "rank": crash.rank, "signal": crash.signal,
            "signal_name": crash.signal_name, "exit_code": crash.exit_code,
            "launch_exit_code": crash.launch_exit_code, "message": crash.headline(run)}


def detail_summary(job: Job, state: JobState, result: Any) -> dict[str, Any]:
    """The keys of ``parallelaverage show --json``: everything about one job."""
    first = state.failed.first()
    return {
        **job_summary(job.record),
        "folder": str(job.files.dir),
        "options": job.record.options,
        "failed_runs": _first_ids(state.failed),
        "missing_runs": _first_ids(state.missing),
        "first_failure": {"run": encode_run_id(first[0]), "traceback": first[1]} if first else None,
        "crashed_runs": _first_ids(state.space.ids(state.crashed)),
        "crashes": [crash_summary(state, crash) for crash in state.crashes[:LISTED_IDS]],
        "launches": [launch_summary(launch) for launch in state.launches],
        "fatal": state.fatal,
        "target": state.target,
        "problems": list(state.problems),
        "result": result_summary(result),
    }
