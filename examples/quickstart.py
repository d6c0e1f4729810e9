"""Quickstart: the seed example, run locally on MPI ranks (no SLURM needed).

    python examples/quickstart.py

The first call submits a job of 10 runs on 5 local MPI ranks (mpiexec from the active
environment) and returns None; ``wait`` then blocks until the job is complete and
returns every run's output. Run the script again: the same call returns the stored
result at once, without a new job. The job database is ``./.parallelaverage``.
"""

import numpy as np

from parallelaverage import parallel, parallel_average, wait


@parallel(N_runs=10, N_tasks=5, time="00:02:00", mem="1G")
def my_function(L):
    """Draw L random numbers: one run's output."""
    return np.random.rand(L)


@parallel_average(N_runs=1000, N_tasks=2)
def noisy_mean(L):
    """One noisy sample around 1e9: averaged over 1,000 runs, exactly."""
    from parallelaverage import rng

    return 1e9 + rng().standard_normal(L)


if __name__ == "__main__":
    first = my_function(L=64)
    print("first call returned:", first)
    outputs = wait(my_function)(L=64)
    print(f"{len(outputs)} outputs; outputs[0][:4] = {outputs[0][:4]}")

    average = wait(noisy_mean)(L=3)
    print("mean - 1e9:        ", average.data - 1e9)
    print("estimated error:   ", average.estimated_error)
    print("estimated variance:", average.estimated_variance)
