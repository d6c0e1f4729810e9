"""The SLURM backend: one ``sbatch`` job per launch, its ranks started by ``srun``.

A launch renders a job script from a template (the built-in :data:`DEFAULT_TEMPLATE`
or the user's ``~/.config/parallelaverage/slurm.sbatch``), writes it to
``attempts/<k>/job.sbatch`` and submits it with ``sbatch --parsable``. The script runs
``srun --mpi=pmi2 --export=ALL --kill-on-bad-exit=1 <python> -P -m parallelaverage.worker
JOBDIR K`` (or ``mpiexec``), then writes the launcher's exit status to
``attempts/<k>/exit_code`` and exits with it.

A launch has ended when its ``exit_code`` file exists, when ``squeue`` shows a terminal
state (cached in ``attempts/<k>/slurm_state``, so it is asked once), or when the
controller no longer knows the job id. The process's one :class:`QueueWatcher`
(:func:`queue_watcher`) decides when ``squeue`` is asked: rarely, once for all jobs
of the user, and not at all while the ranks' status records show progress (see
:mod:`parallelaverage.backends.slurm_queue`). Nothing needs ``sacct`` (which needs
slurmdbd).

Submissions beyond a per-user submit limit (``MaxSubmitJobs``) wait in the caller
until the queue has room (see :mod:`parallelaverage.backends.slurm_limits`).

Notes:
    The job database (``path``) and the Python environment must be on a filesystem the
    compute nodes share with the submitting machine: the job script runs the caller's
    ``sys.executable`` with the caller's ``sys.path`` as ``PYTHONPATH``.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from parallelaverage._atomic import atomic_write_bytes
from parallelaverage.jobfiles.layout import Creator, JobFiles
from parallelaverage.backends.base import Backend
from parallelaverage.backends.slurm_limits import SubmitLimit, policy_refusal, read_submit_limits, submit_limit_refusal
from parallelaverage.backends.slurm_options import check_slurm_options
from parallelaverage.backends.slurm_queue import RUNNING_STATES, TERMINAL_STATES, JobRow, QueueWatcher
from parallelaverage.backends.slurm_script import ScriptInputs, load_template, render_script, template_path
from parallelaverage.errors import say, warn

__all__ = ["SlurmBackend", "queue_watcher", "RUNNING_STATES", "TERMINAL_STATES"]

# What sbatch/squeue/scancel print when the controller is busy or unreachable: worth retrying.
_TRANSIENT = re.compile(
    r"Socket timed out|Unable to contact slurm controller|Zero Bytes were transmitted|"
    r"Connection refused|Connection reset|Communication connection failure|"
    r"temporarily unable|Resource temporarily unavailable|Transport endpoint|"
    r"controller.*(busy|not responding)|timed out after",
    re.IGNORECASE,
)
# ... of which these may come after the controller accepted the job (the answer was lost)
_MAYBE_DONE = re.compile(r"Socket timed out|Zero Bytes were transmitted|Connection reset|timed out after",
                         re.IGNORECASE)
_UNKNOWN_JOB = re.compile(r"Invalid job id", re.IGNORECASE)
# one line per job (-r: one per array task, as submit limits count them); the reason last:
# it is free text
_LISTING_FORMAT = "--format=%i|%T|%a|%q|%r"

_WATCHER: QueueWatcher | None = None
_WATCHER_LOCK = threading.Lock()


def queue_watcher() -> QueueWatcher:
    """The process's one watcher of its SLURM jobs (made on first use)."""
    global _WATCHER
    with _WATCHER_LOCK:
        if _WATCHER is None:
            backend = SlurmBackend()
            _WATCHER = QueueWatcher(backend._list_jobs, backend._cache_row, backend.cached_state,
                                    finished=backend._finished)
        return _WATCHER


class _SubmitMemory:
    """What this process learnt from sbatch refusals: the submit limits (read after a
    first refusal, by the account and qos options), and the refusals in a row."""

    def __init__(self) -> None:
        self.limits: dict[tuple[str | None, str | None], list[SubmitLimit]] = {}
        self.refusals = 0


_SUBMITS = _SubmitMemory()


