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
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from parallelaverage._atomic import atomic_write_bytes
from parallelaverage._jobdir import JobFiles
from parallelaverage.backends.base import Backend, worker_argv
from parallelaverage.backends.local import worker_environment
from parallelaverage.backends.mpiexec import find_mpiexec, mpi_flavour, mpiexec_command
from parallelaverage.backends.slurm_options import (
    BACKEND_OPTIONS, SHORT_OPTIONS, check_line, check_slurm_options,
)

__all__ = [
    "SlurmBackend", "ScriptInputs", "render_script", "load_template", "template_path",
    "DEFAULT_TEMPLATE", "PLACEHOLDERS", "DEFAULT_SIGNAL", "RUNNING_STATES", "TERMINAL_STATES",
]

DEFAULT_SIGNAL = "USR1@60"
"""``--signal`` unless the user sets ``signal``: the ranks checkpoint 60 s before the time limit."""

DEFAULT_TEMPLATE = """\
#!/bin/bash
{{sbatch_options}}

# parallelaverage job {{job_name}}, launch {{attempt}}: {{n_tasks}} MPI ranks
{{setup}}
{{environment}}
exit_file={{exit_code_file}}
{{launch}}
code=$?
echo "$code" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"
exit "$code"
"""
"""The built-in job script. ``{{name}}`` are placeholders (:data:`PLACEHOLDERS`)."""

PLACEHOLDERS: Mapping[str, str] = {
    "sbatch_options": "every #SBATCH line: ours (ntasks, job-name, output, error, chdir, signal) "
                      "then the user's options (required)",
    "setup": "the 'setup' option's lines (a line holding only this disappears when there are none)",
    "environment": "export lines: PYTHONPATH = the caller's sys.path, and what the launcher needs",
    "launch": "the launch command: srun (or mpiexec) running the worker",
    "worker": "the worker command alone: <python> -P -m parallelaverage.worker <job dir> <launch>",
    "exit_code_file": "the file the script must write the launch's exit status to (shell-quoted)",
    "job_name": "the job's name, e.g. 3_simulate",
    "job_dir": "the job directory (shell-quoted)",
    "attempt": "the launch number: 1, then 2, ... per re_submit",
    "n_tasks": "the number of MPI ranks",
    "python": "the caller's Python interpreter (shell-quoted)",
}
"""What each ``{{placeholder}}`` of a job script template becomes."""

_REQUIRED_PLACEHOLDERS = ("sbatch_options",)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SBATCH_PLAIN = re.compile(r"[A-Za-z0-9_.,:/=+@%^~*\[\]-]+")

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


# --------------------------------------------------------------------------- the script
def template_path() -> Path:
    """Where a user's job script template is looked for.

    ``$PARALLELAVERAGE_CONFIG_DIR/slurm.sbatch`` if that variable is set, else
    ``$XDG_CONFIG_HOME/parallelaverage/slurm.sbatch`` (``~/.config`` by default).
    """
    configured = os.environ.get("PARALLELAVERAGE_CONFIG_DIR")
    if configured:
        return Path(configured) / "slurm.sbatch"
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config_home) / "parallelaverage" / "slurm.sbatch"


def load_template() -> tuple[str, Path | None]:
    """The job script template and the file it came from (None: the built-in one)."""
    path = template_path()
    try:
        return path.read_text(), path
    except FileNotFoundError:
        return DEFAULT_TEMPLATE, None


def _sbatch_value(text: str) -> str:
    """A value as sbatch reads it on an ``#SBATCH`` line: double quotes unless plain.

    sbatch splits ``#SBATCH`` lines at blanks, takes ``#`` as the start of a comment
    and honours double quotes and backslash escapes, so anything beyond a plain word
    is quoted.
    """
    if _SBATCH_PLAIN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sbatch_option(name: str, value: Any) -> str | None:
    """One ``#SBATCH`` line for a user option; None for ``False`` (option left out)."""
    if value is False:
        return None
    flag = f"-{name}" if name in SHORT_OPTIONS else f"--{name.replace('_', '-')}"
    if value is True:
        return f"#SBATCH {flag}"
    text = _sbatch_value(check_line(name, str(value)))
    return f"#SBATCH {flag} {text}" if name in SHORT_OPTIONS else f"#SBATCH {flag}={text}"


