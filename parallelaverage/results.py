"""What a call returns: ``AveragedResult`` for averaged jobs, ``RunOutputs`` for kept runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from parallelaverage._display import averaged_html
from parallelaverage._jobfiles import OutputIndex

__all__ = ["AveragedResult", "RunOutputs"]


def _sort_key(run: Any) -> Any:
    return run if isinstance(run, tuple) else (run,)


class RunOutputs(Mapping):
    """Run id -> that run's output, in run-id order; outputs are read from disk on access."""

    def __init__(self, index: OutputIndex, run_ids: list[Any] | None = None) -> None:
        self._index = index
        ids = index.runs() if run_ids is None else [r for r in run_ids if r in index]
        self._ids = sorted(ids, key=_sort_key)
        self._known = set(self._ids)

    def __getitem__(self, run: Any) -> Any:
        if run not in self._known:
            raise KeyError(f"no output of run {run!r} (finished runs: {len(self._ids)})")
        return self._index.load(run)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"RunOutputs({len(self)} runs)"


class AveragedResult(np.lib.mixins.NDArrayOperatorsMixin):
    """The average over the successful runs of a job, with its uncertainty.

    Attributes:
        data: the mean (numpy array or scalar).
        estimated_error: standard error of the mean, ``sqrt(variance / n_eff)`` (Kish's
            effective count; ``n`` for unweighted runs).
        estimated_variance: unbiased variance of the samples (reliability weights).
        successful_run_ids, failed_run_ids: sorted run ids.
        runs: the per-run outputs (``RunOutputs``) when the job kept them, else None.
        job_name: the job this result belongs to.

    Numpy arithmetic, indexing and ``np.asarray`` act on ``data``.
    """

    def __init__(self, data: Any, estimated_error: Any, estimated_variance: Any, *,
                 successful_run_ids: list[Any], failed_run_ids: list[Any],
                 runs: RunOutputs | None, job_name: str, count: int, total_weight: float) -> None:
        self.data = data
        self.estimated_error = estimated_error
        self.estimated_variance = estimated_variance
        self.successful_run_ids = sorted(successful_run_ids, key=_sort_key)
        self.failed_run_ids = sorted(failed_run_ids, key=_sort_key)
        self.runs = runs
        self.job_name = job_name
        self.count = count
        self.total_weight = total_weight

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = np.asarray(self.data, dtype=dtype)
        return array.copy() if copy else array

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        unwrap = [x.data if isinstance(x, AveragedResult) else x for x in inputs]
        return getattr(ufunc, method)(*unwrap, **kwargs)

    def __getitem__(self, index: Any) -> Any:
        return self.data[index]

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return np.shape(self.data)

    def _repr_html_(self) -> str:
        """The notebook's view: mean ± error, runs and job, and a small plot for 1-D results."""
        return averaged_html(self)

    def __repr__(self) -> str:
        return (f"AveragedResult(job={self.job_name!r}, runs={len(self.successful_run_ids)}, "
                f"data={np.array2string(np.asarray(self.data), threshold=6)})")
