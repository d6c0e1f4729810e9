"""What a call returns: ``AveragedResult`` for averaged jobs, ``RunOutputs`` for kept runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Callable, Iterator

import numpy as np

from parallelaverage._display import averaged_html
from parallelaverage.errors import StatisticNotCollectedError
from parallelaverage.jobfiles.outputs import OutputIndex
from parallelaverage.runspace import Positions, RunSpace
from parallelaverage.stats import JackknifeEstimate, jackknife

__all__ = ["AveragedResult", "RunOutputs"]


def _sort_key(run: Any) -> Any:
    return run if isinstance(run, tuple) else (run,)


class RunOutputs(Mapping):
    """Run id -> that run's output, in run-id order; outputs are read from disk on access.

    Holds the successful runs as ranges: ``len`` and iteration cost nothing per stored
    output, and the output files are indexed on the first access to an output.
    """

    def __init__(self, index: OutputIndex, space: RunSpace, positions: Positions) -> None:
        self._index, self._space, self._positions = index, space, positions

    def __getitem__(self, run: Any) -> Any:
        try:
            position = self._space.position_of(run)
        except KeyError:
            position = -1
        if position not in self._positions or position not in self._index:
            raise KeyError(f"no output of run {run!r} (finished runs: {len(self)})")
        return self._index.load(position)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._space.ids(self._positions))

    def __len__(self) -> int:
        return len(self._positions)

    def __contains__(self, run: object) -> bool:
        try:
            return self._space.position_of(run) in self._positions
        except KeyError:
            return False

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
        statistics: what the job collected besides the mean (``statistics=``), by kind:
            ``"covariance"``, ``"moments"``, ``"jackknife"``, ``"histogram"``,
            ``"autocorrelation"`` -> the merged accumulator of :mod:`parallelaverage.stats`.
            The properties below read them; one the job did not collect raises
            :class:`~parallelaverage.errors.StatisticNotCollectedError`.

    Numpy arithmetic, indexing and ``np.asarray`` act on ``data``.
    """

    def __init__(self, data: Any, estimated_error: Any, estimated_variance: Any, *,
                 successful_run_ids: Sequence[Any], failed_run_ids: Sequence[Any],
                 runs: RunOutputs | None, job_name: str, count: int, total_weight: float,
                 statistics: Mapping[str, Any] | None = None) -> None:
        self.data = data
        self.estimated_error = estimated_error
        self.estimated_variance = estimated_variance
        # sorted sequences; a job's are lazy views over ranges of runs (RunIds)
        self.successful_run_ids = successful_run_ids if not isinstance(successful_run_ids, list) \
            else sorted(successful_run_ids, key=_sort_key)
        self.failed_run_ids = failed_run_ids if not isinstance(failed_run_ids, list) \
            else sorted(failed_run_ids, key=_sort_key)
        self.runs = runs
        self.job_name = job_name
        self.count = count
        self.total_weight = total_weight
        self.statistics: Mapping[str, Any] = MappingProxyType(dict(statistics or {}))

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

    def __bool__(self) -> bool:
        raise TypeError(
            "the truth value of an AveragedResult is ambiguous: to test that a call returned a "
            "result, use `result is not None`; for the averaged value, use `bool(result.data)` or "
            "`np.any(result.data)`"
        )

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the mean (``()`` for a scalar)."""
        return np.shape(self.data)

    # ------------------------------------------------------------ statistics=
    def _statistic(self, kind: str, spec: str) -> Any:
        found = self.statistics.get(kind)
        if found is None or found.count == 0:
            collected = ", ".join(repr(acc.spec) for acc in self.statistics.values()) or "none"
            raise StatisticNotCollectedError(
                f"job {self.job_name} collected no {kind} (its statistics: {collected}). Ask for it with "
                f"statistics=({spec!r},) on the decorator and run the call anew with @do_submit")
        return found

    @property
    def covariance(self) -> Any:
        """The covariance between the elements of the runs' outputs, shape ``shape + shape``
        (``statistics=("covariance",)``; :class:`parallelaverage.stats.Covariance`)."""
        return self._statistic("covariance", "covariance").covariance

    @property
    def correlation(self) -> Any:
        """The correlation between the elements (``statistics=("covariance",)``)."""
        return self._statistic("covariance", "covariance").correlation

    @property
    def skewness(self) -> Any:
        """The skewness of the runs' outputs, per element (``statistics=("moments",)``;
        :class:`parallelaverage.stats.Moments` has the other estimators)."""
        return self._statistic("moments", "moments").skewness

    @property
    def excess_kurtosis(self) -> Any:
        """The excess kurtosis of the runs' outputs, per element (``statistics=("moments",)``)."""
        return self._statistic("moments", "moments").excess_kurtosis

    @property
    def histogram(self) -> Any:
        """The histogram of the runs' outputs (``statistics=("histogram:bins=..,range=(..)",)``):
        a :class:`parallelaverage.stats.Histogram` with ``edges``, ``counts``, ``weights``..."""
        return self._statistic("histogram", "histogram:bins=50,range=(0,1)")

    @property
    def autocorrelation(self) -> Any:
        """The log-binning of the time series the runs returned (``statistics=("autocorrelation",)``):
        a :class:`parallelaverage.stats.LogBinning` with ``mean``, ``error`` (corrected),
        ``naive_error``, ``autocorrelation_time``, ``errors`` by level..."""
        return self._statistic("autocorrelation", "autocorrelation")

    @property
    def autocorrelation_time(self) -> Any:
        """The integrated autocorrelation time of the runs' time series, in samples
        (``statistics=("autocorrelation",)``); 1/2 for uncorrelated samples."""
        return self.autocorrelation.autocorrelation_time

    def jackknife(self, function: Callable[..., Any], *others: AveragedResult) -> JackknifeEstimate:
        """A function of the means with its jackknife error (``statistics=("jackknife:20",)``).

        ``function`` gets this result's mean (shaped like ``data``), then each of
        ``others``' (other elements of the same call's tuple): ``r.jackknife(lambda m:
        m[0] / m[1])``, ``so.jackknife(lambda so, s: so / s, s)``. The batches are the runs'
        ids mod K, the same in every element. ``value, error = r.jackknife(f)``.

        Raises:
            StatisticNotCollectedError: this result or one of ``others`` has no batches.
        """
        batches = [result._statistic("jackknife", "jackknife:20") for result in (self, *others)]
        return jackknife(function, *batches)

    def _repr_html_(self) -> str:
        """The notebook's view: mean ± error, runs and job, and a small plot for 1-D results."""
        return averaged_html(self)

    def __repr__(self) -> str:
        return (f"AveragedResult(job={self.job_name!r}, runs={len(self.successful_run_ids)}, "
                f"data={np.array2string(np.asarray(self.data), threshold=6)})")
