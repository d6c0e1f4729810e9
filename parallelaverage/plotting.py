"""``plot_average``: a mean with its error band, on matplotlib (``pip install parallelaverage[plot]``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_average"]


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
