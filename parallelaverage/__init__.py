"""parallelaverage: average a stochastic Python function over many runs on MPI ranks.

Public names are listed in ``__all__``; the MPI engine lives in
``parallelaverage.mpi`` and the statistics in ``parallelaverage.stats``.
"""

from parallelaverage._context import rng, run_id
from parallelaverage.stats import Welford

__all__ = ["Welford", "rng", "run_id"]
__version__ = "0.1.0"
