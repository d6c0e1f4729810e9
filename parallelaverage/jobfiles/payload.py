"""``Payload``: what travels from the caller to the ranks in ``payload.pkl``.

One dataclass that both sides import: the caller fills it and pickles it with
cloudpickle (the function travels by value when it is not importable, e.g. from a
notebook); every rank loads it (through the trust gate) and reads its fields by name.

cloudpickle sends a function's code with the file name ``<dynamic-code>``, so a
traceback of a failed run would show neither the user's file nor the line. The
payload therefore carries, for every code object that travels by value, its file
name, and the source lines of those files as they were at submission; the rank puts
the names back (:meth:`Payload.restore_sources`) and registers the lines with
``linecache``, so tracebacks read ``File "/home/me/sim.py", line 12, in simulate``
with the line itself.
"""

from __future__ import annotations

import linecache
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

__all__ = ["Payload"]

_DYNAMIC = "<dynamic-code>"


@dataclass
class Payload:
    """The function, its arguments and the job settings the ranks need.

    Attributes:
        function, args, kwargs: the call to run once per run.
        average: None (keep outputs only, ``@parallel``), ``"all"``, or the tuple of the
            averaged element indices.
        keep_runs: also store every output (``@parallel`` always does).
        encoding: ``"pickle"`` or ``"json"``, for kept outputs.
        seed: the job seed of ``rng()``.
        dynamic_load_balancing: claim runs from the shared counter (else static blocks).
        code_files: ``(code name, first line) -> file name`` of the code objects.
        sources: ``file name -> source lines`` at submission, for tracebacks.
        statistics: the statistics collected besides the mean and its error (canonical
            spec strings): a tuple for every averaged element, or ``{element: tuple}``.
        target: ``("absolute" | "relative", error)``: stop once the averaged elements'
            estimated errors are below it (``target_error=``); None: run every run.
    """

    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    average: Any
    keep_runs: bool
    encoding: str
    seed: int
    dynamic_load_balancing: bool = True
    code_files: dict[tuple[str, int], str] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    statistics: Any = ()  # a payload written before statistics= has the class default
    target: Any = None  # (kind, error) of target_error=; older payloads: None

    @classmethod
    def legacy(cls, value: dict[str, Any]) -> Payload:
        """A payload written as a plain dict (before this class existed)."""
        return cls(value["function"], tuple(value.get("args", ())), dict(value.get("kwargs", {})),
                   value.get("average"), bool(value.get("keep_runs")), value.get("encoding", "pickle"),
                   int(value.get("seed", 0)), bool(value.get("dynamic_load_balancing", True)))

    # ------------------------------------------------------------ caller side
    def capture_sources(self, modules: tuple[str, ...] = ()) -> None:
        """Record the files and source lines of the function's code, and of the user
        functions it reaches through its globals and closure (those defined in its own
        module, in ``__main__`` or in ``modules``: the ones that may travel by value)."""
        for code in _codes(self.function, modules):
            filename = code.co_filename
            if filename.startswith("<") and not linecache.getlines(filename):
                continue
            self.code_files[(code.co_name, code.co_firstlineno)] = filename
            if filename not in self.sources:
                lines = linecache.getlines(filename)
                if lines:
                    self.sources[filename] = list(lines)

    # ------------------------------------------------------------ rank side
    def restore_sources(self) -> None:
        """Give code that arrived as ``<dynamic-code>`` its file name back, and register
        the submitted source lines with ``linecache``."""
        for filename, lines in self.sources.items():
            linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
        if not self.code_files:
            return
        for function in _functions(self.function, ()):
            code = function.__code__
            if code.co_filename == _DYNAMIC:
                function.__code__ = _renamed(code, self.code_files)


def _renamed(code: types.CodeType, files: dict[tuple[str, int], str]) -> types.CodeType:
    consts = tuple(_renamed(c, files) if isinstance(c, types.CodeType) and c.co_filename == _DYNAMIC else c
                   for c in code.co_consts)
    filename = files.get((code.co_name, code.co_firstlineno), code.co_filename)
    return code.replace(co_filename=filename, co_consts=consts)


def _functions(root: Any, modules: tuple[str, ...]) -> Iterator[types.FunctionType]:
    """The user functions reachable from ``root``: itself, and functions of its own
    module, ``__main__`` or ``modules`` in its globals and closure cells, recursively."""
    root = getattr(root, "__func__", root)  # bound methods
    wanted = {getattr(root, "__module__", None), "__main__", *modules}
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        item = getattr(item, "__func__", item)
        if not isinstance(item, types.FunctionType) or id(item) in seen:
            continue
        if item is not root and item.__module__ not in wanted:
            continue
        seen.add(id(item))
        yield item
        names = set(_names(item.__code__))
        stack.extend(value for name, value in item.__globals__.items()
                     if name in names and isinstance(value, types.FunctionType))
        for cell in item.__closure__ or ():
            try:
                stack.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _codes(root: Any, modules: tuple[str, ...]) -> Iterator[types.CodeType]:
    """Every code object of the reachable user functions, nested code included."""
    for function in _functions(root, modules):
        stack = [function.__code__]
        while stack:
            code = stack.pop()
            yield code
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
