"""``plot_average`` (a mean with its error band) and ``plot_histogram`` (a histogram of the
runs' outputs, with error bars), on matplotlib (``pip install parallelaverage[plot]``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_average", "plot_histogram"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            f"plot_average needs matplotlib ({error}); install it with: pip install parallelaverage[plot]"
        ) from None
    return plt


def plot_average(x: Any, result: Any, ax: Any = None, label: str | None = None, color: Any = None,
                 alpha: float = 0.3, **kwargs: Any) -> tuple[Any, Any]:
    """Draw the mean of a 1-D averaged result as a line, with the band mean ± estimated error.

    Args:
        x: The abscissa, one value per element of the result; ``None`` for 0, 1, 2, ...
        result: An ``AveragedResult`` (anything with ``data`` and ``estimated_error``).
        ax: The matplotlib axes to draw on; the current axes by default.
        label: Legend label of the line.
        color: Colour of the line and the band; the axes' next colour by default.
        alpha: Opacity of the band.
        **kwargs: Passed on to ``ax.plot`` (``linestyle``, ``marker``, ``linewidth``...).

    Returns:
        ``(line, band)``: the ``Line2D`` of the mean and the ``PolyCollection`` of the band.

    Raises:
        ImportError: matplotlib is not installed (the message names ``pip install parallelaverage[plot]``).
        ValueError: the result is not 1-D, or ``x`` does not have one value per element.

    Notes:
        The band is one standard error of the mean: about 68% of such bands hold the
        true mean when the runs are many and independent. A result from a single run
        has no error (nan); the band is then left out where the error is not finite.
    """
    mean = np.asarray(result.data, dtype=float)
    error = np.broadcast_to(np.asarray(result.estimated_error, dtype=float), mean.shape)
    if mean.ndim != 1:
        raise ValueError(f"plot_average draws 1-D results; this one has shape {mean.shape}")
    xs = np.arange(mean.size) if x is None else np.asarray(x)
    if xs.shape != mean.shape:
        raise ValueError(f"x has shape {xs.shape} but the result has shape {mean.shape}: give one x per element")
    if ax is None:
        ax = _pyplot().gca()
    (line,) = ax.plot(xs, mean, label=label, color=color, **kwargs)
    finite = np.isfinite(error)
    band = ax.fill_between(xs, mean - error, mean + error, where=finite, color=line.get_color(),
                           alpha=alpha, linewidth=0)
    return line, band


def plot_histogram(result: Any, ax: Any = None, element: Any = None, density: bool = False, label: str | None = None,
                   color: Any = None, errors: bool = True, **kwargs: Any) -> tuple[Any, Any]:
    """Draw the histogram of a result's outputs as steps, with each bin's statistical error.

    Args:
        result: An ``AveragedResult`` of a job with ``statistics=("histogram:...",)``, or a
            :class:`parallelaverage.stats.Histogram`.
        ax: The matplotlib axes to draw on; the current axes by default.
        element: Which element's histogram, for array outputs histogrammed element by
            element (an index into the output's shape); None for scalar outputs and pooled
            histograms.
        density: Draw :meth:`Histogram.density` (integrates to 1 over the range) instead of
            the counts (or the weight sums of a weighted histogram).
        label: Legend label.
        color: Colour of the steps and the error bars.
        errors: Draw the error bars (``sqrt(counts)``, or ``sqrt(sum w**2)`` when weighted).
        **kwargs: Passed on to ``ax.stairs``.

    Returns:
        ``(stairs, bars)``: the ``StepPatch`` and the error bars' container (None without them).

    Raises:
        ImportError: matplotlib is not installed.
        StatisticNotCollectedError: the result's job collected no histogram.
        ValueError: ``element`` is missing for a histogram per element, or given for one that is not.
    """
    histogram = result if hasattr(result, "edges") and hasattr(result, "counts") else result.histogram
    weighted = bool(histogram._weighted)
    values = histogram.density() if density else (histogram.weights if weighted else histogram.counts.astype(float))
    error = histogram.errors
    if density:
        total = (histogram.weights if weighted else histogram.counts.astype(float)).sum(axis=-1, keepdims=True)
        width = np.diff(histogram.edges)[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            error = error / (total * width)
    if values.ndim > 1 or element is not None:
        if element is None:
            raise ValueError(f"this result has a histogram per element (shape {values.shape[:-1]}): pass element=")
        if values.ndim == 1:
            raise ValueError("element= is for histograms per element; this one is a single histogram")
        index = element if isinstance(element, tuple) else (element,)
        values, error = values[index], error[index]
    if ax is None:
        ax = _pyplot().gca()
    stairs = ax.stairs(values, histogram.edges, label=label, color=color, **kwargs)
    bars = None
    if errors:
        bars = ax.errorbar(histogram.centers, values, yerr=error, fmt="none", ecolor=stairs.get_edgecolor(),
                           elinewidth=1)
    return stairs, bars
