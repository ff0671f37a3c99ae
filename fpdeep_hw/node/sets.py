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

from dataclasses import dataclass

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from fpdeep_map.plan import set_ranges   # one rule for the mapper and the hardware

__all__ = ["SetConcat", "SetRoute", "set_ranges", "Keepers", "keepers_of"]


@dataclass
class Keepers:
    """Where the weight sets of one borrowed segment are kept, and how they travel.

    Members
    -------
    layer : str
    borrower : int
        The node using the weights (its segment's engines are weight-stationary).
    segment : SegmentPlan
        The borrowed segment (the borrower's).
    total : int
        ``R * G``, the segment's weight sets.
    ranges : dict
        ``{node: (lo, hi)}`` the sets each keeper holds, in node order, contiguous, covering
        ``0 .. total`` (the borrower's own share among them if it keeps one).
    """

    layer: str
    borrower: int
    segment: object
    total: int
    ranges: dict

    def toward(self, k):
        """``"next"`` / ``"prev"``: the side of node ``k`` (not the borrower) the borrower is on."""
        return "next" if self.borrower > k else "prev"

    def beyond(self, k, inclusive):
        """Sets kept by the keepers on ``k``'s side of the borrower at ``k`` (``inclusive``) or
        further away from the borrower: what the stream towards the borrower carries out of
        (``inclusive``) or into node ``k``."""
        if k < self.borrower:
            keep = [r for j, r in self.ranges.items() if j < k or inclusive and j == k]
        else:
            keep = [r for j, r in self.ranges.items() if j > k or inclusive and j == k]
        return sum(hi - lo for lo, hi in keep)

    def side(self, side):
        """At the borrower: the sets arriving from ``side`` (``"prev"``: kept on earlier
        nodes, the lowest addresses; ``"next"``: on later nodes, the highest)."""
        b = self.borrower
        return sum(hi - lo for j, (lo, hi) in self.ranges.items()
                   if (j < b if side == "prev" else j > b))

    def involves(self, k):
        """Whether node ``k`` keeps sets, uses them, or passes them on."""
        return k == self.borrower or self.beyond(k, inclusive=True) > 0


def keepers_of(plan, network):
    """``{(layer, borrower): Keepers}`` for every segment of ``plan`` that uses weights kept
    elsewhere (a split layer may have several borrowing slices).

    Each keeper (a plan ``bpram`` entry's lender, and the borrower for the weights it keeps
    itself: ``weights - weights_borrowed``) gets a contiguous range of the segment's ``R * G``
    weight sets (address order ``r*G + g``), ranges in node order, sized in proportion to its
    weights and rounded to whole sets (:func:`set_ranges`; a keeper whose share rounds to no set
    keeps none). So the stream of sets towards the borrower, from either side, is the
    concatenation of the ranges it passes, in address order.
    """
    from .fp_layer import layer_geometry
    shares = {}
    for j, q in enumerate(plan.node_plans):
        for lp in q.bpram:
            shares.setdefault(lp.layer, {}).setdefault(lp.borrower, {})
            d = shares[lp.layer][lp.borrower]
            d[j] = d.get(j, 0) + lp.weights
    out = {}
    for layer, by_b in shares.items():
        for b, lenders in sorted(by_b.items()):
            seg = next((s for s in plan.node_plans[b].segments if s.layer == layer), None)
            if seg is None:
                raise ValueError(f"node {b} borrows the weights of {layer!r} but holds no "
                                 f"segment of it")
            geo = layer_geometry(seg, network)
            total = geo.out_groups * geo.groups
            own = seg.weights - seg.weights_borrowed
            keep = dict(lenders)
            if own > 0:
                keep[b] = own
            nodes = sorted(keep)
            ranges = set_ranges(total, [keep[j] for j in nodes])
            out[(layer, b)] = Keepers(layer=layer, borrower=b, segment=seg, total=total,
                                      ranges={j: r for j, r in zip(nodes, ranges)
                                              if r is not None})
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