@dataclass(frozen=True)
class ScriptInputs:
    """Everything a job script is made from; :meth:`for_launch` reads it from the caller."""

    job_dir: Path
    attempt: int
    n_tasks: int
    options: Mapping[str, Any]
    chdir: str
    python: str
    pythonpath: str
    mpiexec: str = "mpiexec"
    mpiexec_env: Mapping[str, str] = field(default_factory=dict)
    mpiexec_args: tuple[str, ...] = ()

    @classmethod
    def for_launch(cls, files: JobFiles, attempt: int, n_tasks: int,
                   options: Mapping[str, Any]) -> ScriptInputs:
        """The inputs of a real launch: this Python, its ``sys.path``, the working directory."""
        mpiexec, env, args = "mpiexec", {}, ()  # type: tuple[str, dict[str, str], tuple[str, ...]]
        if options.get("launcher") == "mpiexec":
            mpiexec = find_mpiexec()
            _, env = mpiexec_command(n_tasks, [], mpiexec)
            # Open MPI binds ranks to cores; with more ranks than cores it must not
            args = ("--bind-to", "none") if mpi_flavour(mpiexec) == "openmpi" else ()
        return cls(
            job_dir=files.dir.resolve(), attempt=attempt, n_tasks=n_tasks, options=dict(options),
            chdir=os.getcwd(), python=sys.executable, pythonpath=worker_environment()["PYTHONPATH"],
            mpiexec=mpiexec, mpiexec_env=env, mpiexec_args=args,
        )

    @property
    def files(self) -> JobFiles:
        return JobFiles(self.job_dir)

    def sbatch_lines(self) -> list[str]:
        """Our ``#SBATCH`` lines, then one per user option (backend options excluded)."""
        files = self.files
        ours = {
            "ntasks": self.n_tasks, "job_name": self.job_dir.name,
            "output": files.stdout(self.attempt), "error": files.stderr(self.attempt),
            "chdir": self.chdir,
        }
        if "signal" not in self.options:
            ours["signal"] = DEFAULT_SIGNAL
        lines = [_sbatch_option(name, str(value)) for name, value in ours.items()]
        lines += [_sbatch_option(name, value) for name, value in self.options.items()
                  if name not in BACKEND_OPTIONS]
        return [line for line in lines if line is not None]

    def setup_lines(self) -> list[str]:
        setup = self.options.get("setup", ())
        return [check_line("setup", line) for line in ([setup] if isinstance(setup, str) else setup)]

    def environment_lines(self) -> list[str]:
        lines = [f"export PYTHONPATH={shlex.quote(self.pythonpath)}"] if self.pythonpath else []
        if self.options.get("launcher") == "mpiexec":
            lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(self.mpiexec_env.items())]
        return lines

    def worker_command(self) -> str:
        return shlex.join(worker_argv(self.python, self.job_dir, self.attempt))

    def launch_command(self) -> str:
        if self.options.get("launcher", "srun") == "mpiexec":
            args = " ".join(shlex.quote(a) for a in self.mpiexec_args)
            return f'{shlex.quote(self.mpiexec)} -n "$SLURM_NTASKS" {args + " " if args else ""}{self.worker_command()}'
        mpi = check_line("mpi", str(self.options.get("mpi", "pmi2")))
        # --export=ALL: the ranks get the script's environment (its PYTHONPATH, the setup
        # lines' exports) even when the job has export=NONE or a list: srun would
        # otherwise pass on only what sbatch exported (SLURM_EXPORT_ENV). mpiexec needs
        # nothing: MPICH's and Open MPI's pass their own environment to the ranks.
        srun = ["srun", f"--mpi={mpi}", "--export=ALL", "--kill-on-bad-exit=1"]
        # since Slurm 22.05 srun no longer inherits the job's --cpus-per-task
        cpus = self.options.get("cpus_per_task", self.options.get("c"))
        if cpus not in (None, False, True):
            srun.append(f"--cpus-per-task={cpus}")
        return f"{shlex.join(srun)} {self.worker_command()}"


