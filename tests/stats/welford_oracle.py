"""Exact statistics of weighted samples, in rational arithmetic: the oracle of the tests.

Every float64, integer and weight is converted to a ``Fraction`` exactly, so these are
the true values of the estimators of ``docs/statistics.md``, rounded once at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np


@dataclass
class Exact:
    """The estimators of one element (floats rounded from the exact rationals; NaN
    where undefined, with the definitions of docs/statistics.md)."""

    mean: float
    variance: float  # Kish / reliability weights: M2 / (W - S / W)
    sem: float  # sqrt(variance * S / W**2)
    variance_original: float  # n / (n - 1) * M2 / W, n counting zero weights
    sem_original: float  # sqrt(variance_original / n)
    effective_count: float  # W**2 / S
    total_weight: float


def _sqrt(value: Fraction) -> float:
    """sqrt of a non-negative rational, within an ulp (math.sqrt of the rounded float,
    rescaled by an exact power of four when the float would not be normal)."""
    if value == 0:
        return 0.0
    scale = 0
    while value * Fraction(4) ** -scale > Fraction(2) ** 1000:
        scale += 100
    while value * Fraction(4) ** -scale < Fraction(2) ** -1000:
        scale -= 100
    return math.ldexp(math.sqrt(float(value * Fraction(4) ** -scale)), scale)


def _float(value: Fraction) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def exact(values: Sequence[float | int], weights: Sequence[float] | None = None) -> Exact:
    """The exact statistics of one element over its samples (real, finite values)."""
    n = len(values)
    x = [Fraction(int(v)) if isinstance(v, (int, np.integer)) else Fraction(float(v)) for v in values]
    w = [Fraction(1)] * n if weights is None else [Fraction(float(v)) for v in weights]
    W = sum(w, Fraction(0))
    S = sum((v * v for v in w), Fraction(0))
    nan = math.nan
    if W == 0:
        return Exact(nan, nan, nan, nan, nan, nan, 0.0)
    mean = sum((wi * xi for wi, xi in zip(w, x)), Fraction(0)) / W
    M2 = sum((wi * (xi - mean) ** 2 for wi, xi in zip(w, x)), Fraction(0))
    positive = sum(1 for wi in w if wi > 0)
    if positive < 2:
        variance = sem = variance_original = sem_original = nan
    else:
        kish = M2 / (W - S / W)
        variance, sem = _float(kish), _sqrt(kish * S / (W * W))
        original = Fraction(n, n - 1) * M2 / W
        variance_original, sem_original = _float(original), _sqrt(original / n)
    return Exact(_float(mean), variance, sem, variance_original, sem_original, _float(W * W / S), _float(W))


def exact_columns(samples: np.ndarray, weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """:func:`exact` of every element of samples stacked along axis 0; complex samples
    give the complex mean and the sum of the real and imaginary parts' variances."""
    samples = np.asarray(samples)
    n = samples.shape[0]
    flat = samples.reshape(n, -1)
    fields = ("mean", "variance", "sem", "variance_original", "sem_original")
    out: dict[str, list] = {name: [] for name in fields}
    for column in flat.T:
        if np.iscomplexobj(column):
            re, im = exact(column.real.tolist(), weights), exact(column.imag.tolist(), weights)
            out["mean"].append(complex(re.mean, im.mean))
            for name in fields[1:]:
                if name.startswith("variance"):
                    out[name].append(getattr(re, name) + getattr(im, name))
                else:  # sem**2 adds like the variances
                    out[name].append(math.hypot(getattr(re, name), getattr(im, name)))
        else:
            values = column.tolist()
            e = exact(values, weights)
            for name in fields:
                out[name].append(getattr(e, name))
    shape = samples.shape[1:]
    return {name: np.array(values).reshape(shape) for name, values in out.items()}
