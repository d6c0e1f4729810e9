"""The SLURM options a decorated function may pass: one source of truth, as data.

Every keyword of ``@parallel``/``@parallel_average`` that is not parallelaverage's own
goes to the queuing system. For SLURM the accepted names are the ``sbatch`` options
below, spelled with ``_`` for ``-`` (``mem_per_cpu`` -> ``--mem-per-cpu``), plus
one-letter names (``t`` -> ``-t``) and the backend options of :data:`BACKEND_OPTIONS`.
An unknown name fails at decoration time and lists the closest valid names.

Values are strings or numbers; ``True`` stands for a bare flag (``exclusive=True`` ->
``--exclusive``) and ``False`` leaves the option out. Only ``setup`` takes a list.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Mapping

from parallelaverage.errors import OptionError, OptionTypeError

__all__ = [
    "SBATCH_OPTIONS", "SHORT_OPTIONS", "OURS", "OURS_SHORT", "REFUSED", "NO_REQUEUE_REFUSED", "BACKEND_OPTIONS",
    "LAUNCHERS",
    "check_slurm_options", "check_line",
]

SBATCH_OPTIONS: frozenset[str] = frozenset({
    "account", "acctg_freq", "batch", "bb", "bbf", "begin", "cluster_constraint", "comment",
    "constraint", "container", "contiguous", "core_spec", "cores_per_socket", "cpu_freq",
    "cpus_per_gpu", "cpus_per_task", "deadline", "delay_boot", "dependency", "distribution",
    "exclude", "exclusive", "export", "export_file", "extra_node_info", "get_user_env", "gid",
    "gpu_bind", "gpu_freq", "gpus", "gpus_per_node", "gpus_per_socket", "gpus_per_task", "gres",
    "gres_flags", "hint", "hold", "kill_on_invalid_dep", "licenses", "mail_type", "mail_user",
    "mcs_label", "mem", "mem_bind", "mem_per_cpu", "mem_per_gpu", "mincpus", "network", "nice",
    "no_kill", "nodefile", "nodelist", "nodes", "ntasks_per_core", "ntasks_per_gpu",
    "ntasks_per_node", "ntasks_per_socket", "overcommit", "oversubscribe",
    "partition", "power", "prefer", "priority", "profile", "propagate", "qos", "reboot",
    "reservation", "signal", "sockets_per_node", "spread_job", "switches",
    "thread_spec", "threads_per_core", "time", "time_min", "tmp", "uid", "use_min_nodes",
    "wckey",
})
"""``sbatch`` long options a job may set, with ``_`` for ``-``."""

SHORT_OPTIONS: Mapping[str, str] = {
    "A": "account", "b": "begin", "B": "extra_node_info", "c": "cpus_per_task",
    "C": "constraint", "d": "dependency", "F": "nodefile", "G": "gpus", "H": "hold",
    "k": "no_kill", "L": "licenses", "m": "distribution", "N": "nodes", "O": "overcommit",
    "p": "partition", "q": "qos", "s": "oversubscribe", "S": "core_spec", "t": "time",
    "w": "nodelist", "x": "exclude",
}
"""One-letter ``sbatch`` options (rendered as ``-X value``) and the long option each is."""

OURS: Mapping[str, str] = {
    "ntasks": "from N_tasks", "job_name": "the job's name, e.g. 3_simulate",
    "output": "the job directory's attempts/<k>/stdout.txt",
    "error": "the job directory's attempts/<k>/stderr.txt",
    "chdir": "the caller's working directory", "parsable": "to read the job id",
    "requeue": "always: a launch that SLURM requeues (a node failure, preemption, its own time "
               "limit) runs again as its next life and does only the runs its earlier lives left; "
               "max_relaunches=N limits how often (0: never)",
    "open_mode": "append: stdout.txt and stderr.txt keep the output of every life of a launch",
}
"""sbatch options parallelaverage sets itself, and what it sets them to."""

OURS_SHORT: Mapping[str, str] = {"n": "ntasks", "J": "job_name", "o": "output", "e": "error", "D": "chdir"}

NO_REQUEUE_REFUSED = (
    "parallelaverage requeues launches itself and resumes them where they stopped; to let a "
    "launch end at its first requeue instead (its missing runs then wait for re_submit), pass "
    "max_relaunches=0"
)
"""Why ``no_requeue`` is refused: a requeued launch resumes from its earlier lives' snapshots.

Notes:
    SLURM requeues a batch job whose node fails (``JobRequeue=1``, the default) or that is
    preempted with ``PreemptMode=REQUEUE``; a launch that reaches its time limit with runs
    left requeues itself. Each run of the job script is a *life* of the launch: it writes
    in ``attempts/<k>/life-<n>/``, first seals what the earlier lives did (so that ranks a
    failed node left behind cannot count a run twice) and runs only what they left.
"""

REFUSED: Mapping[str, str] = {
    "array": "a call is one job: use N_runs for many runs",
    "a": "a call is one job: use N_runs for many runs",
    "wrap": "parallelaverage writes the job script (see the 'setup' option and the template)",
    "wait": "use parallelaverage.wait(f)(...) to block until the job is done",
    "W": "use parallelaverage.wait(f)(...) to block until the job is done",
    "clusters": "jobs are followed with squeue on the submitting cluster: submit from the target cluster",
    "M": "jobs are followed with squeue on the submitting cluster: submit from the target cluster",
    "test_only": "parallelaverage needs a real job id",
    "no_requeue": NO_REQUEUE_REFUSED,
}
"""Options that make no sense for a parallelaverage job, with the reason."""

LAUNCHERS = ("srun", "mpiexec")

BACKEND_OPTIONS: Mapping[str, str] = {
    "launcher": "how the job starts its ranks: 'srun' (default) or 'mpiexec'",
    "mpi": "srun's MPI plugin, --mpi=<mpi>: 'pmi2' (default, MPICH) or 'pmix' (Open MPI)",
    "setup": "shell lines run before the launch, e.g. ['module load openmpi']",
    "max_relaunches": "how often a launch may run again after SLURM requeued it or it reached its "
                      "time limit with runs left: 3 by default, 0 for never",
}
"""Options of the SLURM backend itself (not passed to sbatch)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WORD = re.compile(r"[A-Za-z0-9_]+")


