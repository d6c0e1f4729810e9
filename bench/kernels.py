"""Welford kernels against np.add on the same arrays, measured in the same run.

    python bench/kernels.py [--quick]

For each size n, the baseline is ``np.add(a, x, out=a)`` (read two arrays, write one);
the compiled add reads x, shift, mean, m2 and writes mean, m2: twice the bytes, and
twice the working set. The column "add / np.add(2n)" compares the add with ``np.add``
on arrays of 2n elements, which move as many bytes through as large a working set: it
tells how close the kernel runs to the memory system's speed, apart from the cache
size. Each figure is the median of 21 timeit repeats (9 when one call takes > 5 ms).
The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit

import numpy as np

from parallelaverage import _kernels
from parallelaverage.stats import Welford


def per_call_s(function, min_repeat_s: float = 0.02, repeats: int = 21) -> float:
    """Median seconds per call over `repeats` repeats of about `min_repeat_s` each."""
    timer = timeit.Timer(function)
    number, took = timer.autorange()
    number = max(1, int(number * min_repeat_s / max(took, 1e-9)))
    if took / number > 5e-3:
        repeats = 9
    return statistics.median(t / number for t in timer.repeat(repeats, number))


def np_add_s(a: np.ndarray, x: np.ndarray) -> float:
    """Seconds per ``np.add(a, x, out=a)``, the baseline."""
    return per_call_s(lambda: np.add(a, x, out=a))


def measure(n: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = 1e6 + rng.standard_normal(n)
    a = np.zeros(n)
    state = _kernels.empty_state(n)
    _kernels.add(state, x, 1.0)
    other = state.copy()
    target = state.copy()
    add, merge = _kernels.add, _kernels.merge
    baseline = np_add_s(a, x)
    same_bytes = np_add_s(np.zeros(2 * n), np.concatenate([x, x]))  # freed before the next timing
    unweighted = per_call_s(lambda: add(state, x, 1.0))
    weighted = per_call_s(lambda: add(state, x, 0.37))
    merged = per_call_s(lambda: merge(target, other))
    reference = per_call_s(lambda: _kernels.add_reference(state, x, 1.0)) if n <= 10**6 else float("nan")
    return {
        "n": n,
        "np_add_ns_per_elem": baseline / n * 1e9,
        "add_ratio": unweighted / baseline,
        "add_over_np_add_2n": unweighted / same_bytes,
        "weighted_ratio": weighted / baseline,
        "weighted_over_unweighted": weighted / unweighted,
        "merge_ratio": merged / baseline,
        "numpy_reference_ratio": reference / baseline,
    }


def small_sample_add_us() -> dict[str, float]:
    """One add of a 10-element sample through the public Welford.add (Python overhead included)."""
    x = np.arange(10.0)
    acc = Welford()
    acc.add(x)
    add = acc.add
    plain = per_call_s(lambda: add(x), repeats=31)
    weighted = per_call_s(lambda: add(x, 0.5), repeats=31)
    scalar_acc = Welford()
    scalar_acc.add(1.0)
    scalar = per_call_s(lambda: scalar_acc.add(2.5), repeats=31)
    return {"add10_us": plain * 1e6, "add10_weighted_us": weighted * 1e6, "add_python_float_us": scalar * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    args = parser.parse_args()
    sizes = [10**3, 10**5] if args.quick else [10**3, 10**4, 10**5, 10**6, 10**7]
    rows = [measure(n) for n in sizes]
    print(f"native kernels: {_kernels.NATIVE}")
    print(f"{'n':>10} {'np.add ns/el':>13} {'add/np.add':>11} {'weighted':>9} {'w/unw':>6} {'merge':>7} "
          f"{'numpy ref':>10} {'add/np.add(2n)':>15}")
    for r in rows:
        print(f"{r['n']:>10.0e} {r['np_add_ns_per_elem']:>13.3f} {r['add_ratio']:>10.2f}x {r['weighted_ratio']:>8.2f}x "
              f"{r['weighted_over_unweighted']:>6.2f} {r['merge_ratio']:>6.2f}x {r['numpy_reference_ratio']:>9.2f}x "
              f"{r['add_over_np_add_2n']:>14.2f}x")
    small = small_sample_add_us()
    print(f"Welford.add of a 10-element sample: {small['add10_us']:.3f} us "
          f"(weighted {small['add10_weighted_us']:.3f} us; a Python float {small['add_python_float_us']:.3f} us)")
    print(json.dumps({"bench": "kernels", "native": _kernels.NATIVE, "sizes": rows, **small}))


if __name__ == "__main__":
    main()
