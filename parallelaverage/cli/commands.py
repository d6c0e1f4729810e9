"""The commands of ``parallelaverage`` (the parser and the error boundary are in ``cli.py``).

Each ``cmd_*`` takes the parsed arguments and returns the exit code; it raises
``UsageError`` for a request that cannot be right (exit 2) and lets other errors
reach the boundary (exit 1). Results go to standard output, progress bars and
warnings to standard error, so that ``--json`` output can be piped.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from parallelaverage._cleanup import cleanup
from parallelaverage.cli.text import (
    age, crash_lines, ids_text, indent, launches_text, pairs_text, result_lines, table, when,
)
from parallelaverage.job import Job, prefetch_states
from parallelaverage._state import JobState
from parallelaverage._progress import RunsBar, runs_meter
from parallelaverage._summary import detail_summary, job_summary, status_summary, total_runs
from parallelaverage.errors import LaunchError, RunsFailedError, SubmissionError, say
from parallelaverage.jobdb import LIVE_STATUSES, STATUSES, JobDatabase, JobNotFoundError, JobRecord

__all__ = ["run", "UsageError", "PROG"]

PROG = "parallelaverage"

#: What ``--status`` accepts: exactly the statuses parallelaverage writes.
KNOWN_STATUSES = STATUSES


class UsageError(Exception):
    """The command line asks for something impossible (a wrong name or value): exit code 2."""


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, allow_nan=False))


# ------------------------------------------------------------------ finding jobs

def open_database(path: str) -> JobDatabase:
    """The database under ``--path``; a missing directory is a usage error."""
    if not os.path.isdir(path):
        raise UsageError(f"--path {path}: no such directory")
    return JobDatabase(path)


def _number(name: str) -> str:
    return name.split("_", 1)[0]


def resolve_job(db: JobDatabase, name: str) -> Job:
    """The job called ``name``, or numbered ``name``; a usage error naming the closest jobs."""
    names = db.job_names()  # oldest first
    if name.isdigit():
        matches = [n for n in names if _number(n) == name]
        if len(matches) > 1:
            raise UsageError(f"several jobs have the number {name}: {', '.join(matches)}; give the full name")
    try:
        return Job(db, db.resolve(name))
    except JobNotFoundError:
        pass
    names.reverse()
    same_function = [n for n in names if n.split("_", 1)[1:] == [name]]
    closest = same_function[:3] or difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(closest)}" if closest else (
        f"; jobs there: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}" if names
        else f" (there is no job in {db.root}; pass --path DIR to use another directory)")
    raise UsageError(f"no job {name!r} in {db.root}{hint}")


def refresh(job: Job) -> JobState | None:
    """The job's state (which also updates its record); None, with a warning, if unreadable."""
    try:
        return job.state()
    except Exception as error:  # one broken job must not hide the others
        say(f"{job.name}: cannot read its state: {' '.join(str(error).split())}", file=sys.stderr)
        return None


def outcome(record: JobRecord) -> int:
    """Exit code of a job: 1 if runs failed, or are missing from a job that stopped."""
    if record.n_failed or (record.n_not_ready and record.status != "running"):
        return 1
    return 0


# ------------------------------------------------------------------ commands

def _argument_matches(stored: str, wanted: str) -> bool:
    """``--arg L=64`` matches the stored ``"64"``, ``model=ising`` the stored ``"'ising'"``, ``T=2.50`` ``"2.5"``."""
    if stored in (wanted, repr(wanted)):
        return True
    try:
        return float(stored) == float(wanted)
    except ValueError:
        return False


def _filters(args: argparse.Namespace) -> tuple[list[str], list[tuple[str, str]]]:
    statuses = args.status or []
    for status in statuses:
        if status not in KNOWN_STATUSES:
            close = difflib.get_close_matches(status, KNOWN_STATUSES, n=1)
            raise UsageError(f"--status {status}: unknown status{f' (did you mean {close[0]}?)' if close else ''}; "
                             f"statuses are {', '.join(KNOWN_STATUSES)}")
    wanted = []
    for item in args.arg:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--arg {item}: give NAME=VALUE, e.g. --arg L=64")
        wanted.append((name.strip(), value.strip()))
    return statuses, wanted


