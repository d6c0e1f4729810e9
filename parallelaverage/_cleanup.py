"""``cleanup``: remove from a job database what no call can reach or needs any more."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.jobdb import JobDatabase, JobNotFoundError

__all__ = ["cleanup"]

LEFTOVER_AGE_S = 3600.0
"""Crash leftovers younger than this may belong to a writer still at work: kept."""


def cleanup(path: str | os.PathLike[str] = ".", *, superseded: bool = False,
            redundant_snapshots: bool = False, dry_run: bool = False) -> list[Path]:
    """Remove leftovers from the job database under ``path``; return what was (or would be) removed.

    Always: what crashed writers left behind, older than an hour (staging folders,
    temporary files; :meth:`JobDatabase.leftovers`). ``superseded``: jobs that
    ``do_submit`` replaced (their call now answers with a newer job). ``redundant_snapshots``:
    the per-rank snapshots of launches whose merged result was written (the result holds
    all they held). ``dry_run``: only list.

    Raises:
        ReadOnlyDatabaseError: There is something to remove, but this user may not
            change the database.

    Notes:
        Jobs that are still in the database are never touched, nor their results,
        outputs or records.
    """
    db = JobDatabase(path)
    removed: list[Path] = []

    def remove(target: Path) -> None:
        removed.append(target)
        if dry_run:
            return
        db.check_writable("clean it up")
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    for leftover in db.leftovers(LEFTOVER_AGE_S):
        remove(leftover)
    for record in db.scan().records:
        if superseded and db.current_job_of(record) not in (None, record.job_name):
            removed.append(db.job_dir(record))
            if not dry_run:
                try:
                    db.remove(record.job_name)
                except JobNotFoundError:
                    pass  # someone else removed it meanwhile
            continue
        if redundant_snapshots:
            files = JobFiles(db.job_dir(record))
            for launch_no in files.launch_numbers():
                if files.result(launch_no).exists():
                    for snapshot in files.snapshots(launch_no):
                        remove(snapshot)
    return removed
