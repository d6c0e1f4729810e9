"""A Binder cumulant with its jackknife error, and a Markov chain's autocorrelation time.

    python examples/ising_binder.py

A small 2-D Ising model (Metropolis, checkerboard updates) near its critical point
(beta_c = 0.4407). ``ising`` runs one independent chain per run and measures the
magnetisation once at the end: its runs are independent samples, and
``statistics=`` collects 20 batch means (run id mod 20), the moments, the covariance of
the three outputs and a histogram of |m|. The Binder cumulant U = 1 - <m^4> / (3 <m^2>^2)
is a nonlinear function of two means: its error comes from the jackknife.
``ising_chain`` returns the whole chain of |m| of each run (one value per sweep): the
log-binning gives the mean over every sweep with the error corrected for the
autocorrelation, and the autocorrelation time itself. The job database is
``./.parallelaverage``; run the script again and the calls return at once.
"""

import numpy as np

import parallelaverage as pa
from parallelaverage import parallel_average, wait


def sweep(spins: np.ndarray, beta: float, rng: np.random.Generator) -> None:
    """One Metropolis sweep: the two sublattices of a checkerboard in turn."""
    L = spins.shape[0]
    parity = np.add.outer(np.arange(L), np.arange(L)) % 2
    for colour in (0, 1):
        field = np.roll(spins, 1, 0) + np.roll(spins, -1, 0) + np.roll(spins, 1, 1) + np.roll(spins, -1, 1)
        flip = (parity == colour) & (rng.random((L, L)) < np.exp(-2.0 * beta * spins * field))
        spins[flip] *= -1


@parallel_average(N_runs=400, N_tasks=2, seed=1,
                  statistics=("jackknife:20", "moments", "covariance", "histogram:bins=20,range=(0,1)"))
def ising(L, beta, sweeps=200):
    """One independent chain: |m|, m^2 and m^4 after ``sweeps`` sweeps."""
    rng = pa.rng()
    spins = rng.choice(np.array([-1, 1]), size=(L, L))
    for _ in range(sweeps):
        sweep(spins, beta, rng)
    m = abs(spins.mean())
    return np.array([m, m**2, m**4])


@parallel_average(N_runs=16, N_tasks=2, seed=2, statistics=("autocorrelation",))
def ising_chain(L, beta, sweeps=2048, thermalise=200):
    """One chain's |m| after each sweep, after ``thermalise`` sweeps."""
    rng = pa.rng()
    spins = rng.choice(np.array([-1, 1]), size=(L, L))
    for _ in range(thermalise):
        sweep(spins, beta, rng)
    series = np.empty(sweeps)
    for t in range(sweeps):
        sweep(spins, beta, rng)
        series[t] = abs(spins.mean())
    return series


def binder(m):
    """U = 1 - <m^4> / (3 <m^2>^2) from the means of (|m|, m^2, m^4)."""
    return 1.0 - m[2] / (3.0 * m[1] ** 2)


if __name__ == "__main__":
    result = wait(ising)(L=8, beta=0.44)
    U = result.jackknife(binder)
    print(f"<|m|> = {result.data[0]:.4f} ± {result.estimated_error[0]:.4f} over {result.count} runs")
    print(f"Binder cumulant U = {U.value:.4f} ± {U.error:.4f} (jackknife over {U.batches} batches; "
          f"bias-corrected {U.bias_corrected:.4f})")
    print(f"skewness of |m| = {result.skewness[0]:.3f}, excess kurtosis = {result.excess_kurtosis[0]:.3f}")
    print(f"correlation of m^2 and m^4 = {result.correlation[1, 2]:.4f}")
    print("histogram of |m|:", result.histogram.counts[0])

    chain = wait(ising_chain)(L=8, beta=0.44)
    binning = chain.autocorrelation
    print(f"<|m|> over every sweep = {binning.mean:.4f} ± {binning.error:.4f} "
          f"(naive {binning.naive_error:.4f}); tau_int = {binning.autocorrelation_time:.1f} sweeps, "
          f"blocks of {2 ** int(binning.level_chosen)} ({'plateau found' if binning.converged else 'no plateau'})")