def render_script(inputs: ScriptInputs, template: str = DEFAULT_TEMPLATE, source: Path | None = None) -> str:
    """The job script for ``inputs``: the template with its ``{{placeholders}}`` filled.

    A line that holds only a placeholder whose value is empty (no ``setup`` lines)
    is left out.

    Raises:
        ValueError: an unknown placeholder or a missing required one (naming the
            template file), or an option value with a control character.
    """
    where = f"job script template {source}" if source else "job script template"
    used = set(_PLACEHOLDER.findall(template))
    unknown = sorted(used - set(PLACEHOLDERS))
    if unknown:
        raise ValueError(f"{where}: unknown placeholder(s) {', '.join('{{' + u + '}}' for u in unknown)}; "
                         f"the placeholders are {', '.join('{{' + p + '}}' for p in PLACEHOLDERS)}")
    missing = [p for p in _REQUIRED_PLACEHOLDERS if p not in used]
    if missing:
        raise ValueError(f"{where}: must contain {', '.join('{{' + p + '}}' for p in missing)} "
                         "(the #SBATCH lines that set the job's ranks and output files)")
    files = inputs.files
    values = {
        "sbatch_options": "\n".join(inputs.sbatch_lines()),
        "setup": "\n".join(inputs.setup_lines()),
        "environment": "\n".join(inputs.environment_lines()),
        "launch": inputs.launch_command(),
        "worker": inputs.worker_command(),
        "exit_code_file": shlex.quote(str(files.exit_code(inputs.attempt))),
        "job_name": inputs.job_dir.name,
        "job_dir": shlex.quote(str(inputs.job_dir)),
        "attempt": str(inputs.attempt),
        "n_tasks": str(inputs.n_tasks),
        "python": shlex.quote(inputs.python),
    }
    lines = []
    for line in template.splitlines():
        alone = _PLACEHOLDER.fullmatch(line.strip())
        if alone and not values[alone.group(1)]:
            continue
        lines.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the backend
