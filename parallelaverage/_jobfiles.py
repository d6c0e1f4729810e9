"""The files of one job directory, shared by the worker (writes) and the caller (reads).

Layout of ``<path>/.parallelaverage/<index>_<function>/``::

    job.json                 the record (parallelaverage.jobdb)
    payload.pkl              cloudpickle of the function, its arguments and job settings
    attempts/<k>/runs.json   the run ids of launch k (all runs, or only the missing ones)
    attempts/<k>/launch.json how launch k was started (backend, pid or queue job id)
    attempts/<k>/snapshot-r<rank>.pkl  rank's statistics and finished/failed runs so far
    attempts/<k>/result.pkl  the merged statistics of launch k, written last by rank 0
    attempts/<k>/outputs-r<rank>.{pkl,jsonl}  every run's output, appended once
    attempts/<k>/rank-r<rank>.json     host, pid and start time of each rank
    attempts/<k>/sealed.pkl  the launch's progress frozen when a later launch was made
    attempts/<k>/launcher.pid  the local mpiexec's pid (local backend)
    attempts/<k>/exit_code   the launcher's exit status, written when it ends
    attempts/<k>/stdout.txt, stderr.txt

Every file but the append-only outputs is written atomically (temporary file, fsync,
``os.replace``). Output records are length-prefixed, so a record torn by a kill is
detected and ignored; a snapshot only lists runs whose outputs were flushed before it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from parallelaverage._atomic import atomic_write_bytes
from parallelaverage.errors import UntrustedFileError

__all__ = [
    "JobFiles", "Progress", "OutputWriter", "OutputIndex",
    "encode_run_id", "decode_run_id", "write_pickle", "read_pickle", "check_owner",
    "UntrustedFileError", "TRUST_ENV", "process_start_ticks", "live_ranks",
]

PICKLE_PROTOCOL = 5
_RECORD_HEADER = struct.Struct("<II")  # bytes of the pickled run id, bytes of the output


def encode_run_id(run: Any) -> Any:
    """A run id as JSON (tuples become lists)."""
    return list(run) if isinstance(run, tuple) else run


def decode_run_id(value: Any) -> Any:
    """Inverse of :func:`encode_run_id`."""
    return tuple(value) if isinstance(value, list) else value


def write_pickle(path: Path, obj: Any) -> None:
    """Pickle ``obj`` to ``path`` atomically."""
    atomic_write_bytes(path, pickle.dumps(obj, protocol=PICKLE_PROTOCOL))


TRUST_ENV = "PARALLELAVERAGE_TRUST_UIDS"
"""Comma-separated user ids (or ``*``) whose pickles may be loaded besides one's own."""


def check_owner(path: Path) -> None:
    """Refuse a file that another user owns, unless ``PARALLELAVERAGE_TRUST_UIDS`` allows them.

    Raises:
        UntrustedFileError: with the owner, the reason and how to allow it.
    """
    owner = os.stat(path).st_uid
    if not hasattr(os, "geteuid") or owner == os.geteuid():
        return
    trusted = {t.strip() for t in os.environ.get(TRUST_ENV, "").split(",") if t.strip()}
    if "*" in trusted or str(owner) in trusted:
        return
    raise UntrustedFileError(
        f"{path} belongs to user id {owner}, not to you (user id {os.geteuid()}). Loading a pickle "
        f"runs code chosen by whoever wrote it, so parallelaverage refuses. If you trust that user, "
        f"allow them explicitly: export {TRUST_ENV}={owner}"
    )


def read_pickle(path: Path) -> Any:
    """Unpickle ``path`` (one's own files only, see :func:`check_owner`).

    Raises:
        ValueError: the file is torn or not a pickle; the message names it.
        UntrustedFileError: another user owns it.
    """
    check_owner(path)
    data = path.read_bytes()
    try:
        return pickle.loads(data)
    except Exception as error:  # unpickling garbage can raise almost anything
        raise ValueError(f"{path} is corrupt ({type(error).__name__}: {error})") from None


