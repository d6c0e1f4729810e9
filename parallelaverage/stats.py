"""Mergeable, numerically exact statistics of weighted samples: the accumulators.

Each accumulator is a value: it adds samples (numbers or arrays, optionally weighted),
merges with another in any order (an empty one is neutral), pickles as a small named
state, and is merged across MPI ranks by one collective,
``parallelaverage.mpi.allreduce`` (usable in any mpi4py program)::

    from parallelaverage.stats import Welford, Covariance, Moments, Batches, Histogram, LogBinning

==================  =================================================================
``Welford``          mean, variance, error of the mean (what ``.data`` and
                     ``.estimated_error`` of a result are)
``Covariance``       covariance and correlation between the elements of a vector
                     (O(d**2) memory)
``Moments``          skewness and excess kurtosis (central moments up to order 4)
``Batches``          K batch means keyed by ``run id mod K``: jackknife errors of any
                     function of the means (:func:`jackknife`)
``Histogram``        fixed bins, counts and optionally weight sums per bin
``LogBinning``       runs that return a time series: its integrated autocorrelation
                     time and the error corrected for it (2 log2 N memory)
==================  =================================================================

The decorator collects them per call with ``statistics=(...)`` specs
(:func:`from_spec`: ``"covariance"``, ``"moments"``, ``"jackknife:20"``,
``"histogram:bins=50,range=(0,1)"``, ``"autocorrelation"``); ``docs/statistics.md`` has
the definitions and the formulas.
"""

from __future__ import annotations

from parallelaverage._accumulator import Accumulator, from_spec
from parallelaverage._batches import Batches, JackknifeEstimate, jackknife
from parallelaverage._binning import LogBinning
from parallelaverage._histogram import Histogram
from parallelaverage._moments import SKEWNESS_ESTIMATORS, Covariance, Moments
from parallelaverage._welford import ESTIMATORS, WeightedSample, Welford, _promote_to_complex

__all__ = ["Welford", "WeightedSample", "ESTIMATORS", "Covariance", "Moments", "SKEWNESS_ESTIMATORS", "Batches",
           "jackknife", "JackknifeEstimate", "Histogram", "LogBinning", "Accumulator", "from_spec"]

# The classes live in private modules, each of which names its classes as this module's
# (__module__): pickles, reprs and the docs say parallelaverage.stats.<Class>.
_ = _promote_to_complex  # used by parallelaverage.mpi through this module
