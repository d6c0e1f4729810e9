"""Call identity: which stored job answers a call.

A job answers a call when four things match: the function's qualified name
(``module.qualname``), its arguments *bound to the signature*, ``N_runs`` and
``average_results``. Binding uses ``inspect.signature(func).bind(...)`` and
``apply_defaults()``, so ``f(1)``, ``f(x=1)`` and ``f(1, y=<default>)`` are one
call, and the order of ``**kwargs`` does not matter. The function's *code* is
deliberately not part of the identity: editing a function should not silently
orphan finished results, so :func:`code_hash` is stored beside the key and the
caller warns when it differs.

Arguments are keyed by canonical content ("tokens"), hashed with SHA-256:

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
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np

from parallelaverage.errors import ArgumentError

__all__ = ["CallKey", "call_key", "code_hash", "describe_call", "describe_value", "safe_name", "KEY_VERSION", "PICKLE_PROTOCOL"]

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
    call = f"{short}({', '.join(_render_argument(label, text) for label, text in reprs)})"
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
    # Everything else, and self-containing containers, by their pickle.
    try:
        pickled = cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except RecursionError:
        raise  # nested too deeply: named by the caller, once the stack has unwound
    except Exception as exc:
        raise ArgumentError(
            f"{who()} cannot be stored: {exc}; pass something picklable "
            "(numbers, strings, lists, dicts, numpy arrays or objects that pickle)"
        ) from exc
    return ["pickle", f"{kind.__module__}.{kind.__qualname__}", _sha256(pickled)]


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


def code_hash(func: Callable[..., Any]) -> str:
    """A fingerprint of a function's code, to notice edits since submission.

    It covers the bytecode, constants and names of the function and, recursively,
    of the code nested in it (inner functions, lambdas, comprehensions). Line
    numbers, file names and the docstring are left out, so moving a function or
    editing its docstring does not count as a change.

    Args:
        func: A function, method, ``functools.partial`` or callable object.

    Returns:
        A SHA-256 hex digest.

    Notes:
        Functions the code *calls*, and globals it reads, are not covered. The
        bytecode differs between Python versions, so a new interpreter also
        changes the fingerprint.
    """
    target = _underlying_function(func)
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
