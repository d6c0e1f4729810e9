"""The one gate every unpickling in parallelaverage goes through.

Results, snapshots, payloads and pickled outputs are pickles: loading one runs code
chosen by whoever wrote it. So a pickle is loaded only when the file belongs to the
current user, or to a user listed in ``PARALLELAVERAGE_TRUST_UIDS``; anything else
raises :class:`~parallelaverage.errors.UntrustedFileError` saying why and how to allow
it. ``tests/reliability`` lists every ``pickle.load``/``loads`` call in the package
and fails on one that is not in this module.

Rank side and caller side both use it; it imports only the standard library and
``parallelaverage.errors``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

from parallelaverage._atomic import atomic_write_bytes
from parallelaverage.errors import UntrustedFileError

__all__ = ["TRUST_ENV", "PICKLE_PROTOCOL", "check_owner", "load_pickle", "loads_from", "write_pickle"]

TRUST_ENV = "PARALLELAVERAGE_TRUST_UIDS"
"""Comma-separated user ids (or ``*``) whose pickles may be loaded besides one's own."""

PICKLE_PROTOCOL = 5


def check_owner(path: str | os.PathLike[str], fd: int | None = None) -> None:
    """Refuse a file that another user owns, unless ``PARALLELAVERAGE_TRUST_UIDS`` allows them.

    Args:
        path: The file (named in the message).
        fd: An open descriptor of it: the owner is read from what was opened, so the
            file cannot be swapped between the check and the read.

    Raises:
        UntrustedFileError: with the owner, the reason and how to allow it.
    """
    owner = (os.fstat(fd) if fd is not None else os.stat(path)).st_uid
    if not hasattr(os, "geteuid") or owner == os.geteuid():
        return
    trusted = {t.strip() for t in os.environ.get(TRUST_ENV, "").split(",") if t.strip()}
    if "*" in trusted or str(owner) in trusted:
        return
    raise UntrustedFileError(
        f"{os.fspath(path)} belongs to user id {owner}, not to you (user id {os.geteuid()}). Loading a "
        f"pickle runs code chosen by whoever wrote it, so parallelaverage refuses. If you trust that "
        f"user, allow them explicitly: export {TRUST_ENV}={owner}"
    )


def loads_from(data: bytes, path: str | os.PathLike[str]) -> Any:
    """Unpickle ``data`` read from ``path``, whose owner the caller has checked.

    Raises:
        ValueError: the bytes are torn or not a pickle; the message names ``path``.
    """
    try:
        return pickle.loads(data)
    except Exception as error:  # unpickling garbage can raise almost anything
        raise ValueError(f"{os.fspath(path)} is corrupt ({type(error).__name__}: {error})") from None


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle a whole file, one's own (or a trusted user's) only.

    Raises:
        UntrustedFileError: another user owns it.
        ValueError: the file is torn or not a pickle; the message names it.
        OSError: it cannot be read.
    """
    with open(path, "rb") as file:
        check_owner(path, file.fileno())
        data = file.read()
    return loads_from(data, path)


def read_trusted(file: BinaryIO, path: str | os.PathLike[str], offset: int, size: int) -> Any:
    """Unpickle ``size`` bytes at ``offset`` of an open file (an output record)."""
    check_owner(path, file.fileno())
    file.seek(offset)
    return loads_from(file.read(size), path)


def write_pickle(path: Path, obj: Any) -> None:
    """Pickle ``obj`` to ``path`` atomically (temporary file, fsync, rename)."""
    atomic_write_bytes(path, pickle.dumps(obj, protocol=PICKLE_PROTOCOL))
