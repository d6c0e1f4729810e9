"""Mergeable, numerically exact statistics of weighted samples: the accumulators.

``Welford`` (mean, variance, error of the mean) is a value: it adds samples (numbers or
arrays, optionally weighted), merges with another in any order (an empty one is
neutral), pickles as a small named state, and is merged across MPI ranks by one
collective, ``parallelaverage.mpi.allreduce`` (usable in any mpi4py program).
``docs/statistics.md`` has the definitions and the formulas.
"""

from __future__ import annotations

from parallelaverage._welford import ESTIMATORS, WeightedSample, Welford, _promote_to_complex

__all__ = ["Welford", "WeightedSample", "ESTIMATORS"]

# The classes live in private modules; they are public here, and pickles, reprs and the
# docs name them here.
for _public in (Welford, WeightedSample):
    _public.__module__ = __name__
del _public

_ = _promote_to_complex  # used by parallelaverage.mpi through this module
