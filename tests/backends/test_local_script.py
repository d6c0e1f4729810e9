"""The local launch script (``attempts/<k>/launch.sh``) against its golden file, and the
launch it makes: detached from the caller, its pid and exit status recorded.

Regenerate the golden file when a change is intended, as for the SLURM scripts::

    UPDATE_GOLDEN=1 pytest tests/backends/test_local_script.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from test_slurm_script import assert_golden

from parallelaverage.jobfiles.layout import JobFiles
from parallelaverage.backends import backend_named
from parallelaverage.backends.local import LocalBackend, render_local_script

JOB_DIR = Path("/home/alice/project/.parallelaverage/1_my_function")


def test_the_local_script():
    script = render_local_script(JobFiles(JOB_DIR), 2, 4, python="/opt/python/bin/python3",
                                 pythonpath="/home/alice/project:/opt/lib", mpiexec="/opt/mpich/bin/mpiexec")
    assert_golden("local.sh", script)


def test_a_local_launch_starts_detached_and_records_its_pid_and_exit_status(tmp_path):
    files = JobFiles(tmp_path / "1_f")
    files.launch_dir(1).mkdir(parents=True)
    backend = LocalBackend()
    # a launch of a worker that exits at once with a usage error: enough to see the plumbing
    info = backend.submit(files, 1, 1, {})
    assert info["backend"] == "local" and info["script"].endswith("launch.sh") and info["pid"] > 0
    assert os.access(info["script"], os.X_OK)
    deadline = time.monotonic() + 60
    while backend.state(files, 1, info) == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert files.exit_status(1) not in (None,)  # recorded when mpiexec ended
    assert (files.launch_dir(1) / "launcher.pid").read_text().strip().isdigit()
    assert isinstance(backend_named("local"), LocalBackend)
    json.dumps(info)  # what launch.json stores
