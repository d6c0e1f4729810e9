"""Identity and randomness of the run being executed: ``run_id()`` and ``rng()``.

Whoever hands out runs (``parallelaverage.mpi.RunCounter`` and ``dynamic_range``, the
worker's static split) records here, with :func:`enter_run` and :func:`leave_runs`,
which run a rank is working on, so that code inside a run can ask for its index and
for a random generator of its own. The generator is seeded from ``(job seed, run index)`` through
``numpy.random.SeedSequence``: each run has its own reproducible stream, whichever
rank executes it and in whatever order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["run_id", "rng", "enter_run", "leave_runs", "set_job_seed", "job_seed", "set_stream_generation"]

_NO_RUN = object()
_current: Any = _NO_RUN
_seed: int = 0
_generation: int = 0
_rng_for: Any = _NO_RUN
_rng: np.random.Generator | None = None


def set_job_seed(seed: int) -> None:
    """Set the job seed from which every run's generator is derived (default 0)."""
    global _seed, _rng_for
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be a non-negative integer")
    _seed = int(seed)
    _rng_for = _NO_RUN


def set_stream_generation(generation: int) -> None:
    """Choose the runs' streams: 0 (default) for their own, reproducible ones; another
    number for fresh ones (``re_submit(fresh_streams=True)`` uses the launch number).

    Generation ``g > 0`` seeds run ``r`` from ``SeedSequence((job seed, g), spawn_key=r)``:
    as reproducible as generation 0, and independent of it.
    """
    global _generation, _rng_for
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ValueError(f"stream generation {generation!r}: must be an integer >= 0")
    _generation = generation
    _rng_for = _NO_RUN


def job_seed() -> int:
    """The current job seed."""
    return _seed


def enter_run(run: Any) -> None:
    """Record that this rank now executes ``run``: :func:`run_id` returns it and
    :func:`rng` is its stream, until the next ``enter_run`` or :func:`leave_runs`."""
    global _current
    _current = run


def leave_runs() -> None:
    """Record that this rank executes no run any more: :func:`run_id` raises again."""
    global _current
    _current = _NO_RUN


def run_id() -> Any:
    """The index of the run being executed (an int, or a tuple for tuple ``N_runs``).

    Raises:
        RuntimeError: called outside a run (not inside ``dynamic_range`` or a job).
    """
    if _current is _NO_RUN:
        raise RuntimeError(
            "run_id() is only defined inside a run: call it from the decorated function "
            "or inside a loop over parallelaverage.mpi.dynamic_range()"
        )
    return _current


def _spawn_key(run: Any) -> tuple[int, ...]:
    parts = run if isinstance(run, tuple) else (run,)
    key = []
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (int, np.integer)) or part < 0:
            raise ValueError(f"run id {run!r} has no generator: run ids must be non-negative integers")
        key.append(int(part))
    return tuple(key)


def rng() -> np.random.Generator:
    """This run's own ``numpy.random.Generator``, the same for every call within a run.

    Seeded from ``SeedSequence(job_seed, spawn_key=run index)``, so results are
    reproducible and independent of which rank ran the run.
    """
    global _rng_for, _rng
    run = run_id()
    if _rng is None or _rng_for != run:
        entropy = _seed if _generation == 0 else (_seed, _generation)
        _rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=_spawn_key(run)))
        _rng_for = run
    return _rng
