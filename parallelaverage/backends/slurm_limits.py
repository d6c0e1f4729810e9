"""The submit limits SLURM sets for this user, and what ``sbatch`` says when one is hit.

Sites cap how many jobs a user may have queued or running at once: ``MaxSubmitJobs`` of
the user's association (inherited from the account above it when unset) or
``MaxSubmitJobsPerUser`` of the job's QOS; values of 50 to 500 are common. ``sbatch``
refuses a job beyond the cap at once, naming the limit::

    sbatch: error: AssocMaxSubmitJobLimit
    sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)

The limits are read with ``sacctmgr`` (which asks ``slurmdbd``, not the controller), once
per process and only after a first refusal; ``scontrol show config`` only when the
user has associations on several clusters (to know which one is ours). Where
``sacctmgr`` is not allowed or there is no accounting, no limit is known and the
refusal alone says that one was hit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

__all__ = ["SubmitLimit", "read_submit_limits", "submit_limit_refusal", "policy_refusal"]

_SUBMIT_LIMIT = re.compile(r"\b(?:Assoc|QOS)\w*Submit\w*Limit\b")
_POLICY = re.compile(r"\b(?:Assoc|QOS)\w*Limit\b|violates accounting/QOS policy")


def submit_limit_refusal(stderr: str) -> str | None:
    """The limit's name (``AssocMaxSubmitJobLimit``, ``QOSMaxSubmitJobPerUserLimit``...)
    if ``sbatch`` refused a job because too many are queued, else None."""
    match = _SUBMIT_LIMIT.search(stderr)
    return match.group(0) if match else None


def policy_refusal(stderr: str) -> bool:
    """Whether ``sbatch`` refused the job for an association or QOS limit (of any kind)."""
    return _POLICY.search(stderr) is not None


@dataclass(frozen=True)
class SubmitLimit:
    """A cap on this user's queued and running jobs.

    Attributes:
        jobs: the cap.
        name: the setting (``MaxSubmitJobs``, ``MaxSubmitJobsPerUser``).
        where: whose setting it is (``association root/alice``, ``QOS normal``).
        account, qos: the jobs it counts (those of this account, or of this QOS).
    """

    jobs: int
    name: str
    where: str
    account: str | None = None
    qos: str | None = None

    def __str__(self) -> str:
        return f"{self.name}={self.jobs} of the {self.where}"


Run = Callable[[list[str]], "str | None"]
"""Runs a command; its standard output, or None if it failed."""


def _rows(output: str | None, width: int) -> list[list[str]]:
    rows = []
    for line in (output or "").splitlines():
        fields = line.split("|")
        if len(fields) >= width:
            rows.append(fields[:width])
    return rows


def _number(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def read_submit_limits(run: Run, user: str, *, account: str | None = None, qos: str | None = None) -> list[SubmitLimit]:
    """The per-user submit limits that apply to a job of ``user`` (in ``account``, with
    ``qos``; the defaults when None), as far as ``sacctmgr`` shows them; [] when it
    shows nothing (no accounting, not allowed)."""
    rows = _rows(run(["sacctmgr", "--noheader", "--parsable2", "show", "user", user, "withassoc",
                      "format=defaultaccount,cluster,account,partition,maxsubmit,defaultqos,qos"]), 7)
    if not rows:
        return []
    clusters = {row[1] for row in rows}
    if len(clusters) > 1:
        config = run(["scontrol", "show", "config"]) or ""
        found = re.search(r"^ClusterName\s*=\s*(\S+)", config, re.MULTILINE)
        if found is None:
            return []
        rows = [row for row in rows if row[1] == found.group(1)]
    if not rows:
        return []
    cluster = rows[0][1]
    account = account or rows[0][0]
    mine = sorted((row for row in rows if row[2] == account), key=lambda row: row[3] != "")  # no partition first
    if not mine:
        return []
    _, _, _, _, max_submit, default_qos, qos_list = mine[0]
    limits = []
    jobs = _number(max_submit)
    where = f"association {account}/{user}"
    parent: str | None = account
    for _ in range(16):  # unset on the user: inherited from the account, then its parents
        if jobs is not None or not parent:
            break
        lines = _rows(run(["sacctmgr", "--noheader", "--parsable2", "show", "assoc", "where", f"cluster={cluster}",
                           f"account={parent}", "format=account,user,parentname,maxsubmit"]), 4)
        own = next((row for row in lines if row[1] == ""), None)
        if own is None:
            break
        jobs, where, parent = _number(own[3]), f"account {parent}", own[2] or None
    if jobs is not None:
        limits.append(SubmitLimit(jobs, "MaxSubmitJobs", where, account=account))
    qos = qos or default_qos or (qos_list if qos_list and "," not in qos_list else None)
    if qos:
        lines = _rows(run(["sacctmgr", "--noheader", "--parsable2", "show", "qos", "where", f"name={qos}",
                           "format=name,maxsubmitpu"]), 2)
        if lines and _number(lines[0][1]) is not None:
            limits.append(SubmitLimit(int(lines[0][1]), "MaxSubmitJobsPerUser", f"QOS {qos}", qos=qos))
    return limits
