"""Call identity: which stored job answers a call.

A job answers a call when these match: the function's qualified name
(``module.qualname``), its arguments *bound to the signature*, the values the
function captured (its closure), ``N_runs`` and ``average_results``. Binding uses
``inspect.signature(func).bind(...)`` and ``apply_defaults()``, so ``f(1)``,
``f(x=1)`` and ``f(1, y=<default>)`` are one call, and the order of ``**kwargs``
does not matter. A method decorated in its class body gets its instance as the
first argument (``self``), keyed like any other.

Captured values count because a factory's ``make(5)`` and ``make(6)`` compute
different things with the same code; a captured function counts by its
:func:`code_hash`. A function without a closure (or whose only cell is the
``__class__`` of ``super()``) adds nothing, so its keys are those of before.

The function's *code*, and the globals and helper functions it reads, are
deliberately not part of the identity: editing a function should not silently
orphan finished results. Their :func:`code_fingerprint` is stored beside the key
and the caller warns, naming what changed (:func:`code_changes`).

Arguments and captured values are keyed by canonical content ("tokens"), hashed
with SHA-256:

==========================  ==================================================
value (exact type)          token
==========================  ==================================================
``None``, ``bool``          ``["none"]``, ``["bool", true]``
``int``                     ``["int", "<decimal digits>"]``
``float``                   ``["float", repr(x)]`` (exact; ``nan``, ``-0.0`` kept)
``complex``                 by its pickle (below), which holds its two floats
``str``                     ``["str", s]``
``bytes``, ``bytearray``    ``["bytes", sha256]``, ``["bytearray", sha256]``
``list``, ``tuple``         ``["list", [tokens]]``, ``["tuple", [tokens]]``
``dict``                    ``["dict", [[key, value] ...]]``, sorted by key token
``set``, ``frozenset``      ``["set", [tokens]]``, sorted
``numpy.ndarray``           ``["ndarray", dtype, shape, sha256 of C-order bytes]``
                            (hashed in place when C-contiguous: no copy)
numpy ``bool_``, integer,   the token of the equal Python ``bool``, ``int``,
floating, complex scalar    ``float`` or ``complex``
other numpy scalar          ``["npscalar", dtype, hex of its bytes]`` (also a
                            ``longdouble`` that a float cannot hold exactly)
class shipped by value      ``["class", qualified name]``
object of such a class      ``["object", class name, constructor, [tokens]]``:
                            the tokens of what ``__reduce_ex__`` makes of it
                            (constructor arguments, state)
anything else               ``["pickle", type name, sha256 of cloudpickle]``
==========================  ==================================================

Consequences, chosen to be deterministic rather than clever:

* numbers that compare equal and are of the same kind are one call:
  ``numpy.int64(64)`` is ``64``, ``numpy.float32(0.5)`` is ``0.5`` and
  ``numpy.bool_(True)`` is ``True``, so a value read from an array finds the job
  of the literal;
* the kind stays part of the key: ``1``, ``1.0``, ``True`` and ``1+0j`` are four
  different calls, because a function may branch on it (``range(L)`` accepts
  ``64`` but not ``64.0``); ``(1, 2)`` and ``[1, 2]`` differ too;
* only exact built-in types take the table's rows; subclasses (``IntEnum``,
  named tuples, ``OrderedDict``, ``numpy.matrix``, object arrays) are keyed by
  their pickle, which records their type;
* dicts and sets are sorted, so their insertion order (and Python's per-process
  string-hash randomisation) cannot change a key;
* a pickled value is equal to another only if the pickles are byte-identical:
  true for most objects, but an object *containing* a set of strings may pickle
  differently in another process (use plain data for such arguments);
* ``cloudpickle`` ships a class defined in ``__main__``, in a function or in a
  module registered by value *by value*, with an id drawn in each process: such a
  class is keyed by its name, and its objects by their state, so that a script's
  ``Model(T=2.5)`` finds its job in the next run of the script (two such classes
  of the same qualified name are not told apart);
* ``cloudpickle`` pickles with the fixed protocol :data:`PICKLE_PROTOCOL`.

An argument that cannot be pickled, or is nested deeper than Python can recurse,
raises an :class:`~parallelaverage.errors.ArgumentError` (a :class:`TypeError`)
naming it before anything is written to disk.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import re
import reprlib
import sys
import threading
import types
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numpy as np

from parallelaverage.errors import ArgumentError

__all__ = [
    "CallKey", "call_key", "code_hash", "code_fingerprint", "code_changes", "describe_code_changes",
    "describe_call", "describe_value", "safe_name", "KEY_VERSION", "PICKLE_PROTOCOL", "RECHECK_ARRAY_BYTES",
]

#: Version of the token scheme above; part of every digest, so a change of
#: scheme can never make an old job answer a new call.
KEY_VERSION = 1

#: Pickle protocol used for arguments keyed by their pickle (fixed: a
#: different protocol would give different bytes for the same value).
PICKLE_PROTOCOL = 5

# Longest readable representation of one argument, in characters.
_MAX_REPR = 80

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = 8
_repr.maxdict = 6
_repr.maxlevel = 3


@dataclass(frozen=True, eq=False)
class CallKey:
    """The identity of one call, plus a readable description of it.

    Two keys are equal when their digests are equal; the other fields are for
    people (error messages, ``job.json``) and for choosing the job's folder name.

    Attributes:
        digest: SHA-256 hex digest of the canonical call (64 characters).
        function: Qualified function name, ``"module.qualname"``.
        name: Short function name, safe in a file name (``"simulate"``).
        call: Readable call, e.g. ``"simulate(L=64, T=2.5)"``; values truncated.
        argument_reprs: ``(parameter, readable value)`` pairs in signature order.
        N_runs: Number of runs asked for.
        average_results: Whether results are averaged.
    """

    digest: str
    function: str
    name: str
    call: str
    argument_reprs: tuple[tuple[str, str], ...]
    N_runs: int | list[int]
    average_results: str | list[int]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CallKey):
            return NotImplemented
        return self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    @property
    def arguments(self) -> dict[str, str]:
        """Readable value of each bound argument, by parameter name."""
        return dict(self.argument_reprs)

    def describe(self) -> str:
        """The call with its run options, e.g. ``"simulate(L=64) [N_runs=100]"``."""
        return describe_call(self.call, self.N_runs, self.average_results)

    def readable(self) -> dict[str, Any]:
        """The small JSON form of the key, as stored in ``job.json``.

        Returns:
            A dict with ``key_digest``, ``function``, ``call``, ``arguments``,
            ``N_runs`` and ``average_results``.
        """
        return {
            "key_digest": self.digest,
            "function": self.function,
            "call": self.call,
            "arguments": self.arguments,
            "N_runs": self.N_runs,
            "average_results": self.average_results,
        }


def call_key(
    func: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    N_runs: int | tuple[int, ...],
    average_results: str | tuple[int, ...] | list[int] = "all",
) -> CallKey:
    """Compute the identity of ``func(*args, **kwargs)`` run ``N_runs`` times.

    Args:
        func: The user's function (a plain function, method, ``functools.partial``
            or callable object).
        args: Positional arguments of the call.
        kwargs: Keyword arguments of the call.
        N_runs: Number of runs (at least 1), or a tuple of dimensions for index-tuple
            run ids.
        average_results: What is done with the outputs: ``"all"`` (averaged),
            ``"keep"`` (kept, not averaged) or the indices of the averaged tuple elements.

    Returns:
        The call's :class:`CallKey`.

    Raises:
        ArgumentError: An argument (or a non-function callable) cannot be pickled
            or is nested too deeply; the message names it. A :class:`TypeError`.
        TypeError: The arguments do not fit ``func``'s signature, the signature
            cannot be read, or ``N_runs``/``average_results`` have the wrong type.
        ValueError: ``N_runs`` is less than 1.
    """
    kwargs = {} if kwargs is None else dict(kwargs)
    n_runs = check_n_runs(N_runs)
    average_results = check_average_results(average_results)
    function, short = _function_names(func)
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cannot read the signature of {function}: {exc}; decorate a Python function"
        ) from exc
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{short}{signature} cannot be called with these arguments: {exc}") from None
    bound.apply_defaults()

    tokens: dict[str, Any] = {}
    reprs: list[tuple[str, str]] = []
    if not isinstance(func, types.FunctionType):
        # A method's instance or a partial's frozen arguments change what runs.
        tokens["<callable>"] = _checked_token(func, lambda: f"the callable {function}")
    else:
        captured = _closure_tokens(func, short)
        if captured:  # only then: the keys of functions without closures stay as they were
            tokens["<closure>"] = captured
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            label = f"*{name}"
        elif kind is inspect.Parameter.VAR_KEYWORD:
            label = f"**{name}"
        else:
            label = name
        tokens[label] = _checked_token(value, functools.partial("argument {!r} of {}()".format, name, short))
        if label == name or value:  # an empty *args or **kwargs says nothing to a reader
            reprs.append((label, describe_value(value)))

    material = {
        "key_version": KEY_VERSION,
        "function": function,
        "arguments": tokens,
        "N_runs": n_runs,
        "average_results": average_results,
    }
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    call = f"{_call_name(func, short)}({', '.join(_render_argument(label, text) for label, text in reprs)})"
    return CallKey(
        digest=hashlib.sha256(encoded.encode("ascii")).hexdigest(),
        function=function,
        name=short,
        call=call,
        argument_reprs=tuple(reprs),
        N_runs=n_runs,
        average_results=average_results,
    )


def describe_call(call: str, N_runs: int | list[int], average_results: str | list[int]) -> str:
    """A call with its run options, as shown in messages.

    Args:
        call: The readable call, e.g. ``"simulate(L=64)"``.
        N_runs: Number of runs (or the list of dimensions).
        average_results: ``"all"``, ``"keep"`` or the averaged tuple elements.

    Returns:
        e.g. ``"simulate(L=64) [N_runs=100]"`` or
        ``"simulate(L=64) [N_runs=100, average_results='keep']"``.
    """
    averaged = "" if average_results == "all" else f", average_results={average_results!r}"
    return f"{call} [N_runs={N_runs}{averaged}]"


def check_n_runs(N_runs: Any) -> int | list[int]:
    """``N_runs`` in its canonical JSON form (an int, or a list of ints), or the error."""
    if isinstance(N_runs, (tuple, list)):
        if not N_runs:
            raise ValueError("N_runs=(): give at least one dimension")
        return [check_n_runs(n) for n in N_runs]  # type: ignore[misc]
    if isinstance(N_runs, (bool, np.bool_)) or not isinstance(N_runs, (int, np.integer)):
        raise TypeError(f"N_runs={N_runs!r}: must be an integer or a tuple of integers")
    if N_runs < 1:
        raise ValueError(f"N_runs={N_runs}: must be at least 1")
    return int(N_runs)


def check_average_results(value: Any) -> str | list[int]:
    """``average_results`` in its canonical JSON form, or the error."""
    if value in ("all", "keep"):
        return str(value)
    if isinstance(value, (tuple, list)) and value and all(
        isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) and i >= 0 for i in value
    ):
        return sorted({int(i) for i in value})
    raise TypeError(f"average_results={value!r}: must be 'all', 'keep' or a list of element indices")


def _render_argument(label: str, text: str) -> str:
    if label.startswith("**"):
        return f"**{text}"
    if label.startswith("*"):
        return f"*{text}"
    return f"{label}={text}"


def _underlying_function(func: Any) -> Any:
    """The function a method, partial or ``functools.wraps`` wrapper stands for."""
    while True:
        if isinstance(func, functools.partial):
            func = func.func
        elif inspect.ismethod(func):
            func = func.__func__
        elif hasattr(func, "__wrapped__"):
            func = func.__wrapped__
        else:
            return func


def _function_names(func: Any) -> tuple[str, str]:
    """``(module.qualname, file-name-safe short name)`` of a callable."""
    if not callable(func):
        raise TypeError(f"{func!r} is not callable; pass the function itself")
    target = _underlying_function(func)
    owner = target if hasattr(target, "__qualname__") else type(target)
    module = getattr(owner, "__module__", None) or "<unknown>"
    qualname = str(getattr(owner, "__qualname__", None) or getattr(owner, "__name__", "call"))
    short = getattr(owner, "__name__", qualname.rsplit(".", 1)[-1])
    return f"{module}.{qualname}", safe_name(short)


def _call_name(func: Any, short: str) -> str:
    """The name a readable call starts with: ``Model.simulate`` for a method, else ``short``."""
    qualname = str(getattr(_underlying_function(func), "__qualname__", ""))
    scopes = qualname.split(".")
    return f"{scopes[-2]}.{short}" if len(scopes) >= 2 and scopes[-2] != "<locals>" else short


def safe_name(name: str) -> str:
    """``name`` reduced to ``[A-Za-z0-9_.-]``, without leading dots, at most 64 characters.

    Args:
        name: A function name, e.g. ``"<lambda>"``.

    Returns:
        A string usable as part of a file name, e.g. ``"_lambda_"``.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:64]
    return cleaned or "call"


