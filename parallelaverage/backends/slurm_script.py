"""The SLURM job script: its template, its placeholders, and how a launch fills them.

A launch renders a job script from a template (the built-in :data:`DEFAULT_TEMPLATE`
or the user's ``~/.config/parallelaverage/slurm.sbatch``), which the SLURM backend
writes to ``attempts/<k>/job.sbatch`` and submits. The script runs
``srun --mpi=pmi2 --export=ALL --kill-on-bad-exit=1 sh -c '...' sh <python> -P -m parallelaverage.worker JOBDIR K``
(or ``mpiexec``; the ``sh`` starts the rank with SIGUSR1 ignored:
:data:`USR1_IGNORED_UNTIL_EXEC`), then writes the launcher's exit status to
``attempts/<k>/exit_code`` and exits with it. Under Open MPI's ``mpiexec`` the script
itself takes SLURM's time-limit warning and passes it on (:data:`RELAY_NOTE`). Pure text:
nothing here runs a command.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from parallelaverage.errors import PREFIX
from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.backends.base import worker_argv, worker_environment
from parallelaverage.backends.mpiexec import find_mpiexec, mpi_flavour, mpiexec_command
from parallelaverage.backends.slurm_options import BACKEND_OPTIONS, SHORT_OPTIONS, check_line

__all__ = ["ScriptInputs", "render_script", "load_template", "template_path", "DEFAULT_TEMPLATE",
           "PLACEHOLDERS", "DEFAULT_SIGNAL", "USR1_IGNORED_UNTIL_EXEC", "RELAY_NOTE", "MAX_RELAUNCHES", "REQUEUE_ME", "LIMIT_REACHED"]

MAX_RELAUNCHES = 3
"""How often a launch may run again by default (requeued by SLURM, or by itself at its
time limit), when ``max_relaunches`` is not given."""

REQUEUE_ME = 75
"""The exit status with which the ranks ask to be requeued (see ``parallelaverage.worker``)."""

LIMIT_REACHED = 76
"""The exit status of a launch requeued more often than ``max_relaunches`` allows."""

DEFAULT_SIGNAL = "USR1@60"
"""``--signal`` unless the user sets ``signal``: the ranks checkpoint 60 s before the time limit."""

USR1_IGNORED_UNTIL_EXEC = ("sh", "-c", 'trap "" USR1; exec "$@"', "sh")
"""What starts each rank's Python with SIGUSR1 ignored, until the worker installs its handler.

SLURM sends ``--signal=USR1@N`` to the ranks once the time limit is N s away *or less*
(it checks every 30 s, and its docs allow 60 s early): with a limit of a few minutes,
and a slow start (imports from a slow file system, a loaded node), it comes while a rank
is still starting Python, and SIGUSR1's default action ends the process: the launch, or
a requeued life of it, then failed with exit code 138 before any run. An ignored signal
stays ignored across ``exec``, so the rank starts immune and the worker's handler takes
over (a snapshot request that early has nothing to save)."""

RELAY_NOTE = ("# SLURM's time-limit warning comes to this shell (--signal=B:...), which passes it to mpiexec:\n"
              "# Open MPI's daemons die of a signal sent to them, and mpiexec relays it to the ranks")
"""The comment above the relay's ``trap`` in a script for Open MPI's ``mpiexec``.

By default SLURM sends ``--signal`` to every process of the job's steps. Under
``launcher="mpiexec"`` the step is Open MPI's daemons (``prted``, started by ``srun``),
which do not handle it: SIGUSR1 killed them, and ``mpiexec`` said "PRTE has lost
communication with a remote daemon" and was left without a daemon for its ranks (seen
on the test cluster with Open MPI 5.0.11: the ranks went on unmanaged, and a launch
could end without writing its result). ``mpiexec`` itself forwards SIGUSR1,
SIGUSR2 and others to the ranks, so for Open MPI the script asks for the ``B:`` form
and relays the signal to ``mpiexec``: the ``trap`` comes before the first command
(a warning that early, before ``mpiexec`` runs, is dropped: the ranks know the end
time anyway), and ``mpiexec`` starts with SIGUSR1 ignored until it handles it.
MPICH's proxies catch the signal and the job goes on, so MPICH keeps the default delivery."""

DEFAULT_TEMPLATE = """\
#!/bin/bash
{{sbatch_options}}

# parallelaverage job {{job_name}}, launch {{attempt}}: {{n_tasks}} MPI ranks
{{setup}}
{{environment}}
exit_file={{exit_code_file}}
{{lives}}
{{launch}}
code=$?
{{relaunch}}
echo "$code" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"
exit "$code"
"""
"""The built-in job script. ``{{name}}`` are placeholders (:data:`PLACEHOLDERS`)."""

