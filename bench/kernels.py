"""Welford kernels against np.add on the same arrays, measured in the same run.

    python bench/kernels.py [--quick]

For each size n, the baseline is ``np.add(a, x, out=a)`` (read two arrays, write one);
the compiled add reads x, shift, mean, u and writes mean, u: twice the bytes, and
twice the working set. "add" is the plain add into a state of many samples (2**20,
unit weights), where nearly no add moves the shifts; "recentring" is an add that also
moves them (it writes the shift section too), which happens ~n**(1/3) times in n
samples: 11 of the first 100 adds, whose average "first 100" prints. The column "add / np.add(2n)" compares the add with ``np.add``
on arrays of 2n elements, which move as many bytes through as large a working set: it
tells how close the kernel runs to the memory system's speed, apart from the cache
size. The functions of one size are timed in turn, round after round (21 rounds, 9
when a call takes > 5 ms), and each ratio is the median over the rounds of the
ratio within a round, which cancels load changes on a shared machine. The last line
printed is one JSON object of the figures.

The accumulators of statistics=() are measured the same way. Moments of order 4 over k
elements (state: shift, mean, u2, u3, u4) and the covariance of d elements (state:
shift, mean and the d (d + 1) / 2 upper triangle) are timed against ``np.add(a, b,
out=a)`` on arrays as long as their state's element sections ("over the same bytes":
an add reads the state and writes most of it, as np.add reads a and b and writes a),
for their compiled add and merge loops and the numpy twins; "public add" is the whole
``Moments.add`` / ``Covariance.add`` with its header arithmetic in Python, whose fixed
cost (a few us) dominates small samples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
from collections.abc import Callable

import numpy as np

from parallelaverage import _kernels, _momentkernels, _packed
from parallelaverage.stats import Covariance, Moments, Welford


def per_call_s(function, min_repeat_s: float = 0.02, repeats: int = 21) -> float:
    """Median seconds per call over `repeats` repeats of about `min_repeat_s` each."""
    return statistics.median(interleaved_s({"f": function}, min_repeat_s, repeats)["f"])


def interleaved_s(functions: dict[str, Callable[[], object]], min_repeat_s: float = 0.02,
                  repeats: int = 21) -> dict[str, list[float]]:
    """Seconds per call of each function in each of `repeats` rounds.

    Every round times each function once, in turn, so that a change in the machine's
    load (other tenants of a shared host) hits the baseline and the kernels alike and
    the ratio of the same round cancels it.
    """
    timers, numbers = {}, {}
    for name, function in functions.items():
        timer = timeit.Timer(function)
        number, took = timer.autorange()
        timers[name], numbers[name] = timer, max(1, int(number * min_repeat_s / max(took, 1e-9)))
        if took / number > 5e-3:
            repeats = min(repeats, 9)
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, timer in timers.items():
            seconds[name].append(timer.timeit(numbers[name]) / numbers[name])
    return seconds


def ratio(seconds: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over the rounds of the round's time of `name` over that of `baseline`."""
    return statistics.median(t / b for t, b in zip(seconds[name], seconds[baseline], strict=True))


def steady_state(x: np.ndarray, samples: int = 2**20) -> np.ndarray:
    """The state of ``samples`` unit-weight samples all equal to ``x``: the header of
    their merges, the elements of one of them (shift x, mean 0, u 0). At that count the
    next 2**13 adds move no shift."""
    state = _packed.empty_state(x.size)
    _kernels.add(state, x, 1.0)
    header = state[: _packed.HEADER].copy()
    for _ in range(samples.bit_length() - 1):
        header = _packed.merge_headers(header, header)
    header[_packed.FLAGS] = 0.0  # not a merged state: no pending move of the shifts
    state[: _packed.HEADER] = header
    return state


