"""The rank's recorder: its fast path gives the statistics of the general path, whatever comes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from parallelaverage.jobfiles.payload import Payload
from parallelaverage.stats import Welford
from parallelaverage.worker import RunRecorder

KINDS = ["float", "npfloat", "array", "view", "complex", "int"]


def output_of(kind: str, value: float):
    if kind == "float":
        return value
    if kind == "npfloat":
        return np.float64(value)
    if kind == "int":
        return int(value)
    if kind == "complex":
        return complex(value, 1.0)
    base = np.array([value, 2 * value, 3 * value, 4 * value])
    return base[::2] if kind == "view" else base[:2].copy()  # a strided view, or a contiguous array


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.floats(-1e6, 1e6)), min_size=1, max_size=40))
def test_the_fast_path_records_what_the_general_path_would(outputs):
    """Scalars and arrays (contiguous or views, real or complex) in any order: each run lands
    in its layout's statistics exactly as Welford.add would put it, and in the done runs once."""
    recorder = RunRecorder(Payload(lambda: None, (), {}, "all", False, "pickle", 0), None)
    expected: dict[tuple, Welford] = {}
    for position, (kind, value) in enumerate(outputs):
        output = output_of(kind, value)
        recorder.succeeded(position, position, output)
        shape = np.shape(output)
        expected.setdefault(shape, Welford()).add(output)
    recorder.flush()
    tally = recorder.tally.explicit()
    assert list(tally.done) == list(range(len(outputs)))
    for group in tally.groups:
        shape = group.layout[1][0][1]
        got, want = group.accumulators[0], expected[shape]
        assert got.count == want.count
        np.testing.assert_array_equal(np.asarray(got.mean), np.asarray(want.mean))
    assert sum(len(g.runs) for g in tally.groups) == len(outputs)
