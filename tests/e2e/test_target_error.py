"""target_error=: rank 0 watches the merged error and stops the claims; the job is
completed with the runs it needed, on 1 to 3 ranks."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import Job, parallel_average, wait

THIS = sys.modules[__name__]


def noisy(scale):
    time.sleep(0.002)  # runs that take a little time: the others' claims come after rank 0's decision
    return np.array([1.0, 5.0]) + scale * pa.rng().standard_normal(2)


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch):
    monkeypatch.setenv("PARALLELAVERAGE_TARGET_CHECK_S", "0.05")
    monkeypatch.setenv("PARALLELAVERAGE_SNAPSHOT_INTERVAL_S", "0.05")


@pytest.mark.parametrize("n_tasks, option", [(1, {"target_error": 0.05}), (3, {"target_error": 0.05}),
                                             (2, {"target_relative_error": 0.02})])
def test_the_job_stops_once_the_error_is_below_the_target(tmp_path, n_tasks, option):
    @parallel_average(N_runs=200_000, N_tasks=n_tasks, seed=4, queuing_system="local", path=tmp_path,
                      pickle_by_value=[THIS], **option)
    def draw(scale):
        return noisy(scale)

    result = wait(draw)(1.0)
    job = Job.load(1, tmp_path)
    state = job.state()
    assert state.status == "completed" and not state.missing_positions
    target = json.loads(job.files.target(1).read_text())
    assert state.target == target and target["kind"] == ("absolute" if "target_error" in option else "relative")
    assert target["error_over_target"] <= 1.0 and target["effective_runs"] >= 10
    # sigma = 1: about (1 / 0.05)**2 = 400 runs (relative: (1 / (0.02 * 1))**2 = 2500 for the element of mean 1)
    needed = 400 if "target_error" in option else 2500
    print(f"{result.count} runs ({target['runs']} when rank 0 decided), error {result.estimated_error}")
    assert needed / 3 < result.count < 20 * needed and result.count >= target["runs"]
    allowed = 0.05 if "target_error" in option else 0.02 * np.abs(result.data)
    assert np.all(result.estimated_error <= allowed * 1.3)  # a few more runs than when rank 0 decided
    assert job.record.options["target_error"]["error"] == next(iter(option.values()))
    with _no_warning():
        job.result()  # no "runs missing" warning: the job is completed
    assert job.resubmit() is None  # nothing is missing


class _no_warning:
    def __enter__(self):
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self.caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)
        assert not [w for w in self.caught if issubclass(w.category, pa.JobWarning)], [str(w.message) for w in self.caught]


def test_a_target_that_is_never_reached_runs_every_run(tmp_path):
    @parallel_average(N_runs=30, N_tasks=2, queuing_system="local", path=tmp_path, pickle_by_value=[THIS],
                      target_error=1e-9)
    def draw(scale):
        return noisy(scale)

    result = wait(draw)(1.0)
    assert result.count == 30 and Job.load(1, tmp_path).state().target is None


@pytest.mark.parametrize("options, message", [
    ({"target_error": 0.0}, "finite number > 0"), ({"target_error": "1%"}, "finite number > 0"),
    ({"target_error": 1e-3, "target_relative_error": 1e-3}, "one of them"),
    ({"target_error": 1e-3, "dynamic_load_balancing": False}, "dynamic_load_balancing=True"),
])
def test_bad_targets_fail_at_decoration_time(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        parallel_average(N_runs=10, N_tasks=1, path=tmp_path, **options)


def test_parallel_refuses_a_target(tmp_path):
    with pytest.raises(pa.OptionError, match="target_error"):
        pa.parallel(N_runs=10, N_tasks=1, path=tmp_path, target_error=1e-3)


def test_a_smaller_target_with_more_runs_keeps_the_runs_done(tmp_path, capsys):
    def decorated(n_runs, target):
        return parallel_average(N_runs=n_runs, N_tasks=2, seed=4, queuing_system="local", path=tmp_path,
                                pickle_by_value=[THIS], target_error=target)(noisy)

    first = wait(decorated(100_000, 0.1))(1.0)
    capsys.readouterr()
    second = wait(decorated(200_000, 0.05))(1.0)
    assert f"its other {first.count} runs are those of job 1_noisy" in capsys.readouterr().out
    job = Job.load(2, tmp_path)
    assert job.state().status == "completed" and second.count > first.count
    assert set(first.successful_run_ids) <= set(second.successful_run_ids)
    assert np.all(second.estimated_error <= 0.05 * 1.3)


def test_each_call_of_a_map_stops_at_its_own_target(tmp_path):
    """f.map: one launch, three jobs; each stops when its own error is below the target
    (a noisier call needs more runs), and the shared launch ends when all have."""

    @parallel_average(N_runs=100_000, N_tasks=2, seed=4, target_error=0.05, queuing_system="local", path=tmp_path,
                      pickle_by_value=[THIS])
    def draw(scale):
        return noisy(scale)

    draw.map([(0.5,), (1.0,), (2.0,)])
    counts = []
    for scale in (0.5, 1.0, 2.0):
        result = wait(draw)(scale)
        state = Job.load(len(counts) + 1, tmp_path).state()
        assert state.status == "completed" and state.target is not None, scale
        assert np.all(result.estimated_error <= 0.05 * 1.3)
        counts.append(result.count)
    print(f"runs by scale 0.5, 1, 2: {counts}")
    assert counts[0] < counts[1] < counts[2] < 100_000  # about 100, 400 and 1600 runs
