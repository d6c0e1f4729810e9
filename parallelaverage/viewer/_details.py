"""One job in detail: its record, its runs, its failures and its result, as JSON and files.

Everything here reads through :class:`~parallelaverage.job.Job`, exactly as a call of
the function or the command line would: the counts shown are the ones a call returns.
"""

from __future__ import annotations

import csv
import io
import math
import re
from typing import Any, Mapping

import numpy as np

from parallelaverage.job import Job
from parallelaverage.runspace import encode_run_id
from parallelaverage._state import JobState
from parallelaverage._summary import crash_summary, result_summary
from parallelaverage.jobdb import JobDatabase
from parallelaverage.results import AveragedResult

from ._catalog import summarize

__all__ = ["job_details", "averaged_element", "npz_bytes", "csv_bytes", "output_tail", "MAX_PLOT_POINTS"]

#: Most points of a 1-D result sent for the plot; longer results are thinned evenly
#: (the downloads always hold every point).
MAX_PLOT_POINTS = 2000
#: Most characters of one traceback sent to the page.
MAX_TRACEBACK_CHARS = 20_000
#: Most distinct errors listed for a job's failed runs.
MAX_ERROR_GROUPS = 20
#: Most run ids listed per error.
MAX_RUNS_PER_ERROR = 50


def job_details(db: JobDatabase, job_name: str) -> tuple[dict[str, Any], Job]:
    """Everything the details view shows about one job.

    Args:
        db: The database.
        job_name: e.g. ``"3_simulate"``.

    Returns:
        ``(details, job)``: the JSON details and the job (its ``record`` is the
        updated one, for the caller's cache).

    Raises:
        JobNotFoundError: No such job.
        CorruptFileError: Its ``job.json`` is unreadable.
        ValueError: ``job_name`` is not a job name.

    Notes:
        Reading the state stores the current status and counts in ``job.json``,
        as a call of the function does. Problems with the job's files (a corrupt
        snapshot, another user's pickle) are reported in ``problems``, not raised.
    """
    job = Job(db, db.load(job_name))
    problems: list[str] = []
    state: JobState | None = None
    try:
        state = job.state()
    except Exception as error:  # the record is still worth showing
        problems.append(f"cannot read the runs: {type(error).__name__}: {error}")
    record = job.record
    details: dict[str, Any] = {
        "job": summarize(record),
        "record": record.to_json(),
        "directory": str(db.job_dir(record)),
        "problems": problems,
        "state": None,
        "failures": [],
        "result": None,
    }
    if state is None:
        return details, job
    problems.extend(state.problems)
    details["state"] = {
        "status": state.status,
        "total": len(state.all_runs),
        "successful": len(state.successful),
        "failed": len(state.failed),
        "missing": len(state.missing),
        "fatal": _clip(state.fatal) if state.fatal else None,
        "crashed": len(state.crashed),
        "crashes": [crash_summary(state, crash) for crash in state.crashes],
        "launches": [_launch(launch) for launch in state.launches],
    }
    details["failures"] = _failures(state.failed)
    try:
        result = job.result(state, report=False)
    except Exception as error:
        problems.append(f"cannot build the result: {type(error).__name__}: {error}")
        return details, job
    details["result"] = result_summary(result, plot_points=MAX_PLOT_POINTS)
    return details, job


def averaged_element(db: JobDatabase, job_name: str, element: int) -> AveragedResult:
    """The averaged result of a job, or element ``element`` of a tuple result.

    Raises:
        JobNotFoundError, CorruptFileError, ValueError: as :func:`job_details`.
        LookupError: The job has no averaged result there (yet); the message says why.
    """
    job = Job(db, db.load(job_name))
    if job.average is None:
        raise LookupError(f"job {job_name} keeps its runs' outputs without averaging them; nothing to download")
    result = job.result(job.state(), report=False)
    if result is None:
        raise LookupError(f"job {job_name} has no finished run yet")
    if isinstance(result, tuple):
        if not 0 <= element < len(result):
            raise LookupError(f"element={element}: job {job_name} returns {len(result)} elements (0 to {len(result) - 1})")
        result = result[element]
    elif element != 0:
        raise LookupError(f"element={element}: job {job_name} returns a single result (element 0)")
    if not isinstance(result, AveragedResult):
        raise LookupError(f"element {element} of job {job_name} is not averaged (see average_results)")
    return result


