"""Merging large Welford states across ranks: reduce-scatter, then allgather.

``MPI_Allreduce`` with a user-defined op cannot split a packed state (it travels as
one element, see :mod:`parallelaverage.mpi`), so MPICH and Open MPI reduce it by
recursive doubling: every rank sends and merges the whole state log2(P) times. For
built-in ops on large buffers both libraries use Rabenseifner's algorithm instead,
and so does this module, by hand, with the native merge on slices:

1. **fold** (only when P is not a power of two): the first ``2 * (P - P')`` ranks pair
   up and the even one hands its state to the odd one, leaving ``P'`` ranks;
2. **reduce-scatter by recursive halving**: in step ``j`` each rank exchanges half of
   its current slice with the partner ``rank ^ 2**j`` and merges the half it keeps;
   after log2(P') steps it holds the merged result for 1/P' of the elements;
3. **allgather by recursive doubling**: the same steps backwards, exchanging finished
   slices until every rank holds every slice.

Each rank sends ``2 (P'-1)/P'`` states' worth of bytes and merges ``(P'-1)/P'`` of a
state, as a SUM ``Allreduce`` of the same bytes does, instead of log2(P) whole states.
Every slice is merged on exactly one rank, so all ranks end with identical bits.

A slice ``lo..hi-1`` covers those elements of all three sections (shift, mean, u)
and travels as three contiguous messages (an indexed datatype measured up to 3x
slower under Open MPI, which packs it). Chan's merge needs the headers of both sides
(weights, sums of squared weights, counts), which are the merged headers of the ranks
in the two halves of the current group: the caller gathers the headers once, before
the exchanges, and every rank merges them in the same order
(:func:`parallelaverage._packed.merge_headers`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from mpi4py import MPI

from parallelaverage import _kernels, _packed

__all__ = ["merge_states"]

Header = np.ndarray  # the HEADER values of one rank's packed state (_packed.py)


def merge_states(send: np.ndarray, out: np.ndarray, headers: Sequence[Header], comm: MPI.Intracomm) -> None:
    """Write the merge of every rank's packed state into ``out`` on every rank.

    Collective. ``send`` is this rank's state and may be ``out`` itself (in place);
    otherwise ``send`` is only read. ``headers[r]`` is rank r's header, the same list on
    every rank. All states have the same number of elements, at least the
    largest power of two not above ``comm.size``.
    """
    comm = _private_twin(comm)
    scratch = _take_scratch(out)
    try:
        _merge_into(send, out, headers, comm, scratch)
    finally:
        _give_back(scratch)
    out[: _packed.HEADER] = _merged_header(headers)


def _merge_into(send: np.ndarray, out: np.ndarray, headers: Sequence[Header], comm: MPI.Intracomm, scratch: np.ndarray) -> None:
    """The three phases of :func:`merge_states` (headers of ``out`` not set)."""
    size, rank = comm.Get_size(), comm.Get_rank()
    k = (out.size - _packed.HEADER) // 3
    pof2 = 1 << (size.bit_length() - 1)
    extra = size - pof2
    folded = _fold_headers(headers, extra)
    if rank < 2 * extra and rank % 2 == 0:
        # handed its whole state to rank + 1; gets the result back at the end
        comm.Send([send, MPI.DOUBLE], dest=rank + 1, tag=_TAG)
        comm.Recv([out, MPI.DOUBLE], source=rank + 1, tag=_TAG)
        return
    if rank < 2 * extra:
        receive = _landing(send, out, scratch)
        comm.Recv([receive, MPI.DOUBLE], source=rank - 1, tag=_TAG)
        _merge_slice(out, send, receive, 0, k, headers[rank], headers[rank - 1])
        send = out
        group_rank = rank // 2
    else:
        group_rank = rank - extra

    def real_rank(group_member: int) -> int:
        return 2 * group_member + 1 if group_member < extra else group_member + extra

    lo, hi = 0, k
    kept: list[tuple[int, int, int, int, int]] = []  # (partner, keep lo, hi, given lo, hi)
    distance = 1
    while distance < pof2:
        partner = group_rank ^ distance
        middle = lo + (hi - lo) // 2
        if group_rank < partner:
            keep, give = (lo, middle), (middle, hi)
        else:
            keep, give = (middle, hi), (lo, middle)
        receive = _landing(send, out, scratch)
        _exchange(comm, send, give, receive, keep, real_rank(partner), k)
        mine = _group_header(folded, group_rank, distance)
        theirs = _group_header(folded, partner, distance)
        _merge_slice(out, send, receive, *keep, mine, theirs)
        send = out
        kept.append((partner, *keep, *give))
        lo, hi = keep
        distance *= 2
    if send is not out:  # a single rank: nothing was exchanged
        np.copyto(out, send)
    for partner, keep_lo, keep_hi, give_lo, give_hi in reversed(kept):
        _exchange(comm, out, (keep_lo, keep_hi), out, (give_lo, give_hi), real_rank(partner), k)
    if rank < 2 * extra:
        comm.Send([out, MPI.DOUBLE], dest=rank - 1, tag=_TAG)


_TAG = 0x5A  # first tag of these exchanges, on the private twin of the caller's comm


_twin_key: int | None = None


def _private_twin(comm: MPI.Intracomm) -> MPI.Intracomm:
    """A duplicate of ``comm`` kept as its attribute, made on first use (collective).

    Point-to-point messages on the caller's own communicator could be matched by a
    receive the program has posted with ``ANY_SOURCE``/``ANY_TAG``; a duplicate has its
    own matching context, as collectives do. It is freed together with ``comm``.
    """
    global _twin_key
    if _twin_key is None:
        _twin_key = MPI.Comm.Create_keyval(delete_fn=lambda _comm, _key, twin: twin.Free())
    twin = comm.Get_attr(_twin_key)
    if not isinstance(twin, MPI.Intracomm):
        twin = comm.Dup()
        comm.Set_attr(_twin_key, twin)
    return twin


def _fold_headers(headers: Sequence[Header], extra: int) -> list[Header]:
    """Headers after the fold: the first ``extra`` pairs of ranks count as one rank each."""
    pairs = [_merged_header(headers[2 * i : 2 * i + 2]) for i in range(extra)]
    return pairs + list(headers[2 * extra :])


def _group_header(headers: Sequence[Header], member: int, distance: int) -> Header:
    """The header of the block of ``distance`` (folded) ranks containing ``member``."""
    first = member - member % distance
    return _merged_header(headers[first : first + distance])


def _merged_header(headers: Sequence[Header]) -> Header:
    """The header of the merge of consecutive ranks' states, merged left to right."""
    merged = headers[0]
    for header in headers[1:]:
        merged = _packed.merge_headers(merged, header)
    return merged


