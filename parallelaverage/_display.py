"""How averaged numbers are shown to people: ``mean ± error`` text, array ranges, and
the notebook's HTML summary with its small inline SVG plot.

Pure numpy and the standard library (no job database, no matplotlib), so that
``AveragedResult._repr_html_`` and the command line share one way of writing numbers.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

__all__ = ["format_mean_error", "array_range", "averaged_html", "sparkline_svg"]

_SVG_WIDTH, _SVG_HEIGHT, _SVG_PAD = 320, 110, 4
_MAX_POINTS = 400  # an SVG path of a million points would freeze the notebook


def _number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def format_mean_error(mean: Any, error: Any) -> str:
    """``mean ± error`` with the error to two significant digits and the mean to match.

    Args:
        mean: A real number.
        error: Its standard error (may be nan, e.g. after a single run).

    Returns:
        e.g. ``"1.2346 ± 0.0012"``, ``"(6.022 ± 0.011)e+23"``, ``"3.1 ± nan"``.
    """
    mean, error = float(mean), float(error)
    if not math.isfinite(mean):
        return f"{mean} ± {_number(error)}"
    if not math.isfinite(error) or error <= 0:
        return f"{_number(mean, 6)} ± {_number(error)}"
    exponent = math.floor(math.log10(abs(mean))) if mean else math.floor(math.log10(error))
    scale = 0 if -3 <= exponent < 6 else exponent
    m, e = mean / 10.0**scale, error / 10.0**scale
    decimals = max(1 - math.floor(math.log10(e)), 0)
    text = f"{m:.{decimals}f} ± {e:.{decimals}f}"
    return f"({text})e{scale:+03d}" if scale else text


def array_range(values: Any) -> tuple[float, float] | None:
    """The smallest and largest finite value of an array, or None if it has none."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return None
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


def _path(xs: np.ndarray, ys: np.ndarray) -> str:
    """An SVG path through the finite points; a non-finite value breaks the line."""
    parts, pen_down = [], False
    for x, y in zip(xs, ys):
        if not math.isfinite(y):
            pen_down = False
            continue
        parts.append(f"{'L' if pen_down else 'M'}{x:.1f},{y:.1f}")
        pen_down = True
    return " ".join(parts)


def sparkline_svg(mean: Any, error: Any) -> str:
    """A small SVG plot of a 1-D mean with its error band (mean ± error).

    Args:
        mean: A 1-D array of at least two values.
        error: Its standard errors, same length (non-finite errors draw no band).

    Returns:
        The ``<svg>`` element as text, or ``""`` when there is nothing to draw.
    """
    y = np.asarray(mean, dtype=float)
    err = np.broadcast_to(np.asarray(error, dtype=float), y.shape)
    if y.ndim != 1 or y.size < 2 or not np.isfinite(y).any():
        return ""
    index = np.unique(np.linspace(0, y.size - 1, min(y.size, _MAX_POINTS)).astype(int))
    y, err = y[index], np.where(np.isfinite(err[index]), err[index], 0.0)
    low, high = y - err, y + err
    finite = np.isfinite(low) & np.isfinite(high)
    top, bottom = float(np.max(high[finite])), float(np.min(low[finite]))
    if top == bottom:
        top, bottom = top + 0.5, bottom - 0.5
    w, h, pad = _SVG_WIDTH, _SVG_HEIGHT, _SVG_PAD
    xs = pad + (index / (index[-1] or 1)) * (w - 2 * pad)

    def to_px(values: np.ndarray) -> np.ndarray:
        return pad + (top - values) / (top - bottom) * (h - 2 * pad)

    band = ""
    if np.any(err > 0):
        ring_x = np.concatenate([xs, xs[::-1]])
        ring_y = np.concatenate([to_px(high), to_px(low)[::-1]])
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(ring_x, ring_y) if math.isfinite(b))
        band = f'<polygon points="{points}" fill="#1f77b4" fill-opacity="0.25" stroke="none"/>'
    label = html.escape(f"{_number(bottom)} … {_number(top)}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'role="img" aria-label="mean with error band, from {label}">'
        f'<rect x="0.5" y="0.5" width="{w - 1}" height="{h - 1}" fill="none" stroke="#ccc"/>{band}'
        f'<path d="{_path(xs, to_px(y))}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>'
        f'<text x="{pad + 2}" y="{pad + 10}" font-size="10" fill="#666">{html.escape(_number(top))}</text>'
        f'<text x="{pad + 2}" y="{h - pad - 2}" font-size="10" fill="#666">{html.escape(_number(bottom))}</text>'
        "</svg>"
    )


def _row(name: str, value: str) -> str:
    return f'<tr><th style="text-align:left;padding-right:1em">{html.escape(name)}</th><td>{value}</td></tr>'


def averaged_html(result: Any) -> str:
    """The notebook summary of an ``AveragedResult``: mean ± error, runs, job, a plot if 1-D.

    Args:
        result: An ``AveragedResult`` (anything with ``data``, ``estimated_error``,
            ``successful_run_ids``, ``failed_run_ids`` and ``job_name``).

    Returns:
        An HTML fragment; every text from the result is escaped.
    """
    mean = np.asarray(result.data)
    error = np.asarray(result.estimated_error)
    runs = f"{len(result.successful_run_ids)}"
    if result.failed_run_ids:
        runs += f" ({len(result.failed_run_ids)} failed)"
    rows = [_row("job", f"<code>{html.escape(str(result.job_name))}</code>"), _row("runs", html.escape(runs))]
    plot = ""
    if mean.ndim == 0:
        try:
            rows.append(_row("mean", html.escape(format_mean_error(mean, error))))
        except (TypeError, ValueError):  # e.g. complex: show it as numpy does
            rows.append(_row("mean", html.escape(f"{mean} ± {error}")))
    else:
        rows.append(_row("shape", html.escape(str(mean.shape))))
        mean_range, error_range = array_range(mean), array_range(error)
        if mean_range is not None:
            rows.append(_row("mean", html.escape(f"{_number(mean_range[0])} … {_number(mean_range[1])}")))
        if error_range is not None:
            rows.append(_row("error", html.escape(f"≤ {_number(error_range[1])}")))
        if mean.ndim == 1:
            try:
                plot = sparkline_svg(mean, error)
            except (TypeError, ValueError):
                plot = ""
    return (
        '<div class="parallelaverage-result" style="display:flex;gap:1em;align-items:flex-start">'
        f'<table><caption style="text-align:left;font-weight:bold">AveragedResult</caption>{"".join(rows)}</table>'
        f"{plot}</div>"
    )
