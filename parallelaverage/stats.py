"""Mergeable, numerically exact statistics of weighted samples: the accumulators.

Each accumulator is a value: it adds samples (numbers or arrays, optionally weighted),
merges with another in any order (an empty one is neutral), and pickles as a small
named state::

    from parallelaverage.stats import Welford, Covariance, Moments

==================  =================================================================
``Welford``          mean, variance, error of the mean (what ``.data`` and
                     ``.estimated_error`` of a result are)
``Covariance``       covariance and correlation between the elements of a vector
                     (O(d**2) memory)
``Moments``          skewness and excess kurtosis (central moments up to order 4)
==================  =================================================================

``docs/statistics.md`` has the definitions and the formulas.
"""

from __future__ import annotations

from parallelaverage._accumulator import Accumulator, from_spec
from parallelaverage._moments import SKEWNESS_ESTIMATORS, Covariance, Moments
from parallelaverage._welford import ESTIMATORS, WeightedSample, Welford, _promote_to_complex

__all__ = ["Welford", "WeightedSample", "ESTIMATORS", "Covariance", "Moments", "SKEWNESS_ESTIMATORS",
           "Accumulator", "from_spec"]

# The classes live in private modules; they are public here, and pickles, reprs and the
# docs name them here.
for _public in (Welford, WeightedSample, Covariance, Moments, Accumulator):
    _public.__module__ = __name__
del _public

_ = _promote_to_complex  # used by parallelaverage.mpi through this module