def check_line(name: str, text: str) -> str:
    """``text`` if it is one line without control characters (it goes into the job script).

    Raises:
        OptionError: a newline or other control character, which would inject script lines.
    """
    if _CONTROL.search(text):
        raise OptionError(
            f"{name}={text!r}: contains a newline or control character, which would inject "
            "lines into the job script; pass a single-line value"
        )
    return text


def _closest(name: str) -> list[str]:
    valid = sorted(SBATCH_OPTIONS | set(SHORT_OPTIONS) | set(BACKEND_OPTIONS))
    same_letters = [v for v in valid if v.lower() == name.lower() and v != name]
    return same_letters + [v for v in difflib.get_close_matches(name, valid, n=4, cutoff=0.6)
                           if v not in same_letters]


def _check_name(name: str) -> str:
    """The long sbatch option ``name`` stands for (itself for backend options)."""
    ours = OURS_SHORT.get(name, name)
    if ours in OURS:
        raise OptionError(
            f"{name}=...: parallelaverage sets --{ours.replace('_', '-')} itself ({OURS[ours]}); remove it"
        )
    if name in REFUSED:
        raise OptionError(f"{name}=...: not supported: {REFUSED[name]}")
    if name in SBATCH_OPTIONS or name in BACKEND_OPTIONS:
        return name
    if name in SHORT_OPTIONS:
        return SHORT_OPTIONS[name]
    closest = _closest(name)
    hint = f"; did you mean {' or '.join(closest)}?" if closest else ""
    raise OptionError(
        f"{name}=...: not an sbatch option parallelaverage knows{hint} "
        "(sbatch options are spelled with _ for -, e.g. mem_per_cpu='2G'; "
        "see parallelaverage.backends.slurm_options.SBATCH_OPTIONS)"
    )


def _check_value(name: str, value: Any) -> None:
    if name == "setup":
        lines = [value] if isinstance(value, str) else value
        if not isinstance(lines, (list, tuple)) or not all(isinstance(line, str) for line in lines):
            raise OptionTypeError(f"setup={value!r}: must be a shell line or a list of shell lines (strings)")
        for line in lines:
            check_line("setup", line)
        return
    if not isinstance(value, (str, int, float)):  # bool is an int: True is a bare flag
        raise OptionTypeError(f"{name}={value!r}: SLURM options must be strings, numbers or True/False")
    check_line(name, str(value))
    if name == "max_relaunches" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise OptionError(f"max_relaunches={value!r}: must be an integer >= 0 (0: a launch never runs again)")
    if name == "launcher" and value not in LAUNCHERS:
        raise OptionError(f"launcher={value!r}: must be one of {', '.join(map(repr, LAUNCHERS))}")
    if name == "mpi" and not (isinstance(value, str) and _WORD.fullmatch(value)):
        raise OptionError(f"mpi={value!r}: must be the name of an srun MPI plugin, e.g. 'pmi2' or 'pmix' "
                          "(srun --mpi=list shows them)")
    if name == "signal" and isinstance(value, str):
        _check_signal(value)


def _check_signal(value: str) -> None:
    """Refuse ``--signal=B:...``: sbatch's ``[{R|B}:]<sig>[@<time>]`` with B signals only the
    batch shell (the flags in any case and order: ``B:``, ``RB:``, ``br:``), which then dies.

    Notes:
        Seen on Slurm 22.05 (``scancel --batch --signal=USR1``, the same delivery): the
        shell is killed by the signal, the step's ranks get SIGTERM, the job is FAILED.
    """
    flags, colon, rest = value.partition(":")
    if not colon or "B" not in flags.upper():
        return
    kept = "R:" if "R" in flags.upper() else ""
    instead = f"{kept}{rest}" if rest else "USR1@60"
    raise OptionError(
        f"signal={value!r}: the B: form sends the signal to the batch shell only, not to the MPI "
        "ranks; the shell does not catch it and dies, so SLURM stops the ranks right then, before "
        f"the time limit, and the job ends FAILED; use signal={instead!r} (the ranks save a "
        "checkpoint when it comes and run on until the limit; the default is 'USR1@60'), "
        "or signal=False for no warning"
    )


def check_slurm_options(options: Mapping[str, Any]) -> None:
    """Check the queue options of a SLURM job: known names, single-line values.

    Args:
        options: the decorator's keywords that are not parallelaverage's own.

    Raises:
        OptionError: an unknown name (listing the closest valid ones), an option
            parallelaverage sets itself, the same option under two names, a value
            with a newline or control character, or one that breaks the launch
            (``signal="B:..."``).
        OptionTypeError: a value that is not a string, number or bool (``setup``: strings).
    """
    seen: dict[str, str] = {}
    for name, value in options.items():
        long_name = _check_name(name)
        if long_name in seen:
            raise OptionError(f"{seen[long_name]}=... and {name}=... are the same sbatch option "
                             f"(--{long_name.replace('_', '-')}); pass only one")
        seen[long_name] = name
        _check_value(name, value)
    if "mpi" in options and options.get("launcher", "srun") != "srun":
        raise OptionError("mpi=...: chooses srun's MPI plugin, so it needs launcher='srun'")
