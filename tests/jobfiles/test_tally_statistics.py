"""Tally groups carry the statistics= accumulators: they merge with the group, survive
explicit() and resolved(), and tallies written before them still load."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from parallelaverage._accumulator import check_statistics, specs_for
from parallelaverage.jobfiles.tally import Group, Tally
from parallelaverage.runspace import Positions
from parallelaverage.stats import Batches, Histogram, Moments, Welford


def group_with(values, first_run):
    layout = (None, ((0, ()),))
    welford, moments, batches = Welford(), Moments(), Batches(4)
    for run, value in enumerate(values, start=first_run):
        welford.add(value)
        moments.add(value)
        batches.add(value, key=run)
    runs = Positions.range(first_run, first_run + len(values))
    return Group(layout, runs, {0: welford}, statistics={0: {"moments": moments, "jackknife": batches}})


def test_groups_merge_their_statistics_and_tallies_keep_them():
    rng = np.random.default_rng(0)
    a, b = rng.random(10), rng.random(7)
    first, second = group_with(a, 0), group_with(b, 10)
    merged = Tally(Positions.range(0, 10), groups=[first]).merged(Tally(Positions.range(10, 17), groups=[second]))
    (group,) = merged.resolved().groups
    both = np.concatenate([a, b])
    assert group.statistics[0]["moments"].count == 17
    assert float(group.statistics[0]["moments"].variance) == pytest.approx(np.var(both, ddof=1), rel=1e-14)
    np.testing.assert_array_equal(group.statistics[0]["jackknife"].counts, [5, 4, 4, 4])
    assert first.statistics[0]["moments"].count == 10  # the inputs are unchanged
    implicit = Tally(Positions.range(0, 10), groups=[Group(first.layout, None, first.accumulators,
                                                           statistics=first.statistics)])
    assert implicit.explicit().groups[0].statistics is first.statistics


def test_a_group_pickled_before_statistics_loads_without_them():
    group = group_with([1.0, 2.0], 0)
    state = dict(group.__dict__)
    del state["statistics"]
    old = Group.__new__(Group)
    old.__dict__.update(state)  # what an older version pickled
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.statistics == {} and loaded.accumulators[0].count == 2
    assert pickle.loads(pickle.dumps(group)).statistics[0]["moments"] == group.statistics[0]["moments"]


def test_statistics_specs_per_element_and_accumulators_as_specs():
    assert check_statistics((Histogram(5, (0, 1)), "moments:3"), "all") == (
        "histogram:bins=5,range=(0.0,1.0),weighted=False,pooled=False", "moments:order=3")
    per_element = check_statistics({1: "covariance", 0: ("jackknife:8",)}, (0, 1))
    assert per_element == {0: ("jackknife:batches=8",), 1: ("covariance",)}
    assert specs_for(per_element, 1) == ("covariance",) and specs_for(per_element, 2) == ()
    assert specs_for(("moments:order=4",), 7) == ("moments:order=4",)