def npz_bytes(result: AveragedResult) -> bytes:
    """A ``.npz`` file with ``mean``, ``error``, ``variance``, ``count`` and the run ids.

    Loadable with ``numpy.load(path)`` (no pickles: ``allow_pickle=False`` works).
    """
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mean=np.asarray(result.data),
        error=np.asarray(result.estimated_error),
        variance=np.asarray(result.estimated_variance),
        count=np.asarray(result.count),
        successful_run_ids=np.asarray([encode_run_id(r) for r in result.successful_run_ids], dtype=np.int64),
        failed_run_ids=np.asarray([encode_run_id(r) for r in result.failed_run_ids], dtype=np.int64),
    )
    return buffer.getvalue()


def csv_bytes(result: AveragedResult) -> bytes:
    """CSV with a header row: ``mean,error,variance`` for a scalar, one row per element
    (``index`` or ``i0,i1,...`` columns first) for an array. Numbers round-trip exactly."""
    mean = np.asarray(result.data)
    error = np.broadcast_to(np.asarray(result.estimated_error), mean.shape)
    variance = np.broadcast_to(np.asarray(result.estimated_variance), mean.shape)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if mean.ndim == 0:
        writer.writerow(["mean", "error", "variance"])
        writer.writerow([_text(mean[()]), _text(error[()]), _text(variance[()])])
    else:
        columns = ["index"] if mean.ndim == 1 else [f"i{axis}" for axis in range(mean.ndim)]
        writer.writerow([*columns, "mean", "error", "variance"])
        for position in np.ndindex(mean.shape):
            writer.writerow([*position, _text(mean[position]), _text(error[position]), _text(variance[position])])
    return out.getvalue().encode()


def output_tail(job: Job, max_chars: int = 64_000) -> str:
    """The end of the standard output and error of every launch of a job."""
    text = job.output_text()
    if len(text) > max_chars:
        text = f"[... {len(text) - max_chars} earlier characters not shown ...]\n" + text[-max_chars:]
    return text


# ----------------------------------------------------------------- helpers

def _text(value: Any) -> str:
    """A number as text that reads back exactly (``repr`` of the Python value)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _clip(text: str, limit: int = MAX_TRACEBACK_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters ...]"


def _last_line(traceback: str) -> str:
    lines = [line for line in traceback.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no message)"


def _failures(failed: Mapping[Any, str]) -> list[dict[str, Any]]:
    """Failed runs grouped by their error, biggest group first, each with its first traceback.

    Errors are the tracebacks' last lines with numbers masked, so that "run 3 diverged"
    and "run 7 diverged" are one error.
    """
    groups: dict[str, dict[str, Any]] = {}
    for run, traceback in failed.items():
        # a crash message starts with what happened; a traceback ends with it
        error = traceback.splitlines()[0] if " crashed the rank " in traceback or "os._exit(" in traceback \
            else _last_line(traceback)
        kind = re.sub(r"\d+(\.\d+)?([eE][-+]?\d+)?", "#", error)
        group = groups.get(kind)
        if group is None:
            group = groups[kind] = {"error": error, "count": 0, "runs": [], "traceback": _clip(traceback)}
        group["count"] += 1
        if len(group["runs"]) < MAX_RUNS_PER_ERROR:
            group["runs"].append(encode_run_id(run))
    return sorted(groups.values(), key=lambda g: -g["count"])[:MAX_ERROR_GROUPS]


def _launch(launch: Any) -> dict[str, Any]:
    """One launch for the page: its number, phase, queue id, exit code and message."""
    info = launch.info or {}
    return {"launch": launch.number, "phase": launch.phase, "backend": launch.backend,
            "job_id": _json_data(info.get("job_id")), "pid": _json_data(info.get("pid")),
            "exit_code": launch.exit_code, "message": _clip(launch.message) if launch.message else None}


def _json_data(value: Any) -> Any:
    """Plain JSON data from launch info (numbers, strings, lists, dicts)."""
    if isinstance(value, dict):
        return {str(k): _json_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_data(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)