def measure(n: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = 1e6 + rng.standard_normal(n)
    a = np.zeros(n)
    a2, x2 = np.zeros(2 * n), np.concatenate([x, x])
    state = steady_state(x)
    moving = steady_state(x)
    other = state.copy()
    target = state.copy()
    add, merge = _kernels.add, _kernels.merge

    def add_recentring() -> None:
        moving[_packed.FLAGS] = _packed.RECENTRE  # as after a merge: this add moves the shifts
        add(moving, x, 1.0)

    functions: dict[str, Callable[[], object]] = {
        "np.add": lambda: np.add(a, x, out=a),
        "np.add(2n)": lambda: np.add(a2, x2, out=a2),
        "add": lambda: add(state, x, 1.0),
        "weighted": lambda: add(state, x, 0.37),
        "recentring": add_recentring,
        "merge": lambda: merge(target, other),
    }
    if n <= 10**6:
        functions["numpy twin"] = lambda: _kernels.add_reference(state, x, 1.0)
    seconds = interleaved_s(functions)
    moves = sum(_packed.recentres(i) for i in range(1, 101))
    add_ratio, recentring_ratio = ratio(seconds, "add", "np.add"), ratio(seconds, "recentring", "np.add")
    return {
        "n": n,
        "np_add_ns_per_elem": statistics.median(seconds["np.add"]) / n * 1e9,
        "add_ratio": add_ratio,
        "recentring_ratio": recentring_ratio,
        "first_100_ratio": ((100 - moves) * add_ratio + moves * recentring_ratio) / 100,
        "add_over_np_add_2n": ratio(seconds, "add", "np.add(2n)"),
        "weighted_ratio": ratio(seconds, "weighted", "np.add"),
        "weighted_over_unweighted": ratio(seconds, "weighted", "add"),
        "merge_ratio": ratio(seconds, "merge", "np.add"),
        "numpy_reference_ratio": ratio(seconds, "numpy twin", "np.add") if n <= 10**6 else float("nan"),
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


def _filled(make: Callable[[], object], x: np.ndarray, samples: int = 64) -> object:
    """An accumulator with ``samples`` samples around ``x``: its state is in steady use."""
    acc = make()
    rng = np.random.default_rng(1)
    for _ in range(samples):
        acc.add(x + rng.standard_normal(x.size))  # type: ignore[attr-defined]
    return acc


def measure_accumulator(kind: str, size: int) -> dict[str, float]:
    """A compiled add and merge of Moments (order 4, ``size`` elements) or Covariance
    (``size`` = d) against np.add over arrays as long as the state's element sections."""
    rng = np.random.default_rng(0)
    x = 1e6 + rng.standard_normal(size)
    make = Moments if kind == "moments" else Covariance
    acc, other = _filled(make, x), _filled(make, x)
    state, theirs = acc._state, other._state  # type: ignore[attr-defined]
    body = state.size - _packed.HEADER
    a, b = np.zeros(body), np.ones(body)
    if kind == "moments":
        coefficients = (1e-3, 0.999, 0.03, 0.998, 0.003, 0.997, 0.004, 6e-6)
        merge_coefficients = (0.5, 0.5, 0.49, 0.49, 0.7, 0.0, 0.25, 0.25, 0.25, 0.12, 0.12)
        add, merge = _momentkernels.moments_add, _momentkernels.moments_merge
        add_twin, merge_twin = _momentkernels.moments_add_reference, _momentkernels.moments_merge_reference
    else:
        coefficients = (1e-3, 0.999, 0.03)
        merge_coefficients = (0.5, 0.5, 0.49, 0.49, 0.7)
        add, merge = _momentkernels.covariance_add, _momentkernels.covariance_merge
        add_twin, merge_twin = _momentkernels.covariance_add_reference, _momentkernels.covariance_merge_reference
    public = acc.copy()  # type: ignore[attr-defined]
    functions: dict[str, Callable[[], object]] = {
        "np.add": lambda: np.add(a, b, out=a),
        "add": lambda: add(state, x, coefficients, False),
        "merge": lambda: merge(state, state, theirs, merge_coefficients),
        "public add": lambda: public.add(x),
    }
    if body <= 10**6:
        functions["add twin"] = lambda: add_twin(state, x, coefficients, False)
        functions["merge twin"] = lambda: merge_twin(state, state, theirs, merge_coefficients)
    seconds = interleaved_s(functions)
    nan = float("nan")
    return {
        "kind": kind, "size": size, "state_values": body,
        "np_add_ns_per_value": statistics.median(seconds["np.add"]) / body * 1e9,
        "add_ratio": ratio(seconds, "add", "np.add"),
        "merge_ratio": ratio(seconds, "merge", "np.add"),
        "public_add_us": statistics.median(seconds["public add"]) * 1e6,
        "add_us": statistics.median(seconds["add"]) * 1e6,
        "twin_add_ratio": ratio(seconds, "add twin", "np.add") if "add twin" in seconds else nan,
        "twin_merge_ratio": ratio(seconds, "merge twin", "np.add") if "merge twin" in seconds else nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    args = parser.parse_args()
    sizes = [10**3, 10**5] if args.quick else [10**3, 10**4, 10**5, 10**6, 10**7]
    rows = [measure(n) for n in sizes]
    print(f"native kernels: {_kernels.NATIVE}")
    print(f"{'n':>10} {'np.add ns/el':>13} {'add/np.add':>11} {'weighted':>9} {'w/unw':>6} {'recentring':>11} "
          f"{'first 100':>10} {'merge':>7} {'numpy ref':>10} {'add/np.add(2n)':>15}")
    for r in rows:
        print(f"{r['n']:>10.0e} {r['np_add_ns_per_elem']:>13.3f} {r['add_ratio']:>10.2f}x {r['weighted_ratio']:>8.2f}x "
              f"{r['weighted_over_unweighted']:>6.2f} {r['recentring_ratio']:>10.2f}x {r['first_100_ratio']:>9.2f}x "
              f"{r['merge_ratio']:>6.2f}x {r['numpy_reference_ratio']:>9.2f}x {r['add_over_np_add_2n']:>14.2f}x")
    small = small_sample_add_us()
    print(f"Welford.add of a 10-element sample: {small['add10_us']:.3f} us "
          f"(weighted {small['add10_weighted_us']:.3f} us; a Python float {small['add_python_float_us']:.3f} us)")
    cases = [("moments", k) for k in ([10, 10**3, 10**5] if args.quick else [10, 10**3, 10**5, 10**6])]
    cases += [("covariance", d) for d in ([10, 100] if args.quick else [10, 100, 1000])]
    accumulators = [measure_accumulator(kind, size) for kind, size in cases]
    print(f"\nstatistics=() accumulators, compiled loops: {_momentkernels.NATIVE}")
    print(f"{'kind':>10} {'size':>8} {'state values':>13} {'np.add ns/val':>14} {'add/np.add':>11} {'merge/np.add':>13} "
          f"{'add us':>9} {'public add us':>14} {'twin add':>9} {'twin merge':>11}")
    for r in accumulators:
        print(f"{r['kind']:>10} {r['size']:>8} {r['state_values']:>13} {r['np_add_ns_per_value']:>14.3f} "
              f"{r['add_ratio']:>10.2f}x {r['merge_ratio']:>12.2f}x {r['add_us']:>9.3f} {r['public_add_us']:>14.3f} "
              f"{r['twin_add_ratio']:>8.2f}x {r['twin_merge_ratio']:>10.2f}x")
    print(json.dumps({"bench": "kernels", "native": _kernels.NATIVE, "sizes": rows, **small,
                      "accumulators": accumulators}))


if __name__ == "__main__":
    main()
