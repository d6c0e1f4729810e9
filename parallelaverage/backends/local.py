"""The local backend: ``mpiexec -n N_tasks`` on this machine, detached from the caller.

The launcher runs in a session of its own, orphaned at once (init adopts and reaps
it), so it outlives the calling script and the caller never holds a child process.
A tiny shell wrapper records mpiexec's exit status in the launch directory when it
ends. A launch is running while that file is missing and its wrapper process
(identified by pid *and* start time, against pid reuse) is alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from parallelaverage._jobdir import JobFiles
from parallelaverage._rankstatus import process_start_ticks as _start_ticks
from parallelaverage._rankstatus import read_rank_status
from parallelaverage.backends.base import Backend, worker_argv
from parallelaverage.backends.mpiexec import mpiexec_command

__all__ = ["LocalBackend", "worker_environment"]

# Runs the launcher, records its pid, then writes its exit status atomically (tmp + mv).
_WRAPPER = ('"$@" & child=$!; echo "$child" > "$PID_FILE"; wait "$child"; code=$?; '
            'echo "$code" > "$EXIT_FILE.tmp" && mv "$EXIT_FILE.tmp" "$EXIT_FILE"; exit $code')
# Starts the wrapper in the background and prints its pid, then exits: the wrapper is orphaned.
_DETACH = '/bin/sh -c "$WRAPPER" sh "$@" </dev/null >>"$OUT_FILE" 2>>"$ERR_FILE" & echo $!'


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _alive(pid: int, start_ticks: int | None) -> bool:
    if os.path.isdir("/proc"):
        ticks = _start_ticks(pid)
        return ticks is not None and (start_ticks is None or ticks == start_ticks)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, frontier = [], [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found.extend(below)
        frontier.extend(below)
    return found


def launcher_pid_file(files: JobFiles, attempt: int) -> Path:
    return files.attempt_dir(attempt) / "launcher.pid"


def _launcher_alive(files: JobFiles, attempt: int) -> bool:
    """Whether the mpiexec of a launch still runs (its pid, checked against its command line)."""
    try:
        pid = int(launcher_pid_file(files, attempt).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return _start_ticks(pid) is not None and os.fsencode(str(files.dir.resolve())) in cmdline


def live_ranks(files: JobFiles, attempt: int) -> list[int]:
    """Pids of the ranks of a launch still alive on this host (pid and start time both match)."""
    alive = []
    for rank, path in files.rank_statuses(attempt):
        info = read_rank_status(path, rank)
        if info is not None and info.alive():
            alive.append(info.pid)
    return alive


def worker_environment() -> dict[str, str]:
    """The caller's environment plus its ``sys.path``, so the function's module imports."""
    paths = [os.path.abspath(p or os.getcwd()) for p in sys.path if os.path.isdir(p or os.getcwd())]
    existing = os.environ.get("PYTHONPATH")
    pythonpath = os.pathsep.join(dict.fromkeys(paths + ([existing] if existing else [])))
    return {**os.environ, "PYTHONPATH": pythonpath}


class LocalBackend(Backend):
    """Start the ranks with the ``mpiexec`` of the active environment."""

    name = "local"

    def submit(self, files: JobFiles, attempt: int, n_tasks: int, options: Mapping[str, Any]) -> dict[str, Any]:
        command, extra_env = mpiexec_command(n_tasks, worker_argv(sys.executable, files.dir.resolve(), attempt))
        env = {
            **worker_environment(), **extra_env, "WRAPPER": _WRAPPER,
            "EXIT_FILE": str(files.exit_code(attempt).resolve()),
            "PID_FILE": str(launcher_pid_file(files, attempt).resolve()),
            "OUT_FILE": str(files.stdout(attempt).resolve()), "ERR_FILE": str(files.stderr(attempt).resolve()),
        }
        # a session of its own: no SIGHUP or Ctrl-C of the caller reaches the job
        started = subprocess.run(["/bin/sh", "-c", _DETACH, "sh", *command], env=env, check=True,
                                 capture_output=True, text=True, start_new_session=True)
        pid = int(started.stdout.split()[-1])
        return {"backend": self.name, "pid": pid, "start_ticks": _start_ticks(pid), "command": command}

    def describe(self, launch: Mapping[str, Any]) -> str:
        return f"local launch (pid {launch.get('pid', '?')})"

    def state(self, files: JobFiles, attempt: int, launch: Mapping[str, Any]) -> str:
        """Running while the wrapper, mpiexec or any rank lives: a rank or an mpiexec that
        outlives a killed wrapper still claims runs and writes snapshots."""
        if not files.exit_code(attempt).exists():
            if _alive(int(launch["pid"]), launch.get("start_ticks")) or _launcher_alive(files, attempt):
                return "running"
        return "running" if live_ranks(files, attempt) else "ended"

    def recover(self, files: JobFiles, attempt: int) -> dict[str, Any] | None:
        """A launch whose maker died after starting mpiexec: its launcher's pid file says so."""
        try:
            pid = int(launcher_pid_file(files, attempt).read_text())
        except (OSError, ValueError):
            return None
        return {"backend": self.name, "pid": pid, "start_ticks": _start_ticks(pid), "recovered": True}

    def cancel(self, files: JobFiles, attempt: int, launch: Mapping[str, Any], grace_s: float = 3.0) -> None:
        """SIGTERM the launcher and every process below it, then SIGKILL what is left.

        Hydra starts its proxies and the ranks in sessions of their own, so signalling
        the launcher's process group is not enough: the whole tree is signalled.
        """
        pid = int(launch["pid"])
        tree = [pid, *_descendants(pid)] if _alive(pid, launch.get("start_ticks")) else []
        tree += [rank for rank in live_ranks(files, attempt) if rank not in tree]  # orphaned ranks too
        if not tree:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            for member in tree:
                try:
                    os.kill(member, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                tree = [member for member in tree if _start_ticks(member) is not None]
                if not tree:
                    return
                time.sleep(0.02)
