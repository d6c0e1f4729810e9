"""Exact statistics in rational arithmetic for the accumulators besides Welford: the
oracle of tests/stats and tests/mpi (every float, integer and weight becomes a Fraction
exactly; the definitions are those of docs/statistics.md; results are rounded once).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np

from welford_oracle import _float, _sqrt

nan = math.nan


def fractions(values: Sequence[Any]) -> list[Fraction]:
    return [Fraction(int(v)) if isinstance(v, (int, np.integer)) else Fraction(float(v)) for v in values]


def weights_of(weights: Sequence[float] | None, n: int) -> list[Fraction]:
    return [Fraction(1)] * n if weights is None else [Fraction(float(w)) for w in weights]


def root(value: Fraction) -> float:
    """sqrt of a non-negative rational within an ulp; inf beyond the float64 range."""
    try:
        return _sqrt(value)
    except OverflowError:
        return math.inf


# ------------------------------------------------------------------ moments
def exact_moments(values: Sequence[Any], weights: Sequence[float] | None = None) -> dict[str, float]:
    """Weighted central moments m2..m4, Kish's variance, skewness and excess kurtosis (both
    estimators) of one element; NaN where undefined (docs/statistics.md)."""
    x = fractions(values)
    w = weights_of(weights, len(x))
    W = sum(w, Fraction(0))
    S = sum((v * v for v in w), Fraction(0))
    positive = sum(1 for v in w if v > 0)
    out = dict.fromkeys(["mean", "variance", "m2", "m3", "m4", "skewness", "kurtosis", "skewness_adjusted",
                         "kurtosis_adjusted"], nan)
    if W == 0:
        return out
    mean = sum((wi * xi for wi, xi in zip(w, x)), Fraction(0)) / W
    out["mean"] = _float(mean)
    if positive < 2:
        return out
    m = {p: sum((wi * (xi - mean) ** p for wi, xi in zip(w, x)), Fraction(0)) / W for p in (2, 3, 4)}
    out.update(m2=_float(m[2]), m3=_float(m[3]), m4=_float(m[4]))
    out["variance"] = _float(m[2] * W / (W - S / W))
    if m[2] == 0:
        return out
    # g1**2 = m3**2 / m2**3, exactly, then one square root
    g1_squared = m[3] ** 2 / m[2] ** 3
    g1 = math.copysign(root(g1_squared), 1.0 if m[3] >= 0 else -1.0)
    g2 = m[4] / m[2] ** 2 - 3
    out.update(skewness=g1, kurtosis=_float(g2))
    n = W * W / S
    out["effective_count"] = n
    if n > 2:
        # G1 = g1 sqrt(n (n - 1)) / (n - 2): square it exactly too
        out["skewness_adjusted"] = math.copysign(root(g1_squared * n * (n - 1) / (n - 2) ** 2),
                                                 1.0 if m[3] >= 0 else -1.0)
    if n > 3:
        out["kurtosis_adjusted"] = _float((n - 1) * ((n + 1) * g2 + 6) / ((n - 2) * (n - 3)))
    return out


def exact_covariance(samples: np.ndarray, weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Kish's covariance and the correlation of the flattened elements of ``samples``
    (stacked along axis 0): (d, d) arrays, NaN where undefined."""
    n = samples.shape[0]
    flat = samples.reshape(n, -1)
    d = flat.shape[1]
    columns = [fractions(flat[:, j].tolist()) for j in range(d)]
    w = weights_of(weights, n)
    W = sum(w, Fraction(0))
    S = sum((v * v for v in w), Fraction(0))
    positive = sum(1 for v in w if v > 0)
    cov = np.full((d, d), nan)
    cor = np.full((d, d), nan)
    if W == 0 or positive < 2:
        return cov, cor
    means = [sum((wi * xi for wi, xi in zip(w, column)), Fraction(0)) / W for column in columns]
    exact = [[sum((wk * (columns[i][k] - means[i]) * (columns[j][k] - means[j]) for k, wk in enumerate(w)),
                  Fraction(0)) / (W - S / W) for j in range(d)] for i in range(d)]
    for i in range(d):
        for j in range(d):
            cov[i, j] = _float(exact[i][j])
            if exact[i][i] > 0 and exact[j][j] > 0:
                r2 = exact[i][j] ** 2 / (exact[i][i] * exact[j][j])
                cor[i, j] = math.copysign(_sqrt(r2), 1.0 if exact[i][j] >= 0 else -1.0)
    return cov, cor


