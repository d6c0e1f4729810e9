"""The local backend: ``mpiexec -n N_tasks`` on this machine, detached from the caller.

A launch is a small shell script, ``attempts/<k>/launch.sh`` (a golden file pins it),
that exports what the ranks need, runs mpiexec, records mpiexec's pid and, when it
ends, its exit status (atomically). The script runs in a session of its own, orphaned
at once (init adopts and reaps it), so it outlives the calling script and the caller
never holds a child process. A launch is running while its exit status is missing and
its script's process (identified by pid *and* start time, against pid reuse), its
mpiexec or any of its ranks is alive.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.jobfiles.rankstatus import process_start_ticks as _start_ticks
from parallelaverage.jobfiles.rankstatus import read_rank_status
from parallelaverage.backends.base import Backend, worker_argv, worker_environment
from parallelaverage.backends.mpiexec import mpiexec_command

__all__ = ["LocalBackend", "render_local_script", "live_ranks"]

# Starts the script in the background with its output appended to the launch's files,
# prints its pid, then exits: the script is orphaned.
_DETACH = 'sh "$1" </dev/null >>"$2" 2>>"$3" & echo $!'

_SCRIPT = """\
#!/bin/sh
# parallelaverage job {job_name}, launch {launch_no}: {n_tasks} MPI ranks on this machine
{exports}
{launch} &
child=$!
echo "$child" > {pid_file}
wait "$child"
code=$?
echo "$code" > {exit_file}.tmp && mv -f {exit_file}.tmp {exit_file}
exit "$code"
"""


def render_local_script(files: JobFiles, launch_no: int, n_tasks: int, *, python: str, pythonpath: str,
                        mpiexec: str | None = None) -> str:
    """The script of a local launch: environment, mpiexec, pid and exit status."""
    command, extra_env = mpiexec_command(n_tasks, worker_argv(python, files.dir, launch_no), mpiexec)
    # a local launch has one life and no time limit, also when the caller runs inside a SLURM job
    exports = {"PYTHONPATH": pythonpath, "PARALLELAVERAGE_LIFE": "0", **extra_env}
    return _SCRIPT.format(
        job_name=files.dir.name, launch_no=launch_no, n_tasks=n_tasks,
        exports="\n".join([f"export {name}={shlex.quote(value)}" for name, value in exports.items()]
                          + ["unset PARALLELAVERAGE_END_TIME"]),
        launch=shlex.join(command), pid_file=shlex.quote(str(launcher_pid_file(files, launch_no))),
        exit_file=shlex.quote(str(files.exit_code(launch_no))),
    )


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


def launcher_pid_file(files: JobFiles, launch_no: int) -> Path:
    return files.launch_dir(launch_no) / "launcher.pid"


def _launcher_alive(files: JobFiles, launch_no: int) -> bool:
    """Whether the mpiexec of a launch still runs (its pid, checked against its command line)."""
    try:
        pid = int(launcher_pid_file(files, launch_no).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return _start_ticks(pid) is not None and os.fsencode(str(files.dir.resolve())) in cmdline


def _running(script: Path) -> int | None:
    """The pid of a live process that runs ``script`` (``sh script``) or, before that one
    exists, of the shell that detaches it (``script`` among its arguments); else None."""
    wanted = os.fsencode(str(script.resolve()))
    try:
        entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return None
    detaching = None
    for entry in entries:
        try:
            arguments = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arguments[1:2] == [wanted]:
            return int(entry)
        if wanted in arguments:
            detaching = int(entry)
    return detaching


def live_ranks(files: JobFiles, launch_no: int) -> list[int]:
    """Pids of the ranks of a launch still alive on this host (pid and start time both match)."""
    alive = []
    for rank, path in files.rank_statuses(launch_no):
        info = read_rank_status(path, rank)
        if info is not None and info.alive():
            alive.append(info.pid)
    return alive


class LocalBackend(Backend):
    """Start the ranks with the ``mpiexec`` of the active environment."""

    name = "local"
    script_name = "launch.sh"

    def render(self, files: JobFiles, launch_no: int, n_tasks: int, options: Mapping[str, Any]) -> str:
        resolved = JobFiles(files.dir.resolve())
        return render_local_script(resolved, launch_no, n_tasks, python=sys.executable,
                                   pythonpath=worker_environment()["PYTHONPATH"])

    def submit_argv(self, files: JobFiles, launch_no: int, script: Path) -> list[str]:
        return ["/bin/sh", "-c", _DETACH, "sh", str(script.resolve()), str(files.stdout(launch_no).resolve()),
                str(files.stderr(launch_no).resolve())]

    def parse_submission(self, output: str, files: JobFiles, launch_no: int, script: Path) -> dict[str, Any]:
        words = output.split()
        if not words or not words[-1].isdigit():
            raise RuntimeError(f"starting {script} printed no process id: {output!r}")
        pid = int(words[-1])
        return {"pid": pid, "start_ticks": _start_ticks(pid)}

    def missing_command(self, command: str) -> str:
        return f"{command} not found: the local backend needs a POSIX shell"

    def describe(self, launch: Mapping[str, Any]) -> str:
        return f"local launch (pid {launch.get('pid', '?')})"

    def state(self, files: JobFiles, launch_no: int, launch: Mapping[str, Any]) -> str:
        """Running while the wrapper, mpiexec or any rank lives: a rank or an mpiexec that
        outlives a killed wrapper still claims runs and writes snapshots."""
        if files.exit_code(launch_no).exists() and files.result(launch_no).exists():
            return "ended"  # rank 0 wrote the result after every rank merged: nothing runs any more
        if not files.exit_code(launch_no).exists():
            if _alive(int(launch["pid"]), launch.get("start_ticks")) or _launcher_alive(files, launch_no):
                return "running"
            # a recovered launch may have been found by the shell that detaches its script
            if launch.get("recovered") and _running(files.launch_dir(launch_no) / self.script_name):
                return "running"
        return "running" if live_ranks(files, launch_no) else "ended"

    def recover(self, files: JobFiles, launch_no: int) -> dict[str, Any] | None:
        """A launch whose maker died after starting it: its launcher's pid file says so or,
        until its script has written that file, the script's own process.

        The maker starts the script and may die at once; the script writes the pid file
        only after it has started mpiexec, and on a loaded machine that took long
        enough for a reader to take the launch for one that never started, while it
        ran (seen by the soak). From the start to the end of a launch, the shell that
        detaches the script or the script's shell lives with the script's path among
        its arguments.
        """
        try:
            pid: int | None = int(launcher_pid_file(files, launch_no).read_text())
        except (OSError, ValueError):
            pid = _running(files.launch_dir(launch_no) / self.script_name)
        if pid is None:
            return None
        return {"backend": self.name, "pid": pid, "start_ticks": _start_ticks(pid), "recovered": True}

    def cancel(self, files: JobFiles, launch_no: int, launch: Mapping[str, Any], grace_s: float = 3.0) -> None:
        """SIGTERM the launcher and every process below it, then SIGKILL what is left.

        Hydra starts its proxies and the ranks in sessions of their own, so signalling
        the launcher's process group is not enough: the whole tree is signalled.
        """
        pid = int(launch["pid"])
        tree = [pid, *_descendants(pid)] if _alive(pid, launch.get("start_ticks")) else []
        tree += [rank for rank in live_ranks(files, launch_no) if rank not in tree]  # orphaned ranks too
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