class JobFiles:
    """Paths of one job directory (nothing is read or written on construction)."""

    def __init__(self, job_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(job_dir)

    @property
    def payload(self) -> Path:
        return self.dir / "payload.pkl"

    def attempt_dir(self, attempt: int) -> Path:
        return self.dir / "attempts" / str(attempt)

    def attempts(self) -> list[int]:
        """Numbers of the launches made so far, in order."""
        root = self.dir / "attempts"
        if not root.is_dir():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())

    def runs(self, attempt: int) -> Path:
        return self.attempt_dir(attempt) / "runs.json"

    def launch(self, attempt: int) -> Path:
        return self.attempt_dir(attempt) / "launch.json"

    def snapshot(self, attempt: int, rank: int) -> Path:
        return self.attempt_dir(attempt) / f"snapshot-r{rank}.pkl"

    def snapshots(self, attempt: int) -> list[Path]:
        return sorted(self.attempt_dir(attempt).glob("snapshot-r*.pkl"))

    def result(self, attempt: int) -> Path:
        return self.attempt_dir(attempt) / "result.pkl"

    def outputs(self, attempt: int, rank: int, encoding: str) -> Path:
        suffix = "jsonl" if encoding == "json" else "pkl"
        return self.attempt_dir(attempt) / f"outputs-r{rank}.{suffix}"

    def all_outputs(self, attempt: int) -> list[Path]:
        return sorted(self.attempt_dir(attempt).glob("outputs-r*.*"))

    def rank_info(self, attempt: int, rank: int) -> Path:
        return self.attempt_dir(attempt) / f"rank-r{rank}.json"

    def rank_infos(self, attempt: int) -> list[Path]:
        return sorted(self.attempt_dir(attempt).glob("rank-r*.json"))

    def sealed(self, attempt: int) -> Path:
        """The progress of a launch frozen when a later launch was made (see ``_jobs``)."""
        return self.attempt_dir(attempt) / "sealed.pkl"

    def exit_code(self, attempt: int) -> Path:
        return self.attempt_dir(attempt) / "exit_code"

    def stdout(self, attempt: int) -> Path:
        return self.attempt_dir(attempt) / "stdout.txt"

    def stderr(self, attempt: int) -> Path:
        return self.attempt_dir(attempt) / "stderr.txt"

    def write_runs(self, attempt: int, runs: list[Any]) -> None:
        self.attempt_dir(attempt).mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(self.runs(attempt), json.dumps([encode_run_id(r) for r in runs]).encode())

    def read_runs(self, attempt: int) -> list[Any]:
        return [decode_run_id(r) for r in json.loads(self.runs(attempt).read_bytes())]


@dataclass
class Progress:
    """What a rank (snapshot) or a whole launch (result) has done: merged with ``+=``.

    ``accumulators`` holds one ``Welford`` per averaged element of the output (one for
    a plain output, one per averaged tuple element); ``last_values`` the elements that
    are not averaged, from the last run that produced them.
    """

    finished: list[Any] = field(default_factory=list)
    failed: dict[Any, str] = field(default_factory=dict)
    accumulators: dict[int, Any] = field(default_factory=dict)
    last_values: dict[int, Any] = field(default_factory=dict)
    tuple_length: int | None = None

    def merge(self, other: Progress) -> Progress:
        """Merge ``other`` (a later or parallel piece of work) into this one."""
        self.finished.extend(other.finished)
        self.failed.update(other.failed)
        for index, acc in other.accumulators.items():
            if index in self.accumulators:
                self.accumulators[index].merge(acc)
            else:
                self.accumulators[index] = acc.copy()
        self.last_values.update(other.last_values)
        if other.tuple_length is not None:
            self.tuple_length = other.tuple_length
        return self


