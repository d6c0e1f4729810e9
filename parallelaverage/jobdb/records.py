"""The job record: what a job's ``job.json`` holds, and its schema.

A record is written by people's tools and read by people, so ``job.json`` is
indented JSON with sorted keys, for example::

    {
      "N_runs": 100,
      "arguments": {"L": "64", "T": "2.5"},
      "arguments_order": ["L", "T"],
      "average_results": "all",
      "call": "simulate(L=64, T=2.5)",
      "code_hash": "9f2c...",
      "code_parts": {"code": "0ce8f032948d4639", "global OFFSET": "fd09abf9983d3056"},
      "function": "__main__.simulate",
      "job_name": "12_simulate",
      "key_digest": "4be1...",
      "options": {"N_tasks": 4},
      "queue": "slurm",
      "queue_job_id": "123456",
      "runs": {"failed": 0, "not_ready": 100, "successful": 0},
      "schema_version": 1,
      "status": "submitted",
      "submitted_at": "2026-05-09T07:35:25.123456+00:00",
      "updated_at": "2026-05-09T07:35:25.123456+00:00"
    }

``schema_version`` lets a future parallelaverage read old records and lets an
old one refuse new records with a message instead of misreading them. Fields
this version does not know are kept in :attr:`JobRecord.extra` and written
back unchanged, so a round trip through an older tool loses nothing.

``status`` is one of :data:`STATUSES` (older records may hold other words; they are
read as they are).

``arguments`` is written with sorted keys like the rest; ``arguments_order`` keeps the
parameters in signature order (records written before it had only the readable call,
whose order a record read from them takes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Mapping
from typing import Any

from .errors import CorruptFileError
from .keys import CallKey, _render_argument, check_average_results, check_n_runs, describe_call

__all__ = ["JobRecord", "new_record", "utc_now", "SCHEMA_VERSION", "STATUSES", "LIVE_STATUSES", "JOB_NAME_PATTERN"]

#: Version of the ``job.json`` layout written by this module.
SCHEMA_VERSION = 1

#: The values of :attr:`JobRecord.status` parallelaverage writes, in lifecycle order:
#: ``submitted`` (being launched), ``running`` (queued or executing), and the states a
#: job stops in: ``completed`` (no run missing; some may have failed), ``ended`` (runs
#: missing: killed, timed out, crashed), ``cancelled``, ``submit_failed`` (the queue
#: refused it), ``not_launched`` (its submitter died before launching it).
STATUSES = ("submitted", "running", "completed", "ended", "cancelled", "submit_failed", "not_launched")

#: The statuses of a job that may still change by itself.
LIVE_STATUSES = ("submitted", "running")

#: Fields a record may lack: added after schema version 1 was first written.
_OPTIONAL_FIELDS = frozenset({"code_parts", "arguments_order"})

#: Job names: ``<index>_<function name>``, index counting from 1.
JOB_NAME_PATTERN = re.compile(r"([1-9][0-9]*)_([A-Za-z0-9_][A-Za-z0-9_.-]*)")


def utc_now() -> str:
    """The current time as an ISO-8601 string in UTC (microseconds).

    Returns:
        e.g. ``"2026-05-09T07:35:25.123456+00:00"``.
    """
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class JobRecord:
    """One job: the call it answers, its options, its state.

    Use :func:`new_record` to make one for a new job and
    :func:`dataclasses.replace` to derive an updated one.

    Attributes:
        job_name: ``"<index>_<function>"``, also the job's folder name.
        function: Qualified function name, ``"module.qualname"``.
        call: Readable call, e.g. ``"simulate(L=64)"``.
        arguments: Readable value of each argument, by parameter name.
        arguments_order: The names of ``arguments`` in signature order (``*args`` and
            ``**kwargs`` with their stars); taken from ``call`` when not given.
        key_digest: :attr:`CallKey.digest` of the call.
        code_hash: :func:`~parallelaverage.jobdb.code_hash` of the function at submission.
        code_parts: Its :func:`~parallelaverage.jobdb.code_fingerprint`, so that a later
            call can say what changed; empty in records written before it existed.
        N_runs: Number of runs, or a list of dimensions for index-tuple run ids.
        average_results: ``"all"``, ``"keep"`` (outputs kept, not averaged) or the
            list of averaged tuple elements.
        options: Further JSON-able job options (``N_tasks``, queue settings, ...).
        status: Job state; conventionally one of :data:`STATUSES`.
        submitted_at: ISO-8601 time the job was created.
        updated_at: ISO-8601 time of the last save.
        n_successful: Runs finished successfully.
        n_failed: Runs that raised.
        n_not_ready: Runs without a result yet.
        queue: Name of the queue backend (``"local"``, ``"slurm"``), if submitted.
        queue_job_id: The queue's id of the job, if any.
        extra: Top-level ``job.json`` fields this version does not know; kept as is.
    """

    job_name: str
    function: str
    call: str
    arguments: dict[str, str]
    key_digest: str
    code_hash: str
    N_runs: int | list[int]
    average_results: str | list[int]
    options: dict[str, Any]
    status: str
    submitted_at: str
    updated_at: str
    n_successful: int = 0
    n_failed: int = 0
    n_not_ready: int = 0
    queue: str | None = None
    queue_job_id: str | None = None
    code_parts: dict[str, str] = field(default_factory=dict)
    arguments_order: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.arguments_order and isinstance(self.arguments, dict) and isinstance(self.call, str):
            # a record written before arguments_order: its call lists them in order
            object.__setattr__(self, "arguments_order", _order_in_call(self.call, self.arguments))
        _check_record(self)

    @property
    def index(self) -> int:
        """The job's number: 1 for the first job of a database."""
        return int(self.job_name.split("_", 1)[0])

    def describe(self) -> str:
        """The call with its run options, e.g. ``"simulate(L=64) [N_runs=100]"``."""
        return describe_call(self.call, self.N_runs, self.average_results)

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON object stored in ``job.json``.

        Returns:
            A dict of JSON data, including ``schema_version``.
        """
        data = dict(self.extra)
        data.update(
            schema_version=SCHEMA_VERSION,
            job_name=self.job_name,
            function=self.function,
            call=self.call,
            arguments=dict(self.arguments),
            arguments_order=list(self.arguments_order),
            key_digest=self.key_digest,
            code_hash=self.code_hash,
            code_parts=dict(self.code_parts),
            N_runs=self.N_runs,
            average_results=self.average_results,
            options=self.options,
            status=self.status,
            submitted_at=self.submitted_at,
            updated_at=self.updated_at,
            runs={"successful": self.n_successful, "failed": self.n_failed, "not_ready": self.n_not_ready},
            queue=self.queue,
            queue_job_id=self.queue_job_id,
        )
        return data

    @classmethod
    def from_json(cls, data: Any, path: str | os.PathLike[str]) -> JobRecord:
        """Read a record from the JSON object of a ``job.json``.

        Args:
            data: The decoded JSON.
            path: The file it came from, for error messages.

        Returns:
            The record.

        Raises:
            CorruptFileError: ``data`` is not a job record of a schema this
                version reads; the message names ``path`` and what is wrong.
        """
        if not isinstance(data, dict):
            raise CorruptFileError(path, f"expected a JSON object (a job record), found {type(data).__name__}")
        check_schema_version(data, path, what="job record")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "n_successful", "n_failed", "n_not_ready"}
        missing = sorted((known - _OPTIONAL_FIELDS | {"runs"}) - data.keys())
        if missing:
            raise CorruptFileError(path, f"not a complete job record: missing {', '.join(map(repr, missing))}")
        runs = data["runs"]
        if not isinstance(runs, dict) or not {"successful", "failed", "not_ready"} <= runs.keys():
            raise CorruptFileError(path, "field 'runs' must be an object with 'successful', 'failed', 'not_ready'")
        extra = {k: v for k, v in data.items() if k not in known | {"runs", "schema_version"}}
        try:
            return cls(
                **{name: data[name] for name in known if name in data},
                n_successful=runs["successful"],
                n_failed=runs["failed"],
                n_not_ready=runs["not_ready"],
                extra=extra,
            )
        except (TypeError, ValueError) as exc:
            raise CorruptFileError(path, str(exc)) from None


def _order_in_call(call: str, arguments: Mapping[str, Any]) -> list[str]:
    """The parameters in signature order, for a record written before ``arguments_order``.

    The readable call, ``name(label=text, ...)``, lists them in signature order, each
    piece exactly as :func:`~parallelaverage.jobdb.keys.call_key` rendered it; names
    not found there (a call cut short) follow in sorted order.
    """
    remaining = {label: text for label, text in arguments.items() if isinstance(text, str)}
    order: list[str] = []
    position = call.find("(") + 1
    while remaining and position > 0:
        for label, text in remaining.items():
            piece = _render_argument(label, text)
            if call.startswith(piece, position):
                order.append(label)
                del remaining[label]
                position += len(piece) + 2  # ", "
                break
        else:
            break
    return order + sorted(remaining)


def check_schema_version(data: dict[str, Any], path: str | os.PathLike[str], *, what: str) -> int:
    """Check the ``schema_version`` of a file's JSON object.

    Args:
        data: The decoded JSON object.
        path: The file it came from, for error messages.
        what: What the file should be, e.g. ``"job record"``.

    Returns:
        The schema version (an int from 1 to :data:`SCHEMA_VERSION`).

    Raises:
        CorruptFileError: No or an invalid ``schema_version``, or a newer one.
    """
    version = data.get("schema_version")
    if version is None:
        raise CorruptFileError(path, f"not a parallelaverage {what} (it has no 'schema_version')")
    if type(version) is not int or version < 1:
        raise CorruptFileError(path, f"invalid schema_version {version!r} (expected an integer >= 1)")
    if version > SCHEMA_VERSION:
        raise CorruptFileError(
            path,
            f"written by a newer parallelaverage (schema_version {version}; this version reads up to "
            f"{SCHEMA_VERSION}); upgrade parallelaverage to use it",
        )
    return version


def new_record(
    key: CallKey,
    job_name: str,
    *,
    code_hash: str,
    code_parts: Mapping[str, str] | None = None,
    options: dict[str, Any] | None = None,
    status: str = "created",
    queue: str | None = None,
    queue_job_id: str | None = None,
) -> JobRecord:
    """The record of a job that is being created for ``key``.

    Args:
        key: The call the job answers.
        job_name: The name the database gave the job.
        code_hash: :func:`~parallelaverage.jobdb.code_hash` of the function now.
        code_parts: :func:`~parallelaverage.jobdb.code_fingerprint` of the function now.
        options: Further JSON-able job options.
        status: Initial status.
        queue: Queue backend name, if already known.
        queue_job_id: Queue job id, if already known.

    Returns:
        A record with all runs not ready and both timestamps set to now.

    Raises:
        TypeError, ValueError: A field is invalid (the message names it).
    """
    now = utc_now()
    return JobRecord(
        job_name=job_name,
        function=key.function,
        call=key.call,
        arguments=key.arguments,
        arguments_order=[label for label, _ in key.argument_reprs],
        key_digest=key.digest,
        code_hash=code_hash,
        code_parts={} if code_parts is None else dict(code_parts),
        N_runs=key.N_runs,
        average_results=key.average_results,
        options={} if options is None else dict(options),
        status=status,
        submitted_at=now,
        updated_at=now,
        n_not_ready=key.N_runs if isinstance(key.N_runs, int) else math.prod(key.N_runs),
        queue=queue,
        queue_job_id=queue_job_id,
    )


def _check_record(record: JobRecord) -> None:
    """Validate every field; the error names the field and what it must be."""
    if not isinstance(record.job_name, str) or not JOB_NAME_PATTERN.fullmatch(record.job_name):
        raise ValueError(f"job_name={record.job_name!r}: must look like '12_simulate' (<index>_<function>)")
    for name in ("function", "call", "key_digest", "code_hash", "status"):
        value = getattr(record, name)
        if not isinstance(value, str) or not value:
            raise TypeError(f"field {name!r}={value!r}: must be a non-empty string")
    if not re.fullmatch(r"[0-9a-f]{64}", record.key_digest):
        raise ValueError(f"field 'key_digest'={record.key_digest!r}: must be 64 lowercase hex digits")
    if not isinstance(record.arguments, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in record.arguments.items()
    ):
        raise TypeError("field 'arguments': must map parameter names to readable strings")
    if not isinstance(record.arguments_order, list) or sorted(record.arguments_order) != sorted(record.arguments):
        raise ValueError(f"field 'arguments_order'={record.arguments_order!r}: must list the names of 'arguments' "
                         "(in signature order)")
    if not isinstance(record.code_parts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in record.code_parts.items()
    ):
        raise TypeError("field 'code_parts': must map part names to hex digests")
    for name in ("n_successful", "n_failed", "n_not_ready"):
        value = getattr(record, name)
        if type(value) is not int or value < 0:
            raise TypeError(f"field {name!r}={value!r}: must be an integer >= 0")
    check_n_runs(record.N_runs)
    check_average_results(record.average_results)
    for name in ("queue", "queue_job_id"):
        value = getattr(record, name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"field {name!r}={value!r}: must be a string or null")
    for name in ("submitted_at", "updated_at"):
        value = getattr(record, name)
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise ValueError(f"field {name!r}={value!r}: must be an ISO-8601 time") from None
    for name in ("options", "extra"):
        value = getattr(record, name)
        if not isinstance(value, dict):
            raise TypeError(f"field {name!r}: must be a dict of JSON data, got {type(value).__name__}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"field {name!r}: must hold only JSON data (str, finite numbers, bool, None, lists, "
                f"dicts with str keys): {exc}"
            ) from None