def _landing(send: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Where the partner's slice is received: straight into ``out`` while ``out`` does not
    hold this rank's own state yet (the first merge of a call that is not in place),
    which leaves the scratch buffer's pages untouched; else into the scratch buffer."""
    return out if send is not out else scratch


def _merge_slice(out: np.ndarray, a: np.ndarray, b: np.ndarray, lo: int, hi: int, header_a: Header, header_b: Header) -> None:
    """``out = a (+) b`` on elements lo..hi-1; either side may hold no sample, or only
    zero weights (the kernel then copies the other); ``out`` may be ``a`` or ``b``."""
    _kernels.merge_range(out, a, b, lo, hi, header_a, header_b)


def _exchange(
    comm: MPI.Intracomm, send: np.ndarray, give: tuple[int, int], receive: np.ndarray, keep: tuple[int, int], partner: int, k: int
) -> None:
    """Send slice ``give`` of ``send`` to ``partner``; receive its slice ``keep`` into ``receive``.

    One contiguous message per section: MPI libraries copy contiguous buffers directly
    (single-copy on shared memory) where an indexed datatype would be packed first.
    """
    requests = []
    for section in range(3):
        start = _packed.HEADER + section * k
        requests.append(comm.Irecv(receive[start + keep[0] : start + keep[1]], partner, _TAG + section))
        requests.append(comm.Isend(send[start + give[0] : start + give[1]], partner, _TAG + section))
    MPI.Request.Waitall(requests)


_spare_scratch: dict[int, np.ndarray] = {}
_SCRATCH_MAX_BYTES = 64 << 20


def _take_scratch(state: np.ndarray) -> np.ndarray:
    """A receive buffer of the state's size: the one the previous call gave back, if
    it had this size, else a new one (touching fresh pages costs as much as the
    exchange itself). Taken out of the cache while in use, so that merges running at
    the same time in several threads never share it."""
    buffer = _spare_scratch.pop(state.size, None)
    return np.empty_like(state) if buffer is None else buffer


def _give_back(buffer: np.ndarray) -> None:
    if buffer.nbytes <= _SCRATCH_MAX_BYTES:
        _spare_scratch.clear()
        _spare_scratch[buffer.size] = buffer
