"""Stop at a target error (``target_error=``): rank 0 watches the merged error and stops the claims.

Rank 0 (and only it) merges, every few seconds, what every rank has recorded: the other
ranks' latest snapshots (written anyway, every 2-60 s), its own live tally, and the final
tallies of the job's earlier launches and of the launch's earlier lives (a requeued launch). When the estimated error of every element of the
averaged outputs is below the target, it writes ``target.json`` in the launch folder
(:meth:`JobFiles.target`: what the caller reads to call the job completed) and
stops running runs: it goes on claiming them from the shared counter without running
them, so that the counter is exhausted within a few claims and every other rank's claim
loop ends at its next claim, after the run it is in. No collective is added: a rank that
is slow, killed or stuck delays the decision or leaves it unmade (the job then runs its
``N_runs``), it never blocks the others. The merge at the end is the usual one.

The decision uses snapshots up to one snapshot interval old, so the job stops a little
later than it could (with more runs, and a smaller error, than the target). It is taken
once at least ``MIN_EFFECTIVE_RUNS`` runs are merged: an error estimated from a handful
of runs is itself too uncertain to stop on.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np

from parallelaverage._atomic import atomic_write_bytes
from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.jobfiles.tally import Tally
from parallelaverage.jobfiles.trust import load_pickle
from parallelaverage.stats import Welford

__all__ = ["TargetWatch", "MIN_EFFECTIVE_RUNS", "CHECK_MIN_INTERVAL_S", "TARGET_KINDS", "checked_target"]

TARGET_KINDS = ("absolute", "relative")
"""``absolute``: every element's estimated error ``<= target``; ``relative``: ``<= target * |mean|``."""

MIN_EFFECTIVE_RUNS = 10.0
"""The target is checked once Kish's effective number of merged runs reaches this."""

CHECK_MIN_INTERVAL_S = float(os.environ.get("PARALLELAVERAGE_TARGET_CHECK_S", "2.0"))
"""Shortest time between two checks by rank 0 (the environment variable is for tests); a
check also waits 20 times as long as the previous one took (reading every snapshot)."""

class TargetWatch:
    """Rank 0's watch of the merged error (see the module docstring)."""

    def __init__(self, files: JobFiles, launch_no: int, kind: str, target: float, life: int = 0) -> None:
        self.files, self.launch_no, self.kind, self.target = files, launch_no, kind, float(target)
        self.life = life
        self.next_at = 0.0
        self.earlier = self._earlier_launches()

    def _earlier_launches(self) -> list[Tally]:
        """The final tallies of the job's earlier launches and of this launch's earlier lives
        (sealed by this life's rank 0 before it ran anything: they no longer change)."""
        tallies = []
        for life in range(self.life):
            try:
                sealed = load_pickle(self.files.life_seal(self.launch_no, life))
            except (OSError, ValueError):
                continue
            if isinstance(sealed, Tally):
                tallies.append(sealed)
        for launch_no in self.files.launch_numbers():
            if launch_no >= self.launch_no:
                continue
            for path in (self.files.sealed(launch_no), self.files.result(launch_no)):
                try:
                    tally = load_pickle(path)
                except (OSError, ValueError):
                    continue
                if isinstance(tally, Tally):
                    tallies.append(tally)
                    break
        return tallies

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def reached(self, own: Tally, rank: int = 0) -> bool:
        """Merge every rank's statistics; True (and ``target.json`` written) when the error
        of every averaged element is below the target."""
        started = time.monotonic()
        try:
            tallies = list(self.earlier) + [own]
            for path in self.files.snapshots(self.launch_no, self.life):
                if path == self.files.snapshot(self.launch_no, rank, self.life):
                    continue  # its own tally, live, is ``own``
                try:
                    piece = load_pickle(path)
                except (OSError, ValueError):
                    continue  # being replaced, or torn: the next check reads it
                if isinstance(piece, Tally):
                    tallies.append(piece)
            merged = _merged_accumulators(tallies)
            verdict = merged is not None and self._below(merged)
            if merged is not None and verdict:
                first = next(iter(merged.values()))
                with np.errstate(invalid="ignore", divide="ignore"):
                    worst = max(float(np.nanmax(np.asarray(self._ratio(acc)))) for acc in merged.values())
                atomic_write_bytes(self.files.target(self.launch_no), json.dumps({
                    "kind": self.kind, "target": self.target, "runs": first.count,
                    "effective_runs": first.effective_count, "error_over_target": worst}).encode())
            return verdict
        finally:
            took = time.monotonic() - started
            self.next_at = time.monotonic() + max(CHECK_MIN_INTERVAL_S, 20.0 * took)

    def _ratio(self, acc: Welford) -> Any:
        """Each element's error over its allowed error (<= 1: below the target)."""
        sem = np.abs(np.asarray(acc.sem, dtype=float))
        if self.kind == "absolute":
            return sem / self.target
        return sem / (self.target * np.abs(np.asarray(acc.mean)))

    def _below(self, merged: dict[int, Welford]) -> bool:
        for acc in merged.values():
            if acc.count == 0 or not acc.effective_count >= MIN_EFFECTIVE_RUNS:
                return False
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.asarray(self._ratio(acc), dtype=float)
            if not (ratio.size and np.all(ratio <= 1.0)):  # NaN (undefined error) is not below
                return False
        return True


def _merged_accumulators(tallies: list[Tally]) -> dict[int, Welford] | None:
    """The Welfords of the layout with the most runs, merged over the tallies."""
    by_layout: dict[Any, dict[int, Welford]] = {}
    for tally in tallies:
        for group in tally.groups:
            merged = by_layout.setdefault(group.layout, {})
            for index, acc in group.accumulators.items():
                if index in merged:
                    merged[index].merge(acc)
                else:
                    merged[index] = acc.copy()
    if not by_layout:
        return None
    return max(by_layout.values(), key=lambda accs: min((a.count for a in accs.values()), default=0))


def checked_target(value: Any, name: str) -> float:
    """A target error: a finite number > 0 (the message names the option)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(float(value)) and float(value) > 0.0):
        raise ValueError(f"{name}={value!r}: must be a finite number > 0 (the largest estimated error "
                         "of the averaged elements at which the job stops)")
    return float(value)
