"""The job database: call identity, job records and their locked on-disk store.

A decorated call becomes a :class:`CallKey` (:func:`call_key`), which names at
most one current job in a :class:`JobDatabase` under ``<path>/.parallelaverage``.
Each job is a folder with a readable ``job.json`` (:class:`JobRecord`). Files
are only ever replaced whole (:mod:`.atomic`); locks (:mod:`.locks`) decide who
creates a job, so a lock that fails costs duplicated work, never a corrupt file.

This package imports only the standard library, numpy, cloudpickle and filelock.
"""

from parallelaverage._atomic import atomic_write_bytes, atomic_write_json, read_json
from .database import JobDatabase, JobScan
from .errors import CorruptFileError, JobNotFoundError, LockTimeoutError
from .keys import CallKey, call_key, code_changes, code_fingerprint, code_hash, describe_code_changes, describe_value
from .locks import SOFT_LOCKS_ENV
from .records import LIVE_STATUSES, SCHEMA_VERSION, STATUSES, JobRecord, new_record

__all__ = [
    "CallKey",
    "CorruptFileError",
    "JobDatabase",
    "JobNotFoundError",
    "JobRecord",
    "JobScan",
    "LockTimeoutError",
    "SCHEMA_VERSION",
    "SOFT_LOCKS_ENV",
    "STATUSES",
    "LIVE_STATUSES",
    "atomic_write_bytes",
    "atomic_write_json",
    "call_key",
    "code_changes",
    "code_fingerprint",
    "code_hash",
    "describe_code_changes",
    "describe_value",
    "new_record",
    "read_json",
]
