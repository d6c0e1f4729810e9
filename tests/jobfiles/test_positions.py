"""Positions (runs as ranges) against Python sets, and the lazy run-id views."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from parallelaverage.runspace import MAX_RUNS, Positions, RunIds, RunSpace

small_sets = st.sets(st.integers(0, 200), max_size=60)


@settings(max_examples=300, deadline=None)
@given(small_sets, small_sets)
def test_set_algebra_is_python_set_algebra(a, b):
    pa, pb = Positions.of(a), Positions.of(b)
    assert set(pa | pb) == a | b
    assert set(pa - pb) == a - b
    assert set(pa & pb) == a & b
    assert len(pa) == len(a) and list(pa) == sorted(a)
    assert all((x in pa) == (x in a) for x in range(-2, 203))
    assert all(pa.nth(i) == sorted(a)[i] for i in range(len(a)))
    # canonical: equal sets are equal objects whatever the order they were built in
    built = Positions()
    for x in sorted(a, reverse=True):
        built.add(x)
    assert built == pa


@given(st.lists(st.tuples(st.integers(0, 100), st.integers(0, 30)), max_size=30))
def test_ranges_merge_when_they_touch(pieces):
    expected = set()
    made = Positions()
    for start, length in pieces:
        made.add_range(start, start + length)
        expected |= set(range(start, start + length))
    assert set(made) == expected
    ranges = made.ranges()
    assert all(stop < next_start for (_, stop), (next_start, _) in zip(ranges, ranges[1:]))  # no touching ranges


def test_a_billion_runs_are_one_range():
    space = RunSpace(10**9)
    everything = space.all()
    assert everything.n_ranges == 1 and len(everything) == 10**9
    done = Positions.range(0, 10**9 // 2)
    assert len(everything - done) == 10**9 // 2
    assert (space.ids(done))[-1] == 10**9 // 2 - 1


def test_index_tuple_ids_round_trip_and_the_limit():
    space = RunSpace((3, 4))
    ids = RunIds(space, space.all())
    assert list(ids) == [(i, j) for i in range(3) for j in range(4)]
    assert all(space.position_of(run) == p for p, run in enumerate(ids))
    assert (2, 3) in ids and (3, 0) not in ids and ids == [(i, j) for i in range(3) for j in range(4)]
    assert RunSpace(MAX_RUNS).total == MAX_RUNS
