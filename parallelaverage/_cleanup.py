"""``cleanup``: remove from a job database what no call can reach or needs any more."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from parallelaverage._atomic import TEMP_MARKER
from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.jobdb import CorruptFileError, JobDatabase
from parallelaverage.jobdb.index import entry_path, read_entry

__all__ = ["cleanup"]

LEFTOVER_AGE_S = 3600.0
"""Crash leftovers younger than this may belong to a writer still at work: kept."""


def cleanup(path: str | os.PathLike[str] = ".", *, superseded: bool = False,
            redundant_snapshots: bool = False, dry_run: bool = False) -> list[Path]:
    """Remove leftovers from the job database under ``path``; return what was (or would be) removed.

    Always: staging folders and temporary files that crashed writers left behind
    (older than an hour). ``superseded``: jobs that ``do_submit`` replaced (their call
    now answers with a newer job). ``redundant_snapshots``: the per-rank snapshots of
    launches whose merged result was written (the result holds all they held).
    ``dry_run``: only list.

    Notes:
        Jobs that are still in the database are never touched, nor their results,
        outputs or records.
    """
    db = JobDatabase(path)
    root = db.root
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()

    def remove(target: Path) -> None:
        removed.append(target)
        if dry_run:
            return
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    for entry in root.iterdir():
        if entry.name.startswith(".creating-") and now - entry.stat().st_mtime > LEFTOVER_AGE_S:
            remove(entry)
    for temp in root.rglob(f"*{TEMP_MARKER}*"):
        if now - temp.stat().st_mtime > LEFTOVER_AGE_S:
            remove(temp)
    for record in db.scan().records:
        files = JobFiles(db.job_dir(record))
        if superseded:
            try:
                current = read_entry(entry_path(root, record.key_digest), record.key_digest)
            except (FileNotFoundError, CorruptFileError):
                current = None
            if current is not None and current != record.job_name:
                remove(files.dir)
                continue
        if redundant_snapshots:
            for attempt in files.attempts():
                if files.result(attempt).exists():
                    for snapshot in files.snapshots(attempt):
                        remove(snapshot)
    return removed
