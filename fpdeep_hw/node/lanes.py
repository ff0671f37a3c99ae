"""Lane plumbing between the modules of a node and its links: fork a stream, concatenate two.

A node that holds part of a layer split over several FPGAs (``docs/hw-node.md``, "Split layers"
and "Node top") moves channel slices around: the input of an OCP layer goes both to the node's
own slice and on to the next node (:class:`LaneFork`, every output the whole word), the errors of
a layer's output are split into the node's own output-channel slice and the slices of the
previous nodes (:class:`LaneFork` with lane ranges), and the slices computed on several nodes are
joined again (:class:`LaneConcat`). Words are pixels of ``lanes`` channel lanes (an
``ArrayLayout(signed(width), lanes)``), raster order, images back to back, as every stream of a
node.

Both blocks are combinational: a word moves in the cycle every side can take it, nothing is
stored, and the latency is 0 cycles. :class:`LaneFork` keeps its outputs in lock step (a word
leaves on all outputs in the same cycle); put FIFOs after it where the consumers run at
different times (``NodeTop`` does).

Golden model: a word of ``LaneFork`` output ``j`` is ``word[lo_j:hi_j]``; a word of
``LaneConcat`` is the concatenation of one word of each input in order (``_golden_fork`` /
``_golden_concat`` in the test). Test: ``tests/hw/test_lanes.py``.
"""

from __future__ import annotations

from amaranth.hdl import Module, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LaneFork", "LaneConcat", "lane_signature"]


def lane_signature(width, lanes):
    """``stream.Signature(ArrayLayout(signed(width), lanes))``."""
    return stream.Signature(data.ArrayLayout(signed(width), lanes))


def _all(bits):
    """The AND of ``bits`` (1 for none)."""
    out = 1
    for b in bits:
        out = out & b
    return out


def _check_width_lanes(who, width, lanes):
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"{who} width must be a positive integer, not {width!r}")
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ValueError(f"{who} lanes must be a positive integer, not {lanes!r}")


class LaneFork(wiring.Component):
    """One stream to several, each output carrying a lane range of every input word.

    Parameters
    ----------
    width : int
        Bits per lane (signed).
    lanes : int
        Lanes of the input word.
    ranges : list of (lo, hi)
        Per output, the input lanes ``[lo, hi)`` it carries (``0 <= lo < hi <= lanes``; ranges
        may overlap: ``(0, lanes)`` twice broadcasts).

    Members
    -------
    i : ``In(lane_signature(width, lanes))``
    o : list of ``Out(lane_signature(width, hi - lo))``
        Members ``o0``, ``o1``, ...; the list is a plain attribute. A word is taken from ``i``
        when every output takes it (``valid`` of an output rises only while all the other
        outputs are ready, so no output sees a word twice).
    """

    LATENCY = 0

    def __init__(self, *, width, lanes, ranges):
        _check_width_lanes("LaneFork", width, lanes)
        ranges = [tuple(r) for r in ranges]
        if len(ranges) < 1:
            raise ValueError("LaneFork needs at least one output range")
        for lo, hi in ranges:
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi <= lanes):
                raise ValueError(f"LaneFork range {[lo, hi]} is not inside [0, {lanes}]")
        self.width, self.lanes, self.ranges = width, lanes, ranges
        members = {"i": In(lane_signature(width, lanes))}
        for j, (lo, hi) in enumerate(ranges):
            members[f"o{j}"] = Out(lane_signature(width, hi - lo))
        super().__init__(members)
        self.o = [getattr(self, f"o{j}") for j in range(len(ranges))]

    def elaborate(self, platform):
        m = Module()
        readies = [o.ready for o in self.o]
        m.d.comb += self.i.ready.eq(_all(readies))
        for j, (o, (lo, hi)) in enumerate(zip(self.o, self.ranges)):
            others = _all(r for k, r in enumerate(readies) if k != j)
            m.d.comb += o.valid.eq(self.i.valid & others)
            for n in range(hi - lo):
                m.d.comb += o.payload[n].eq(self.i.payload[lo + n])
        return m


class LaneConcat(wiring.Component):
    """Several streams to one: a word of each input, lanes concatenated in input order.

    Parameters
    ----------
    width : int
        Bits per lane (signed).
    parts : list of int
        Lanes of each input.

    Members
    -------
    i : list of ``In(lane_signature(width, parts[j]))``
        Members ``i0``, ``i1``, ...; the list is a plain attribute.
    o : ``Out(lane_signature(width, sum(parts)))``
        Valid when every input holds a word; all inputs are taken together.
    """

    LATENCY = 0

    def __init__(self, *, width, parts):
        parts = list(parts)
        if len(parts) < 2:
            raise ValueError(f"LaneConcat needs at least two inputs, not {parts!r}")
        for p in parts:
            _check_width_lanes("LaneConcat", width, p)
        self.width, self.parts = width, parts
        members = {f"i{j}": In(lane_signature(width, p)) for j, p in enumerate(parts)}
        members["o"] = Out(lane_signature(width, sum(parts)))
        super().__init__(members)
        self.i = [getattr(self, f"i{j}") for j in range(len(parts))]

    def elaborate(self, platform):
        m = Module()
        valids = [i.valid for i in self.i]
        m.d.comb += self.o.valid.eq(_all(valids))
        base = 0
        for j, (i, p) in enumerate(zip(self.i, self.parts)):
            others = _all(v for k, v in enumerate(valids) if k != j)
            m.d.comb += i.ready.eq(self.o.ready & others)
            for n in range(p):
                m.d.comb += self.o.payload[base + n].eq(i.payload[n])
            base += p
        return m
