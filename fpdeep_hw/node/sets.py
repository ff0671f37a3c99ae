"""Weight-set plumbing of parameter lending by several nodes: join set streams, route gradients.

A borrowed segment's ``R * G`` weight sets may be kept by several nodes (the plan's ``bpram``
entries, ``fpdeep_map/plan.py``; the borrower may keep a share itself). ``NodeTop`` gives each
keeper a contiguous range of set addresses, ranges in node order, so that every stream of sets
towards the borrower is the concatenation of the keepers' ranges it passes
(``docs/hw-node.md``, "Parameter lending by several nodes"):

* :class:`SetConcat` joins streams per image: ``counts[0]`` items from input 0, then
  ``counts[1]`` from input 1, ...; a keeper appends (or prepends) its own range to the sets
  coming from keepers further away, and the borrower joins the sets from the previous side,
  its own and the next side's into the ``R * G`` sets its weight-stationary engines take, in
  address order;
* :class:`SetRoute` sends each gradient set back by its address: the borrower's per-image
  gradients go to the side (or its own keeper) whose range holds the address, and a keeper
  takes the addresses of its range and passes the others on.

Both blocks are combinational (latency 0, nothing stored); ``NodeTop`` puts FIFOs around them.

Golden model: :mod:`sim.golden.sets` (``set_concat``, ``set_route``).
Test: ``tests/hw/test_sets.py``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SetConcat", "SetRoute", "set_ranges"]


def set_ranges(total, shares):
    """Contiguous set ranges for keepers holding ``shares`` (weights, any unit) of ``total``
    sets, in order: boundaries at the cumulative shares rounded to whole sets (half up). A
    keeper whose share rounds to no set gets ``None``."""
    whole = sum(shares)
    out, acc, lo = [], 0, 0
    for s in shares:
        acc += s
        hi = (2 * acc * total + whole) // (2 * whole) if whole else 0
        out.append((lo, hi) if hi > lo else None)
        lo = hi
    return out


def _count(who, name, v, low):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{who} {name} must be an integer >= {low}, not {v!r}")


class SetConcat(wiring.Component):
    """Several item streams into one, per image ``counts[0]`` items of input 0, then
    ``counts[1]`` of input 1, and so on.

    Parameters
    ----------
    shape : shape-like
        The payload of every stream (e.g. a weight-set layout).
    counts : list of int
        Items per image of each input (each at least 1).

    Members
    -------
    i : list of ``In(stream.Signature(shape))``
        Members ``i0``, ``i1``, ...; the list is a plain attribute.
    o : ``Out(stream.Signature(shape))``
        ``sum(counts)`` items per image. An input is ready only while it is the one being
        taken, so the others stall (put a FIFO before each input whose producer must not wait).
    """

    LATENCY = 0

    def __init__(self, shape, counts):
        counts = list(counts)
        if not counts:
            raise ValueError("SetConcat needs at least one input")
        for c in counts:
            _count("SetConcat", "count", c, 1)
        self._counts = counts
        members = {f"i{k}": In(stream.Signature(shape)) for k in range(len(counts))}
        members["o"] = Out(stream.Signature(shape))
        super().__init__(members)
        self.i = [getattr(self, f"i{k}") for k in range(len(counts))]

    counts = property(lambda self: list(self._counts))

    def elaborate(self, platform):
        m = Module()
        n = len(self._counts)
        part = Signal(range(max(n, 2)))
        cnt = Signal(range(max(max(self._counts), 2)))
        for k, (src, c) in enumerate(zip(self.i, self._counts)):
            with m.If(part == k):
                m.d.comb += [self.o.valid.eq(src.valid), self.o.payload.eq(src.payload),
                             src.ready.eq(self.o.ready)]
                with m.If(src.valid & self.o.ready):
                    with m.If(cnt == c - 1):
                        m.d.sync += [cnt.eq(0), part.eq(0 if k == n - 1 else k + 1)]
                    with m.Else():
                        m.d.sync += cnt.eq(cnt + 1)
        return m


class SetRoute(wiring.Component):
    """One stream of addressed items to several by address range.

    Parameters
    ----------
    shape : StructLayout
        The payload, with a field ``addr``.
    ranges : list of (lo, hi)
        Per output the addresses ``[lo, hi)`` it takes (disjoint, each non-empty). An item
        whose address no range holds is an error the block does not check (``NodeTop`` gives
        the ranges of every address of the segment).

    Members
    -------
    i : ``In(stream.Signature(shape))``
    o : list of ``Out(stream.Signature(shape))``
        Members ``o0``, ``o1``, ...; the item goes to the output whose range holds its
        ``addr``, unchanged; order is kept per output.
    """

    LATENCY = 0

    def __init__(self, shape, ranges):
        ranges = [tuple(r) for r in ranges]
        if not ranges:
            raise ValueError("SetRoute needs at least one output range")
        for r in ranges:
            if (len(r) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in r)
                    or not 0 <= r[0] < r[1]):
                raise ValueError(f"SetRoute ranges must be (lo, hi) with 0 <= lo < hi, not "
                                 f"{r!r}")
        for a, b in zip(sorted(ranges), sorted(ranges)[1:]):
            if b[0] < a[1]:
                raise ValueError(f"SetRoute ranges {a} and {b} overlap")
        self._ranges = ranges
        members = {"i": In(stream.Signature(shape))}
        members.update({f"o{k}": Out(stream.Signature(shape)) for k in range(len(ranges))})
        super().__init__(members)
        self.o = [getattr(self, f"o{k}") for k in range(len(ranges))]

    ranges = property(lambda self: list(self._ranges))

    def elaborate(self, platform):
        m = Module()
        addr = self.i.payload.addr
        ready = 0
        for (lo, hi), o in zip(self._ranges, self.o):
            hit = Signal(name=f"hit_{lo}_{hi}")
            m.d.comb += [hit.eq((addr >= lo) & (addr < hi)),
                         o.valid.eq(self.i.valid & hit), o.payload.eq(self.i.payload)]
            ready = ready | (hit & o.ready)
        m.d.comb += self.i.ready.eq(ready)
        return m
