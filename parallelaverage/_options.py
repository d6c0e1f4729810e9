"""The decorator's options: ours are validated here, the rest go to the queuing system.

Validation happens at decoration time, on the submitting machine, with errors that
name the fix (never ``assert``: those vanish under ``python -O``). Queue options are
checked against SLURM's option names whatever the queuing system: the local backend
ignores them, but a typo found on a laptop does not wait for the cluster to fail.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import types
from dataclasses import dataclass, field
from typing import Any, Mapping

from parallelaverage._accumulator import check_statistics, recorded_statistics
from parallelaverage._target import checked_target
from parallelaverage.backends.slurm_options import check_slurm_options
from parallelaverage.errors import OptionError
from parallelaverage.runspace import RunSpace

__all__ = ["JobOptions", "parse_options"]

QUEUING_SYSTEMS = ("auto", "local", "slurm")
ENCODINGS = ("pickle", "json")
AVERAGE_ONLY = ("keep_runs", "average_results", "statistics", "target_error", "target_relative_error")
"""Options of ``@parallel_average`` that ``@parallel`` (which keeps every output) refuses."""


@dataclass(frozen=True)
class JobOptions:
    """Validated options of one decorated function."""

    N_runs: int | tuple[int, ...]
    N_tasks: int
    average: Any  # None: keep outputs only (@parallel); "all" or a tuple of element indices
    keep_runs: bool
    dynamic_load_balancing: bool
    encoding: str
    path: str
    queuing_system: str
    seed: int | None
    pickle_by_value: tuple[types.ModuleType, ...]
    queue_options: Mapping[str, Any] = field(default_factory=dict)
    statistics: Any = ()  # canonical specs: a tuple for every averaged element, or {element: tuple}
    target: tuple[str, float] | None = None  # ("absolute" | "relative", error): stop once below (target_error=)

    @property
    def space(self) -> RunSpace:
        return RunSpace(self.N_runs)

    @property
    def total_runs(self) -> int:
        return self.space.total

    def resolved_queuing_system(self) -> str:
        """``auto`` becomes ``slurm`` where SLURM can be used, else ``local``."""
        return resolve_queuing_system(self.queuing_system)

    def recorded(self) -> dict[str, Any]:
        """The options as JSON for the job record."""
        return {
            "N_tasks": self.N_tasks, "keep_runs": self.keep_runs,
            "dynamic_load_balancing": self.dynamic_load_balancing, "encoding": self.encoding,
            "queuing_system": self.queuing_system, "seed": self.seed,
            "queue_options": dict(self.queue_options),
            "statistics": recorded_statistics(self.statistics),
            "target_error": None if self.target is None else {"kind": self.target[0], "error": self.target[1]},
        }


def resolve_queuing_system(name: str) -> str:
    """``auto``: ``slurm`` when ``sbatch`` is on PATH and a SLURM configuration is there
    (``SLURM_CONF``, ``/etc/slurm/slurm.conf``, or configless SLURM's
    ``/run/slurm/conf/slurm.conf``: the client tools are installed on many machines that
    are no cluster), else ``local``."""
    if name != "auto":
        return name
    configured = os.environ.get("SLURM_CONF") or any(
        os.path.exists(p) for p in ("/etc/slurm/slurm.conf", "/run/slurm/conf/slurm.conf")  # configless
    )
    return "slurm" if _slurm_backend_available() and shutil.which("sbatch") and configured else "local"


def _slurm_backend_available() -> bool:
    return importlib.util.find_spec("parallelaverage.backends.slurm") is not None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_average(value: Any) -> Any:
    if value == "all":
        return "all"
    indices = (value,) if _is_int(value) else value
    if isinstance(indices, (tuple, list)) and indices and all(_is_int(i) and i >= 0 for i in indices):
        return tuple(sorted(set(indices)))
    raise ValueError(
        f"average_results={value!r}: must be 'all' or the index (or list of indices) of the "
        "tuple elements to average"
    )


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: must be True or False")
    return value


def parse_options(N_runs: Any, N_tasks: Any, *, average: Any, keep_runs: Any,
                  options: Mapping[str, Any]) -> JobOptions:
    """Validate the decorator's arguments; unknown keywords are queue options.

    Args:
        average: None for ``@parallel`` (keep every output), else ``average_results``.
        options: the other keywords: parallelaverage's own, then queue options.

    Raises:
        TypeError, ValueError: with the option's name, the bad value and the fix
            (:class:`OptionError`, :class:`OptionTypeError` for queue options and for
            ``@parallel_average``'s options given to ``@parallel``).
    """
    space = RunSpace(N_runs)
    n_runs, total = space.option, space.total
    if not _is_int(N_tasks):
        raise TypeError(f"N_tasks={N_tasks!r}: must be a positive int (the number of MPI ranks)")
    if not 1 <= N_tasks <= total:
        raise ValueError(f"N_tasks={N_tasks}: must be between 1 and the number of runs ({total})")
    options = dict(options)
    if average is None:
        for name in AVERAGE_ONLY:
            if name in options:
                raise OptionError(f"{name}={options[name]!r}: @parallel keeps every output; "
                                  "keep_runs/average_results are options of @parallel_average")
    dynamic = _check_bool("dynamic_load_balancing", options.pop("dynamic_load_balancing", True))
    encoding = options.pop("encoding", "pickle")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r}: must be one of {', '.join(map(repr, ENCODINGS))}")
    queuing_system = options.pop("queuing_system", "auto")
    if queuing_system not in QUEUING_SYSTEMS:
        raise ValueError(
            f"queuing_system={queuing_system!r}: must be one of {', '.join(map(repr, QUEUING_SYSTEMS))}"
        )
    if queuing_system == "slurm" and not _slurm_backend_available():
        raise ValueError(
            "queuing_system='slurm': this version of parallelaverage has no SLURM backend yet; "
            "use queuing_system='local' (or 'auto')"
        )
    path = options.pop("path", ".")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path={path!r}: must be a directory path")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"path={path!r}: no such directory; create it or pass an existing one")
    seed = options.pop("seed", None)
    if seed is not None and not (_is_int(seed) and seed >= 0):
        raise ValueError(f"seed={seed!r}: must be a non-negative int or None")
    by_value = options.pop("pickle_by_value", ())
    by_value = tuple(by_value) if isinstance(by_value, (list, tuple)) else (by_value,)
    for module in by_value:
        if not isinstance(module, types.ModuleType):
            raise TypeError(f"pickle_by_value: {module!r} is not a module; pass imported modules")
    averaged = None if average is None else _check_average(average)
    statistics = check_statistics(options.pop("statistics", ()), averaged)
    target = _check_target(options.pop("target_error", None), options.pop("target_relative_error", None), dynamic)
    check_slurm_options(options)  # also for local jobs: the same code may run on a cluster later
    return JobOptions(
        N_runs=n_runs, N_tasks=N_tasks, average=averaged,
        keep_runs=_check_bool("keep_runs", keep_runs), dynamic_load_balancing=dynamic,
        encoding=encoding, path=path, queuing_system=queuing_system, seed=seed,
        pickle_by_value=by_value, queue_options=options, statistics=statistics, target=target,
    )


def _check_target(absolute: Any, relative: Any, dynamic: bool) -> tuple[str, float] | None:
    """``target_error=`` / ``target_relative_error=`` as ``(kind, error)``, or None."""
    if absolute is None and relative is None:
        return None
    if absolute is not None and relative is not None:
        raise OptionError("target_error and target_relative_error: give one of them (an error, or an error "
                          "relative to each element's |mean|)")
    if not dynamic:
        raise OptionError("target_error needs dynamic_load_balancing=True: the job stops by emptying the shared "
                          "run counter, which static blocks do not use")
    if absolute is not None:
        return "absolute", checked_target(absolute, "target_error")
    return "relative", checked_target(relative, "target_relative_error")
