"""Concurrent callers, bad input (also under python -O) and the security promises."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import parallelaverage as pa
from pa_testing import jobs_in
from parallelaverage import RunsFailedWarning, parallel, parallel_average, wait

THIS = sys.modules[__name__]
REPS, CALLERS = 20, 8

CALLER = textwrap.dedent("""
    import sys, time
    from parallelaverage import parallel_average, wait

    @parallel_average(N_runs=4, N_tasks=1, queuing_system="local", path=sys.argv[1])
    def same(rep):
        return float(rep)

    start = float(sys.argv[2])
    for rep in range({reps}):
        time.sleep(max(0.0, start + rep * 1.0 - time.time()))  # all callers at the same moment
        result = wait(same)(rep)
        print("JOB", rep, result.job_name, result.data, flush=True)
""")


def test_simultaneous_identical_calls_make_exactly_one_job(tmp_path):
    script = tmp_path / "caller.py"
    script.write_text(CALLER.format(reps=REPS))
    start = time.time() + 3.0  # leave time for 8 interpreters to start
    callers = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(CALLERS)]
    seen: dict[int, set[str]] = {}
    for caller in callers:
        out, err = caller.communicate(timeout=300)
        assert caller.returncode == 0, err
        for line in out.splitlines():
            if line.startswith("JOB"):
                _, rep, name, value = line.split()
                assert float(value) == float(rep)
                seen.setdefault(int(rep), set()).add(name)
    assert sorted(seen) == list(range(REPS))
    assert all(len(names) == 1 for names in seen.values()), seen  # every caller got the one job
    assert len(jobs_in(tmp_path)) == REPS  # exactly one job per call, never two


BAD_INPUTS = textwrap.dedent("""
    import json, sys, threading
    from parallelaverage import parallel, parallel_average
    cases = [
        ("parallel", dict(N_runs=0, N_tasks=1)), ("parallel", dict(N_runs=-1, N_tasks=1)),
        ("parallel", dict(N_runs=1.5, N_tasks=1)), ("parallel", dict(N_runs=(3, 0), N_tasks=1)),
        ("parallel", dict(N_runs=4, N_tasks=0)), ("parallel", dict(N_runs=4, N_tasks=9)),
        ("parallel", dict(N_runs=4, N_tasks=2, queuing_system="lsf")),
        ("parallel", dict(N_runs=4, N_tasks=2, encoding="yaml")),
        ("parallel", dict(N_runs=4, N_tasks=2, time="1:00\\n#SBATCH --begin=now")),
        ("parallel", dict(N_runs=4, N_tasks=2, path="/does/not/exist")),
        ("parallel_average", dict(N_runs=4, N_tasks=2, average_results="most")),
        ("parallel", dict(N_runs=4, N_tasks=2, queuing_system="local", tme="00:10:00")),
        ("parallel_average", dict(N_runs=4, N_tasks=2, queuing_system="auto", mem_per_cpus="1G")),
        ("parallel", dict(N_runs=4, N_tasks=2, queuing_system="local", keep_runs=True)),
        ("parallel", dict(N_runs=4, N_tasks=2, average_results="all")),
        ("parallel_average", dict(N_runs=4, N_tasks=2, queuing_system="local", signal="B:USR1@60")),
    ]
    results = []
    for kind, options in cases:
        try:
            {"parallel": parallel, "parallel_average": parallel_average}[kind](**options)
            results.append(None)
        except (TypeError, ValueError) as error:
            results.append([type(error).__name__, str(error)])

    @parallel(N_runs=2, N_tasks=1, queuing_system="local", path=sys.argv[1])
    def f(x):
        return x

    deep = []
    for _ in range(100_000):
        deep = [deep]
    for argument in (threading.Lock(), (i for i in range(3)), deep):
        try:
            f(argument)
            results.append(None)
        except TypeError as error:
            results.append(["TypeError", str(error)])
    print(json.dumps(results))
""")

EXPECTED = [
    "N_runs=0: must be at least 1", "N_runs=-1", "N_runs=1.5", "every dimension must be at least 1",
    "N_tasks=0: must be between 1 and the number of runs (4)", "N_tasks=9", "queuing_system='lsf'",
    "encoding='yaml'", "newline or control character", "no such directory; create it",
    "average_results='most'",
    "tme=...: not an sbatch option parallelaverage knows; did you mean time",
    "mem_per_cpus=...: not an sbatch option parallelaverage knows; did you mean mem_per_cpu",
    "keep_runs=True: @parallel keeps every output; keep_runs/average_results are options of @parallel_average",
    "average_results='all': @parallel keeps every output",
    "signal='B:USR1@60': the B: form sends the signal to the batch shell only",
    "argument 'x' of f() cannot be stored", "argument 'x' of f() cannot be stored",
    "argument 'x' of f() cannot be stored: nested too deeply",
]


@pytest.mark.parametrize("flags", [[], ["-O"]], ids=["plain", "python -O"])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, flags):
    done = subprocess.run([sys.executable, *flags, "-c", BAD_INPUTS, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert len(results) == len(EXPECTED)
    for result, expected in zip(results, EXPECTED):
        assert result is not None, f"accepted although {expected!r} was expected"
        assert expected in result[1], result
    assert not (tmp_path / ".parallelaverage").exists() or jobs_in(tmp_path) == []


def test_runs_returning_other_shapes_fail_by_name_and_the_rest_average(tmp_path):
    @parallel_average(N_runs=6, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def shapes():
        return np.zeros(4 if pa.run_id() == 3 else 2) + pa.run_id()

    with pytest.warns(RunsFailedWarning, match=r"run 3 returned an array of shape \(4,\), but 5 other runs returned an array of shape \(2,\)"):
        result = wait(shapes)()
    assert result.failed_run_ids == [3] and np.allclose(result.data, np.mean([0, 1, 2, 4, 5]))


def test_a_corrupt_database_file_is_named_and_kept(tmp_path):
    @parallel(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def kept(x):
        return x

    wait(kept)(1)
    record = tmp_path / ".parallelaverage/1_kept/job.json"
    record.write_text("this is not a job record")
    with pytest.raises(pa.jobdb.CorruptFileError, match=re.escape(str(record))):
        kept(1)
    assert record.read_text() == "this is not a job record"  # kept for a human to inspect


def test_job_folders_are_private_and_foreign_pickles_refused(tmp_path, monkeypatch):
    @parallel_average(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def private():
        return 1.0

    wait(private)()
    job = tmp_path / ".parallelaverage/1_private"
    for folder in (tmp_path / ".parallelaverage", job, job / "attempts/1"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    result = job / "attempts/1/result.pkl"
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    os.chown(result, 4242, 4242)
    with pytest.raises(pa.UntrustedFileError, match=r"belongs to user id 4242.*PARALLELAVERAGE_TRUST_UIDS=4242"):
        private()
    monkeypatch.setenv("PARALLELAVERAGE_TRUST_UIDS", "4242")
    assert private().data == 1.0


def test_no_eval_or_exec_in_the_library():
    source = Path(pa.__file__).parent
    offenders = [f"{path.name}:{number}" for path in source.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\b(eval|exec)\(", line)]
    assert offenders == []
