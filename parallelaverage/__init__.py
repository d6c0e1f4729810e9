"""parallelaverage: average a stochastic Python function over many runs on MPI ranks.

Put ``@parallel_average(N_runs=..., N_tasks=...)`` (or ``@parallel``) on a function;
the first call submits a job, later calls return its results. The MPI engine lives in
``parallelaverage.mpi`` and the statistics in ``parallelaverage.stats``, both usable
in one's own mpi4py programs.

The public names are loaded on first use, so that the MPI ranks of a job, which
import ``parallelaverage.worker``, do not pay for the decorators and the job database.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "parallel": "_decorators", "parallel_average": "_decorators", "do_submit": "_decorators",
    "dont_submit": "_decorators", "re_submit": "_decorators", "cancel_job": "_decorators",
    "print_job_output": "_decorators", "wait": "_decorators", "load_job": "_decorators",
    "NoJobError": "errors", "cleanup": "_cleanup", "run_id": "_context", "rng": "_context",
    "Welford": "stats", "WeightedSample": "stats", "AveragedResult": "results",
    "RunOutputs": "results", "UntrustedFileError": "errors", "JobWarning": "errors", "NotReadyWarning": "errors",
    "RunsFailedWarning": "errors", "JobEndedWarning": "errors", "CodeChangedWarning": "errors",
    "plot_average": "plotting", "Job": "job", "ParallelAverageError": "errors", "OptionError": "errors",
    "OptionTypeError": "errors", "ArgumentError": "errors", "SubmissionError": "errors",
    "LaunchError": "errors", "RunsFailedError": "errors", "ReadOnlyDatabaseError": "errors",
    "CorruptFileError": "errors", "JobNotFoundError": "errors", "LockTimeoutError": "errors",
    "StatisticNotCollectedError": "errors", "plot_histogram": "plotting",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"parallelaverage.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'parallelaverage' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # noqa: F401 - for type checkers and IDEs: the same names, imported eagerly
    from parallelaverage._cleanup import cleanup
    from parallelaverage._context import rng, run_id
    from parallelaverage._decorators import (
        cancel_job, do_submit, dont_submit, load_job, parallel, parallel_average, print_job_output,
        re_submit, wait,
    )
    from parallelaverage.errors import (
        ArgumentError, CodeChangedWarning, CorruptFileError, JobEndedWarning, JobNotFoundError,
        JobWarning, LaunchError, LockTimeoutError, NoJobError, NotReadyWarning, OptionError,
        OptionTypeError, ParallelAverageError, ReadOnlyDatabaseError, RunsFailedError,
        RunsFailedWarning, StatisticNotCollectedError, SubmissionError, UntrustedFileError,
    )
    from parallelaverage.job import Job
    from parallelaverage.plotting import plot_average, plot_histogram
    from parallelaverage.results import AveragedResult, RunOutputs
    from parallelaverage.stats import WeightedSample, Welford
