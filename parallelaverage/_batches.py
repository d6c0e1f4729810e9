"""``Batches``: K batch accumulators keyed by ``run id mod K``, and the jackknife.

Every sample goes to batch ``key mod K`` (in a job, ``key`` is the run's position: the run
id for ``N_runs=n``, the flat index for index tuples), which is deterministic: the batches
hold the same runs whichever rank ran them, in whatever order, on 1 rank or 1,000. Each
batch is a ``Welford`` (mean and variance, shifted and exact), so merging two ``Batches``
merges batch by batch, and the packed state is K Welford states end to end.

The jackknife of a function of the means (:func:`jackknife`) leaves out one batch at a
time: its leave-one-out means are merges of the other batches (prefix and suffix merges,
2K merges in all), not differences of sums, so they stay exact at any offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from parallelaverage import _kernels, _packed
from parallelaverage._accumulator import Accumulator, Layout, register
from parallelaverage._packed import COUNT
from parallelaverage._welford import Welford, _sample_array, _weight

__all__ = ["Batches", "JackknifeEstimate", "jackknife"]


@register
class Batches(Accumulator):
    """K batch accumulators (``Welford`` each) keyed by ``key mod K``: errors of nonlinear
    functions of the means by the jackknife.

    Args:
        batches: K, the number of batches (at least 2; 20 by default). Memory: K Welford
            states, ``K (10 + 3 d)`` float64 for samples of d elements.

    Example:
        >>> acc = Batches(batches=4)
        >>> for run in range(100):
        ...     acc.add(np.array([1.0 + 0.01 * (run % 7), 2.0 + 0.01 * (run % 3)]), key=run)
        >>> estimate = acc.jackknife(lambda m: m[0] / m[1])
        >>> value, error = estimate
    """

    kind = "jackknife"
    parameters: ClassVar[dict[str, Any]] = {"batches": 20}
    keyed = True
    __slots__ = ("_k", "_state", "_shape")

    def __init__(self, batches: int = 20) -> None:
        self._k = self._checked_params({"batches": batches})["batches"]
        self._state: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    @classmethod
    def _checked_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        k = params["batches"]
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= 100_000:
            raise ValueError(f"jackknife: batches={k!r}: must be an integer from 2 to 100000")
        return {"batches": int(k)}

    def _params(self) -> dict[str, Any]:
        return {"batches": self._k}

    @property
    def batches(self) -> int:
        """K, the number of batches."""
        return self._k

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape of the samples, or None before the first one."""
        return self._shape

    @property
    def count(self) -> int:
        """Samples added to all batches, zero-weight ones included."""
        return 0 if self._state is None else int(sum(view[COUNT] for view in self._views(self._state)))

    # ------------------------------------------------------------ adding
    def _views(self, state: np.ndarray) -> list[np.ndarray]:
        size = state.size // self._k
        return [state[b * size : (b + 1) * size] for b in range(self._k)]

    def _prepare(self, sample: Any, weight: Any) -> tuple[np.ndarray, float, tuple[int, ...]]:
        array = _sample_array(sample)
        if array.dtype.kind == "c":
            raise TypeError("the jackknife of complex samples is not defined here: add the real and imaginary parts "
                            "as separate elements")
        if self._shape is not None and array.shape != self._shape:
            raise ValueError(f"sample of shape {array.shape} differs from the accumulated shape {self._shape}")
        return np.ascontiguousarray(array), _weight(weight), array.shape

    def _add_prepared(self, prepared: tuple[np.ndarray, float, tuple[int, ...]], key: Any = None) -> None:
        x, w, shape = prepared
        if self._state is None:
            self._shape = shape
            self._state = self._empty_packed((self.spec, shape))
        if key is None:
            key = self.count  # samples in the order they came: fine alone, not across ranks
        batch = int(key) % self._k
        _kernels.add(self._views(self._state)[batch], x, w)

    def add(self, sample: Any, weight: float | None = None, key: int | None = None) -> None:
        """Add one sample to batch ``key mod K``.

        Args:
            sample: a number or a real array (every sample of one shape).
            weight: its weight, finite and >= 0 (1 if None).
            key: what chooses the batch, e.g. the run id: the same key always goes to the same
                batch, so merged ``Batches`` do not depend on which process added what.
                None: the number of samples added so far (one process only).

        Raises:
            ValueError, TypeError: as ``Welford.add``; complex samples are refused.
        """
        if key is not None and (isinstance(key, bool) or not isinstance(key, (int, np.integer))):
            raise TypeError(f"key={key!r}: must be an integer (a run id, a position)")
        self._add_prepared(self._prepare(sample, weight), key)

    # ------------------------------------------------------------ packed states
    def _packed_state(self) -> np.ndarray | None:
        return self._state

    @classmethod
    def _empty_packed(cls, layout: Layout) -> np.ndarray:
        from parallelaverage._accumulator import parse_spec

        k = parse_spec(layout[0])[1]["batches"]
        one = _packed.empty_state(math.prod(layout[1]))
        return np.tile(one, k)

    @classmethod
    def _merge_packed(cls, layout: Layout, a: np.ndarray, b: np.ndarray) -> None:
        from parallelaverage._accumulator import parse_spec

        k = parse_spec(layout[0])[1]["batches"]
        size = a.size // k
        for batch in range(k):
            part = slice(batch * size, (batch + 1) * size)
            _kernels.merge(a[part], b[part])

    @classmethod
    def _from_packed(cls, layout: Layout, packed: np.ndarray) -> Batches:
        from parallelaverage._accumulator import parse_spec

        acc = cls(**parse_spec(layout[0])[1])
        acc._state, acc._shape = packed, tuple(layout[1])
        return acc

    @classmethod
    def _check_packed(cls, layout: Layout, packed: np.ndarray) -> None:
        from parallelaverage._accumulator import parse_spec

        k = parse_spec(layout[0])[1]["batches"]
        size = packed.size // k
        for batch in range(k):
            try:
                _packed.checked_state(packed[batch * size : (batch + 1) * size], math.prod(layout[1]), False)
            except ValueError as error:
                raise ValueError(f"batch {batch}: {error}") from None

    # ------------------------------------------------------------ results
    def batch(self, b: int) -> Welford:
        """Batch ``b`` (``0 <= b < K``) as a ``Welford`` (a copy)."""
        if not 0 <= b < self._k:
            raise IndexError(f"batch {b}: there are {self._k} batches (0 to {self._k - 1})")
        if self._state is None:
            return Welford()
        return Welford._from_packed(self._views(self._state)[b].copy(), self._shape or (), False)

    def merged(self) -> Welford:
        """Every batch merged: a ``Welford`` of every sample (its bits may differ from a
        Welford that saw the samples one by one: another order of merges)."""
        total = Welford()
        for b in range(self._k):
            total.merge(self.batch(b))
        return total

    @property
    def weights(self) -> np.ndarray:
        """The total weight of each batch, shape ``(K,)``."""
        return np.array([self.batch(b).total_weight for b in range(self._k)])

    @property
    def counts(self) -> np.ndarray:
        """The samples of each batch, shape ``(K,)``."""
        if self._state is None:
            return np.zeros(self._k, dtype=np.int64)
        return np.array([int(view[COUNT]) for view in self._views(self._state)], dtype=np.int64)

    @property
    def means(self) -> np.ndarray:
        """The mean of each batch, shape ``(K, *shape)``; NaN for a batch without positive weight.

        Raises:
            ValueError: the accumulator is empty.
        """
        if self._state is None:
            raise ValueError("the accumulator is empty: add a sample first")
        rows = []
        for b in range(self._k):
            acc = self.batch(b)
            rows.append(np.full(self._shape or (), np.nan) if acc.count == 0 else np.asarray(acc.mean, dtype=float))
        return np.stack(rows)

    def jackknife(self, function: Callable[..., Any], *others: Batches) -> JackknifeEstimate:
        """The jackknife estimate of ``function(means)``: see :func:`jackknife`."""
        return jackknife(function, self, *others)