def _say(message: str) -> None:
    print(f"[parallelaverage] {message}", file=sys.stderr, flush=True)


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

    # ------------------------------------------------------------------ commands
    def _run_once(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=self.command_timeout_s,
                                  stdin=subprocess.DEVNULL, check=False)
        except FileNotFoundError:
            raise RuntimeError(
                f"{argv[0]} not found on PATH: queuing_system='slurm' needs SLURM's client commands "
                "(sbatch, squeue, scancel); run on a login node of the cluster or use "
                "queuing_system='local'"
            ) from None
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, -1, "", f"{argv[0]} timed out after {self.command_timeout_s:g} s")

    def _run(self, argv: list[str], already_done: Callable[[], str | None] | None = None
             ) -> tuple[subprocess.CompletedProcess[str], int]:
        """Run a SLURM client command, retrying transient failures with backoff.

        Args:
            argv: the command.
            already_done: for commands that must not run twice (sbatch): called before a
                retry when the failure may have come after the controller acted; a
                non-None answer is taken as the command's output instead of retrying.

        Returns:
            The last result and the number of tries.
        """
        tries = 0
        while True:
            tries += 1
            done = self._run_once(argv)
            if done.returncode == 0 or not _TRANSIENT.search(done.stderr) or tries > len(self.retry_delays_s):
                return done, tries
            delay = self.retry_delays_s[tries - 1]
            last_line = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no message"
            _say(f"{argv[0]} failed ({last_line}); retrying in {delay:g} s")
            time.sleep(delay)
            if already_done is not None and _MAYBE_DONE.search(done.stderr):
                output = already_done()
                if output is not None:
                    _say(f"{argv[0]} had succeeded after all: {output}")
                    return subprocess.CompletedProcess(argv, 0, output, ""), tries

    @staticmethod
    def _failure(what: str, done: subprocess.CompletedProcess[str], tries: int) -> RuntimeError:
        message = f"{what} failed (exit status {done.returncode}"
        message += f", {tries} tries)" if tries > 1 else ")"
        message += f":\n{done.stderr.strip() or done.stdout.strip() or '(no output)'}"
        if "configuration source" in done.stderr or "slurm.conf" in done.stderr:
            message += ("\nNo SLURM configuration found: set SLURM_CONF to the cluster's slurm.conf, "
                        "or use queuing_system='local'")
        return RuntimeError(message)

    # ------------------------------------------------------------------ hooks
    def submit(self, files: JobFiles, attempt: int, n_tasks: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``attempts/<k>/job.sbatch`` and submit it with ``sbatch --parsable``.

        Returns:
            ``{"backend": "slurm", "job_id": "<id>", "script": "<path>"}`` (and the
            template file if it is the user's).

        Raises:
            ValueError: a bad option or template (before anything is submitted).
            RuntimeError: sbatch refused the job, or kept failing after retries; the
                message holds sbatch's error output.
        """
        check_slurm_options(options)
        template, source = load_template()
        script = render_script(ScriptInputs.for_launch(files, attempt, n_tasks, options), template, source)
        path = files.attempt_dir(attempt) / "job.sbatch"
        atomic_write_bytes(path, script.encode())
        done, tries = self._run(["sbatch", "--parsable", str(path)],
                                already_done=lambda: self._submitted(path, files.dir.name))
        if done.returncode != 0:
            raise self._failure(f"sbatch {path}", done, tries)
        # --parsable prints "<id>" or "<id>;<cluster>"
        job_id = done.stdout.strip().splitlines()[-1].split(";")[0].strip() if done.stdout.strip() else ""
        if not job_id.isdigit():
            raise RuntimeError(f"sbatch {path} printed no job id: {done.stdout!r} {done.stderr!r}")
        info: dict[str, Any] = {"backend": self.name, "job_id": job_id, "script": str(path)}
        if source is not None:
            info["template"] = str(source)
        return info

    def _submitted(self, script: Path, job_name: str) -> str | None:
        """The id of a job already submitted from ``script`` (an sbatch whose answer was lost)."""
        done = self._run_once(["squeue", "--noheader", "--states=all", f"--name={job_name}", "--format=%i|%o"])
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
            if files.exit_code(attempt).exists() or self.cached_state(files, attempt, job_id) is not None:
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

    def cancel(self, files: JobFiles, attempt: int, launch: Mapping[str, Any]) -> None:
        """``scancel`` the launch's job by its id, then wait until its processes are gone.

        A job is never cancelled by name: two users' jobs (or two databases') can share
        one. Waits at most :attr:`cancel_timeout_s` (SLURM's ``KillWait`` decides how
        long ranks that ignore SIGTERM live), then warns and returns.
        """
        if self.state(files, attempt, launch) == "ended":
            return
        job_id = str(launch["job_id"])
        done, tries = self._run(["scancel", job_id])
        if done.returncode != 0 and not _UNKNOWN_JOB.search(done.stderr):
            raise self._failure(f"scancel {job_id}", done, tries)
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
                warnings.warn(f"[parallelaverage] SLURM job {job_id} is still {slurm_state} "
                              f"{self.cancel_timeout_s:g} s after scancel", RuntimeWarning, stacklevel=2)
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
            done, tries = self._run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(chunk)}",
                                     "--format=%i|%T|%r"])
            if done.returncode != 0:
                if _UNKNOWN_JOB.search(done.stderr):  # only for a single unknown id; lists skip them
                    continue
                raise self._failure("squeue", done, tries)
            for line in done.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 3:
                    seen[parts[0]] = (parts[1], parts[2])
        return seen