def describe_value(value: Any) -> str:
    """A short, readable representation of an argument (at most 80 characters).

    Args:
        value: Any argument.

    Returns:
        ``repr``-like text; large containers and arrays are abbreviated.
    """
    if type(value) is np.ndarray and value.size > 8:
        return f"ndarray(shape={value.shape}, dtype={value.dtype})"
    if type(value).__repr__ is object.__repr__:
        return f"<{type(value).__name__} object>"  # its address says nothing about the call
    try:
        text = _repr.repr(value)
    except Exception:  # a broken __repr__ must not stop a submission
        text = f"<{type(value).__qualname__} object>"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(token: Any) -> str:
    return json.dumps(token, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _dtype_descr(dtype: np.dtype) -> Any:
    """A JSON-able, exact description of a dtype (byte order and fields included)."""
    return dtype.str if dtype.fields is None else json.loads(json.dumps(dtype.descr))


def _checked_token(value: Any, who: Callable[[], str]) -> Any:
    """:func:`_token`, with a value nested deeper than Python can recurse named as
    any other value that cannot be stored."""
    try:
        return _token(value, who)
    except RecursionError:
        pass  # raised below, after the stack has unwound
    raise ArgumentError(
        f"{who()} cannot be stored: nested too deeply (deeper than Python's recursion limit, "
        f"sys.getrecursionlimit()={sys.getrecursionlimit()}); pass flatter data, e.g. a numpy array"
    )


def _token(value: Any, who: Callable[[], str], _active: frozenset[int] = frozenset()) -> Any:
    """The canonical token of ``value`` (see the module docstring).

    Args:
        value: The value to key.
        who: Names the argument in error messages (called only on error).
        _active: ids of the containers being tokenised, to catch cycles.

    Raises:
        ArgumentError: ``value`` (or an element) cannot be pickled.
        RecursionError: ``value`` is nested too deeply (see :func:`_checked_token`).
    """
    kind = type(value)
    if value is None:
        return ["none"]
    if kind is bool:
        return ["bool", value]
    if kind is int:
        return ["int", str(value)]
    if kind is float:
        return ["float", repr(value)]
    if kind is str:
        return ["str", value]
    if kind is bytes or kind is bytearray:
        return [kind.__name__, _sha256(value)]
    if kind is np.ndarray and not value.dtype.hasobject:
        return ["ndarray", _dtype_descr(value.dtype), list(value.shape), _array_digest(value)]
    if isinstance(value, np.generic):
        number = _python_number(value)
        if number is not None:
            return _token(number, who)
        as_array = np.asarray(value)
        if not as_array.dtype.hasobject:
            return ["npscalar", _dtype_descr(as_array.dtype), as_array.tobytes().hex()]
    if kind in (list, tuple, dict, set, frozenset) and id(value) not in _active:
        active = _active | {id(value)}
        if kind is list or kind is tuple:
            return [kind.__name__, [_token(item, who, active) for item in value]]
        if kind is dict:
            pairs = [[_token(k, who, active), _token(v, who, active)] for k, v in value.items()]
            return ["dict", sorted(pairs, key=lambda pair: _canonical(pair[0]))]
        return [kind.__name__, sorted((_token(item, who, active) for item in value), key=_canonical)]
    if isinstance(value, type) and _shipped_by_value(value):
        return ["class", f"{value.__module__}.{value.__qualname__}"]
    if _shipped_by_value(kind):
        return _object_token(value, who, _active)
    # Everything else, and self-containing containers, by their pickle.
    try:
        pickled = cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except RecursionError:
        raise  # nested too deeply: named by the caller, once the stack has unwound
    except Exception as exc:
        raise _cannot_store(who, exc) from exc
    return ["pickle", f"{kind.__module__}.{kind.__qualname__}", _sha256(pickled)]


def _cannot_store(who: Callable[[], str], exc: Exception) -> ArgumentError:
    return ArgumentError(
        f"{who()} cannot be stored: {exc}; pass something picklable "
        "(numbers, strings, lists, dicts, numpy arrays or objects that pickle)"
    )


def _shipped_by_value(cls: type) -> bool:
    """Whether ``cloudpickle`` pickles the class ``cls`` by value (defined in ``__main__``,
    in a function, or in a module registered by value), as it does for a user's classes
    in a script or a notebook. Such a pickle holds an id drawn at random in each process,
    so it cannot be a key."""
    module_name = getattr(cls, "__module__", None)
    if not isinstance(module_name, str) or module_name == "builtins":
        return False
    if module_name == "__main__" or _in_modules(module_name, _by_value_modules()):
        return True
    found: Any = sys.modules.get(module_name)
    for scope in str(getattr(cls, "__qualname__", "")).split("."):
        found = getattr(found, scope, None)
    return found is not cls


def _object_token(value: Any, who: Callable[[], str], active: frozenset[int]) -> Any:
    """An object whose class is shipped by value: its class by name, then what pickling
    it is made of (``__reduce_ex__``: constructor arguments and state), as tokens."""
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if id(value) in active:
        return ["cycle", name]
    try:
        reduced = value.__reduce_ex__(PICKLE_PROTOCOL)
    except Exception as exc:
        raise _cannot_store(who, exc) from exc
    if isinstance(reduced, str):  # a module-level singleton, pickled by name
        return ["object", name, reduced]
    active = active | {id(value)}
    constructor, rest = reduced[0], list(reduced[1:])
    for position in (2, 3):  # items of list and dict subclasses come as iterators
        if len(rest) > position and rest[position] is not None:
            rest[position] = list(rest[position])
    return ["object", name, _callable_name(constructor), [_token(item, who, active) for item in rest]]


def _callable_name(value: Any) -> str:
    module = getattr(value, "__module__", None) or "<unknown>"
    return f"{module}.{getattr(value, '__qualname__', None) or getattr(value, '__name__', type(value).__qualname__)}"


def _python_number(value: np.generic) -> bool | int | float | complex | None:
    """The Python number equal to a numpy ``bool_``, integer, floating or complex scalar,
    or None when there is none (other kinds; a ``longdouble`` a float cannot hold)."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        number = float(value)
        return number if _same_float(number, value) else None
    if isinstance(value, np.complexfloating):
        pair = complex(value)
        exact = _same_float(pair.real, value.real) and _same_float(pair.imag, value.imag)
        return pair if exact else None
    return None


def _same_float(number: float, value: Any) -> bool:
    """Whether the Python float ``number`` holds ``value`` exactly (NaN holds NaN)."""
    return bool(number == value) or (number != number and bool(value != value))


def _array_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes, read in place when it is C-contiguous."""
    contiguous = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    try:
        return _sha256(contiguous.reshape(-1).view(np.uint8).data)
    except ValueError:  # a dtype without bytes to view (itemsize 0)
        return _sha256(contiguous.tobytes())


# ------------------------------------------------------------ code fingerprints
#
# What a function computes depends on its code, on the globals it reads and on the
# functions of the user's it calls. A fingerprint names each of these parts, so that a
# stored job can say *what* changed ("global OFFSET changed"). It is not part of the
# call key: an edit must not silently orphan finished results, so the caller warns.

#: Hex digits kept of each part's SHA-256 (64 bits: enough to notice an edit).
_PART_DIGITS = 16

#: A global array up to this size is re-hashed on every call; a larger one is
#: re-hashed only when a sample of its elements changed (see :func:`code_fingerprint`).
RECHECK_ARRAY_BYTES = 64 * 1024

#: Elements of a larger global array compared on every call.
_SAMPLE_ELEMENTS = 4096

_MISSING = object()


@dataclass
class _Read:
    """One global name read by fingerprinted code: what it held and how to re-check it.

    ``check`` is ``"identity"`` (the same object is enough: immutable values, functions,
    classes, modules, names not bound), ``"rehash"`` (the content may change in place:
    hash it again) or ``"sample"`` (a large array: compare :func:`_array_sample` first).
    """

    namespace: dict[str, Any]
    name: str
    value: Any
    part: str | None = None
    reader: str | None = None
    check: str = "identity"
    code: types.CodeType | None = None  # a function's code, which must stay the same object
    sample: Any = None


@dataclass
class _Fingerprint:
    parts: dict[str, str]
    digest: str
    legacy: str  # the code-only digest that jobs stored before fingerprints have
    code: types.CodeType | None
    reads: list[_Read]
    by_value: set[str]  # modules registered with cloudpickle.register_pickle_by_value


@dataclass
class _Walk:
    """The state of one fingerprint's walk through globals and user functions."""

    root: types.FunctionType
    parts: dict[str, str]
    by_value: set[str]
    reads: list[_Read] = field(default_factory=list)
    seen_names: set[tuple[int, str]] = field(default_factory=set)
    seen_functions: set[int] = field(default_factory=set)


_fingerprints: weakref.WeakKeyDictionary[Any, _Fingerprint] = weakref.WeakKeyDictionary()
_fingerprints_lock = threading.Lock()


def code_fingerprint(func: Callable[..., Any]) -> dict[str, str]:
    """The named parts of what ``func`` computes, each a short hex digest.

    Parts:

    * ``"code"``: the function's bytecode, constants and names, and those of the code
      nested in it (inner functions, lambdas, comprehensions). Line numbers, file names
      and the docstring are left out: moving a function does not change it.
    * ``"global NAME"``: each global the code reads (a name of its code or nested code
      bound in ``func.__globals__``), hashed with the tokens of arguments. Modules,
      builtins and the function itself are left out. Library functions and classes
      count by their qualified name (``numpy.exp``), not their code.
    * ``"code of NAME"``: a function of the user's that it reads (a plain Python
      function from the same module, ``__main__`` or a module registered with
      ``cloudpickle.register_pickle_by_value``): its code, defaults and captured
      values; then, recursively, ``"global X (read by NAME)"`` and
      ``"code of G (read by NAME)"`` for what that function reads.
    * ``"global NAME (not hashable: TYPE)"``: a global that cannot be pickled (a lock,
      an open file); it counts by its type only.

    Args:
        func: A function, method, ``functools.partial`` or callable object; for other
            callables than plain functions only ``"code"`` is computed.

    Returns:
        A new dict of part name -> 16 hex digits.

    Notes:
        Fingerprints are cached per function object. A later call re-checks that each
        global name still holds the same object; mutable values (lists, dicts, objects)
        are re-hashed, arrays up to :data:`RECHECK_ARRAY_BYTES` too. A larger array is
        re-hashed only when one of 4096 evenly spaced elements (or its shape or dtype)
        changed, so that a cached call stays fast: an in-place edit of a few elements of
        a large global array can go unnoticed (assign a new array to the global instead).
        Names of the code that are attributes (``x.OFFSET``) are looked up as globals
        too, as ``cloudpickle`` does: a global of that name counts although unread.
        The bytecode differs between Python versions, so a new interpreter also
        changes ``"code"``.
    """
    return dict(_fingerprint(func)[0])


def code_hash(func: Callable[..., Any]) -> str:
    """The digest of :func:`code_fingerprint`, stored in a job to notice changes.

    Args:
        func: A function, method, ``functools.partial`` or callable object.

    Returns:
        A SHA-256 hex digest (64 characters).
    """
    return _fingerprint(func)[1]


def describe_code_changes(old_parts: Mapping[str, str], new_parts: Mapping[str, str]) -> list[str]:
    """What changed between two :func:`code_fingerprint` results, for people.

    Args:
        old_parts: The fingerprint stored with a job.
        new_parts: The fingerprint now.

    Returns:
        e.g. ``["code of helper changed", "global OFFSET changed", "global NEW added"]``
        (``"code"`` first, then by part name); empty when nothing changed.
    """
    changes = []
    for part in sorted(old_parts.keys() | new_parts.keys(), key=lambda name: (name != "code", name)):
        if part not in new_parts:
            changes.append(f"{part} removed")
        elif part not in old_parts:
            changes.append(f"{part} added")
        elif old_parts[part] != new_parts[part]:
            changes.append(f"{part} changed")
    return changes


def code_changes(func: Callable[..., Any], stored_hash: str, stored_parts: Mapping[str, str]) -> list[str]:
    """What changed in ``func`` since a job stored ``stored_hash`` and ``stored_parts``.

    Args:
        func: The function now.
        stored_hash: The job's :func:`code_hash`.
        stored_parts: The job's :func:`code_fingerprint`; empty for jobs stored before
            parts were recorded.

    Returns:
        :func:`describe_code_changes` of the parts, ``["the code changed"]`` when the
        job has no parts to compare, and an empty list when nothing changed. A job
        stored before globals were fingerprinted counts as unchanged when the
        function's own code is (what was checked then).
    """
    parts, digest, legacy = _fingerprint(func)
    if stored_hash == digest:
        return []
    if stored_parts:
        return describe_code_changes(stored_parts, parts) or ["the code changed"]
    if stored_hash == legacy:
        return []
    return ["the code changed"]


def _fingerprint(func: Callable[..., Any]) -> tuple[dict[str, str], str, str]:
    """``(parts, digest, legacy digest)`` of ``func``, from the cache when still valid
    (see :func:`code_fingerprint`). The parts dict is never changed afterwards."""
    target = _underlying_function(func)
    try:
        with _fingerprints_lock:
            cached = _fingerprints.get(target)
            if cached is not None and _still_valid(target, cached):
                return cached.parts, cached.digest, cached.legacy
    except TypeError:  # not weakly referable or not hashable (a builtin): nothing to cache
        fresh = _build_fingerprint(func, target)
        return fresh.parts, fresh.digest, fresh.legacy
    fresh = _build_fingerprint(func, target)  # outside the lock: it may hash large arrays
    with _fingerprints_lock:
        _fingerprints[target] = fresh
    return fresh.parts, fresh.digest, fresh.legacy


def _still_valid(target: Any, cached: _Fingerprint) -> bool:
    """Whether ``cached`` still describes ``target``; a re-hashed part that changed
    replaces ``cached.parts`` by an updated copy (snapshots handed out stay as they were)."""
    if getattr(target, "__code__", None) is not cached.code or _by_value_modules() != cached.by_value:
        return False
    parts = cached.parts
    for read in cached.reads:
        value = read.namespace.get(read.name, _MISSING)
        if value is not read.value:
            return False
        if read.code is not None and getattr(_unwrap(value), "__code__", None) is not read.code:
            return False
        if read.check == "identity" or read.part is None:
            continue
        if read.check == "sample":
            sample = _array_sample(value)
            if sample == read.sample:
                continue
            read.sample = sample
        part, digest, _ = _global_part(read.name, value, read.reader)
        if part != read.part:
            return False
        if parts[part] != digest:
            parts = {**parts, part: digest}
    if parts is not cached.parts:
        cached.parts, cached.digest = parts, _parts_digest(parts)
    return True


def _build_fingerprint(func: Any, target: Any) -> _Fingerprint:
    legacy = _legacy_code_digest(func, target)
    parts = {"code": legacy[:_PART_DIGITS]}
    walk = None
    by_value = _by_value_modules()
    if isinstance(target, types.FunctionType):
        walk = _Walk(root=target, parts=parts, by_value=by_value, seen_functions={id(target)})
        _read_globals(target, None, walk)
    return _Fingerprint(parts=parts, digest=_parts_digest(parts), legacy=legacy,
                        code=getattr(target, "__code__", None), reads=walk.reads if walk else [],
                        by_value=by_value)


def _read_globals(function: types.FunctionType, reader: str | None, walk: _Walk) -> None:
    """Add the parts of the globals ``function`` reads (``reader``: its name, None for the root)."""
    namespace = function.__globals__
    for name in sorted(_global_names(function.__code__)):
        if (id(namespace), name) in walk.seen_names:
            continue
        walk.seen_names.add((id(namespace), name))
        value = namespace.get(name, _MISSING)
        if value is _MISSING or isinstance(value, types.ModuleType):
            walk.reads.append(_Read(namespace, name, value))  # a builtin or a module
            continue
        inner = _unwrap(value)
        if inner is walk.root:
            continue  # the function itself (a recursive call, or its decorated form)
        if isinstance(inner, types.FunctionType) and _is_users(inner, walk):
            read = _Read(namespace, name, value, code=inner.__code__)
            walk.reads.append(read)
            if id(inner) not in walk.seen_functions:  # else described under its first name
                walk.seen_functions.add(id(inner))
                read.part = _part_name("code of", name, reader)
                walk.parts[read.part] = _short(_canonical(_function_token(inner)))
                _read_globals(inner, name, walk)
            continue
        part, digest, check = _global_part(name, value, reader)
        walk.parts[part] = digest
        walk.reads.append(_Read(namespace, name, value, part=part, reader=reader, check=check,
                                sample=_array_sample(value) if check == "sample" else None))


def _global_part(name: str, value: Any, reader: str | None) -> tuple[str, str, str]:
    """``(part name, digest, check)`` of a global that is not a function of the user's."""
    if _is_library_callable(value):
        return _part_name("global", name, reader), _short(_canonical(["callable", _qualified_name(value)])), "identity"
    try:
        token = _token(value, lambda: f"global {name}")
    except Exception:  # ArgumentError, RecursionError: not hashable, yet the call goes on
        kind = type(value)
        type_name = f"{kind.__module__}.{kind.__qualname__}"
        return _part_name("global", name, reader, f"not hashable: {type_name}"), _short(type_name), "identity"
    if type(value) is np.ndarray:
        check = "rehash" if value.nbytes <= RECHECK_ARRAY_BYTES else "sample"
    else:
        check = "identity" if _immutable(value) else "rehash"
    return _part_name("global", name, reader), _short(_canonical(token)), check


def _part_name(kind: str, name: str, reader: str | None, note: str | None = None) -> str:
    notes = [text for text in (f"read by {reader}" if reader else None, note) if text]
    return f"{kind} {name}" + (f" ({', '.join(notes)})" if notes else "")


def _function_token(function: types.FunctionType) -> Any:
    """A user function read by fingerprinted code: its code, defaults and captured values."""
    captured: dict[str, Any] = {}
    for name, value in _closure_values(function):
        inner = _unwrap(value)
        if value is _MISSING:
            captured[name] = ["empty"]
        elif isinstance(inner, types.FunctionType):
            # by code only: the whole fingerprint could come back here
            captured[name] = ["code", _legacy_code_digest(inner, inner)]
        else:
            captured[name] = _safe_token(value)
    return ["function", _legacy_code_digest(function, function), _safe_token(function.__defaults__),
            _safe_token(function.__kwdefaults__), captured]


def _closure_values(function: types.FunctionType) -> list[tuple[str, Any]]:
    """``(name, value)`` of each value ``function`` captured, ``_MISSING`` for an empty cell.

    The ``__class__`` cell of a method that uses ``super()`` is left out: the
    function's qualified name already names the class.
    """
    values = []
    for name, cell in zip(function.__code__.co_freevars, function.__closure__ or ()):
        if name == "__class__":
            continue
        try:
            values.append((name, cell.cell_contents))
        except ValueError:  # a cell not assigned yet
            values.append((name, _MISSING))
    return values


def _closure_tokens(function: types.FunctionType, short: str) -> dict[str, Any]:
    """The tokens of the values a decorated function captured, for its call key.

    A captured function counts by its :func:`code_hash`, not its pickle (which would
    hold its globals' values, in no stable order).
    """
    tokens: dict[str, Any] = {}
    for name, value in _closure_values(function):
        inner = _unwrap(value)
        if value is _MISSING:
            tokens[name] = ["empty"]
        elif isinstance(inner, types.FunctionType):
            tokens[name] = ["function", code_hash(inner)]
        else:
            tokens[name] = _checked_token(value, functools.partial("the value {!r} captured by {}()".format, name, short))
    return tokens


def _safe_token(value: Any) -> Any:
    try:
        return _token(value, lambda: "a value")
    except Exception:
        kind = type(value)
        return ["not hashable", f"{kind.__module__}.{kind.__qualname__}"]


def _global_names(code: types.CodeType) -> set[str]:
    """The names of ``code`` and of the code nested in it (inner functions, comprehensions)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _unwrap(value: Any) -> Any:
    """The function behind ``functools.wraps`` wrappers (and decorated functions)."""
    if not callable(value) or isinstance(value, type):
        return value
    try:
        return inspect.unwrap(value)
    except Exception:  # a wrapper cycle, or an object that answers every attribute
        return value


def _is_users(function: types.FunctionType, walk: _Walk) -> bool:
    """Whether ``function`` is the user's: from the decorated function's module, ``__main__``,
    or a module shipped by value; other functions (numpy's, scipy's) count by their name only."""
    module = function.__module__
    if function.__globals__ is walk.root.__globals__ or module in (walk.root.__module__, "__main__"):
        return True
    return _in_modules(module, walk.by_value)


def _in_modules(module: str | None, names: set[str]) -> bool:
    """Whether ``module`` is one of the modules ``names`` or inside one of those packages."""
    while module:
        if module in names:
            return True
        module = module.rpartition(".")[0]
    return False


def _by_value_modules() -> set[str]:
    registry: Callable[[], set[str]] = getattr(cloudpickle, "list_registry_pickle_by_value", set)
    return set(registry())


def _is_library_callable(value: Any) -> bool:
    """Classes, builtins, ufuncs and functions not of the user's: named, not hashed."""
    return isinstance(value, (type, types.BuiltinFunctionType, np.ufunc)) or isinstance(
        _unwrap(value), types.FunctionType
    )


def _qualified_name(value: Any) -> str:
    return _callable_name(_unwrap(value))


def _immutable(value: Any) -> bool:
    """Whether ``value`` cannot change in place, so that holding the same object suffices."""
    if value is None or type(value) in (bool, int, float, complex, str, bytes, range):
        return True
    if isinstance(value, np.generic):
        return not isinstance(value, np.void)  # a structured element may view an array
    if type(value) in (tuple, frozenset):
        return len(value) <= 1000 and all(_immutable(item) for item in value)
    return False


def _array_sample(array: np.ndarray) -> tuple[Any, ...]:
    """Shape, dtype and about :data:`_SAMPLE_ELEMENTS` evenly spaced elements (and the last)."""
    step = max(1, array.size // _SAMPLE_ELEMENTS)
    flat = array.flat
    return (array.shape, array.dtype, flat[::step].tobytes(), flat[array.size - 1:].tobytes())


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_PART_DIGITS]


def _parts_digest(parts: Mapping[str, str]) -> str:
    return hashlib.sha256(_canonical(dict(parts)).encode()).hexdigest()


def _legacy_code_digest(func: Any, target: Any) -> str:
    """The fingerprint of the function's own code alone (the ``code_hash`` of jobs stored
    before globals were fingerprinted): bytecode, constants and names of it and of the
    code nested in it; line numbers, file names and the docstring are left out."""
    code = getattr(target, "__code__", None)
    if code is None:
        code = getattr(getattr(type(target), "__call__", None), "__code__", None)
    digest = hashlib.sha256()
    if code is None:
        # Builtins and C callables: their identity is the best we can do.
        digest.update(_function_names(func)[0].encode())
        return digest.hexdigest()
    _feed_code(digest, code, docstring=getattr(target, "__doc__", None))
    return digest.hexdigest()


def _feed_code(digest: Any, code: types.CodeType, docstring: str | None = None) -> None:
    """Feed ``code``'s bytecode, names and constants (not its line numbers) to ``digest``."""
    digest.update(code.co_code)
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        digest.update(repr(names).encode())
    consts = code.co_consts
    if docstring is not None and consts and consts[0] == docstring:
        # The docstring occupies the slot that holds None in a function without one.
        consts = (None, *consts[1:])
    for const in consts:
        digest.update(_const_text(const).encode())
        digest.update(b"\0")


def _const_text(const: Any) -> str:
    """A process-independent text for a code constant (nested code by its digest)."""
    if isinstance(const, types.CodeType):
        inner = hashlib.sha256()
        _feed_code(inner, const)
        return f"code:{inner.hexdigest()}"
    if isinstance(const, (tuple, frozenset)):
        parts = [_const_text(item) for item in const]
        if isinstance(const, frozenset):
            parts.sort()  # `x in {"a", "b"}`: set order varies with string hash randomisation
        return f"{type(const).__name__}({','.join(parts)})"
    return f"{type(const).__name__}:{const!r}"
