"""``Tally``: what a rank, a launch or a whole job has done — which runs, and their statistics.

A rank keeps one ``Tally`` while it works and writes it as its snapshot; rank 0 writes
the merged tally of a launch as its result; the caller merges the tallies of every
launch into the job's. Runs are positions (:mod:`parallelaverage.runspace`), held as
ranges, so a tally's size does not grow with the number of runs that succeeded.

Averaged outputs are grouped by **layout** (tuple length and the shape of each
averaged element): a run whose output has another shape than the others' goes into
a group of its own instead of breaking the merge, on every rank and in every merge.
When a result is built, the group with the most runs is the average and the runs of
the other groups count as failed, with a message that names both shapes
(:meth:`Tally.resolved`). So one odd run fails alone, whichever rank ran it, in
whatever order, on 1 rank or 1,000.

Besides its ``Welford`` per averaged element, a group holds the statistics the call
asked for (``statistics=``: covariance, moments, batches, histograms, log-binning), one
accumulator of each kind per element (:attr:`Group.statistics`); they merge with the
group.

Merging is all-or-nothing: :meth:`Tally.merged` builds a new tally and changes
nothing if any part cannot merge, so run ids and statistics always change together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parallelaverage.runspace import Positions
from parallelaverage.stats import Accumulator, WeightedSample, Welford

__all__ = ["Tally", "Group", "Layout", "layout_of", "describe_layout", "MAX_ERRORS_KEPT", "MAX_GROUPS",
           "append_ranges", "read_ranges", "read_life_tally", "read_launch_tally"]

MAX_ERRORS_KEPT = 100
"""Failed runs whose message is kept per tally (every failed run is counted)."""

MAX_GROUPS = 8
"""Distinct output layouts a tally keeps; a run with a ninth fails at once."""

Layout = tuple  # (tuple length or None, ((element index, shape), ...))


def layout_of(output: Any, average: Any) -> tuple[Layout, list[tuple[int, Any, Any]]] | str:
    """The layout of one output and its averaged elements ``(index, sample, weight)``;
    a message instead if it cannot be averaged."""
    is_tuple = isinstance(output, tuple)
    elements = output if is_tuple else (output,)
    indices = range(len(elements)) if average == "all" else average
    prepared = []
    shapes = []
    for index in indices:
        if index >= len(elements):
            return f"returned {_describe(output)}: no element {index} to average"
        element = elements[index]
        if isinstance(element, WeightedSample):
            sample, weight = element.sample, element.weight
            if not (isinstance(weight, (int, float, np.integer, np.floating)) and not isinstance(weight, bool)
                    and 0 <= float(weight) < float("inf")):
                return f"returned the weight {weight!r}: weights must be finite and >= 0"
        else:
            sample, weight = element, None
        kind = type(sample)
        if kind is float or kind is int:
            shape: tuple[int, ...] = ()
        else:
            array = sample if kind is np.ndarray else np.asarray(sample)
            if array.dtype.kind not in "biufc":
                return (f"returned {_describe(sample)}, which cannot be averaged: return numbers or "
                        "numeric arrays, or use @parallel to keep outputs as they are")
            shape = array.shape
        prepared.append((index, sample, weight))
        shapes.append((index, shape))
    return (len(elements) if is_tuple else None, tuple(shapes)), prepared


def describe_layout(layout: Layout) -> str:
    """``"an array of shape (4,)"``, ``"a tuple of 3 (element 0: shape (2,))"``..."""
    length, shapes = layout

    def one(shape: tuple[int, ...]) -> str:
        return "a number" if shape == () else f"an array of shape {shape}"

    if length is None:
        return one(shapes[0][1]) if shapes else "a value"
    inner = ", ".join(f"element {i}: {'number' if s == () else f'shape {s}'}" for i, s in shapes)
    return f"a tuple of {length} ({inner})"


def _describe(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


@dataclass
class Group:
    """The runs whose outputs share one layout, and their statistics.

    A rank's first group does not list its runs while the rank works (``runs`` is None:
    "every run done that no other group holds"), so that recording a run costs no set
    operation; :meth:`Tally.explicit` lists them when tallies are merged.
    """

    layout: Layout
    runs: Positions | None = field(default_factory=Positions)
    accumulators: dict[int, Welford] = field(default_factory=dict)
    last_values: dict[int, Any] = field(default_factory=dict)
    last_position: int = -1  # the run the last_values came from
    statistics: dict[int, dict[str, Accumulator]] = field(default_factory=dict)  # element -> kind -> accumulator

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"statistics": {}, **state})  # snapshots and results written before statistics=

    def merged(self, other: Group) -> Group:
        accumulators = {i: acc.copy() for i, acc in self.accumulators.items()}
        for index, acc in other.accumulators.items():
            if index in accumulators:
                accumulators[index].merge(acc)
            else:
                accumulators[index] = acc.copy()
        statistics = {i: {kind: stat.copy() for kind, stat in kinds.items()} for i, kinds in self.statistics.items()}
        for index, kinds in other.statistics.items():
            mine = statistics.setdefault(index, {})
            for kind, stat in kinds.items():
                if kind in mine:
                    mine[kind].merge(stat)
                else:
                    mine[kind] = stat.copy()
        newer = other if other.last_position > self.last_position else self
        if self.runs is None or other.runs is None:
            raise ValueError("groups merge only with their runs listed: call Tally.explicit() first")
        return Group(self.layout, self.runs.union(other.runs), accumulators,
                     dict(newer.last_values), newer.last_position, statistics)


@dataclass
class Tally:
    """Runs done and failed (as positions), messages of failures, statistics by layout.

    Attributes:
        done: runs that returned an output that was recorded (averaged and/or kept).
        failed: runs that raised, returned something unusable, or could not be stored.
        errors: the message of up to :data:`MAX_ERRORS_KEPT` failed runs, by position
            (merged, a later tally's message of a run replaces an earlier one's).
        crashed: runs that killed the rank running them (found by the caller after the
            launch ended), with their message; counted as failed.
        groups: averaged statistics, one group per output layout (empty for @parallel).
    """

    done: Positions = field(default_factory=Positions)
    failed: Positions = field(default_factory=Positions)
    errors: dict[int, str] = field(default_factory=dict)
    crashed: dict[int, str] = field(default_factory=dict)
    groups: list[Group] = field(default_factory=list)
    done_log: tuple[str, int] | None = None  # a snapshot's done runs: (file in the launch folder, pairs)

    # ------------------------------------------------------------ recording (one rank)
    def fail(self, position: int, message: str) -> None:
        self.failed.add(position)
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors[position] = message

    def group_for(self, layout: Layout) -> Group | None:
        """The group of ``layout``, made if there is room; None if there are too many.

        The first group made lists no runs (see :class:`Group`): don't add to its ``runs``.
        """
        for group in self.groups:
            if group.layout == layout:
                return group
        if len(self.groups) >= MAX_GROUPS:
            return None
        group = Group(layout, runs=None if not self.groups else Positions())
        self.groups.append(group)
        return group

    def explicit(self) -> Tally:
        """This tally with every group's runs listed (the first group's are implicit while
        a rank records runs)."""
        if not self.groups or self.groups[0].runs is not None:
            return self
        first, others = self.groups[0], self.groups[1:]
        runs = self.done.difference(Positions().union(*(g.runs for g in others if g.runs is not None)))
        listed = Group(first.layout, runs, first.accumulators, first.last_values, first.last_position,
                       first.statistics)
        return Tally(self.done, self.failed, self.errors, self.crashed, [listed, *others], self.done_log)

    # ------------------------------------------------------------ merging
    def merged(self, other: Tally) -> Tally:
        """A new tally holding both; neither input changes, also when a merge fails."""
        first, second = self.explicit(), other.explicit()
        groups = {group.layout: group for group in first.groups}
        for group in second.groups:
            known = groups.get(group.layout)
            groups[group.layout] = known.merged(group) if known is not None else group.merged(Group(group.layout))
        # a run in both is a run ``other`` (a later launch) ran again: its outcome replaces
        # the earlier one's, so a re-run run shows its latest error, or its latest crash
        errors = {p: m for p, m in first.errors.items() if p not in second.crashed}
        for position, message in second.errors.items():
            if position in errors or len(errors) < MAX_ERRORS_KEPT:
                errors[position] = message
        crashed = {p: m for p, m in first.crashed.items() if p not in second.failed}
        crashed.update(second.crashed)
        return Tally(first.done.union(second.done), first.failed.union(second.failed), errors, crashed,
                     list(groups.values()))

    # ------------------------------------------------------------ reading
    def main_group(self) -> Group | None:
        """The layout most runs share (ties: the one holding the smallest position)."""
        groups = self.explicit().groups
        if not groups:
            return None
        return max(groups, key=lambda g: (len(g.runs or ()), -((g.runs.first() if g.runs else None) or 0)))

    def resolved(self, id_at: Any = None) -> Tally:
        """This tally with the runs of minority layouts moved from done to failed.

        ``id_at`` turns a position into the run id named in messages (default: itself).
        """
        id_at = id_at or (lambda position: position)
        tally = self.explicit()
        main = tally.main_group()
        others = [g for g in tally.groups if g is not main and g.runs]
        if not others or main is None:
            return tally
        done, failed, errors = tally.done, tally.failed.copy(), dict(tally.errors)
        for group in others:
            if group.runs is None or main.runs is None:
                raise ValueError("resolving groups needs their runs listed: call Tally.explicit() first")
            reason = (f"returned {describe_layout(group.layout)}, but {len(main.runs)} other runs "
                      f"returned {describe_layout(main.layout)}")
            done = done.difference(group.runs)
            failed = failed.union(group.runs)
            for position in group.runs:
                if len(errors) >= MAX_ERRORS_KEPT:
                    break
                errors.setdefault(position, f"run {id_at(position)!r} {reason}")
        return Tally(done, failed, errors, dict(tally.crashed), [main])

    def error_of(self, position: int) -> str | None:
        return self.crashed.get(position) or self.errors.get(position)


# ------------------------------------------------------------------ the done log of a rank
_PAIR = np.dtype("<i8")


def append_ranges(path: Any, ranges: list[tuple[int, int]]) -> None:
    """Append ``[start, stop)`` pairs to a rank's done log and make them durable.

    A snapshot names how many pairs it covers, so the bytes a snapshot writes do not grow
    with the runs done before it; a later range may repeat or extend an earlier one.
    """
    if not ranges:
        return
    data = np.asarray(ranges, dtype=_PAIR).tobytes()
    with open(path, "ab") as file:
        file.write(data)
        file.flush()
        import os

        os.fsync(file.fileno())


def read_ranges(path: Any, pairs: int) -> Positions:
    """The first ``pairs`` pairs of a done log, as positions (a torn tail is ignored).

    Raises:
        ValueError: the log holds fewer pairs than the snapshot names.
    """
    if pairs == 0:
        return Positions()  # a rank that has done no run yet has written no log
    with open(path, "rb") as file:
        data = file.read(pairs * 16)
    if len(data) < pairs * 16:
        raise ValueError(f"{path} holds {len(data) // 16} ranges, its snapshot names {pairs}")
    values = np.frombuffer(data, dtype=_PAIR).reshape(-1, 2).tolist()
    made = Positions()
    for start, stop in values:
        made.add_range(start, stop)
    return made


# ------------------------------------------------------------------ reading a launch's tally
def _load_tally(path: Any, what: str) -> Tally:
    from parallelaverage.jobfiles.trust import load_pickle

    tally = load_pickle(path)
    if not isinstance(tally, Tally):
        raise ValueError(f"{path} is not a {what} of this version of parallelaverage")
    return tally


def read_life_tally(files: Any, launch_no: int, life: int, problems: list[str]) -> tuple[Tally, bool]:
    """What one life of a launch did: its seal, else its result, else the merge of its ranks'
    snapshots (with their done logs). Returns the tally and whether it is final.

    A file that cannot be read is named in ``problems`` and left out (its runs count as
    missing); a file owned by another user raises ``UntrustedFileError``.
    """
    from parallelaverage.errors import UntrustedFileError

    for path, what in ((files.life_seal(launch_no, life), "seal"), (files.result(launch_no, life), "result")):
        if not path.exists():
            continue
        try:
            return _load_tally(path, what), True
        except UntrustedFileError:
            raise
        except (OSError, ValueError) as error:
            problems.append(f"{error}; using the snapshots")
    merged = Tally()
    for path in files.snapshots(launch_no, life):
        try:
            piece = _load_tally(path, "snapshot")
            if piece.done_log is not None:  # its done runs are in the rank's done log
                name, pairs = piece.done_log
                piece = Tally(read_ranges(files.life_dir(launch_no, life) / name, pairs), piece.failed,
                              piece.errors, piece.crashed, piece.groups)
            merged = merged.merged(piece)  # all or nothing: a piece that cannot merge changes nothing
        except UntrustedFileError:
            raise
        except (OSError, ValueError) as error:
            problems.append(f"{error}; its runs count as missing")
    return merged, False


def read_launch_tally(files: Any, launch_no: int, problems: list[str], *,
                      lives: list[int] | None = None) -> tuple[Tally, bool]:
    """What a launch did: its seal (written when a later launch was made), else the merge
    of its lives (``lives``: only these). Returns the tally and whether it is final (sealed,
    or its last life's result is written)."""
    from parallelaverage.errors import UntrustedFileError

    if lives is None and files.sealed(launch_no).exists():
        try:
            return _load_tally(files.sealed(launch_no), "seal"), True
        except UntrustedFileError:
            raise
        except (OSError, ValueError) as error:
            problems.append(f"{error}; using the snapshots")
    merged, final = Tally(), False
    for life in files.lives(launch_no) if lives is None else lives:
        piece, final = read_life_tally(files, launch_no, life, problems)
        merged = merged.merged(piece)
    return merged, final
