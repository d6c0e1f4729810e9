"""What every queue backend shares, and the few hooks each fills.

A launch is one start of a job's MPI ranks; a job has a first launch and one more per
re-submission. Submitting a launch is the same for every backend (a template method,
as in submitit): render a script, write it into the launch folder, run the submit
command through one retrying runner, read what identifies the launch from its output.
A backend fills the hooks — :meth:`Backend.render`, :meth:`Backend.submit_argv`,
:meth:`Backend.parse_submission` — and says how to watch (:meth:`Backend.states`) and
stop (:meth:`Backend.cancel`) its launches. Everything else (job files, snapshots,
merging, status) is shared above this layer.
"""

from __future__ import annotations

import os
import random
import re
import stat
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Mapping, Pattern, Sequence

from parallelaverage._atomic import atomic_write_bytes
from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.errors import say

__all__ = ["Backend", "LaunchState", "worker_argv", "worker_environment"]

# Plain ``python -m`` puts the working directory first on sys.path, so that a source
# checkout there (without its compiled extension) would shadow the installed package:
# -P (Python >= 3.11) leaves it out; on 3.10 the -c form removes it.
_WORKER_MAIN = "import sys; del sys.path[0]; from parallelaverage.worker import main; sys.exit(main(sys.argv[1:]))"


def worker_argv(python: str, job_dir: str | os.PathLike[str], launch_no: int) -> list[str]:
    """The command every rank runs: ``python -P -m parallelaverage.worker JOBDIR LAUNCH``."""
    job = [os.fspath(job_dir), str(launch_no)]
    if sys.version_info >= (3, 11):
        return [python, "-P", "-m", "parallelaverage.worker", *job]
    return [python, "-c", _WORKER_MAIN, *job]


def worker_environment() -> dict[str, str]:
    """The caller's environment plus its ``sys.path`` as ``PYTHONPATH``, so that the ranks
    import the function's module as the caller does."""
    paths = [os.path.abspath(p or os.getcwd()) for p in sys.path if os.path.isdir(p or os.getcwd())]
    existing = os.environ.get("PYTHONPATH")
    pythonpath = os.pathsep.join(dict.fromkeys(paths + ([existing] if existing else [])))
    return {**os.environ, "PYTHONPATH": pythonpath}


LaunchState = str
"""``"running"`` (queued or executing), ``"ended"`` (gone, by itself or killed)."""