def cmd_list(args: argparse.Namespace) -> int:
    """Print the jobs (refreshing those that may still run), newest first, filtered."""
    statuses, wanted = _filters(args)
    db = open_database(args.path)
    scan = db.scan()
    for problem in scan.problems:
        say(f"skipping an unreadable job: {problem}", file=sys.stderr)
    records = scan.records
    if args.function:
        records = [r for r in records if args.function in (r.function, r.function.rsplit(".", 1)[-1],
                                                           r.job_name.split("_", 1)[1])]
    for name, _ in wanted:
        if records and not any(name in r.arguments for r in records):
            known = sorted({a for r in records for a in r.arguments})
            raise UsageError(f"--arg {name}=...: no job has an argument {name!r}; "
                             f"the arguments are: {', '.join(known) or '(none)'}")
    records = [r for r in records if all(n in r.arguments and _argument_matches(r.arguments[n], v)
                                         for n, v in wanted)]
    live = {r.job_name: Job(db, r) for r in records if r.status in LIVE_STATUSES}
    prefetch_states(list(live.values()))  # one queue query for all of them
    fresh = []
    for record in records:
        if record.job_name in live:
            job = live[record.job_name]
            refresh(job)
            record = job.record
        fresh.append(record)
    records = [r for r in fresh if not statuses or r.status in statuses]
    if args.json:
        emit_json({"path": str(db.path), "jobs": [job_summary(r) for r in records]})
        return 0
    if not records:
        where = db.root if db.root.is_dir() else f"{db.path} (it has no {db.root.name} folder; pass --path DIR)"
        filtered = " match" if (statuses or wanted or args.function) else ""
        print(f"no jobs{filtered} in {where}", file=sys.stderr)
        return 0
    rows = [["JOB", "STATUS", "DONE", "FAILED", "SUBMITTED", "CALL"]]
    for r in records:
        rows.append([r.job_name, r.status, f"{r.n_successful}/{total_runs(r)}", str(r.n_failed or ""),
                     age(r.submitted_at), r.call])
    print(table(rows))
    return 0


def _status_summaries(jobs: list[Job]) -> list[dict[str, Any]]:
    """Refresh each job; its status summary (without a pace if its state is unreadable)."""
    summaries = []
    for job in jobs:
        state = refresh(job)
        summaries.append(status_summary(job, state) if state is not None else
                         {**job_summary(job.record), "elapsed_s": None, "rate_runs_per_s": None, "eta_s": None})
    return summaries


def _status_label(job: Job, summary: dict[str, Any]) -> str:
    return job.name if summary["status"] == "running" else f"{job.name} ({summary['status']})"


def _status_line(job: Job, summary: dict[str, Any]) -> str:
    runs, rate = summary["runs"], summary["rate_runs_per_s"]
    processed = runs["successful"] + runs["failed"]
    text = runs_meter(_status_label(job, summary), runs["successful"], runs["failed"], runs["total"],
                      elapsed_s=summary["elapsed_s"], rate_per_s=rate, initial=processed if rate is None else 0)
    return f"{text}  {job.record.call}"


