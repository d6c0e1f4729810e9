"""The SLURM backend: one ``sbatch`` job per launch, its ranks started by ``srun``.

A launch renders a job script from a template (the built-in :data:`DEFAULT_TEMPLATE`
or the user's ``~/.config/parallelaverage/slurm.sbatch``), writes it to
``attempts/<k>/job.sbatch`` and submits it with ``sbatch --parsable``. The script runs
``srun --mpi=pmi2 --export=ALL --kill-on-bad-exit=1 <python> -P -m parallelaverage.worker
JOBDIR K`` (or ``mpiexec``), then writes the launcher's exit status to
``attempts/<k>/exit_code`` and exits with it.

A launch has ended when its ``exit_code`` file exists, when ``squeue`` shows a terminal
state (cached in ``attempts/<k>/slurm_state``, so it is asked once), or when the
controller no longer knows the job id. Nothing needs ``sacct`` (which needs slurmdbd).

Notes:
    The job database (``path``) and the Python environment must be on a filesystem the
    compute nodes share with the submitting machine: the job script runs the caller's
    ``sys.executable`` with the caller's ``sys.path`` as ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from parallelaverage._atomic import atomic_write_bytes
from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.backends.base import Backend
from parallelaverage.backends.slurm_options import check_slurm_options
from parallelaverage.backends.slurm_script import ScriptInputs, load_template, render_script, template_path
from parallelaverage.errors import warn

__all__ = ["SlurmBackend", "RUNNING_STATES", "TERMINAL_STATES"]

RUNNING_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING",
    "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT",
    "SPECIAL_EXIT", "POWER_UP_NODE", "UPDATE_DB",
})
"""States of a job that may still run (or is still cleaning up its processes)."""

TERMINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "REVOKED", "TIMEOUT",
})
"""States of a job whose processes are all gone for good: cached, never asked again."""

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
_SQUEUE_CHUNK = 500  # job ids per squeue call, far below any command-line limit

# job id -> when squeue last said it runs: callers may poll often (the exit_code file
# is cheap to check), the controller is asked about a running job at most every
# SlurmBackend.squeue_interval_s per process
_SEEN_RUNNING: dict[str, float] = {}


# --------------------------------------------------------------------------- the backend
class SlurmBackend(Backend):
    """Submit each launch as a SLURM batch job; follow it with ``squeue``; stop it with ``scancel``."""

    name = "slurm"
    retry_delays_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    """Waits between tries of a SLURM command that failed transiently (controller busy)."""
    command_timeout_s: float = 120.0
    """A SLURM command that takes longer counts as a transient failure."""
    cancel_timeout_s: float = 120.0
    """How long :meth:`cancel` waits for the job's processes to be gone."""
    squeue_interval_s: float = 1.0
    """A job squeue said runs is not asked about again for this long (its exit_code file is)."""

    script_name = "job.sbatch"
    transient_errors = _TRANSIENT
    maybe_done_errors = _MAYBE_DONE

    # ------------------------------------------------------------------ hooks
    def render(self, files: JobFiles, attempt: int, n_tasks: int, options: Mapping[str, Any]) -> str:
        """The job script (``attempts/<k>/job.sbatch``), from the user's template if any.

        Raises:
            ValueError: a bad option or template (before anything is submitted).
        """
        check_slurm_options(options)
        template, source = load_template()
        return render_script(ScriptInputs.for_launch(files, attempt, n_tasks, options), template, source)

    def submit_argv(self, files: JobFiles, attempt: int, script: Path) -> list[str]:
        return ["sbatch", "--parsable", str(script)]

    def parse_submission(self, output: str, files: JobFiles, attempt: int, script: Path) -> dict[str, Any]:
        # --parsable prints "<id>" or "<id>;<cluster>"
        job_id = output.strip().splitlines()[-1].split(";")[0].strip() if output.strip() else ""
        if not job_id.isdigit():
            raise RuntimeError(f"sbatch {script} printed no job id: {output!r}")
        info: dict[str, Any] = {"job_id": job_id}
        if template_path().exists():  # the user's template made this script
            info["template"] = str(template_path())
        return info

    def submitted(self, files: JobFiles, attempt: int, script: Path) -> str | None:
        return self._submitted(script, files.dir.name)

    def missing_command(self, command: str) -> str:
        return (f"{command} not found on PATH: queuing_system='slurm' needs SLURM's client commands "
                "(sbatch, squeue, scancel); run on a login node of the cluster or use queuing_system='local'")

    def failure(self, what: str, done: Any, tries: int) -> RuntimeError:
        error = super().failure(what, done, tries)
        if "configuration source" in done.stderr or "slurm.conf" in done.stderr:
            return RuntimeError(f"{error}\nNo SLURM configuration found: set SLURM_CONF to the cluster's "
                                "slurm.conf, or use queuing_system='local'")
        return error

    def _submitted(self, script: Path, job_name: str) -> str | None:
        """The id of a job already submitted from ``script`` (an sbatch whose answer was lost)."""
        done = self.run_once(["squeue", "--noheader", "--states=all", f"--name={job_name}", "--format=%i|%o"])
        for line in done.stdout.splitlines() if done.returncode == 0 else []:
            job_id, _, command = line.strip().partition("|")
            if command == str(script) and job_id.isdigit():
                return job_id
        return None

    def recover(self, files: JobFiles, attempt: int) -> dict[str, Any] | None:
        """A launch whose maker died after sbatch accepted it: found by name and script."""
        script = files.attempt_dir(attempt) / "job.sbatch"
        if not script.exists():
            return None
        try:
            job_id = self._submitted(script, files.dir.name)
        except RuntimeError:
            return None
        if job_id is None:
            return None
        return {"backend": self.name, "job_id": job_id, "script": str(script), "recovered": True}

    def state(self, files: JobFiles, attempt: int, launch: Mapping[str, Any]) -> str:
        return self.states([(files, attempt, launch)])[0]

    def states(self, launches: Sequence[tuple[JobFiles, int, Mapping[str, Any]]]) -> list[str]:
        """The state of many launches, with one ``squeue`` call for all unfinished ones.

        Args:
            launches: ``(files, attempt, launch info)`` triples, e.g. every launch of a
                database.

        Returns:
            ``"running"`` or ``"ended"`` per launch, in order.

        Raises:
            RuntimeError: squeue kept failing (controller unreachable after retries).
        """
        result: list[str] = ["ended"] * len(launches)
        unfinished: dict[str, list[int]] = {}
        now = time.monotonic()
        for index, (files, attempt, launch) in enumerate(launches):
            job_id = str(launch.get("job_id", ""))
            if self.cached_state(files, attempt, job_id) is not None or self._finished(files, attempt):
                continue
            if now - _SEEN_RUNNING.get(job_id, -float("inf")) < self.squeue_interval_s:
                result[index] = "running"
                continue
            unfinished.setdefault(job_id, []).append(index)
        if not unfinished:
            return result
        seen = self._squeue(list(unfinished))
        now = time.monotonic()
        for job_id, indices in unfinished.items():
            slurm_state, reason = seen.get(job_id, (None, ""))
            if slurm_state is None:
                _SEEN_RUNNING.pop(job_id, None)
                continue  # unknown to the controller: purged long ago (or never existed)
            if slurm_state in TERMINAL_STATES:
                _SEEN_RUNNING.pop(job_id, None)
                for index in indices:
                    files, attempt, _ = launches[index]
                    self._cache_state(files, attempt, job_id, slurm_state, reason)
                continue
            _SEEN_RUNNING[job_id] = now
            for index in indices:
                result[index] = "running"
        return result

    @staticmethod
    def _finished(files: JobFiles, attempt: int) -> bool:
        """Whether the launch's files alone say it is over: its script wrote the exit status 0
        after its last life's result. Any other exit status is only a hint: SLURM may be
        requeueing the job (a node failure) and run another life of it; squeue says."""
        return files.exit_status(attempt) == 0 and files.result(attempt).exists()

    def cancel(self, files: JobFiles, attempt: int, launch: Mapping[str, Any]) -> None:
        """``scancel`` the launch's job by its id, then wait until its processes are gone.

        A job is never cancelled by name: two users' jobs (or two databases') can share
        one. Waits at most :attr:`cancel_timeout_s` (SLURM's ``KillWait`` decides how
        long ranks that ignore SIGTERM live), then warns and returns.
        """
        if self.state(files, attempt, launch) == "ended":
            return
        job_id = str(launch["job_id"])
        done, tries = self.run_command(["scancel", job_id])
        if done.returncode != 0 and not _UNKNOWN_JOB.search(done.stderr):
            raise self.failure(f"scancel {job_id}", done, tries)
        deadline = time.monotonic() + self.cancel_timeout_s
        poll_s = 0.05
        _SEEN_RUNNING.pop(job_id, None)
        while True:
            slurm_state, reason = self._squeue([job_id]).get(job_id, (None, ""))
            if slurm_state is None:
                return
            if slurm_state in TERMINAL_STATES:  # COMPLETING (processes still ending) is not terminal
                self._cache_state(files, attempt, job_id, slurm_state, reason)
                return
            if time.monotonic() > deadline:
                warn(f"SLURM job {job_id} is still {slurm_state} {self.cancel_timeout_s:g} s after scancel",
                     RuntimeWarning)
                return
            time.sleep(poll_s)
            poll_s = min(0.5, poll_s * 1.5)

    def describe(self, launch: Mapping[str, Any]) -> str:
        return f"SLURM job {launch.get('job_id', '?')}"

    # ------------------------------------------------------------------ state
    @staticmethod
    def cached_state(files: JobFiles, attempt: int, job_id: str) -> str | None:
        """The terminal SLURM state recorded for the launch, if any."""
        try:
            cached = json.loads((files.attempt_dir(attempt) / "slurm_state").read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(cached, dict) or str(cached.get("job_id")) != job_id:
            return None
        return cached.get("state")

    @staticmethod
    def _cache_state(files: JobFiles, attempt: int, job_id: str, slurm_state: str, reason: str) -> None:
        record = {"job_id": job_id, "state": slurm_state, "reason": reason, "seen_at": time.time()}
        try:
            atomic_write_bytes(files.attempt_dir(attempt) / "slurm_state", json.dumps(record).encode())
        except OSError:
            pass  # a read-only database: the state is asked again next time

    def _squeue(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """``{job id: (state, reason)}`` of the jobs the controller still knows."""
        seen: dict[str, tuple[str, str]] = {}
        valid = [j for j in job_ids if j.isdigit()]
        for start in range(0, len(valid), _SQUEUE_CHUNK):
            chunk = valid[start : start + _SQUEUE_CHUNK]
            done, tries = self.run_command(["squeue", "--noheader", "--states=all", f"--jobs={','.join(chunk)}",
                                     "--format=%i|%T|%r"])
            if done.returncode != 0:
                if _UNKNOWN_JOB.search(done.stderr):  # only for a single unknown id; lists skip them
                    continue
                raise self.failure("squeue", done, tries)
            for line in done.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 3:
                    seen[parts[0]] = (parts[1], parts[2])
        return seen