class Backend(ABC):
    """A way to start a job's ``N_tasks`` MPI ranks, and to watch and stop them."""

    name: str = ""
    script_name: str = "launch.sh"
    """The file name of the rendered script in the launch folder."""
    retry_delays_s: tuple[float, ...] = ()
    """Waits between tries of a command that failed transiently (none: one try)."""
    command_timeout_s: float = 120.0
    """A command that takes longer counts as a transient failure."""
    transient_errors: Pattern[str] | None = None
    """What a command prints when it failed for a passing reason, worth retrying."""
    maybe_done_errors: Pattern[str] | None = None
    """Of those, the failures that may have come after the command took effect."""

    # ------------------------------------------------------------------ submitting
    def submit(self, files: JobFiles, launch_no: int, n_tasks: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """Start launch ``launch_no`` of the job; return what identifies it (stored in ``launch.json``).

        Renders the script (:meth:`render`), writes it to the launch folder, waits until
        the queue has room for it (:meth:`admit`), runs the submit command
        (:meth:`submit_argv`) through :meth:`run_command` — again after a refusal that
        :meth:`wait_after_refusal` waits out — and reads the launch's identity from its
        output (:meth:`parse_submission`).

        Raises:
            ValueError: a bad option or template (before anything is started).
            RuntimeError: the submit command failed (after retries); the message holds
                its error output.
        """
        script = self.render(files, launch_no, n_tasks, options)
        path = files.launch_dir(launch_no) / self.script_name
        atomic_write_bytes(path, script.encode())
        os.chmod(path, stat.S_IRWXU)
        argv = self.submit_argv(files, launch_no, path)
        self.admit(files, launch_no, options)
        while True:
            done, tries = self.run_command(argv, env=self.submit_env(files, launch_no, options),
                                           already_done=lambda: self.submitted(files, launch_no, path))
            if done.returncode == 0 or not self.wait_after_refusal(files, launch_no, options, done):
                break
        if done.returncode != 0:
            raise self.failure(f"{Path(argv[0]).name} {path}", done, tries)
        return {"backend": self.name, **self.parse_submission(done.stdout, files, launch_no, path), "script": str(path)}

    @abstractmethod
    def render(self, files: JobFiles, launch_no: int, n_tasks: int, options: Mapping[str, Any]) -> str:
        """The launch's script (the golden-file tests read this)."""

    @abstractmethod
    def submit_argv(self, files: JobFiles, launch_no: int, script: Path) -> list[str]:
        """The command that submits (or starts) the written script."""

    @abstractmethod
    def parse_submission(self, output: str, files: JobFiles, launch_no: int, script: Path) -> dict[str, Any]:
        """What identifies the launch, from the submit command's standard output.

        Raises:
            RuntimeError: the output holds no identity.
        """

    def submit_env(self, files: JobFiles, launch_no: int, options: Mapping[str, Any]) -> dict[str, str] | None:
        """The environment of the submit command (None: the caller's)."""
        return None

    def admit(self, files: JobFiles, launch_no: int, options: Mapping[str, Any]) -> None:
        """Wait, if need be, until the queue accepts one more launch (a per-user limit on
        queued jobs); by default at once."""

    def wait_after_refusal(self, files: JobFiles, launch_no: int, options: Mapping[str, Any],
                           done: subprocess.CompletedProcess[str]) -> bool:
        """After the submit command failed for good: whether the refusal was one that
        passes (a full queue), in which case this waits until it has passed and the
        command runs again. By default, False: the failure is final."""
        return False

    def submitted(self, files: JobFiles, launch_no: int, script: Path) -> str | None:
        """The submit command's output if it took effect although its answer was lost
        (only asked after a failure matching :attr:`maybe_done_errors`)."""
        return None

    # ------------------------------------------------------------------ commands
    def run_once(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command once; a timeout becomes a failed result, not an exception.

        Raises:
            RuntimeError: the command is not installed; the message says what to do.
        """
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=self.command_timeout_s,
                                  stdin=subprocess.DEVNULL, check=False, env=env, start_new_session=True)
        except FileNotFoundError:
            raise RuntimeError(self.missing_command(argv[0])) from None
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, -1, "", f"{argv[0]} timed out after {self.command_timeout_s:g} s")

    def missing_command(self, command: str) -> str:
        return f"{command} not found"

    def run_command(self, argv: list[str], *, env: dict[str, str] | None = None,
                    already_done: Callable[[], str | None] | None = None,
                    delays_s: Sequence[float] | None = None) -> tuple[subprocess.CompletedProcess[str], int]:
        """Run a command, retrying transient failures (:attr:`transient_errors`) with the
        waits of :attr:`retry_delays_s`, each stretched or shrunk by up to a quarter at
        random, so that many callers refused at once do not all come back at once.

        Args:
            argv: the command.
            env: its environment (None: the caller's).
            delays_s: other waits than :attr:`retry_delays_s` (queries, which can wait
                for the next look, retry less).
            already_done: for commands that must not run twice (a submission): called
                before a retry when the failure may have come after the command took
                effect; a non-None answer is taken as its output instead of retrying.

        Returns:
            The last result and the number of tries.
        """
        delays = tuple(self.retry_delays_s if delays_s is None else delays_s)
        tries = 0
        while True:
            tries += 1
            done = self.run_once(argv, env)
            transient = self.transient_errors is not None and self.transient_errors.search(done.stderr)
            if done.returncode == 0 or not transient or tries > len(delays):
                return done, tries
            delay = delays[tries - 1] * random.uniform(0.75, 1.25)
            last_line = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no message"
            say(f"{argv[0]} failed ({last_line}); retrying in {delay:.2g} s", file=sys.stderr)
            time.sleep(delay)
            if already_done is not None and self.maybe_done_errors is not None \
                    and self.maybe_done_errors.search(done.stderr):
                output = already_done()
                if output is not None:
                    say(f"{argv[0]} had succeeded after all: {output}", file=sys.stderr)
                    return subprocess.CompletedProcess(argv, 0, output, ""), tries

    def failure(self, what: str, done: subprocess.CompletedProcess[str], tries: int) -> RuntimeError:
        """The error of a command that failed for good, with its output."""
        message = f"{what} failed (exit status {done.returncode}"
        message += f", {tries} tries)" if tries > 1 else ")"
        message += f":\n{done.stderr.strip() or done.stdout.strip() or '(no output)'}"
        return RuntimeError(message)

    # ------------------------------------------------------------------ watching
    @abstractmethod
    def state(self, files: JobFiles, launch_no: int, launch: Mapping[str, Any]) -> LaunchState:
        """Whether the launch is still ``"running"`` or has ``"ended"``."""

    def states(self, launches: Sequence[tuple[JobFiles, int, Mapping[str, Any]]]) -> list[LaunchState]:
        """The states of many launches at once; backends with a queue to ask override it
        to ask once for all (SLURM: one ``squeue`` call)."""
        return [self.state(files, launch_no, launch) for files, launch_no, launch in launches]

    @abstractmethod
    def cancel(self, files: JobFiles, launch_no: int, launch: Mapping[str, Any]) -> None:
        """Stop the launch and every process it started."""

    def recover(self, files: JobFiles, launch_no: int) -> dict[str, Any] | None:
        """What identifies a launch whose maker died before writing its ``launch.json``
        (the launch may have started anyway), or None if it never started."""
        return None

    def describe(self, launch: Mapping[str, Any]) -> str:
        """A short human description of a launch (``pid 1234``, ``SLURM job 56``)."""
        return ", ".join(f"{k} {v}" for k, v in launch.items() if k != "backend")


def compile_errors(pattern: str) -> Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)