def cmd_status(args: argparse.Namespace) -> int:
    """Print a progress line per running (or named) job; with ``--watch``, bars until none runs."""
    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval}: must be > 0 seconds")
    if args.watch and args.json:
        raise UsageError("--watch and --json do not go together; use --json alone for one snapshot")
    db = open_database(args.path)
    if args.jobs:
        jobs = [resolve_job(db, name) for name in args.jobs]
    else:
        jobs = [Job(db, r) for r in db.scan().records if r.status in LIVE_STATUSES]
    prefetch_states(jobs)  # one queue query for all of them
    summaries = _status_summaries(jobs)
    if not args.jobs:
        keep = [i for i, job in enumerate(jobs) if job.record.status == "running"]
        jobs, summaries = [jobs[i] for i in keep], [summaries[i] for i in keep]
    if args.json:
        emit_json({"path": str(db.path), "jobs": summaries})
        return 0
    if not jobs:
        print(f"no running jobs in {db.root}", file=sys.stderr)
        return 0
    if not args.watch:
        print("\n".join(_status_line(job, s) for job, s in zip(jobs, summaries)), flush=True)
        return 0
    print("\n".join(f"{job.name}: {job.record.call}" for job in jobs), flush=True)
    bars = [RunsBar(s["runs"]["total"], stream=sys.stdout, position=i, line_interval_s=args.interval)
            for i, s in enumerate(summaries)]
    try:
        while True:
            for job, summary, bar in zip(jobs, summaries, bars):
                bar.label = _status_label(job, summary)
                runs = summary["runs"]
                bar.update(runs["successful"], runs["failed"], rate_per_s=summary["rate_runs_per_s"],
                           elapsed_s=summary["elapsed_s"])
            if all(job.record.status != "running" for job in jobs):
                return 0
            time.sleep(args.interval)
            prefetch_states(jobs)  # one queue query for all of them
            summaries = _status_summaries(jobs)
    finally:
        for bar in bars:  # top down: a terminal's bars stay in their order
            bar.close()


def _read_result(job: Job, state: JobState) -> Any:
    """The job's result, or None: when it has none (the queue refused it, its launch ran
    nothing, every run failed) ``show`` and ``wait`` print why from the state instead."""
    try:
        return job.result(state, report=False)
    except (SubmissionError, LaunchError, RunsFailedError):
        return None
    except (OSError, ValueError) as error:
        say(f"{job.name}: cannot read its result: {' '.join(str(error).split())}", file=sys.stderr)
        return None


def _failure_text(summary: dict[str, Any]) -> list[str]:
    parts = []
    if summary["failed_runs"]:
        first = summary["first_failure"]
        run = tuple(first["run"]) if isinstance(first["run"], list) else first["run"]
        parts.append(f"{summary['runs']['failed']} runs failed: {ids_text(summary['failed_runs'])}\n"
                     f"the first failure (run {run}):\n{indent(first['traceback'])}")
    if summary["fatal"]:
        heading = {"submit_failed": "the queue refused the job's launch",
                   "not_launched": "the job was never launched"}.get(summary["status"], "the job could not start its runs")
        parts.append(f"{heading}:\n{indent(summary['fatal'])}")
    return parts


def cmd_show(args: argparse.Namespace) -> int:
    """Print everything about one job; exit 1 if runs failed or are missing from a stopped job."""
    db = open_database(args.path)
    job = resolve_job(db, args.job)
    state = job.state()
    summary = detail_summary(job, state, _read_result(job, state))
    for problem in summary["problems"]:
        say(f"{job.name}: {problem}", file=sys.stderr)
    if args.json:
        emit_json(summary)
        return outcome(job.record)
    runs = summary["runs"]
    options = {k: v for k, v in summary["options"].items() if k != "queue_options"}
    queue_options = summary["options"].get("queue_options") or {}
    pairs = [
        ("job", job.name), ("call", summary["call"]), ("function", summary["function"]),
        ("status", summary["status"]),
        ("runs", f"{runs['successful']} of {runs['total']} done, {runs['failed']} failed, {runs['missing']} missing"),
        ("submitted", when(summary["submitted_at"])),
        ("queue", f"{summary['queue'] or '-'}, job id {summary['queue_job_id'] or '-'}"),
        ("launches", launches_text(summary["launches"])),
        ("options", ", ".join(f"{k}={v!r}" for k, v in options.items()) or "-"),
    ]
    if queue_options:
        pairs.append(("queue options", ", ".join(f"{k}={v!r}" for k, v in queue_options.items())))
    pairs.append(("folder", summary["folder"]))
    if summary["missing_runs"] and summary["status"] != "running":
        pairs.append(("missing", f"{ids_text(summary['missing_runs'])}  (run them: {PROG} resubmit {job.name})"))
    pairs += crash_lines(summary["crashes"], f"{PROG} resubmit {job.name}")
    pairs += result_lines(summary["result"])
    print(pairs_text(pairs))
    for part in _failure_text(summary):
        print("\n" + part)
    return outcome(job.record)