PLACEHOLDERS: Mapping[str, str] = {
    "sbatch_options": "every #SBATCH line: ours (ntasks, job-name, output, error, chdir, requeue, open-mode, signal) "
                      "then the user's options (required)",
    "setup": "the 'setup' option's lines (a line holding only this disappears when there are none)",
    "environment": "export lines: PYTHONPATH = the caller's sys.path, and what the launcher needs",
    "lives": "which life of the launch this is (SLURM_RESTART_COUNT), the max_relaunches check and the "
             "allocation's end time for the ranks (keep it before {{launch}}: without it a requeued launch "
             "still resumes, but no limit applies and the ranks cannot stop before the time limit)",
    "launch": "the launch command: srun (or mpiexec) running the worker; under Open MPI's mpiexec, "
              "in the background with the time-limit warning relayed to it (see RELAY_NOTE), so that "
              "$? after it is still its exit status",
    "relaunch": "after {{launch}}: requeue the launch when its ranks stopped at the time limit with runs "
                "left (exit status 75) and relaunches are left",
    "worker": f"the worker command alone: {shlex.join(USR1_IGNORED_UNTIL_EXEC)} <python> -P -m "
              "parallelaverage.worker <job dir> <launch> (the rank starts with SIGUSR1 ignored: see "
              "USR1_IGNORED_UNTIL_EXEC)",
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
    launch_no: int
    n_tasks: int
    options: Mapping[str, Any]
    chdir: str
    python: str
    pythonpath: str
    mpiexec: str = "mpiexec"
    mpiexec_env: Mapping[str, str] = field(default_factory=dict)
    mpiexec_args: tuple[str, ...] = ()
    relays_signal: bool = False
    """The script takes SLURM's warning signal itself and relays it to ``mpiexec``
    (Open MPI's: see :data:`RELAY_NOTE`)."""

    @classmethod
    def for_launch(cls, files: JobFiles, launch_no: int, n_tasks: int,
                   options: Mapping[str, Any]) -> ScriptInputs:
        """The inputs of a real launch: this Python, its ``sys.path``, the working directory."""
        mpiexec, env, args = "mpiexec", {}, ()  # type: tuple[str, dict[str, str], tuple[str, ...]]
        open_mpi = False
        if options.get("launcher") == "mpiexec":
            mpiexec = find_mpiexec()
            _, env = mpiexec_command(n_tasks, [], mpiexec)
            open_mpi = mpi_flavour(mpiexec) == "openmpi"
            # Open MPI binds ranks to cores; with more ranks than cores it must not
            args = ("--bind-to", "none") if open_mpi else ()
        return cls(
            job_dir=files.dir.resolve(), launch_no=launch_no, n_tasks=n_tasks, options=dict(options),
            chdir=os.getcwd(), python=sys.executable, pythonpath=worker_environment()["PYTHONPATH"],
            mpiexec=mpiexec, mpiexec_env=env, mpiexec_args=args, relays_signal=open_mpi,
        )

    @property
    def files(self) -> JobFiles:
        return JobFiles(self.job_dir)

    def sbatch_lines(self) -> list[str]:
        """Our ``#SBATCH`` lines, then one per user option (backend options excluded)."""
        files = self.files
        ours = {
            "ntasks": self.n_tasks, "job_name": self.job_dir.name,
            "output": files.stdout(self.launch_no), "error": files.stderr(self.launch_no),
            "chdir": self.chdir,
            "requeue": True,  # a requeued launch resumes as its next life (see NO_REQUEUE_REFUSED)
            "open_mode": "append",  # every life's output stays
        }
        signal = self.signal
        if "signal" not in self.options:
            ours["signal"] = signal
        lines = [_sbatch_option(name, value) for name, value in ours.items()]
        lines += [_sbatch_option(name, signal if name == "signal" else value) for name, value in self.options.items()
                  if name not in BACKEND_OPTIONS]
        return [line for line in lines if line is not None]

    @property
    def signal(self) -> Any:
        """The value of ``#SBATCH --signal``: the user's ``signal`` or :data:`DEFAULT_SIGNAL`,
        ``[R:]SIG@T`` turned into ``[R]B:SIG@T`` when the script relays it."""
        value = self.options.get("signal", DEFAULT_SIGNAL)
        if not (self.relays_signal and isinstance(value, str)):
            return value
        flags, colon, rest = value.partition(":")
        return f"{flags}B:{rest}" if colon else f"B:{flags}"

    @property
    def relayed_signal(self) -> str | None:
        """The signal the script relays to ``mpiexec`` (``USR1``), or None."""
        value = self.signal
        if not (self.relays_signal and isinstance(value, str)):
            return None
        return check_line("signal", value.rpartition(":")[2].partition("@")[0] or "USR1")

    def relay_lines(self) -> list[str]:
        """The ``trap`` that relays SLURM's warning to ``mpiexec`` once it runs (:data:`RELAY_NOTE`)."""
        signal = self.relayed_signal
        if signal is None:
            return []
        return [RELAY_NOTE, "parallelaverage_launcher=",
                f"trap '[ -z \"$parallelaverage_launcher\" ] || kill -s {shlex.quote(signal)} "
                f"\"$parallelaverage_launcher\" 2>/dev/null' {shlex.quote(signal)}"]

    def setup_lines(self) -> list[str]:
        setup = self.options.get("setup", ())
        return [check_line("setup", line) for line in ([setup] if isinstance(setup, str) else setup)]

    def environment_lines(self) -> list[str]:
        lines = [f"export PYTHONPATH={shlex.quote(self.pythonpath)}"] if self.pythonpath else []
        if self.options.get("launcher") == "mpiexec":
            lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(self.mpiexec_env.items())]
        return lines

    @property
    def max_relaunches(self) -> int:
        return int(self.options.get("max_relaunches", MAX_RELAUNCHES))

    def lives_lines(self) -> list[str]:
        """Which life this is, the relaunch limit, and when the allocation ends (for the ranks)."""
        limit = self.max_relaunches
        return [
            'export PARALLELAVERAGE_LIFE="${SLURM_RESTART_COUNT:-0}"',
            f'if [ "$PARALLELAVERAGE_LIFE" -gt {limit} ]; then',
            f'  echo "{PREFIX} launch {self.launch_no} was requeued $PARALLELAVERAGE_LIFE times, more than '
            f'max_relaunches={limit}: not running it again" >&2',
            f'  echo {LIMIT_REACHED} > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"; exit {LIMIT_REACHED}',
            "fi",
            # SLURM >= 23.02 exports the end time; before, one squeue per life asks it
            'if [ -n "${SLURM_JOB_END_TIME:-}" ]; then export PARALLELAVERAGE_END_TIME="$SLURM_JOB_END_TIME"; else',
            '  parallelaverage_end=$(squeue --noheader --jobs="$SLURM_JOB_ID" --format=%e 2>/dev/null)',
            '  export PARALLELAVERAGE_END_TIME="$(date -d "$parallelaverage_end" +%s 2>/dev/null)"',
            "fi",
        ]

    def relaunch_lines(self) -> list[str]:
        """Requeue the launch when its ranks stopped before the time limit with runs left."""
        limit = self.max_relaunches
        return [
            f'if [ "$code" = {REQUEUE_ME} ] && [ "$PARALLELAVERAGE_LIFE" -lt {limit} ]; then',
            f'  echo "{PREFIX} the time limit is near and runs are left: requeueing launch '
            f'{self.launch_no} (life $((PARALLELAVERAGE_LIFE + 1)) runs them)" >&2',
            '  scontrol requeue "$SLURM_JOB_ID" && sleep 600  # SLURM ends this life now',
            "fi",
        ]

    def worker_command(self) -> str:
        return shlex.join([*USR1_IGNORED_UNTIL_EXEC, *worker_argv(self.python, self.job_dir, self.launch_no)])

    def launch_command(self) -> str:
        if self.options.get("launcher", "srun") == "mpiexec":
            args = " ".join(shlex.quote(a) for a in self.mpiexec_args)
            command = f'{shlex.quote(self.mpiexec)} -n "$SLURM_NTASKS" {args + " " if args else ""}{self.worker_command()}'
            if self.relayed_signal is None:
                return command
            # in the background, so that the trap runs while it does; the loop waits
            # again after each relayed signal and leaves $? = mpiexec's exit status
            return "\n".join([
                f"{shlex.join(USR1_IGNORED_UNTIL_EXEC)} {command} &",
                "parallelaverage_launcher=$!",
                'while wait "$parallelaverage_launcher"; parallelaverage_code=$?; '
                'kill -0 "$parallelaverage_launcher" 2>/dev/null; do :; done',
                '(exit "$parallelaverage_code")',
            ])
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
        "lives": "\n".join(inputs.lives_lines()),
        "relaunch": "\n".join(inputs.relaunch_lines()),
        "environment": "\n".join(inputs.environment_lines()),
        "launch": inputs.launch_command(),
        "worker": inputs.worker_command(),
        "exit_code_file": shlex.quote(str(files.exit_code(inputs.launch_no))),
        "job_name": inputs.job_dir.name,
        "job_dir": shlex.quote(str(inputs.job_dir)),
        "attempt": str(inputs.launch_no),
        "n_tasks": str(inputs.n_tasks),
        "python": shlex.quote(inputs.python),
    }
    lines = []
    for line in template.splitlines():
        alone = _PLACEHOLDER.fullmatch(line.strip())
        if alone and not values[alone.group(1)]:
            continue
        lines.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
    text = "\n".join(lines) + "\n"
    relay = inputs.relay_lines()
    if relay:  # before the first command, where sbatch stops reading #SBATCH lines anyway
        header = re.match(r"(?:[ \t]*(?:#[^\n]*)?\n)*", text)
        end = header.end() if header else 0
        text = text[:end] + "\n".join(relay) + "\n" + text[end:]
    return text