# --------------------------------------------------------------------------- the backend
class SlurmBackend(Backend):
    """Submit each launch as a SLURM batch job; follow it with ``squeue``; stop it with ``scancel``."""

    name = "slurm"
    retry_delays_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    """Waits between tries of ``sbatch`` and ``scancel`` when they failed transiently
    ("Socket timed out", "Resource temporarily unavailable": the controller is busy or
    restarting): about a minute in all, each wait ±25 % at random."""
    query_retry_delays_s: tuple[float, ...] = (1.0, 2.0)
    """The same for ``squeue``: a listing that fails is asked again at the next look anyway."""
    command_timeout_s: float = 120.0
    """A SLURM command that takes longer counts as a transient failure."""
    cancel_timeout_s: float = 120.0
    """How long :meth:`cancel` waits for the job's processes to be gone."""
    submit_limit_patience_s: float | None = None
    """How long a submission waits for room under a submit limit (None: as long as it takes)."""

    script_name = "job.sbatch"
    transient_errors = _TRANSIENT
    maybe_done_errors = _MAYBE_DONE

    # ------------------------------------------------------------------ hooks
    def render(self, files: JobFiles, launch_no: int, n_tasks: int, options: Mapping[str, Any]) -> str:
        """The job script (``attempts/<k>/job.sbatch``), from the user's template if any.

        Raises:
            ValueError: a bad option or template (before anything is submitted).
        """
        check_slurm_options(options)
        template, source = load_template()
        return render_script(ScriptInputs.for_launch(files, launch_no, n_tasks, options), template, source)

    def submit_argv(self, files: JobFiles, launch_no: int, script: Path) -> list[str]:
        return ["sbatch", "--parsable", str(script)]

    def submit(self, files: JobFiles, launch_no: int, n_tasks: int, options: Mapping[str, Any]) -> dict[str, Any]:
        info = super().submit(files, launch_no, n_tasks, options)
        _SUBMITS.refusals = 0
        queue_watcher().submitted(files, launch_no, str(info["job_id"]))  # first look at it in 2 s
        return info

    # ------------------------------------------------------------------ submit limits
    def admit(self, files: JobFiles, launch_no: int, options: Mapping[str, Any]) -> None:
        """Under a submit limit this process has met before (a refusal taught it), wait
        before ``sbatch`` until this user's queued and running jobs are fewer."""
        limits = _SUBMITS.limits.get(_limit_key(options))
        if limits:
            limit = min(limits, key=lambda item: item.jobs)
            self._wait_for_room(files, launch_no, limit.jobs, f"{limit} is reached", limit)

    def wait_after_refusal(self, files: JobFiles, launch_no: int, options: Mapping[str, Any],
                           done: subprocess.CompletedProcess[str]) -> bool:
        """``sbatch`` refused the job for a submit limit (``AssocMaxSubmitJobLimit``,
        ``QOSMaxSubmitJobPerUserLimit``...): wait until one of this user's jobs has left
        the queue, then submit again. Any other refusal is final."""
        reason = submit_limit_refusal(done.stderr)
        if reason is None:
            return False
        key = _limit_key(options)
        if key not in _SUBMITS.limits:
            _SUBMITS.limits[key] = read_submit_limits(self._output_of, getpass.getuser(), account=key[0], qos=key[1])
        limits = _SUBMITS.limits[key]
        limit = min(limits, key=lambda item: item.jobs) if limits else None
        _SUBMITS.refusals += 1
        # 2, 4, 8... s between refused tries, up to a minute, even when the count says
        # there is room: it may be wrong (jobs another process submitted since the last
        # listing, a limit on the whole account, which counts other users' jobs)
        watcher = queue_watcher()
        time.sleep(min(watcher.longest_wait_s, watcher.first_look_s * 2 ** (_SUBMITS.refusals - 1)))
        count = watcher.active_jobs(refresh_after_s=0.0)
        below = min(count, limit.jobs) if limit is not None else count
        self._wait_for_room(files, launch_no, max(1, below), f"sbatch said {reason}"
                            + (f" ({limit})" if limit is not None else ""), limit)
        return True

    def _wait_for_room(self, files: JobFiles, launch_no: int, below: int, why: str, limit: SubmitLimit | None) -> None:
        """Block until fewer than ``below`` of this user's jobs (of the limit's account or
        QOS) are queued or running. The count comes from the watcher: its listings (asked
        at most every 2 s, then every 4, 8... up to 60 s while the wait lasts) and this
        process's own launches, whose exit_code files say when they end between listings.

        Raises:
            RuntimeError: still no room after :attr:`submit_limit_patience_s`.
        """
        watcher = queue_watcher()
        account, qos = (limit.account, limit.qos) if limit is not None else (None, None)
        started = time.monotonic()
        count = watcher.active_jobs(account=account, qos=qos)
        if count < below:
            return
        said_at = started
        say(f"launch {launch_no} of job {files.dir.name} waits for room in the SLURM queue: {why}, with {count} "
            f"of your jobs queued or running; it is submitted when one of them ends", file=sys.stderr)
        while True:
            waited = time.monotonic() - started
            patience = self.submit_limit_patience_s
            if patience is not None and waited > patience:
                raise RuntimeError(f"no room in the SLURM queue after {waited:.0f} s: {why}, with {count} of your "
                                   "jobs queued or running")
            if time.monotonic() - said_at > 600:
                said_at = time.monotonic()
                say(f"launch {launch_no} of job {files.dir.name} still waits for room in the SLURM queue "
                    f"({count} of your jobs queued or running, {waited / 60:.0f} min so far)", file=sys.stderr)
            Creator.still_at_work(files.creator(launch_no))  # other hosts must not take it for abandoned
            time.sleep(1.0)
            refresh_after_s = min(watcher.longest_wait_s, max(watcher.first_look_s, waited / 2))
            count = watcher.active_jobs(account=account, qos=qos, refresh_after_s=refresh_after_s)
            if count < below:
                return

    def _output_of(self, argv: list[str]) -> str | None:
        done = self.run_once(argv)
        return done.stdout if done.returncode == 0 else None

    def parse_submission(self, output: str, files: JobFiles, launch_no: int, script: Path) -> dict[str, Any]:
        # --parsable prints "<id>" or "<id>;<cluster>"
        job_id = output.strip().splitlines()[-1].split(";")[0].strip() if output.strip() else ""
        if not job_id.isdigit():
            raise RuntimeError(f"sbatch {script} printed no job id: {output!r}")
        info: dict[str, Any] = {"job_id": job_id}
        if template_path().exists():  # the user's template made this script
            info["template"] = str(template_path())
        return info

    def submitted(self, files: JobFiles, launch_no: int, script: Path) -> str | None:
        return self._submitted(script, files.dir.name)

    def missing_command(self, command: str) -> str:
        return (f"{command} not found on PATH: queuing_system='slurm' needs SLURM's client commands "
                "(sbatch, squeue, scancel); run on a login node of the cluster or use queuing_system='local'")

    def failure(self, what: str, done: Any, tries: int) -> RuntimeError:
        error = super().failure(what, done, tries)
        if "configuration source" in done.stderr or "slurm.conf" in done.stderr:
            return RuntimeError(f"{error}\nNo SLURM configuration found: set SLURM_CONF to the cluster's "
                                "slurm.conf, or use queuing_system='local'")
        if policy_refusal(done.stderr):
            return RuntimeError(f"{error}\nThis is a limit of your SLURM association or QOS (the name above says "
                                "which: MaxWall, MaxTRES...); 'sacctmgr show assoc user=$USER' and 'sacctmgr "
                                "show qos' list them")
        return error

    def _submitted(self, script: Path, job_name: str) -> str | None:
        """The id of a job already submitted from ``script`` (an sbatch whose answer was lost)."""
        try:
            owner = script.stat().st_uid  # who submitted it: one user's jobs, not the whole table
        except OSError:
            owner = os.getuid()
        done = self.run_once(["squeue", "--noheader", "--states=all", f"--user={owner}", f"--name={job_name}",
                              "--format=%i|%o"])
        for line in done.stdout.splitlines() if done.returncode == 0 else []:
            job_id, _, command = line.strip().partition("|")
            if command == str(script) and job_id.isdigit():
                return job_id
        return None

    def recover(self, files: JobFiles, launch_no: int) -> dict[str, Any] | None:
        """A launch whose maker died after sbatch accepted it: found by name and script."""
        script = files.launch_dir(launch_no) / "job.sbatch"
        if not script.exists():
            return None
        try:
            job_id = self._submitted(script, files.dir.name)
        except RuntimeError:
            return None
        if job_id is None:
            return None
        return {"backend": self.name, "job_id": job_id, "script": str(script), "recovered": True}

    def state(self, files: JobFiles, launch_no: int, launch: Mapping[str, Any]) -> str:
        return self.states([(files, launch_no, launch)])[0]

    def states(self, launches: Sequence[tuple[JobFiles, int, Mapping[str, Any]]]) -> list[str]:
        """The state of many launches, from their files, their ranks' status records and,
        when those cannot tell, the process's one ``squeue --me`` listing (see
        :mod:`parallelaverage.backends.slurm_queue`).

        Args:
            launches: ``(files, launch number, launch info)`` triples, e.g. every launch of a
                database.

        Returns:
            ``"running"`` or ``"ended"`` per launch, in order.

        Raises:
            RuntimeError: squeue failed (controller unreachable after retries) before this
                process ever had an answer.
        """
        return queue_watcher().states(launches)

    @staticmethod
    def _finished(files: JobFiles, launch_no: int) -> bool:
        """Whether the launch's files alone say it is over: its script wrote the exit status 0
        after its last life's result (a batch of ``f.map``: its jobs' results). Any other exit
        status is only a hint: SLURM may be requeueing the job (a node failure) and run
        another life of it; squeue says."""
        return files.exit_status(launch_no) == 0 and (files.result(launch_no).exists() or files.batch.exists())

    def cancel(self, files: JobFiles, launch_no: int, launch: Mapping[str, Any]) -> None:
        """``scancel`` the launch's job by its id, then wait until its processes are gone.

        A job is never cancelled by name: two users' jobs (or two databases') can share
        one. Waits at most :attr:`cancel_timeout_s` (SLURM's ``KillWait`` decides how
        long ranks that ignore SIGTERM live), then warns and returns.
        """
        if self.state(files, launch_no, launch) == "ended":
            return
        job_id = str(launch["job_id"])
        done, tries = self.run_command(["scancel", job_id])
        if done.returncode != 0 and not _UNKNOWN_JOB.search(done.stderr):
            raise self.failure(f"scancel {job_id}", done, tries)
        deadline = time.monotonic() + self.cancel_timeout_s
        poll_s = 0.25  # one job's state: squeue --jobs=ID, the controller's cheapest job query
        try:
            while True:
                time.sleep(poll_s)
                row = self._squeue_one(job_id)
                if row is None:
                    return
                if row.state in TERMINAL_STATES:  # COMPLETING (processes still ending) is not terminal
                    self._cache_row(files, launch_no, job_id, row)
                    return
                if time.monotonic() > deadline:
                    warn(f"SLURM job {job_id} is still {row.state} {self.cancel_timeout_s:g} s after scancel",
                         RuntimeWarning)
                    return
                poll_s = min(5.0, poll_s * 2)
        finally:
            queue_watcher().ended(files, launch_no)

    def describe(self, launch: Mapping[str, Any]) -> str:
        return f"SLURM job {launch.get('job_id', '?')}"

    # ------------------------------------------------------------------ state
    @staticmethod
    def cached_state(files: JobFiles, launch_no: int, job_id: str) -> str | None:
        """The terminal SLURM state recorded for the launch, if any."""
        try:
            cached = json.loads((files.launch_dir(launch_no) / "slurm_state").read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(cached, dict) or str(cached.get("job_id")) != job_id:
            return None
        return cached.get("state")

    @staticmethod
    def _cache_row(files: JobFiles, launch_no: int, job_id: str, row: JobRow) -> None:
        record = {"job_id": job_id, "state": row.state, "reason": row.reason, "seen_at": time.time()}
        try:
            atomic_write_bytes(files.launch_dir(launch_no) / "slurm_state", json.dumps(record).encode())
        except OSError:
            pass  # a read-only database: the state is asked again next time

    def _list_jobs(self, uid: int) -> dict[str, JobRow]:
        """``{job id: JobRow}`` of every job of the user ``uid`` the controller knows
        (finished ones until ``MinJobAge``): ``squeue --me`` for this user.

        Raises:
            RuntimeError: squeue failed (after :attr:`query_retry_delays_s`).
        """
        who = "--me" if uid == os.getuid() else f"--user={uid}"
        done, tries = self.run_command(["squeue", who, "--noheader", "--states=all", "--array", _LISTING_FORMAT],
                                       delays_s=self.query_retry_delays_s)
        if done.returncode != 0:
            raise self.failure("squeue", done, tries)
        return _parse_listing(done.stdout)

    def _squeue_one(self, job_id: str) -> JobRow | None:
        """One job's row, None if the controller does not know it (``REQUEST_JOB_INFO_SINGLE``)."""
        if not job_id.isdigit():
            return None
        done, tries = self.run_command(["squeue", "--noheader", "--states=all", f"--jobs={job_id}", _LISTING_FORMAT],
                                       delays_s=self.query_retry_delays_s)
        if done.returncode != 0:
            if _UNKNOWN_JOB.search(done.stderr):
                return None
            raise self.failure("squeue", done, tries)
        return _parse_listing(done.stdout).get(job_id)


def _parse_listing(output: str) -> dict[str, JobRow]:
    rows = {}
    for line in output.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) == 5:
            rows[parts[0]] = JobRow(parts[1], parts[4], parts[2], parts[3])
    return rows


def _limit_key(options: Mapping[str, Any]) -> tuple[str | None, str | None]:
    account, qos = options.get("account"), options.get("qos")
    return (str(account) if account else None, str(qos) if qos else None)
