"""Named points on the caller's submission paths where a test can stop or kill the caller.

``PARALLELAVERAGE_TEST_HOOKS="launch_created=kill,state_read=sleep:2"`` makes a caller
SIGKILL itself when it reaches ``launch_created`` and sleep 2 s at ``state_read``.
The reliability tests use it to kill callers between any two steps of a submission
and to stall one of two racing callers; unset (always, outside tests) it costs one
dictionary lookup per submission.

Points, in the order a submission passes them: ``job_created`` (the job folder with
its first launch folder exists), ``state_read`` (a re-submission read the job's
state under the launch lock), ``launch_created`` (a new launch folder exists),
``launch_submitted`` (the backend accepted it, ``launch.json`` not yet written),
``launch_recorded`` (``launch.json`` written).
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["hook", "HOOKS_ENV", "POINTS"]

HOOKS_ENV = "PARALLELAVERAGE_TEST_HOOKS"
POINTS = ("job_created", "state_read", "launch_created", "launch_submitted", "launch_recorded")


def hook(point: str) -> None:
    """Act at ``point`` if the environment asks for it (see the module docstring)."""
    spec = os.environ.get(HOOKS_ENV)
    if not spec:
        return
    for item in spec.split(","):
        name, _, action = item.strip().partition("=")
        if name != point:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action.startswith("sleep:"):
            time.sleep(float(action.split(":", 1)[1]))
