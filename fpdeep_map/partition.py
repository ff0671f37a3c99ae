"""Coarse and fine partition of the training workload, and convolution-engine allocation.

The model (paper section 3.4 and 4.1):

* The training work of a network is a line of compute layers (conv and fc), each made of *units*:
  its input channels for input-channel partition (ICP), its output channels for output-channel
  partition (OCP). Every unit of a layer carries the same FP, EB and PG work.
* A node computes its part with convolution engines. A *tile* is K x K multiply-accumulate lanes
  (K*K DSP slices, one MAC each per cycle). An engine of one phase (FP, EB or PG) of one segment is
  an array of P x S tiles: S input channels and P output channels at once (FP: P CEs of S tiles,
  EB: the transposed S CEs of P tiles, PG: P x S gradient tiles, each cutting the large gradient
  convolution into K x K small ones). One image takes ``H_out*W_out * ceil(o/P) * ceil(c/S)``
  cycles per group of the layer, where c and o are the segment's input and output channels.
* Coarse phase: the work line is cut into N parts of equal work (the continuous relaxation below,
  with one DSP budget per node). Fine phase: the cuts fall at unit (channel) granularity, tiles are
  rounded to whole K x K multiples and array shapes, and each node's spare DSPs are handed to its
  slowest engine. The pipeline period T (cycles per image) is the slowest engine anywhere.

The search is a bisection on T: for a given T every segment needs
``sum_phase ceil(c * u_phase / (K*K*T))`` tiles; nodes are filled along the work line greedily
(largest c that fits, then the next node). The smallest feasible T gives the coarse/fine cut.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

PHASES = ("fp", "eb", "pg")


@dataclass(frozen=True)
class Work:
    """One compute layer as the partitioner sees it."""

    index: int           # position among the compute layers
    name: str
    kind: str            # 'conv' | 'fc'
    split: str           # 'icp' | 'ocp': the partition kind used if the layer is cut
    cin: int
    cout: int
    groups: int
    k: int
    stride: int
    in_hw: tuple         # (H, W) of the input map (fc: (1, 1))
    out_hw: tuple        # (H, W) of the conv output, before pooling (fc: (1, 1))
    macs: dict           # phase -> MACs per image
    max_x: int = 8       # most output rows an engine may compute side by side
    whole: bool = False  # never cut this layer: all of it on one node (layer-granular)
    fc_pixels: int = 1   # fc: pixels H*W of the input map (features = channels x pixels)

    @property
    def units(self) -> int:
        return self.cin if self.split == "icp" else self.cout

    @property
    def unit_step(self) -> int:
        """Cuts fall at multiples of this many units: an fc layer cut by input features is cut
        at channel boundaries of its input map (``fc_pixels`` features per channel; the engines
        take whole pixels of channel lanes), any other layer at any unit."""
        return self.fc_pixels if self.kind == "fc" and self.split == "icp" else 1

    @property
    def kk(self) -> int:
        return self.k * self.k

    def unit_macs(self, phase) -> int:
        return self.macs[phase] // self.units

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    @property
    def array_hw(self):
        """(rows, columns) an engine array steps through per image and pass: the conv output
        map; for an fc layer one step per pixel of its input map (the array takes one pixel's
        channels at a time, ``S`` of them per lane group)."""
        return (1, self.fc_pixels) if self.kind == "fc" else self.out_hw

    def array_dims(self, lo, hi):
        """:meth:`group_dims` as the engine array sees them: for an fc layer input *channels*
        of the map (``ceil(features / fc_pixels)``) rather than features."""
        dims = self.group_dims(lo, hi)
        if self.kind != "fc" or self.fc_pixels == 1:
            return dims
        return [(-(-c // self.fc_pixels), o) for c, o in dims]

    def group_dims(self, lo, hi):
        """[(c_j, o_j)] per group touched by units [lo, hi): input and output channels."""
        if self.split == "icp":
            per_in, per_out = self.cin // self.groups, self.cout // self.groups
            dims = []
            for g in range(self.groups):
                a, b = max(lo, g * per_in), min(hi, (g + 1) * per_in)
                if a < b:
                    dims.append((b - a, per_out))
            return dims
        per_in, per_out = self.cin // self.groups, self.cout // self.groups
        dims = []
        for g in range(self.groups):
            a, b = max(lo, g * per_out), min(hi, (g + 1) * per_out)
            if a < b:
                dims.append((per_in, b - a))
        return dims


@dataclass
class Engine:
    """The P x S tile array of one phase of one segment."""

    phase: str
    k: int
    tiles: int           # tiles allocated (P*S*X <= tiles; the array uses P*S*X of them)
    p: int = 1           # output-channel lanes
    s: int = 1           # input-channel lanes
    x: int = 1           # output rows computed side by side
    cycles: int = 0      # cycles per image
    macs: int = 0        # useful MACs per image

    @property
    def dsp(self) -> int:
        return self.p * self.s * self.x * self.k * self.k

    @property
    def utilization(self) -> float:
        return self.macs / (self.dsp * self.cycles) if self.cycles else 0.0


@dataclass
class Segment:
    """Units [lo, hi) of one compute layer placed on one node."""

    work: Work
    node: int
    lo: int
    hi: int
    engines: dict = field(default_factory=dict)   # phase -> Engine

    @property
    def count(self) -> int:
        return self.hi - self.lo

    @property
    def whole(self) -> bool:
        return self.lo == 0 and self.hi == self.work.units

    @property
    def split(self) -> str:
        return "whole" if self.whole else self.work.split

    def macs(self, phase) -> int:
        return self.work.unit_macs(phase) * self.count

    @property
    def total_macs(self) -> int:
        return sum(self.macs(p) for p in PHASES)

    @property
    def dsp(self) -> int:
        return sum(e.dsp for e in self.engines.values())

    @property
    def cycles(self) -> int:
        return max((e.cycles for e in self.engines.values()), default=0)


class PartitionError(Exception):
    """The workload cannot be placed (the caller turns it into a user-facing error)."""


def _phases(work):
    return [p for p in PHASES if work.macs[p] > 0]


def _demand_tiles(work, count, period):
    """Tiles a segment of ``count`` units needs to finish within ``period`` cycles (relaxed)."""
    kk_t = work.kk * period
    return sum(max(1, math.ceil(count * work.unit_macs(p) / kk_t)) for p in _phases(work))


#: Default for the most output rows an engine computes side by side (line buffer of K + X - 1
#: rows); each Work carries its own limit (``Work.max_x``).
MAX_ROW_LANES = 8


@functools.lru_cache(maxsize=1 << 16)
def _shape_for_passes(dims, m):
    """Fewest tiles P*S with sum_j ceil(o_j/P)*ceil(c_j/S) <= m: (tiles, p, s) or None.

    ``dims`` is a tuple of (c_j, o_j) per group."""
    if m < len(dims):
        return None
    cs = np.array([c for c, _ in dims], dtype=np.int64)
    os_ = [o for _, o in dims]
    svals = np.arange(1, int(cs.max()) + 1, dtype=np.int64)
    rsum = (-(-cs[None, :] // svals[:, None])).sum(axis=1)      # sum_j ceil(c_j / S)
    if len(set(os_)) == 1:                      # ICP (or one group): ceil(o/P) * rsum <= m
        o = os_[0]
        q = m // rsum                           # output passes allowed
        ok = q >= 1
        if not ok.any():
            return None
        svals, q = svals[ok], q[ok]
        p = -(-o // np.minimum(q, o))
        tiles = p * svals
        i = int(np.argmin(tiles))
        return int(tiles[i]), int(p[i]), int(svals[i])
    best = None                                 # OCP over several groups: small, search P
    c = int(cs[0])
    for s_ in range(1, c + 1):
        r = -(-c // s_)
        for p_ in range(1, max(os_) + 1):
            if r * sum(-(-o // p_) for o in os_) <= m:
                if best is None or p_ * s_ < best[0]:
                    best = (p_ * s_, p_, s_)
                break
    return best


_SHAPE_CACHE = {}


def clear_caches():
    """Forget remembered array shapes (for benchmarks that time a cold start)."""
    _SHAPE_CACHE.clear()
    _shape_for_passes.cache_clear()


def exact_shape(work, lo, hi, period):
    """Smallest P x S x X array for units [lo, hi) that finishes one image within ``period``.

    X output rows are computed side by side (X <= work.max_x). Returns (tiles, p, s, x) or
    None if no array can. Exact: cycles = ceil(Ho/X)*Wo * sum_groups ceil(o_j/P)*ceil(c_j/S).
    """
    ho, wo = work.array_hw
    m_rows = int(period // wo)                  # row-passes that fit in the period
    key = (work.split, work.cin, work.cout, work.groups, work.array_hw, work.max_x, lo, hi,
           m_rows)
    hit = _SHAPE_CACHE.get(key)
    if hit is not None or key in _SHAPE_CACHE:
        return hit
    dims = tuple(work.array_dims(lo, hi))
    best = None
    for x in range(1, min(work.max_x, ho) + 1):
        rows = -(-ho // x)
        if x > 1 and rows == -(-ho // (x - 1)):
            continue                            # no fewer row steps than with x - 1 lanes
        shape = _shape_for_passes(dims, m_rows // rows)
        if shape is not None and (best is None or shape[0] * x < best[0]):
            best = (shape[0] * x, shape[1], shape[2], x)
    if len(_SHAPE_CACHE) > 200_000:
        _SHAPE_CACHE.clear()
    _SHAPE_CACHE[key] = best
    return best


def _exact_dsp(work, lo, hi, period):
    shape = exact_shape(work, lo, hi, period)
    if shape is None:
        return None
    return work.kk * shape[0] * len(_phases(work))


def _max_units(work, start, remaining, budget, period, exact):
    """Largest count <= remaining whose demand fits ``budget`` DSPs (searched near the relaxed
    estimate: the exact demand is never below the relaxed one)."""
    def fits(count):
        if exact:
            d = _exact_dsp(work, start, start + count, period)
            return d is not None and d <= budget
        return work.kk * _demand_tiles(work, count, period) <= budget
    if not fits(1):
        return 0
    per_unit = sum(work.unit_macs(p) for p in _phases(work)) / period
    guess = max(1, min(remaining, int(budget / per_unit) if per_unit else remaining))
    if fits(guess):
        if guess == remaining or not fits(guess + 1):
            return guess
        lo, hi = guess + 1, remaining + 1
        if fits(remaining):
            return remaining
        hi = remaining
    else:
        lo, hi = 1, guess
        step = max(1, guess // 16)
        while guess - step > 1 and not fits(guess - step):
            hi = guess - step
            step *= 2
        lo = max(1, guess - step)
        if not fits(lo):
            lo = 1
    while hi - lo > 1:              # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def pack(works, nodes, dsp_budget, period, exact=False, offchip=None):
    """Greedy fill along the work line at pipeline period ``period``.

    With ``exact`` the demand of a segment is its exact array shape (``exact_shape``); otherwise
    the relaxed ``ceil(MACs / (K*K*T))`` tiles per phase. ``offchip = (bits_per_unit, rate)``
    adds a second resource per node: off-chip memory traffic, ``bits_per_unit(work)`` bits per
    image for each unit (FC weights streamed from DRAM) against ``rate`` usable bits per cycle.
    Returns a list of (node, work, lo, hi) or None if it does not fit in ``nodes`` nodes.
    """
    mem_budget = offchip[1] * period if offchip else 0.0
    placed = []
    node, left, mem_left = 0, dsp_budget, mem_budget

    def next_node():
        nonlocal node, left, mem_left
        node, left, mem_left = node + 1, dsp_budget, mem_budget
        return node < nodes

    for work in works:
        bpu = offchip[0](work) if offchip else 0
        done = 0
        while done < work.units:
            remaining = work.units - done
            if bpu:
                remaining = min(remaining, int(mem_left // bpu))
            fresh = left == dsp_budget and mem_left == mem_budget
            if work.whole:
                # all units or none: the layer is never cut
                d = (_exact_dsp(work, 0, work.units, period) if exact
                     else work.kk * _demand_tiles(work, work.units, period))
                c = work.units if remaining == work.units and d is not None and d <= left else 0
            else:
                c = _max_units(work, done, remaining, left, period, exact) if remaining else 0
                if c < work.units - done:
                    c -= c % work.unit_step         # channel boundaries (fc by features)
            if c == 0:
                if fresh or not next_node():
                    return None               # one unit alone exceeds a whole node
                continue
            demand = (_exact_dsp(work, done, done + c, period) if exact
                      else work.kk * _demand_tiles(work, c, period))
            prev = placed[-1] if placed else None
            if prev is not None and prev[0] == node and prev[1] is work:
                # the same layer again on the same node (demand is not monotone in the count):
                # one segment if the merged array is no bigger than the two
                old = (_exact_dsp(work, prev[2], done, period) if exact
                       else work.kk * _demand_tiles(work, done - prev[2], period))
                merged = (_exact_dsp(work, prev[2], done + c, period) if exact
                          else work.kk * _demand_tiles(work, done + c - prev[2], period))
                if merged is not None and merged <= old + demand:
                    placed[-1] = (node, work, prev[2], done + c)
                    left += old - merged
                    mem_left -= bpu * c
                    done += c
                    continue
                if not next_node():                # one segment per layer and node
                    return None
                continue
            placed.append((node, work, done, done + c))
            left -= demand
            mem_left -= bpu * c
            done += c
    return placed


def cycles_of(work, lo, hi, p, s, x):
    """Cycles per image of a P x S x X array on units [lo, hi)."""
    ho, wo = work.array_hw
    return -(-ho // x) * wo * sum(-(-o // p) * -(-c // s) for c, o in work.array_dims(lo, hi))


def best_shape(work, lo, hi, tiles):
    """Array (P, S, X) with P*S*X <= tiles minimising cycles per image; returns (p, s, x, cycles)."""
    dims = work.array_dims(lo, hi)
    cmax = max(c for c, _ in dims)
    omax = max(o for _, o in dims)
    best = None
    ho = work.array_hw[0]
    for x in range(1, min(work.max_x, ho, tiles) + 1):
        for s in sorted({-(-cmax // r) for r in range(1, cmax + 1)}):
            if s * x > tiles:
                break
            p = min(tiles // (s * x), omax)
            passes = [-(-o // p) for _, o in dims]
            p = max(-(-o // q) for (_, o), q in zip(dims, passes))
            cycles = cycles_of(work, lo, hi, p, s, x)
            key = (cycles, p * s * x)
            if best is None or key < best[0]:
                best = (key, p, s, x, cycles)
    _, p, s, x, cycles = best
    return p, s, x, cycles


def _engine(work, lo, hi, phase, tiles, shape=None):
    if shape is None:
        p, s, x, cycles = best_shape(work, lo, hi, tiles)
    else:
        p, s, x = shape
        cycles = cycles_of(work, lo, hi, p, s, x)
    return Engine(phase=phase, k=work.k, tiles=tiles, p=p, s=s, x=x, cycles=cycles,
                  macs=work.unit_macs(phase) * (hi - lo))


def allocate(placed, nodes, dsp_budget, period):
    """Turn an exact packing into segments with engines, then spend each node's spare DSPs on
    its slowest engines."""
    by_node = [[] for _ in range(nodes)]
    for node, work, lo, hi in placed:
        seg = Segment(work=work, node=node, lo=lo, hi=hi)
        tiles, p, s_, x = exact_shape(work, lo, hi, period)
        for phase in _phases(work):
            seg.engines[phase] = _engine(work, lo, hi, phase, tiles, (p, s_, x))
        by_node[node].append(seg)
    for segs in by_node:
        _fill_spare(segs, dsp_budget)
    return by_node


def _fill_spare(segs, dsp_budget):
    """Give the node's spare DSPs to its slowest engine, as long as that shortens it."""
    engines = [(seg, e) for seg in segs for e in seg.engines.values()]
    if not engines:
        return
    spare = dsp_budget - sum(e.tiles * e.k * e.k for _, e in engines)
    while True:
        i = max(range(len(engines)), key=lambda j: engines[j][1].cycles)
        seg, eng = engines[i]
        shape = exact_shape(seg.work, seg.lo, seg.hi, eng.cycles - 1)
        if shape is None:
            break
        tiles, p, s_, x = shape
        cost = (tiles - eng.tiles) * eng.k * eng.k
        if cost > spare:
            break
        new = _engine(seg.work, seg.lo, seg.hi, eng.phase, max(tiles, eng.tiles), (p, s_, x))
        spare -= max(0, cost)
        seg.engines[eng.phase] = new
        engines[i] = (seg, new)


