"""More runs for a cached call: a call with a larger N_runs than a completed job of the
same call runs only the new run ids, with that job's seed, and merges them with its runs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import parallelaverage as pa
from parallelaverage import Job, parallel_average, wait

from pa_testing import jobs_in

THIS = sys.modules[__name__]


def draw(offset):
    return offset + pa.rng().standard_normal(3) + 0.0 * pa.run_id()


def decorated(path, n_runs, **options):
    return parallel_average(N_runs=n_runs, N_tasks=2, queuing_system="local", path=path, pickle_by_value=[THIS],
                            **options)(draw)


def test_a_larger_n_runs_runs_only_the_new_runs_with_the_same_streams(tmp_path, capsys):
    small = wait(decorated(tmp_path, 20, statistics=("jackknife:4",)))(1e9)
    capsys.readouterr()
    big = wait(decorated(tmp_path, 50, statistics=("jackknife:4",)))(1e9)
    out = capsys.readouterr().out
    assert "submitting job 2_draw (30 runs on 2 MPI ranks, local); its other 20 runs are those of job 1_draw" in out
    assert jobs_in(tmp_path) == ["1_draw", "2_draw"]
    job = Job.load("2_draw", tmp_path)
    assert job.record.options["extends"] == {"job": "1_draw", "N_runs": 20}
    assert job.record.options["seed"] == Job.load("1_draw", tmp_path).record.options["seed"]
    plan = json.loads((job.files.runs(2)).read_text())
    assert plan["positions"] == [[20, 50]]  # only the new runs were run
    assert big.count == 50 and list(big.successful_run_ids) == list(range(50)) and job.status == "completed"
    assert np.array_equal(big.statistics["jackknife"].counts, [13, 13, 12, 12])
    # the same 50 streams computed at once, in another database, with that seed
    (tmp_path / "fresh").mkdir()
    fresh = wait(decorated(tmp_path / "fresh", 50, seed=job.record.options["seed"], statistics=("jackknife:4",)))(1e9)
    np.testing.assert_allclose(big.data, fresh.data, rtol=1e-15, atol=0)  # other merge orders: ulps of 1e9
    np.testing.assert_allclose(big.estimated_variance, fresh.estimated_variance, rtol=1e-12)
    assert big.jackknife(lambda m: m[0] - m[1]).error == pytest.approx(fresh.jackknife(lambda m: m[0] - m[1]).error,
                                                                         rel=1e-6)
    # the small call still returns its own 20 runs; the big one its job
    assert wait(decorated(tmp_path, 20, statistics=("jackknife:4",)))(1e9).count == 20
    assert np.array_equal(decorated(tmp_path, 50, statistics=("jackknife:4",))(1e9).data, big.data)
    # and more again: extends the largest completed one
    capsys.readouterr()
    again = wait(decorated(tmp_path, 64, statistics=("jackknife:4",)))(1e9)
    assert "its other 50 runs are those of job 2_draw" in capsys.readouterr().out and again.count == 64
    assert small.count == 20


@pytest.mark.parametrize("change", ["fewer runs", "other statistics", "another seed", "other arguments"])
def test_what_is_not_extended_is_a_job_of_its_own(tmp_path, capsys, change):
    wait(decorated(tmp_path, 10, seed=5))(0.0)
    capsys.readouterr()
    n, options, offset = {"fewer runs": (6, {"seed": 5}, 0.0), "other statistics": (20, {"seed": 5, "statistics": ("moments",)}, 0.0),
                          "another seed": (20, {"seed": 6}, 0.0), "other arguments": (20, {"seed": 5}, 1.0)}[change]
    result = wait(decorated(tmp_path, n, **options))(offset)
    assert f"submitting job 2_draw ({n} runs on 2 MPI ranks, local)" in capsys.readouterr().out
    assert result.count == n and "extends" not in Job.load("2_draw", tmp_path).record.options
