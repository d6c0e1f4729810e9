"""What every accumulator besides ``Welford`` shares: the protocol, the states, the specs.

An accumulator (``Covariance``, ``Moments``, ``Batches``, ``Histogram``, ``LogBinning``)
is a value, as ``Welford`` is: it adds weighted samples, merges with another of the
same **layout** (its spec and the shape of its samples) in any order, with an empty one
as the neutral element, and keeps everything in one float64 buffer, its **packed
state**, which is what ``parallelaverage.mpi.allreduce`` sends between ranks and what
``to_state`` stores. The protocol:

* ``add(sample, weight=None)`` (``Batches`` also takes ``key=``), ``merge(other)``
  (returns ``self``), ``a + b``, ``copy()``, ``count``;
* ``spec``: the accumulator's canonical spec string, e.g. ``"histogram:bins=50,
  range=(0.0,1.0),weighted=False,pooled=False"``; :func:`from_spec` makes an empty one;
* ``to_state()`` / ``from_state(state)``: ``{"schema": 1, "kind": ..., "spec": ...,
  "shape": [...] or None, "packed": ndarray or None}``; pickles carry the same state;
* for the MPI engine: ``_layout()`` (None while empty), ``_packed_state()``,
  ``_empty_packed(layout)``, ``_merge_packed(layout, a, b)`` (``a = a (+) b`` on raw
  float64 buffers, the same bits whichever order the operands come in) and
  ``_from_packed(layout, packed)``.

Specs are how the decorator's ``statistics=`` option names accumulators: a kind and
its parameters, ``"kind"`` or ``"kind:value"`` (the first parameter) or
``"kind:name=value,name=value"``. Unknown kinds and parameters fail with the closest
valid names.
"""

from __future__ import annotations

import ast
import difflib
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

import numpy as np

__all__ = ["Accumulator", "STATE_SCHEMA", "KINDS", "register", "parse_spec", "canonical_spec", "from_spec",
           "check_specs", "check_statistics", "specs_for", "recorded_statistics", "prepare_all", "add_prepared_all"]

STATE_SCHEMA = 1
"""The version of the states ``to_state`` writes (every accumulator but ``Welford``)."""

A = TypeVar("A", bound="Accumulator")
Layout = tuple  # (canonical spec, shape): what two accumulators must share to merge


