"""A rank's status record: who it is, which run it is executing, how far it got.

Each rank of a launch owns ``attempts/<k>/rank-r<rank>.status``: a fixed 4 KiB header
that the rank maps into memory (``mmap``), followed by whatever ``faulthandler``
appends if the process dies of a fatal signal. Updating a field is a memory store —
no system call, about 0.1 µs — so the rank can say, before every run, which run it
starts, and the file still says it after the process is gone: the page belongs to
the kernel's page cache, not to the process. That is how the caller tells a run
that crashed its rank (segfault, abort, ``os._exit``) from one that was merely in
flight when something else stopped the launch.

The header's space is allocated when the file is made, so a rank can still record an
error (for instance "no space left on device" while writing a snapshot) in a full
file system.

Header layout (little-endian int64 slots, then text areas)::

    slot 0  magic + version      slot 5  runs done        slot 10 snapshot time (µs)
    slot 1  pid                  slot 6  runs failed      slot 11 started at (µs)
    slot 2  start time (ticks)   slot 7  snapshots        slot 12 bytes of error text
    slot 3  stage (STAGES)       slot 8  exit code        slot 13 signal caught
    slot 4  run in flight (-1)   slot 9  runs claimed     slot 14 its job in a batch
                                                          slot 15 counts published at (µs)
                                                          bytes 512..639 host name
                                                          bytes 1024..4095 error text

The times are wall-clock microseconds (``time.time()``): a caller on another host
compares them with its own clock. Slots 14 and 15 came later; records without them read 0 there
(job 0; no publication time: None).

Readers get a :class:`RankInfo`; a torn read (the rank writing while the caller reads)
can only mix old and new values of independent counters, each of which is whole.

This module is on the rank side: it imports nothing of the caller.
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["RankStatus", "RankInfo", "read_rank_status", "process_start_ticks", "STAGES", "FINAL_STAGES",
           "HEADER_BYTES"]

HEADER_BYTES = 4096
_MAGIC = 0x50415253_00000001  # "PARS", version 1
_HOST_AT, _HOST_BYTES = 512, 128
_ERROR_AT = 1024
_ERROR_BYTES = HEADER_BYTES - _ERROR_AT

(_S_MAGIC, _S_PID, _S_TICKS, _S_STAGE, _S_IN_FLIGHT, _S_DONE, _S_FAILED, _S_SNAPSHOTS,
 _S_EXIT, _S_CLAIMED, _S_SNAPSHOT_US, _S_STARTED_US, _S_ERROR_LEN, _S_SIGNAL, _S_MEMBER, _S_PUBLISHED_US) = range(16)

STAGES = ("starting", "running", "merging", "finished", "stopped", "exited_in_run", "failed_to_start")
"""What a rank was doing: ``starting`` (reading its payload), ``running`` (runs),
``merging`` (the final allreduce), ``finished`` (exited cleanly), ``stopped`` (a
signal from outside ended it after a checkpoint), ``exited_in_run`` (a run called
``os._exit``), ``failed_to_start`` (an error before the first run)."""

_STAGE = {name: index for index, name in enumerate(STAGES)}

FINAL_STAGES = frozenset({"finished", "stopped", "exited_in_run", "failed_to_start"})
"""The stages after which a rank does nothing more: its process is ending or gone."""


def process_start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


class RankStatus:
    """The writer side: made by the rank at start, updated through a memory map.

    The worker stores into :attr:`slots` directly on its per-run path, at the indices
    ``IN_FLIGHT``, ``DONE``, ``FAILED`` and ``CLAIMED``, and ``PUBLISHED_US`` (the wall
    clock in µs) whenever it publishes its counts: the caller's sign that the rank lives.
    """

    IN_FLIGHT, DONE, FAILED, CLAIMED, MEMBER, PUBLISHED_US = (
        _S_IN_FLIGHT, _S_DONE, _S_FAILED, _S_CLAIMED, _S_MEMBER, _S_PUBLISHED_US)

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, HEADER_BYTES)  # the header's blocks exist from now on
            except (AttributeError, OSError):
                os.ftruncate(fd, HEADER_BYTES)
            self._map = mmap.mmap(fd, HEADER_BYTES)
        finally:
            os.close(fd)
        self.slots = np.frombuffer(self._map, dtype="<i8", count=_ERROR_AT // 8)
        self._crash_file: BinaryIO | None = None
        pid = os.getpid()
        slots = self.slots
        slots[_S_PID] = pid
        slots[_S_TICKS] = process_start_ticks(pid) or -1
        slots[_S_IN_FLIGHT] = -1
        slots[_S_EXIT] = -1
        slots[_S_STARTED_US] = int(time.time() * 1e6)
        host = socket.gethostname().encode()[: _HOST_BYTES - 1]
        self._map[_HOST_AT : _HOST_AT + len(host)] = host
        slots[_S_MAGIC] = _MAGIC  # last: a reader sees a whole header or none

    def catch_crashes(self) -> None:
        """Have ``faulthandler`` append the traceback of a fatal signal (SIGSEGV, SIGABRT,
        SIGFPE, SIGBUS, SIGILL) to this file, and record ``os._exit`` calls."""
        self._crash_file = open(self.path, "ab", buffering=0)
        faulthandler.enable(file=self._crash_file, all_threads=True)
        real_exit = os._exit
        status = self

        def _exit(code: int) -> None:
            if status.slots[_S_STAGE] == _STAGE["running"] and status.slots[_S_IN_FLIGHT] >= 0:
                status.slots[_S_EXIT] = int(code)
                status.slots[_S_STAGE] = _STAGE["exited_in_run"]
            real_exit(code)

        os._exit = _exit  # type: ignore[assignment]
        self.real_exit = real_exit

    def set_stage(self, stage: str) -> None:
        self.slots[_S_STAGE] = _STAGE[stage]

    def set_error(self, text: str) -> None:
        data = text.encode("utf-8", "replace")[:_ERROR_BYTES]
        self._map[_ERROR_AT : _ERROR_AT + len(data)] = data
        self.slots[_S_ERROR_LEN] = len(data)

    def clear_error(self) -> None:
        self.slots[_S_ERROR_LEN] = 0

    def snapshot_written(self) -> None:
        self.slots[_S_SNAPSHOTS] += 1
        self.slots[_S_SNAPSHOT_US] = int(time.time() * 1e6)

    def flush(self) -> None:
        """Push the header to the file system (for readers on other hosts)."""
        try:
            self._map.flush()
        except (OSError, ValueError):
            pass

    def stopped_by(self, signum: int) -> None:
        self.slots[_S_SIGNAL] = signum
        self.slots[_S_IN_FLIGHT] = -1
        self.slots[_S_STAGE] = _STAGE["stopped"]


@dataclass(frozen=True)
class RankInfo:
    """What a rank's status file says (see :class:`RankStatus`)."""

    rank: int
    pid: int
    host: str
    start_ticks: int | None
    stage: str
    in_flight: int | None
    n_done: int
    n_failed: int
    n_claimed: int
    n_snapshots: int
    snapshot_at: float | None
    started_at: float | None
    published_at: float | None
    exit_code: int | None
    signal: int | None
    error: str
    crash_report: str
    member: int = 0  # which job of a batch (``f.map``) the run in flight belongs to

    def alive(self) -> bool | None:
        """Whether the process still runs: True/False on its own host, None elsewhere."""
        if self.host != socket.gethostname():
            return None
        return process_start_ticks(self.pid) == self.start_ticks

    @property
    def last_sign_at(self) -> float | None:
        """The latest moment (wall clock, s) the rank wrote something: it started,
        published its counts or wrote a snapshot."""
        moments = [t for t in (self.published_at, self.snapshot_at, self.started_at) if t is not None]
        return max(moments) if moments else None

    @property
    def crash_signal(self) -> tuple[int, str] | None:
        """The fatal signal ``faulthandler`` reported, as ``(number, "SIGSEGV")``."""
        match = re.search(r"Fatal Python error: ([A-Za-z ]+)", self.crash_report)
        if not match:
            return None
        name = _FAULT_NAMES.get(match.group(1).strip())
        return (int(name), name.name) if name is not None else None