class OutputWriter:
    """Append each run's output once to a per-rank file (never rewritten)."""

    def __init__(self, path: Path, encoding: str) -> None:
        self.path, self.encoding = path, encoding
        self._file: BinaryIO = open(path, "ab", buffering=1 << 20)

    def append(self, run: Any, output: Any) -> None:
        if self.encoding == "json":
            line = json.dumps({"run": encode_run_id(run), "output": to_json(output)})
            self._file.write(line.encode() + b"\n")
            return
        key = pickle.dumps(run, protocol=PICKLE_PROTOCOL)
        value = pickle.dumps(output, protocol=PICKLE_PROTOCOL)
        self._file.write(_RECORD_HEADER.pack(len(key), len(value)) + key + value)

    def flush(self) -> None:
        """Make every appended output durable (before a snapshot names its runs)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.flush()
        self._file.close()


class OutputIndex:
    """Where each run's output lies in the output files; outputs are loaded on demand."""

    def __init__(self, paths: list[Path]) -> None:
        self._where: dict[Any, tuple[Path, int, int]] = {}
        for path in paths:
            self._scan(path)

    def _scan(self, path: Path) -> None:
        data = path.read_bytes()
        offset = 0
        if path.suffix == ".jsonl":
            for line in io.BytesIO(data):
                if line.endswith(b"\n"):
                    try:
                        run = decode_run_id(json.loads(line)["run"])
                    except (ValueError, KeyError):
                        break  # a torn line: the rest is unreadable
                    self._where[run] = (path, offset, len(line))
                offset += len(line)
            return
        while offset + _RECORD_HEADER.size <= len(data):
            key_size, value_size = _RECORD_HEADER.unpack_from(data, offset)
            end = offset + _RECORD_HEADER.size + key_size + value_size
            if end > len(data):
                break  # a record torn by a kill
            start = offset + _RECORD_HEADER.size
            try:
                run = pickle.loads(data[start : start + key_size])
            except Exception:
                break
            self._where[run] = (path, start + key_size, value_size)
            offset = end

    def runs(self) -> list[Any]:
        return list(self._where)

    def __contains__(self, run: Any) -> bool:
        return run in self._where

    def load(self, run: Any) -> Any:
        path, offset, size = self._where[run]
        if path.suffix != ".jsonl":
            check_owner(path)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if path.suffix == ".jsonl":
            return from_json(json.loads(data)["output"])
        return pickle.loads(data)


def to_json(value: Any) -> Any:
    """JSON form of an output: arrays and complex numbers are tagged objects."""
    if isinstance(value, np.ndarray):
        data = value.tolist() if value.dtype.kind != "c" else [[z.real, z.imag] for z in value.ravel()]
        return {"__ndarray__": data, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, (complex, np.complexfloating)):
        return {"__complex__": [float(value.real), float(value.imag)]}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if hasattr(value, "sample") and hasattr(value, "weight"):
        return {"__weighted__": [to_json(value.sample), float(value.weight)]}
    return value


def from_json(value: Any) -> Any:
    """Inverse of :func:`to_json`."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        dtype = np.dtype(value["dtype"])
        if dtype.kind == "c":
            pairs = np.array(value["__ndarray__"], dtype=float).reshape(-1, 2)
            return (pairs[:, 0] + 1j * pairs[:, 1]).astype(dtype).reshape(value["shape"])
        return np.array(value["__ndarray__"], dtype=dtype).reshape(value["shape"])
    if "__complex__" in value:
        return complex(*value["__complex__"])
    if "__tuple__" in value:
        return tuple(from_json(v) for v in value["__tuple__"])
    if "__weighted__" in value:
        from parallelaverage.stats import WeightedSample

        sample, weight = value["__weighted__"]
        return WeightedSample(from_json(sample), weight)
    return {k: from_json(v) for k, v in value.items()}


def iter_snapshot_progress(files: JobFiles, attempt: int) -> Iterator[tuple[Path, Progress | None, str | None]]:
    """Each snapshot of a launch as (path, progress, error); a corrupt one gives an error."""
    for path in files.snapshots(attempt):
        try:
            progress = read_pickle(path)
            if not isinstance(progress, Progress):
                raise ValueError(f"{path} is not a snapshot")
            yield path, progress, None
        except UntrustedFileError:
            raise
        except (OSError, ValueError) as error:
            yield path, None, str(error)


def process_start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


def live_ranks(files: JobFiles, attempt: int) -> list[int]:
    """Ranks of a launch still alive on this host (pid and start time both match)."""
    host = socket.gethostname()
    alive = []
    for path in files.rank_infos(attempt):
        try:
            info = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if info.get("host") == host and process_start_ticks(info["pid"]) == info.get("start_ticks"):
            alive.append(info["pid"])
    return alive