def cmd_wait(args: argparse.Namespace) -> int:
    """Draw a progress bar until the job stops running, then its result; exit 1 as ``show``."""
    db = open_database(args.path)
    job = resolve_job(db, args.job)
    state = job.watch()
    summary = detail_summary(job, state, _read_result(job, state))
    for problem in summary["problems"]:
        say(f"{job.name}: {problem}", file=sys.stderr)
    runs = summary["runs"]
    pairs = [("status", f"{summary['status']}: {runs['successful']} of {runs['total']} runs done, "
                        f"{runs['failed']} failed, {runs['missing']} missing")]
    print(pairs_text(pairs + result_lines(summary["result"])))
    code = outcome(job.record)
    if code:
        say(f"{job.name} has failed or missing runs: see '{PROG} show {job.name}', "
            f"run them again with '{PROG} resubmit {job.name}'", file=sys.stderr)
    return code


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a running job (a job that does not run is left as it is)."""
    db = open_database(args.path)
    job = resolve_job(db, args.job)
    state = job.state()
    if state.status != "running":
        print(f"job {job.name} is not running ({job.record.status}); nothing to cancel")
        return 0
    job.cancel()
    return 0


def cmd_resubmit(args: argparse.Namespace) -> int:
    """Launch the failed and missing runs of a stopped job again."""
    if args.tasks is not None and args.tasks < 1:
        raise UsageError(f"--tasks {args.tasks}: must be at least 1")
    db = open_database(args.path)
    job = resolve_job(db, args.job)
    if job.state().status == "running":
        print(f"{PROG}: error: job {job.name} is still running; wait for it ({PROG} wait {job.name}) "
              f"or cancel it ({PROG} cancel {job.name}) first", file=sys.stderr)
        return 1
    job.resubmit(args.tasks, include_crashed=args.include_crashed, fresh_streams=args.fresh_streams)
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove crash leftovers and, if asked, superseded jobs and redundant snapshots."""
    db = open_database(args.path)
    if args.reindex and not args.dry_run:
        for name in db.reindex():
            print(f"re-indexed {name}")
    removed = cleanup(db.path, superseded=args.superseded, redundant_snapshots=args.snapshots,
                      dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for target in removed:
        print(f"{verb} {Path(target).relative_to(db.path) if Path(target).is_relative_to(db.path) else target}")
    things = "file or folder" if len(removed) == 1 else "files and folders"
    print(f"{verb} {len(removed)} {things}" if removed else "nothing to clean up")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """Serve the web viewer until interrupted; exit 1 if this installation has none."""
    db = open_database(args.path)
    try:
        from parallelaverage.viewer import serve
    except ImportError as error:
        print(f"{PROG}: error: the web viewer is not available in this installation ({error})", file=sys.stderr)
        return 1
    options: dict[str, Any] = {"path": str(db.path), "open_browser": args.open}
    if args.port is not None:
        options["port"] = args.port
    serve(**options)
    return 0


_RUN = {"list": cmd_list, "status": cmd_status, "show": cmd_show, "wait": cmd_wait, "cancel": cmd_cancel,
        "resubmit": cmd_resubmit, "cleanup": cmd_cleanup, "view": cmd_view}


def run(args: argparse.Namespace) -> int:
    """Run the command named by ``args.command``; return its exit code."""
    return _RUN[args.command](args)
