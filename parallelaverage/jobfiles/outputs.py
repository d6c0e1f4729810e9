"""Kept outputs (``@parallel``, ``keep_runs=True``): how each run's output is stored and found.

Each rank appends every output once to ``outputs-r<rank>.bin`` (a pickle per record,
``encoding="pickle"``) or ``.jsonl`` (a JSON line, ``encoding="json"``), and one entry
per record to ``outputs-r<rank>.idx``: ``(position, offset, size)`` as three int64.
An output is encoded completely before anything is written, so an output that cannot
be stored fails its run alone and leaves no partial record. The writer flushes the
data before the index and both before a snapshot names the runs, so every run a
snapshot calls done has its output on disk; an index entry that points past the end
of its data file (torn by a kill) is ignored.

Reading builds the index once, with one read of each ``.idx`` file (24 bytes per run),
and reads an output only when it is asked for. Files written before the ``.idx``
files existed (``outputs-r<k>.pkl`` with pickled run ids, ``.jsonl`` without
positions) are still read, by scanning them.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from parallelaverage.jobfiles.trust import PICKLE_PROTOCOL, check_owner, loads_from, read_trusted
from parallelaverage.runspace import RunSpace

__all__ = ["OutputWriter", "OutputIndex", "encode_output", "to_json", "from_json"]

_INDEX_ENTRY = np.dtype([("position", "<i8"), ("offset", "<i8"), ("size", "<i8")])
_LEGACY_HEADER = struct.Struct("<II")  # bytes of the pickled run id, bytes of the output


def encode_output(output: Any, encoding: str, run_json: Any = None) -> bytes:
    """The bytes stored for one output.

    Raises:
        TypeError: the encoding cannot store it; the message names the type.
    """
    if encoding == "json":
        try:
            return (json.dumps({"run": run_json, "output": to_json(output)}, allow_nan=True) + "\n").encode()
        except (TypeError, ValueError, RecursionError) as error:
            raise TypeError(f"returned {_kind(output, error)}, which encoding='json' cannot store; use "
                            "encoding='pickle', or return lists, dicts, numbers, strings and numpy arrays") from None
    import pickle

    try:
        return pickle.dumps(output, protocol=PICKLE_PROTOCOL)
    except Exception as error:  # pickling can raise almost anything
        raise TypeError(f"returned {_kind(output, error)}, which encoding='pickle' cannot store; return "
                        "data (numbers, arrays, lists, dicts, plain objects)") from None


def _kind(output: Any, error: BaseException) -> str:
    return f"a {type(output).__name__} ({type(error).__name__}: {error})"


class OutputWriter:
    """Append each run's output once to a rank's output file and its index."""

    def __init__(self, path: Path, encoding: str) -> None:
        self.path, self.encoding = path, encoding
        self._data: BinaryIO = open(path, "ab", buffering=1 << 20)
        self._index: BinaryIO = open(path.with_suffix(".idx"), "ab", buffering=1 << 16)
        self._offset = self._data.tell()

    def append(self, position: int, encoded: bytes) -> None:
        """Store an output encoded by :func:`encode_output`."""
        self._data.write(encoded)
        self._index.write(struct.pack("<qqq", position, self._offset, len(encoded)))
        self._offset += len(encoded)

    def flush(self) -> None:
        """Make every appended output durable (before a snapshot names its runs)."""
        self._data.flush()
        os.fsync(self._data.fileno())
        self._index.flush()
        os.fsync(self._index.fileno())

    def close(self) -> None:
        self.flush()
        self._data.close()
        self._index.close()


class OutputIndex:
    """Where each run's output lies (by position); outputs are read on demand.

    Args:
        paths: the launches' output data files, oldest launch first (a later
            launch's output of a position wins).
        space: the job's run space (to read files written before positions were stored).
    """

    def __init__(self, paths: list[Path], space: RunSpace) -> None:
        self._paths = list(paths)
        self._space = space
        self._where: dict[int, tuple[int, int, int]] | None = None  # position -> (file, offset, size)

    def _build(self) -> dict[int, tuple[int, int, int]]:
        if self._where is None:
            where: dict[int, tuple[int, int, int]] = {}
            for number, path in enumerate(self._paths):
                index_path = path.with_suffix(".idx")
                if path.suffix in (".bin", ".jsonl") and index_path.exists():
                    self._read_index(number, path, index_path, where)
                elif path.suffix == ".jsonl":
                    self._scan_jsonl(number, path, where)
                elif path.suffix == ".pkl":
                    self._scan_legacy_pickles(number, path, where)
            self._where = where
        return self._where

    @staticmethod
    def _read_index(number: int, path: Path, index_path: Path, where: dict[int, tuple[int, int, int]]) -> None:
        data_size = path.stat().st_size
        raw = index_path.read_bytes()
        entries = np.frombuffer(raw[: len(raw) - len(raw) % _INDEX_ENTRY.itemsize], dtype=_INDEX_ENTRY)
        whole = entries[(entries["offset"] + entries["size"]) <= data_size]
        for position, offset, size in zip(whole["position"].tolist(), whole["offset"].tolist(), whole["size"].tolist()):
            where[position] = (number, offset, size)

    def _scan_jsonl(self, number: int, path: Path, where: dict[int, tuple[int, int, int]]) -> None:
        offset = 0
        with open(path, "rb") as file:
            for line in file:
                if not line.endswith(b"\n"):
                    break  # torn by a kill
                try:
                    run = self._space.decode_id(json.loads(line)["run"])
                    where[self._space.position_of(run)] = (number, offset, len(line))
                except (ValueError, KeyError):
                    break
                offset += len(line)

    def _scan_legacy_pickles(self, number: int, path: Path, where: dict[int, tuple[int, int, int]]) -> None:
        with open(path, "rb") as file:
            check_owner(path, file.fileno())  # the run ids are pickles too
            data = file.read()
        offset = 0
        while offset + _LEGACY_HEADER.size <= len(data):
            key_size, value_size = _LEGACY_HEADER.unpack_from(data, offset)
            end = offset + _LEGACY_HEADER.size + key_size + value_size
            if end > len(data):
                break
            start = offset + _LEGACY_HEADER.size
            try:
                run = loads_from(data[start : start + key_size], path)
                where[self._space.position_of(run)] = (number, start + key_size, value_size)
            except (ValueError, KeyError):
                break
            offset = end

    def __contains__(self, position: int) -> bool:
        return position in self._build()

    def positions(self) -> list[int]:
        return sorted(self._build())

    def load(self, position: int) -> Any:
        number, offset, size = self._build()[position]
        path = self._paths[number]
        with open(path, "rb") as file:
            if path.suffix == ".jsonl":
                file.seek(offset)
                return from_json(json.loads(file.read(size))["output"])
            return read_trusted(file, path, offset, size)


def to_json(value: Any) -> Any:
    """JSON form of an output: arrays, tuples and complex numbers are tagged objects.

    Raises:
        TypeError: a value JSON cannot hold (a set, an arbitrary object).
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise TypeError(f"a numpy array of dtype {value.dtype}")
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
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


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
