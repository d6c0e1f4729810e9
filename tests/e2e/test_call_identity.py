"""Which calls share a job, through real mpiexec processes: captured values, globals
that change between calls, numpy numbers, and decorated methods."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import warnings

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import CodeChangedWarning, RunsFailedWarning, dont_submit, parallel_average, re_submit, wait

from pa_testing import jobs_in

THIS = sys.modules[__name__]


def job_record(path, job_name: str) -> dict:
    return json.loads((path / ".parallelaverage" / job_name / "job.json").read_text())


def test_closures_with_other_captured_values_are_other_jobs(tmp_path):
    def make(offset):
        @parallel_average(N_runs=4, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
        def shifted(x):
            return x + offset + 0.0 * pa.run_id()

        return shifted

    five, six = wait(make(5))(1.0), wait(make(6))(1.0)
    assert (five.data, six.data) == (6.0, 7.0)
    assert jobs_in(tmp_path) == ["1_shifted", "2_shifted"]
    assert make(5)(1.0).data == 6.0 and make(np.int64(6))(1.0).data == 7.0  # found, not submitted
    assert jobs_in(tmp_path) == ["1_shifted", "2_shifted"]


def test_numpy_numbers_find_the_job_of_the_python_number(tmp_path):
    @parallel_average(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
    def size(L):
        return float(len(range(L)))

    assert wait(size)(64).data == 64.0
    assert size(np.int64(64)).data == 64.0 and size(np.uint16(64)).data == 64.0
    assert jobs_in(tmp_path) == ["1_size"]


MODULE = """
import sys
from parallelaverage import parallel_average

OFFSET = {offset}

def helper(x):
    return x + OFFSET

@parallel_average(N_runs=4, N_tasks=1, queuing_system="local", path={path!r},
                  pickle_by_value=[sys.modules[__name__]])
def shifted(x):
    return helper(x)
"""


def test_a_changed_global_is_named_in_a_warning_at_the_callers_line(tmp_path, monkeypatch):
    source = tmp_path / "offset_model.py"
    source.write_text(MODULE.format(offset=7, path=str(tmp_path)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "offset_model", raising=False)
    model = importlib.import_module("offset_model")

    with warnings.catch_warnings():
        warnings.simplefilter("error", CodeChangedWarning)
        assert wait(model.shifted)(1.0).data == 8.0
        assert model.shifted(1.0).data == 8.0  # the same code and globals: no warning
    assert set(job_record(tmp_path, "1_shifted")["code_parts"]) == {
        "code", "code of helper", "global OFFSET (read by helper)",
    }

    # the user edits the global in the file and reloads it, as a notebook or a new run would
    source.write_text(MODULE.format(offset=8, path=str(tmp_path)))
    shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)  # same size, same second: no stale .pyc
    importlib.reload(model)
    with pytest.warns(CodeChangedWarning) as caught:
        assert model.shifted(1.0).data == 8.0  # the stored result, as before
    message = str(caught[0].message)
    assert "shifted changed since job 1_shifted was submitted: global OFFSET (read by helper) changed" in message
    assert "@do_submit" in message
    assert caught[0].filename == __file__, "the warning must point at the caller's line, not into the library"

    # a change on the module object counts the same; changing it back silences the warning
    model.OFFSET = 7
    with warnings.catch_warnings():
        warnings.simplefilter("error", CodeChangedWarning)
        assert model.shifted(1.0).data == 8.0
    assert jobs_in(tmp_path) == ["1_shifted"]


def test_a_decorated_method_binds_its_instance(tmp_path):
    class Model:
        def __init__(self, scale, flag):
            self.scale = scale
            self.flag = flag  # run 1 fails until this file exists

        @parallel_average(N_runs=4, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS])
        def simulate(self, L):
            import os

            if pa.run_id() == 1 and not os.path.exists(self.flag):
                raise RuntimeError("not yet")
            return self.scale * L + 0.0 * pa.run_id()

    flag = tmp_path / "fixed"
    model = Model(2.0, str(flag))
    assert model.simulate(L=3) is None  # submitted
    with pytest.warns(RunsFailedWarning, match="1 / 4 runs failed"):
        result = wait(model.simulate)(3)
    assert result.data == 6.0 and result.failed_run_ids == [1]
    record = job_record(tmp_path, "1_simulate")
    assert record["call"] == "Model.simulate(self=<Model object>, L=3)"
    assert record["arguments"] == {"self": "<Model object>", "L": "3"}

    flag.touch()
    re_submit(model.simulate)(L=3)  # the failed run again, merged into the same job
    result = wait(model.simulate)(3)
    assert result.successful_run_ids == [0, 1, 2, 3] and result.data == 6.0
    assert dont_submit(model.simulate)(3).data == 6.0

    # the instance is part of the call: another state is another job, an equal one is the same
    assert wait(Model(5.0, str(flag)).simulate)(3).data == 15.0
    assert Model(2.0, str(flag)).simulate(3).data == 6.0
    assert jobs_in(tmp_path) == ["1_simulate", "2_simulate"]
    assert Model.simulate is Model.__dict__["simulate"]  # through the class: the decorated function


def test_an_action_stacked_on_a_method_in_its_class_body_binds_too(tmp_path):
    class Model:
        @dont_submit
        @parallel_average(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path)
        def simulate(self, L):
            return L

    with pytest.raises(pa.NoJobError, match=r"no job for Model\.simulate\(self=<Model object>, L=3\)"):
        Model().simulate(3)
    assert not (tmp_path / ".parallelaverage").exists() or jobs_in(tmp_path) == []


def test_a_decorated_function_travels_as_its_plain_function(tmp_path):
    import cloudpickle

    @parallel_average(N_runs=2, N_tasks=1, queuing_system="local", path=tmp_path)
    def plain(x):
        return 2 * x

    copy = cloudpickle.loads(cloudpickle.dumps(plain))
    assert copy(3) == 6 and not isinstance(copy, type(plain))  # runs, submits nothing
    assert not (tmp_path / ".parallelaverage").exists() or jobs_in(tmp_path) == []
