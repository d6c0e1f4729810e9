"""Functions whose jobs the viewer tests look at; pickled by value into the MPI ranks."""

from __future__ import annotations

import time

import numpy as np

import parallelaverage as pa


def correlation(L, T=1.0, *, field=0.0):
    """A noisy decaying correlation function: a 1-D result with a visible error band."""
    r = np.arange(L)
    return np.exp(-r / (4.0 * T)) * np.cos(field * r) + 0.4 * pa.rng().standard_normal(L)


def energy(beta):
    """A scalar result."""
    return -np.tanh(beta) + 0.05 * pa.rng().standard_normal()


def flaky(fail_every):
    """Every ``fail_every``-th run raises."""
    run = pa.run_id()
    if run % fail_every == 0:
        raise ValueError(f"run {run} hit an unstable configuration")
    return float(run)


def trajectory(steps):
    """Outputs kept, not averaged (@parallel)."""
    return np.cumsum(pa.rng().standard_normal(steps))


def observables(L):
    """A tuple: an averaged array, an averaged scalar, a label kept from the last run."""
    x = pa.rng().standard_normal(L)
    return x, float(x.mean()), "label"


def slow(delay_s):
    """Takes its time, so that a test sees the job running."""
    time.sleep(delay_s)
    return float(pa.run_id())