@dataclass(frozen=True)
class JackknifeEstimate:
    """A function of the means with its jackknife error: ``value, error = estimate``.

    Attributes:
        value: the function of the means of every sample.
        error: its jackknife standard error.
        bias_corrected: the jackknife's bias-corrected estimate (``K value - (K - 1) mean
            of the leave-one-out values`` for equal batches).
        batches: the batches used (those of positive weight).
        leave_one_out: the function of the leave-one-out means, one row per batch used.
    """

    value: Any
    error: Any
    bias_corrected: Any
    batches: int
    leave_one_out: np.ndarray

    def __iter__(self) -> Iterator[Any]:
        return iter((self.value, self.error))

    def __repr__(self) -> str:
        return f"JackknifeEstimate(value={self.value!r}, error={self.error!r}, batches={self.batches})"


def _shaped(value: np.ndarray) -> Any:
    return value[()] if value.ndim == 0 else value


def jackknife(function: Callable[..., Any], *accumulators: Batches) -> JackknifeEstimate:
    """The jackknife estimate and error of ``function`` of the means of one or more ``Batches``.

    ``function`` gets the means of each accumulator, in order (arrays shaped like the
    samples, or numbers), and returns a number or an array: ``jackknife(lambda m: m[0] / m[1],
    b)`` for one vector output, ``jackknife(lambda so, s: so / s, b_so, b_s)`` for two
    outputs of the same runs. Batch ``j`` is left out in turn: ``theta_j`` is the function
    of the other batches' means (merged exactly), ``theta`` the function of all means.

    With batch weight fractions ``r_j = W_j / W`` (``1 / K`` for equal batches) and ``h_j =
    1 / r_j``, the delete-a-group jackknife for unequal groups (Busing, Meijer & van der
    Leeden 1999) gives the pseudo-values ``tau_j = h_j theta - (h_j - 1) theta_j``, the
    bias-corrected ``theta_J = K theta - sum (1 - r_j) theta_j`` and the variance
    ``(1 / K) sum (tau_j - theta_J)**2 / (h_j - 1)``; for equal batches that is the usual
    ``(K - 1) / K sum (theta_j - mean theta_j)**2``. Batches without positive weight (in
    any accumulator) are left out; the weight fractions are the first accumulator's.

    Returns:
        A :class:`JackknifeEstimate` (``value, error = ...``); the error is NaN with fewer
        than two batches of positive weight.

    Raises:
        ValueError: no accumulator, different numbers of batches, or an empty one.

    Notes:
        ``function`` sees float64 means: its leave-one-out values differ by about the error
        of the mean, so the error is as accurate as those differences can be resolved at
        the means' magnitude (``|mean| * 1e-16``): fine unless the noise is below ~1e-10
        of the mean. Subtract a known offset in the run if it is not.
    """
    if not accumulators:
        raise ValueError("jackknife needs at least one Batches accumulator")
    k = accumulators[0].batches
    for acc in accumulators:
        if not isinstance(acc, Batches):
            raise TypeError(f"jackknife takes Batches accumulators, not {type(acc).__name__}")
        if acc.batches != k:
            raise ValueError(f"the accumulators have different numbers of batches: {acc.batches} and {k}")
        if acc._state is None:
            raise ValueError("a Batches accumulator is empty: add samples first")
    batches = [[acc.batch(b) for b in range(k)] for acc in accumulators]
    used = [b for b in range(k) if all(row[b].total_weight > 0.0 for row in batches)]
    weights = np.array([batches[0][b].total_weight for b in used], dtype=float)

    def value_of(accs: Sequence[Welford]) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(function(*(acc.mean for acc in accs)), dtype=float)

    totals = [_merge_all(row[b] for b in used) for row in batches]
    theta = value_of(totals)
    n = len(used)
    if n < 2:
        nan = np.full(theta.shape, np.nan)
        return JackknifeEstimate(_shaped(theta), _shaped(nan), _shaped(nan), n, np.empty((0, *theta.shape)))
    left_out = np.stack([value_of(accs) for accs in zip(*(_leave_one_out([row[b] for b in used]) for row in batches))])
    total = weights.sum()
    r = weights / total if np.isfinite(total) and total > 0 else np.full(n, 1.0 / n)
    h = 1.0 / r
    shape = (n,) + (1,) * theta.ndim
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        corrected = n * theta - np.sum((1.0 - r).reshape(shape) * left_out, axis=0)
        pseudo = h.reshape(shape) * theta - (h - 1.0).reshape(shape) * left_out
        variance = np.sum((pseudo - corrected) ** 2 / (h - 1.0).reshape(shape), axis=0) / n
    return JackknifeEstimate(_shaped(theta), _shaped(np.sqrt(variance)), _shaped(corrected), n, left_out)


def _merge_all(accs: Any) -> Welford:
    total = Welford()
    for acc in accs:
        total.merge(acc)
    return total


def _leave_one_out(accs: list[Welford]) -> list[Welford]:
    """For each j, the merge of every accumulator but the j-th (prefix + suffix merges)."""
    n = len(accs)
    prefix = [Welford()]
    for acc in accs[:-1]:
        prefix.append(prefix[-1] + acc)
    suffix = [Welford()] * n
    running = Welford()
    for j in range(n - 1, -1, -1):
        suffix[j] = running
        running = running + accs[j]
    return [prefix[j] + suffix[j] for j in range(n)]


# Public as parallelaverage.stats.Batches and .JackknifeEstimate: pickles, reprs and the docs name them there.
Batches.__module__ = JackknifeEstimate.__module__ = "parallelaverage.stats"