class Accumulator:
    """Base of the mergeable accumulators of :mod:`parallelaverage.stats` besides ``Welford``.

    Subclasses set ``kind`` and ``parameters`` (name -> default, in the order of the
    spec) and implement the ``_`` methods named in the module's docstring.
    """

    kind: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Any]] = {}
    keyed: ClassVar[bool] = False  # add() takes a key (Batches: the run's position)
    __slots__ = ()

    # ------------------------------------------------------------ to implement
    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape of the samples, or None before the first one."""
        raise NotImplementedError

    @property
    def count(self) -> int:
        """Samples added, zero-weight ones included."""
        raise NotImplementedError

    def _prepare(self, sample: Any, weight: Any) -> Any:
        """Check and convert a sample and its weight, changing nothing (raises on bad input)."""
        raise NotImplementedError

    def _add_prepared(self, prepared: Any, key: Any = None) -> None:
        raise NotImplementedError

    def _packed_state(self) -> np.ndarray | None:
        raise NotImplementedError

    @classmethod
    def _empty_packed(cls, layout: Layout) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def _merge_packed(cls, layout: Layout, a: np.ndarray, b: np.ndarray) -> None:
        raise NotImplementedError

    @classmethod
    def _from_packed(cls: type[A], layout: Layout, packed: np.ndarray) -> A:
        raise NotImplementedError

    @classmethod
    def _check_packed(cls, layout: Layout, packed: np.ndarray) -> None:
        """Raise ValueError naming what is wrong with a packed state read from outside."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared
    def add(self, sample: Any, weight: float | None = None) -> None:
        """Add one sample, optionally with a weight >= 0 (a weight of 0 counts in
        ``count`` only).

        Raises:
            ValueError: the sample's shape differs from the first one's, or the weight is
                negative or not finite.
            TypeError: the sample is not numeric, or of a type this accumulator refuses.
        """
        self._add_prepared(self._prepare(sample, weight))

    @property
    def spec(self) -> str:
        """The canonical spec string of this accumulator (see :func:`from_spec`)."""
        return canonical_spec(self.kind, self._params())

    def _layout(self) -> Layout | None:
        shape = self.shape
        return None if shape is None else (self.spec, tuple(shape))

    def _check_layout(self, other: Accumulator) -> None:
        if type(other) is not type(self):
            raise TypeError(f"can only merge a {type(self).__name__}, not {type(other).__name__}")
        if other.spec != self.spec:
            raise ValueError(f"cannot merge accumulators of different specs: {self.spec!r} and {other.spec!r}")
        if self.shape is not None and other.shape is not None and self.shape != other.shape:
            raise ValueError(f"cannot merge accumulators of shapes {self.shape} and {other.shape}")

    def merge(self: A, other: A) -> A:
        """Merge ``other`` into this accumulator; return ``self``. The result has the same
        bits as ``other.merge(self)`` would.

        Raises:
            TypeError, ValueError: ``other`` is another kind, spec or shape.
        """
        self._check_layout(other)
        theirs, layout = other._packed_state(), other._layout()
        if theirs is None or layout is None:
            return self
        mine = self._packed_state()
        if mine is None:
            self._assign(type(self)._from_packed(layout, theirs.copy()))
            return self
        if theirs is mine:  # a.merge(a): the kernels read b while writing a
            theirs = theirs.copy()
        type(self)._merge_packed(layout, mine, theirs)
        return self

    def _assign(self, other: Accumulator) -> None:
        for name in _slots(type(self)):
            setattr(self, name, getattr(other, name))

    def copy(self: A) -> A:
        """An independent copy."""
        packed, layout = self._packed_state(), self._layout()
        if packed is None or layout is None:
            return type(self)(**self._params())
        return type(self)._from_packed(layout, packed.copy())

    def __add__(self: A, other: A) -> A:
        if not isinstance(other, Accumulator):
            return NotImplemented
        return self.copy().merge(other)

    # ------------------------------------------------------------ states
    def to_state(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_state` turns back into an equal accumulator."""
        packed = self._packed_state()
        shape = self.shape
        return {"schema": STATE_SCHEMA, "kind": self.kind, "spec": self.spec,
                "shape": None if shape is None else list(shape), "packed": None if packed is None else packed.copy()}

    @classmethod
    def from_state(cls: type[A], state: Mapping[str, Any]) -> A:
        """Rebuild an accumulator from :meth:`to_state` output, validating every field.

        Raises:
            ValueError: the state is not one this version wrote, or a field is out of range;
                the message names it.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"not an accumulator state: expected a mapping, got {type(state).__name__}")
        missing = [key for key in ("schema", "kind", "spec", "shape", "packed") if key not in state]
        if missing:
            raise ValueError(f"not an accumulator state: missing {', '.join(map(repr, missing))}")
        if state["schema"] != STATE_SCHEMA or isinstance(state["schema"], bool):
            raise ValueError(f"unsupported accumulator state schema {state['schema']!r} (this version reads {STATE_SCHEMA})")
        kind = state["kind"]
        target = KINDS.get(kind) if isinstance(kind, str) else None
        if target is None or (cls is not Accumulator and target is not cls):
            raise ValueError(f"state of kind {kind!r} is not a {cls.__name__ if cls is not Accumulator else 'known'} state")
        empty = from_spec(state["spec"])
        if type(empty) is not target:
            raise ValueError(f"state field 'spec' {state['spec']!r} does not belong to kind {kind!r}")
        if state["packed"] is None:
            if state["shape"] is not None:
                raise ValueError("accumulator state without 'packed' values must have shape None")
            return empty  # type: ignore[return-value]
        shape = state["shape"]
        if not isinstance(shape, (list, tuple)) or len(shape) > 64 or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 0 for d in shape):
            raise ValueError(f"accumulator state field 'shape' must be a list of integers >= 0, got {shape!r}")
        packed = np.asarray(state["packed"])
        if packed.dtype != np.float64 or packed.ndim != 1:
            raise ValueError(f"accumulator state field 'packed' must be a 1-D float64 array, got {packed.dtype} "
                             f"of {packed.ndim} dimensions")
        layout = (empty.spec, tuple(int(d) for d in shape))
        expected = target._empty_packed(layout).size
        if packed.size != expected:
            raise ValueError(f"accumulator state field 'packed' holds {packed.size} values; "
                             f"{empty.spec!r} of shape {layout[1]} needs {expected}")
        packed = packed.copy()
        target._check_packed(layout, packed)
        return target._from_packed(layout, packed)  # type: ignore[return-value]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self).from_state, (self.to_state(),))

    def __repr__(self) -> str:
        shape = self.shape
        if shape is None:
            return f"{type(self).__name__}({self.spec!r}, empty)"
        return f"{type(self).__name__}({self.spec!r}, count={self.count}, shape={shape})"

    def __eq__(self, other: object) -> bool:
        """Same kind, spec, shape and the same bits of the packed state (NaNs equal)."""
        if type(other) is not type(self) or not isinstance(other, Accumulator):
            return NotImplemented
        if self._layout() != other._layout():
            return False
        mine, theirs = self._packed_state(), other._packed_state()
        if mine is None or theirs is None:
            return mine is None and theirs is None
        return bool(np.array_equal(mine, theirs, equal_nan=True))

    __hash__ = None  # type: ignore[assignment]  # mutable values


def _slots(cls: type) -> list[str]:
    names = []
    for klass in cls.__mro__:
        names += [s for s in getattr(klass, "__slots__", ()) if s not in names]
    return names


# ------------------------------------------------------------------ the kinds
KINDS: dict[str, type[Accumulator]] = {}
"""Accumulator classes by kind (``"covariance"``, ``"moments"``...)."""

ALIASES = {"batches": "jackknife", "covariances": "covariance", "histograms": "histogram",
           "binning": "autocorrelation", "logbinning": "autocorrelation"}


def register(cls: type[A]) -> type[A]:
    """Class decorator: make ``cls`` known by its ``kind`` to specs and states."""
    KINDS[cls.kind] = cls
    return cls


# ------------------------------------------------------------------ specs
def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets: ``"bins=5,range=(0,1)"`` -> two parts."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [part.strip() for part in parts]


def _literal(text: str, kind: str, name: str) -> Any:
    lowered = text.strip()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(lowered)
    except (ValueError, SyntaxError):
        raise ValueError(f"statistics: {kind}:{name}={text!r} is not a number, a tuple or a bool") from None


def _closest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def parse_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """The kind and the full, checked parameters of a spec string (or of an accumulator,
    whose spec it takes).

    Raises:
        ValueError: an unknown kind or parameter (with the closest valid names), a bad value.
        TypeError: not a string or an accumulator.
    """
    if isinstance(spec, Accumulator):
        return spec.kind, spec._params()
    if not isinstance(spec, str):
        raise TypeError(f"statistics: {spec!r} is not a spec string such as 'covariance' or 'jackknife:20', "
                        "nor an accumulator of parallelaverage.stats")
    kind, _, rest = spec.strip().partition(":")
    kind = ALIASES.get(kind.strip().lower(), kind.strip().lower())
    cls = KINDS.get(kind)
    if cls is None:
        raise ValueError(f"statistics: unknown statistic {spec!r}{_closest(kind, list(KINDS))}; "
                         f"the statistics are {', '.join(map(repr, sorted(KINDS)))}")
    names = list(cls.parameters)
    given: dict[str, Any] = {}
    for position, part in enumerate(_split_top(rest)):
        name, equals, value = part.partition("=")
        if not equals:
            if position > 0 or not names:
                raise ValueError(f"statistics: {spec!r}: write the parameters as name=value "
                                 f"({', '.join(names) or 'this statistic has none'})")
            name, value = names[0], part
        name = name.strip()
        if name not in cls.parameters:
            raise ValueError(f"statistics: {spec!r}: {kind} has no parameter {name!r}{_closest(name, names)}; "
                             f"its parameters are {', '.join(names) or 'none'}")
        given[name] = _literal(value, kind, name)
    return kind, cls._checked_params({**cls.parameters, **given})  # type: ignore[attr-defined]


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(_format(v) for v in value) + ")"
    return repr(value)


def canonical_spec(kind: str, params: Mapping[str, Any]) -> str:
    """``kind:name=value,...`` with every parameter, in the class's order."""
    if not params:
        return kind
    return kind + ":" + ",".join(f"{name}={_format(value)}" for name, value in params.items())


def from_spec(spec: Any) -> Accumulator:
    """An empty accumulator of a spec: ``"covariance"``, ``"moments"`` / ``"moments:3"``,
    ``"jackknife:20"``, ``"histogram:bins=50,range=(0,1)"`` (``weighted=True`` also sums
    the weights per bin, ``pooled=True`` puts every value of an array in one histogram),
    ``"autocorrelation"``. An accumulator gives an empty one of its own spec.

    Raises:
        ValueError, TypeError: as :func:`parse_spec`.
    """
    kind, params = parse_spec(spec)
    return KINDS[kind](**params)


def check_specs(specs: Any) -> tuple[str, ...]:
    """Canonical spec strings of a sequence of specs (a string alone is one spec).

    Raises:
        ValueError: a bad spec, or two specs of one kind (their results would share a name).
    """
    if isinstance(specs, (str, Accumulator)):
        specs = (specs,)
    if not isinstance(specs, (list, tuple)):
        raise TypeError(f"statistics={specs!r}: give a tuple of statistics, e.g. ('covariance', 'jackknife:20')")
    canonical, kinds = [], set()
    for spec in specs:
        kind, params = parse_spec(spec)
        if kind in kinds:
            raise ValueError(f"statistics: {kind!r} is asked for twice; one of each kind per averaged element")
        kinds.add(kind)
        canonical.append(canonical_spec(kind, params))
    return tuple(canonical)


def check_statistics(value: Any, average: Any) -> tuple[str, ...] | dict[int, tuple[str, ...]]:
    """The decorator's ``statistics=`` in canonical form: a tuple of specs for every averaged
    element, or ``{element: specs}`` for some of them.

    Args:
        value: a spec, a sequence of specs, or a mapping element index -> spec(s).
        average: the averaged elements (``"all"`` or a tuple of indices).

    Raises:
        ValueError, TypeError: a bad spec, or an element that is not averaged.
    """
    if isinstance(value, Mapping):
        out: dict[int, tuple[str, ...]] = {}
        for index, specs in value.items():
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise TypeError(f"statistics={{{index!r}: ...}}: the keys are the indices of averaged tuple elements")
            if average != "all" and index not in average:
                raise ValueError(f"statistics={{{index}: ...}}: element {index} is not averaged "
                                 f"(average_results={list(average)!r})")
            out[index] = check_specs(specs)
        return {index: specs for index, specs in sorted(out.items()) if specs}
    return check_specs(value)


def specs_for(statistics: Any, index: int) -> tuple[str, ...]:
    """The specs that element ``index`` collects, from a canonical ``statistics``."""
    if isinstance(statistics, Mapping):
        return tuple(statistics.get(index, ()))
    return tuple(statistics or ())


def recorded_statistics(statistics: Any) -> Any:
    """``statistics`` as JSON for a job record: a list, or ``{"<element>": [...]}``."""
    if isinstance(statistics, Mapping):
        return {str(index): list(specs) for index, specs in statistics.items()}
    return list(statistics or ())


# ------------------------------------------------------------------ groups of them
def prepare_all(accumulators: Mapping[str, Accumulator], sample: Any, weight: Any) -> list[Any]:
    """Check one sample against every accumulator, changing none: the run fails whole
    (raises) or is added to all of them by :func:`add_prepared_all`."""
    prepared = []
    for name, accumulator in accumulators.items():
        try:
            prepared.append(accumulator._prepare(sample, weight))
        except (TypeError, ValueError) as error:
            raise type(error)(f"statistic {name!r}: {error}") from None
    return prepared


def add_prepared_all(accumulators: Mapping[str, Accumulator], prepared: Sequence[Any], key: Any) -> None:
    """Add what :func:`prepare_all` returned; ``key`` (the run's position) goes to the keyed ones."""
    for accumulator, item in zip(accumulators.values(), prepared):
        if accumulator.keyed:
            accumulator._add_prepared(item, key)
        else:
            accumulator._add_prepared(item)


# Public as parallelaverage.stats.Accumulator: pickles, reprs and the docs name it there.
Accumulator.__module__ = "parallelaverage.stats"