def partition(works, nodes, dsp_budget, offchip=None):
    """Find the smallest pipeline period that places all ``works`` on ``nodes`` nodes.

    ``offchip``: see :func:`pack`. Returns (segments_by_node, relaxed_period).
    """
    if nodes < 1:
        raise PartitionError(f"the number of nodes must be at least 1, not {nodes}")
    total = sum(w.total_macs for w in works)
    lo = total / (nodes * dsp_budget)          # every DSP busy every cycle: cannot do better
    hi = lo
    for _ in range(64):
        if pack(works, nodes, dsp_budget, hi, offchip=offchip) is not None:
            break
        hi *= 2
    else:
        need = sum(w.kk * len(_phases(w)) for w in works)
        raise PartitionError(
            f"the engines of {len(works)} layers need at least {need} DSPs in all; "
            f"{nodes} nodes give {nodes * dsp_budget}")
    for _ in range(60):
        if hi - lo <= max(1e-4 * hi, 0.5):
            break
        mid = (lo + hi) / 2
        if pack(works, nodes, dsp_budget, mid, offchip=offchip) is not None:
            hi = mid
        else:
            lo = mid
    relaxed = hi
    # fine phase: the same search with exact array shapes, from the relaxed optimum upwards
    lo = relaxed
    hi = relaxed * 1.05
    while pack(works, nodes, dsp_budget, hi, exact=True, offchip=offchip) is None:
        lo, hi = hi, hi * 1.25
        if hi > relaxed * 1e6:
            raise PartitionError("no exact engine shapes fit the nodes")
    for _ in range(10):
        mid = (lo + hi) / 2
        if pack(works, nodes, dsp_budget, mid, exact=True, offchip=offchip) is not None:
            hi = mid
        else:
            lo = mid
    placed = pack(works, nodes, dsp_budget, hi, exact=True, offchip=offchip)
    by_node = allocate(placed, nodes, dsp_budget, hi)
    _trim(by_node)
    return by_node, relaxed


def _trim(by_node):
    """Give back DSPs no engine needs: the slowest engine anywhere sets the pipeline period;
    every other engine keeps the smallest array that still meets it."""
    period = max(e.cycles for segs in by_node for seg in segs for e in seg.engines.values())
    for segs in by_node:
        for seg in segs:
            for phase, eng in list(seg.engines.items()):
                shape = exact_shape(seg.work, seg.lo, seg.hi, period)
                if shape is not None and shape[0] < eng.tiles:
                    tiles, p, s_, x = shape
                    seg.engines[phase] = _engine(seg.work, seg.lo, seg.hi, phase, tiles,
                                                 (p, s_, x))
