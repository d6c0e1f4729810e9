"""The native atomics of the run counter on memory shared between processes.

``claim_block`` is what every rank of a node calls to claim runs from the node's block
in an MPI shared-memory window; here real processes hammer one block in an anonymous
shared mapping (no MPI), so the exactly-once guarantee is tested without a launcher.
"""

from __future__ import annotations

import mmap
import multiprocessing

import numpy as np
import pytest

from parallelaverage import _native


def shared_slots(n: int = 8) -> tuple[mmap.mmap, np.ndarray]:
    memory = mmap.mmap(-1, 8 * n)  # MAP_SHARED | MAP_ANONYMOUS: children see the same pages
    return memory, np.frombuffer(memory, dtype=np.int64)


def test_claim_block_hands_out_the_block_in_order_then_nothing():
    _, slots = shared_slots()
    slots[:2] = (10, 20)
    assert _native.claim_block(slots, 3) == (10, 13, 20)
    assert _native.claim_block(slots, 100) == (13, 20, 20)
    assert _native.claim_block(slots, 1) == (20, 20, 20)  # exhausted: start == stop
    assert slots[0] == 20


def test_atomic_slot_operations():
    _, slots = shared_slots()
    assert _native.atomic_fetch_add(slots, 2, 5) == 0 and _native.atomic_load(slots, 2) == 5
    assert _native.atomic_compare_exchange(slots, 2, 5, 7) is True
    assert _native.atomic_compare_exchange(slots, 2, 5, 9) is False and slots[2] == 7
    _native.atomic_store(slots, 3, -(2**62))
    assert _native.atomic_load(slots, 3) == -(2**62)


def test_bad_slots_are_refused():
    _, slots = shared_slots(2)
    with pytest.raises(ValueError, match="outside"):
        _native.atomic_load(slots, 2)
    with pytest.raises(ValueError, match="outside"):
        _native.claim_block(slots[:1], 1)
    with pytest.raises(ValueError, match="outside"):
        _native.atomic_load(np.zeros(3, dtype=np.int8)[1:], 0)  # misaligned
    with pytest.raises(ValueError, match="at least 1"):
        _native.claim_block(slots, 0)
    with pytest.raises(BufferError):
        _native.atomic_store(bytes(16), 0, 1)  # read-only


def _claimer(memory: mmap.mmap, k: int, out: "multiprocessing.Queue[list[tuple[int, int]]]") -> None:
    slots = np.frombuffer(memory, dtype=np.int64)
    claimed, rng = [], np.random.default_rng(k)
    while True:
        start, stop, _ = _native.claim_block(slots, int(rng.integers(1, k + 1)))
        if start == stop:
            break
        claimed.append((start, stop))
    out.put(claimed)


def test_processes_racing_for_one_block_claim_each_position_once():
    memory, slots = shared_slots()
    n = 300_000
    slots[:2] = (0, n)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = [context.Process(target=_claimer, args=(memory, k, out)) for k in (1, 3, 17, 64)]
    for worker in workers:
        worker.start()
    parts = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    counts = np.zeros(n, dtype=np.int64)
    for part in parts:
        for start, stop in part:
            counts[start:stop] += 1
    assert counts.min() == 1 and counts.max() == 1
    assert sum(len(part) > 0 for part in parts) >= 2  # they did race
