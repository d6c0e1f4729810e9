"""The call index: one small file per call key naming its job, and the job counter.

``index/<digest[:2]>/<digest>.json`` holds::

    {
      "call": "simulate(L=64, T=2.5) [N_runs=100]",
      "function": "__main__.simulate",
      "job_name": "12_simulate",
      "key_digest": "4be1...",
      "schema_version": 1,
      "written_at": "2026-05-09T07:35:25.123456+00:00"
    }

Only ``key_digest`` and ``job_name`` are used; the rest is for people browsing
the folder. One file per key makes a lookup a single small read and a new entry
a single small write, whatever the number of jobs, and keeps one key's entry
from ever damaging another's. The two-hex-digit fan-out keeps directories small
(about 40 entries each at 10,000 jobs).

``families/<family[:2]>/<family>/<job name>`` (empty files) list the jobs of one call
whatever its ``N_runs`` (the family is the digest of the call with ``N_runs=1``), so
that a call with more runs finds the jobs whose runs it can keep without reading every
record: one ``listdir``. An entry is only a hint (its job may be gone).

``digests`` lists, one line each, ``<job name> <key digest>`` of every job folder made
(appended under the database lock): a cache of what each folder's ``job.json`` says, so
that finding a job whose index entry was lost (removed by hand, a half-synced copy)
reads this file and the folders it does not name, not every record. Lines for folders
since deleted are ignored; a folder it lacks (a torn last line, an older database) is
read once and added.

``next_index`` holds the next job number as text (``"13"``). It only makes job
names readable and ordered; uniqueness of job folders comes from the rename that
creates them (see :mod:`.database`).
"""

from __future__ import annotations

import os
from pathlib import Path

from parallelaverage._atomic import atomic_write_bytes, atomic_write_json, read_json
from .errors import CorruptFileError
from .keys import CallKey
from .records import JOB_NAME_PATTERN, SCHEMA_VERSION, check_schema_version, utc_now

__all__ = ["INDEX_DIRNAME", "COUNTER_FILENAME", "DIGESTS_FILENAME", "entry_path", "read_entry", "write_entry",
           "read_counter", "write_counter", "family_dir", "read_digests", "append_digests"]

INDEX_DIRNAME = "index"
COUNTER_FILENAME = "next_index"
DIGESTS_FILENAME = "digests"

_digests_cache: dict[Path, tuple[int, int, dict[str, str]]] = {}
"""Per digests file: (inode, bytes read, job name -> digest), so that a process reads
only what other processes appended since its last look."""


def read_digests(root: Path) -> dict[str, str]:
    """Job name -> key digest of every job folder the ``digests`` file lists (see the
    module docstring); empty if there is no such file. Malformed lines are skipped.

    The dict is this process's cache of the file: add to it only what you append."""
    path = root / INDEX_DIRNAME / DIGESTS_FILENAME
    try:
        with open(path, "rb") as stream:
            inode = os.fstat(stream.fileno()).st_ino
            cached = _digests_cache.get(path)
            offset, known = (cached[1], cached[2]) if cached and cached[0] == inode else (0, {})
            stream.seek(offset)
            data = stream.read()
    except FileNotFoundError:
        _digests_cache.pop(path, None)
        return {}
    complete = data[:data.rfind(b"\n") + 1]  # a line being appended is read next time
    for line in complete.decode("utf-8", "replace").splitlines():
        name, _, digest = line.partition(" ")
        if JOB_NAME_PATTERN.fullmatch(name) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            known[name] = digest
    _digests_cache[path] = (inode, offset + len(complete), known)
    return known


def append_digests(root: Path, pairs: list[tuple[str, str]], *, dir_mode: int) -> None:
    """Add ``(job name, key digest)`` lines to the ``digests`` file (under the database lock)."""
    if not pairs:
        return
    folder = root / INDEX_DIRNAME
    if not folder.is_dir():
        os.makedirs(folder, mode=dir_mode, exist_ok=True)
    data = "".join(f"{name} {digest}\n" for name, digest in pairs).encode()
    fd = os.open(folder / DIGESTS_FILENAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def entry_path(root: Path, digest: str) -> Path:
    """The index file of a key digest.

    Args:
        root: The database folder (``<path>/.parallelaverage``).
        digest: :attr:`CallKey.digest`.

    Returns:
        ``root/index/<digest[:2]>/<digest>.json``.
    """
    return root / INDEX_DIRNAME / digest[:2] / f"{digest}.json"


def family_dir(root: Path, family: str) -> Path:
    """The folder listing the jobs of one call family (see the module docstring)."""
    return root / INDEX_DIRNAME / "families" / family[:2] / family


def read_entry(path: Path, digest: str) -> str:
    """The job name an index file names.

    Args:
        path: The index file, from :func:`entry_path`.
        digest: The key digest it must belong to.

    Returns:
        The job name, e.g. ``"12_simulate"``.

    Raises:
        FileNotFoundError: No entry for this key.
        CorruptFileError: The file is not an index entry for ``digest``.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise CorruptFileError(path, f"expected a JSON object (an index entry), found {type(data).__name__}")
    check_schema_version(data, path, what="index entry")
    if data.get("key_digest") != digest:
        raise CorruptFileError(path, f"holds the entry of key {data.get('key_digest')!r}, not of {digest}")
    job_name = data.get("job_name")
    if not isinstance(job_name, str) or not JOB_NAME_PATTERN.fullmatch(job_name):
        raise CorruptFileError(path, f"job_name {job_name!r} is not a job name such as '12_simulate'")
    return job_name


def write_entry(root: Path, key: CallKey, job_name: str, *, dir_mode: int) -> None:
    """Point ``key`` at ``job_name``, replacing any previous entry atomically.

    Args:
        root: The database folder.
        key: The call.
        job_name: Its job.
        dir_mode: Mode of a fan-out directory if it must be created.
    """
    path = entry_path(root, key.digest)
    if not path.parent.is_dir():
        os.makedirs(path.parent, mode=dir_mode, exist_ok=True)
    atomic_write_json(
        path,
        {
            "schema_version": SCHEMA_VERSION,
            "key_digest": key.digest,
            "job_name": job_name,
            "function": key.function,
            "call": key.describe(),
            "written_at": utc_now(),
        },
    )


def read_counter(root: Path) -> int:
    """The next job number (call it under the database lock).

    Args:
        root: The database folder.

    Returns:
        The number in ``next_index``; if that file is missing (a new database, or
        someone deleted it), one more than the highest job folder number.

    Raises:
        CorruptFileError: ``next_index`` holds something other than a positive integer.
    """
    counter = root / COUNTER_FILENAME
    try:
        text = counter.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        indices = [int(match.group(1)) for name in os.listdir(root) if (match := JOB_NAME_PATTERN.fullmatch(name))]
        return max(indices, default=0) + 1
    if not text.isdigit() or int(text) < 1:
        raise CorruptFileError(counter, f"expected a positive integer, found {text[:40]!r}")
    return int(text)


def write_counter(root: Path, next_index: int) -> None:
    """Store the next job number.

    Args:
        root: The database folder.
        next_index: The number the next job will get.
    """
    atomic_write_bytes(root / COUNTER_FILENAME, f"{next_index}\n".encode())
