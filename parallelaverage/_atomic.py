"""Atomic file writes: a reader sees the old file or the new one, never a mix.

Used by every layer that writes files (the job database, the worker, the caller);
it imports nothing of parallelaverage, so the MPI ranks can use it cheaply.

Every write goes to a temporary file in the *same directory* as the target,
named ``.<target>.tmp-<host>-<pid>-<random>``, is flushed to disk with
``fsync`` and then renamed over the target with :func:`os.replace`. A rename
within one directory is atomic on POSIX filesystems, including the shared
filesystems of clusters (NFS, Lustre, GPFS), so:

* a crash or ``SIGKILL`` mid-write leaves the old file intact (and at worst a
  stray temporary file whose name says which host and process left it);
* two writers racing without a working lock each write a whole file and the
  last rename wins: duplicated work, never a corrupt file.

The host name and pid in the temporary name keep writers on different compute
nodes from colliding even when ``O_EXCL`` is unreliable (old NFS); the random
suffix covers pid reuse and threads.

Notes:
    The containing directory is not ``fsync``-ed after the rename: after a power
    loss the newest rename may be lost, but each file is still whole. For a job
    cache that is the right trade (a lost update means a job is re-run).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from parallelaverage.errors import CorruptFileError


__all__ = ["atomic_write_bytes", "atomic_write_json", "read_json", "host_tag", "TEMP_MARKER", "CorruptFileError"]

#: Substring that marks temporary files of :func:`atomic_write_bytes`.
TEMP_MARKER = ".tmp-"


def host_tag() -> str:
    """The short host name, reduced to characters safe in a file name (at most 32)."""
    host = socket.gethostname().split(".")[0] or "host"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in host)[:32]


def _temp_path(path: Path) -> Path:
    """A fresh temporary path next to ``path``."""
    name = f".{path.name}{TEMP_MARKER}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(name)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file ``path`` by ``data`` atomically.

    Args:
        path: The file to write. Its directory must exist.
        data: The complete new content.

    Raises:
        FileNotFoundError: The directory of ``path`` does not exist.
        PermissionError: The directory is not writable.
        OSError: Writing failed (e.g. disk full); ``path`` is unchanged and the
            temporary file removed.
    """
    target = Path(path)
    temp = _temp_path(target)
    # O_EXCL: never write into someone else's temporary file, however unlikely.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        # Also on KeyboardInterrupt: a half temporary file is useless to anyone.
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON with sorted keys, atomically.

    The output is meant for humans too (``cat job.json``): two-space indent,
    sorted keys, a final newline, UTF-8.

    Args:
        path: The file to write. Its directory must exist.
        obj: JSON data: dicts with string keys, lists, strings, finite numbers,
            booleans and ``None``.

    Raises:
        TypeError: ``obj`` holds something JSON cannot represent; nothing is written.
        ValueError: ``obj`` holds NaN or infinity (not valid JSON); nothing is written.
        OSError: As for :func:`atomic_write_bytes`.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"cannot write {os.fspath(path)} as JSON: {exc}") from exc
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, naming the file if its content is not JSON.

    Args:
        path: The file to read.

    Returns:
        The decoded JSON value.

    Raises:
        FileNotFoundError: ``path`` does not exist (callers decide whether that
            is an error).
        CorruptFileError: The file is empty, not UTF-8 or not valid JSON.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise CorruptFileError(path, "the file is empty")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CorruptFileError(
            path, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