_FAULT_NAMES = {
    "Segmentation fault": signal.SIGSEGV, "Aborted": signal.SIGABRT, "Floating point exception": signal.SIGFPE,
    "Bus error": signal.SIGBUS, "Illegal instruction": signal.SIGILL,
}


def read_rank_status(path: Path, rank: int) -> RankInfo | None:
    """The status of one rank, or None if its file is missing or not (yet) whole."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < HEADER_BYTES:
        return None
    slots = np.frombuffer(data, dtype="<i8", count=_ERROR_AT // 8)
    if int(slots[_S_MAGIC]) != _MAGIC:
        return None
    stage = int(slots[_S_STAGE])
    host = data[_HOST_AT : _HOST_AT + _HOST_BYTES].split(b"\0", 1)[0].decode(errors="replace")
    error_len = max(0, min(int(slots[_S_ERROR_LEN]), _ERROR_BYTES))

    def optional(value: Any, none: int = -1) -> int | None:
        return None if int(value) == none else int(value)

    def moment(value: Any) -> float | None:
        return int(value) / 1e6 if int(value) > 0 else None

    return RankInfo(
        rank=rank, pid=int(slots[_S_PID]), host=host, start_ticks=optional(slots[_S_TICKS]),
        stage=STAGES[stage] if 0 <= stage < len(STAGES) else "starting",
        in_flight=optional(slots[_S_IN_FLIGHT]), n_done=int(slots[_S_DONE]), n_failed=int(slots[_S_FAILED]),
        n_claimed=int(slots[_S_CLAIMED]), n_snapshots=int(slots[_S_SNAPSHOTS]),
        snapshot_at=moment(slots[_S_SNAPSHOT_US]), started_at=moment(slots[_S_STARTED_US]),
        published_at=moment(slots[_S_PUBLISHED_US]),
        exit_code=optional(slots[_S_EXIT]), signal=optional(slots[_S_SIGNAL], 0),
        error=data[_ERROR_AT : _ERROR_AT + error_len].decode(errors="replace"),
        crash_report=data[HEADER_BYTES:].decode(errors="replace"), member=int(slots[_S_MEMBER]),
    )
