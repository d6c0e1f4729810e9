"""Helpers shared by the end-to-end and reliability tests: processes, job folders, polling."""

from __future__ import annotations

import json
import os
import time
import warnings

from parallelaverage import NotReadyWarning, dont_submit


def default_sigint() -> None:
    """``preexec_fn`` for a child that must stop on SIGINT (Ctrl+C) even when the test
    runner was started where SIGINT is ignored (a background job of a script), which
    every child would inherit."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def process_tree(pid: int) -> list[int]:
    """pid and every live process below it, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    tree = [pid] if pid in parents else []
    for child, parent in parents.items():
        if parent == pid:
            tree += process_tree(child)
    return tree


def launch_pid(path, job_name: str, launch_no: int = 1) -> int:
    launch = (path / ".parallelaverage" / job_name / "attempts" / str(launch_no) / "launch.json").read_text()
    return int(json.loads(launch)["pid"])


def jobs_in(path) -> list[str]:
    root = path / ".parallelaverage"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0].isdigit())


def settle(function, *args, timeout_s: float = 60, **kwargs):
    """Call until the job is no longer running; return the last result."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = dont_submit(function)(*args, **kwargs)
        if not any(issubclass(w.category, NotReadyWarning) for w in caught):
            return result, caught
        time.sleep(0.05)
    raise TimeoutError("job did not finish")


def rank_pids(launcher_pid: int) -> list[int]:
    """The MPI ranks (python processes running the worker) below a launcher."""
    ranks = []
    for pid in process_tree(launcher_pid):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"parallelaverage.worker" in cmdline and os.path.basename(cmdline[0]).startswith(b"python"):
            ranks.append(pid)
    return ranks