# ------------------------------------------------------------------ jackknife
def exact_jackknife(function: Callable[..., Fraction], samples: Sequence[Sequence[np.ndarray]], keys: Sequence[int],
                    k: int, weights: Sequence[float] | None = None) -> tuple[float, float, float]:
    """The jackknife of ``function`` (of Fraction means, one argument per output) over K
    batches ``key mod K``: value, error and bias-corrected value (docs/statistics.md)."""
    n = len(keys)
    w = weights_of(weights, n)
    outputs = len(samples)

    def means(rows: list[int]) -> list[Any]:
        total = sum((w[i] for i in rows), Fraction(0))
        result = []
        for o in range(outputs):
            flat = [fractions(np.ravel(samples[o][i]).tolist()) for i in rows]
            d = len(flat[0])
            result.append([sum((w[i] * flat[r][j] for r, i in enumerate(rows)), Fraction(0)) / total
                           for j in range(d)])
        return result

    groups = {b: [i for i in range(n) if keys[i] % k == b] for b in range(k)}
    used = [b for b in range(k) if groups[b] and sum((w[i] for i in groups[b]), Fraction(0)) > 0]
    everyone = [i for b in used for i in groups[b]]
    theta = function(*means(everyone))
    K = len(used)
    if K < 2:
        return float(theta), nan, nan
    W = sum((w[i] for i in everyone), Fraction(0))
    r = {b: sum((w[i] for i in groups[b]), Fraction(0)) / W for b in used}
    left = {b: function(*means([i for c in used if c != b for i in groups[c]])) for b in used}
    corrected = K * theta - sum(((1 - r[b]) * left[b] for b in used), Fraction(0))
    variance = sum((((1 / r[b]) * theta - (1 / r[b] - 1) * left[b] - corrected) ** 2 / (1 / r[b] - 1) for b in used),
                   Fraction(0)) / K
    return float(theta), _sqrt(variance), float(corrected)


# ------------------------------------------------------------------ log-binning
def exact_binning(series: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> list[dict[str, float]]:
    """For each level l: the Welford estimates (mean, Kish's sem) of the means of blocks of
    2**l consecutive samples of each series (of one observable), each block weighted by
    its series' weight."""
    w = weights_of(weights, len(series))
    length = len(series[0])
    levels = max(1, length.bit_length())
    out = []
    for level in range(levels):
        size = 2**level
        blocks, bw = [], []
        for s, wi in zip(series, w):
            x = fractions(list(s))
            for start in range(0, (len(x) // size) * size, size):
                blocks.append(sum(x[start : start + size], Fraction(0)) / size)
                bw.append(wi)
        W = sum(bw, Fraction(0))
        S = sum((v * v for v in bw), Fraction(0))
        positive = sum(1 for v in bw if v > 0)
        if W == 0:
            out.append({"mean": nan, "sem": nan})
            continue
        mean = sum((a * b for a, b in zip(bw, blocks)), Fraction(0)) / W
        if positive < 2:
            out.append({"mean": _float(mean), "sem": nan})
            continue
        M2 = sum((a * (b - mean) ** 2 for a, b in zip(bw, blocks)), Fraction(0))
        variance = M2 / (W - S / W)
        out.append({"mean": _float(mean), "sem": _sqrt(variance * S / (W * W))})
    return out


# ------------------------------------------------------------------ histogram weight sums
def exact_sum(values: Sequence[float]) -> float:
    return _float(sum((Fraction(float(v)) for v in values), Fraction(0)))
