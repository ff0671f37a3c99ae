"""Memories of many identical lanes side by side (all lanes read and written at one address).

A block of per-element lanes (PG's accumulators, the gradient buffers, the master copy, the
parameter RAMs) keeps its words in rows of lanes rather than one memory per lane: a shallow
memory of one 24- or 48-bit lane takes a whole RAMB18 (or two) on its own, a row of lanes fills
the block RAM's width. Rows are cut at :data:`PACK_LANES` lanes (:func:`lanes_per_memory`) and
written with enables in groups of :func:`packed_granularity` bits, all equal.
:func:`pack_rows` builds the initial rows of such a memory. The estimate of what a memory
takes: :func:`fpdeep_map.costs.bram18_tiles`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np

__all__ = ["PACK_LANES", "lanes_per_memory", "packed_granularity", "pack_rows", "packed_memory",
           "DistributedRAM", "distributed_ram", "DISTRIBUTED_MAX_DEPTH",
           "DISTRIBUTED_LUTS_PER_BRAM36"]

#: Most lanes in one packed memory: its rows stay far below Amaranth's
#: 65,536 bits per value, and the simulator's code for a row (one term per lane) below Python's
#: nesting limit. Rounded down to whole 72-bit block RAM columns (:func:`lanes_per_memory`).
PACK_LANES = 256


def packed_granularity(width, lanes):
    """Write-enable granularity of a packed memory of ``lanes`` words of ``width`` bits (all
    enables equal): whole 72-bit block RAM column pairs (``lcm(width, 72)`` bits) where they
    divide the row, else one enable per lane. Amaranth's simulator expands a single enable to
    one term per bit of the row, more than Python compiles for a wide row."""
    g = width * 72 // math.gcd(width, 72)
    return g if (width * lanes) % g == 0 else width


def lanes_per_memory(width, lanes):
    """Lanes of ``width`` bits per packed memory: all ``lanes`` if at most :data:`PACK_LANES`,
    else the largest multiple of ``72 / gcd(72, width)`` up to it (rows of whole 72-bit
    RAMB36 columns)."""
    if lanes <= PACK_LANES:
        return lanes
    step = 72 // math.gcd(72, width)
    return max(step, PACK_LANES // step * step)


def pack_rows(words, width):
    """Rows of a packed memory from ``words`` (``depth x lanes`` integers, two's complement
    in ``width`` bits): lane ``j`` in bits ``[j*width, (j+1)*width)``; a list of ints."""
    words = np.asarray(words, dtype=np.int64)
    rows = np.zeros(words.shape[0], dtype=object)
    mask = (1 << width) - 1
    for j in range(words.shape[1]):
        rows |= (words[:, j].astype(object) & mask) << (j * width)
    return [int(v) for v in rows]


#: Deepest packed memory :class:`DistributedRAM` moves to distributed RAM.
DISTRIBUTED_MAX_DEPTH = 128
#: Most LUTs :class:`DistributedRAM` spends per BRAM36 it saves (the VC709 has 295 LUTs per
#: BRAM36; a 65- to 128-row memory costs 144 to 192, a 129- to 192-row one 288).
DISTRIBUTED_LUTS_PER_BRAM36 = 200


class DistributedRAM:
    """Which packed memories go to distributed RAM (build time, :func:`distributed_ram`).

    A packed memory of at most :data:`DISTRIBUTED_MAX_DEPTH` rows that takes block RAM (more
    than ``LUTRAM_MAX_DEPTH`` rows, so synthesis would not put it in LUTs by itself) is built
    from pieces of at most 64 rows, each marked ``ram_style = "distributed"`` (RAM64M / RAM32M;
    the rows of a piece are the memory's rows ``[base, base + 64)``), where the LUTs that takes
    (:func:`fpdeep_map.costs.lutram_luts`) are at most ``luts_per_bram36`` per BRAM36 it saves
    (:func:`fpdeep_map.costs.memory_bram18`, as the build counts it) and fit in what is left of
    ``lut_budget``; memories are taken in elaboration order. ``taken`` lists them as
    ``(rows, row bits, read ports, BRAM36 saved, LUTs)``; ``luts`` is their total.
    """

    def __init__(self, lut_budget, luts_per_bram36=DISTRIBUTED_LUTS_PER_BRAM36,
                 max_depth=DISTRIBUTED_MAX_DEPTH):
        self.lut_budget, self.luts_per_bram36, self.max_depth = (lut_budget, luts_per_bram36,
                                                                 max_depth)
        self.taken = []
        self.luts = 0

    def pieces(self, bits, depth, reads, shared):
        """Rows of each piece for a memory of ``depth`` rows of ``bits`` bits with ``reads``
        synchronous read ports (``shared``: the first has the write port's address), or
        ``None`` to keep it one memory."""
        from fpdeep_map.costs import LUTRAM_MAX_DEPTH, LUTRAM_ROWS, lutram_luts, memory_bram18
        if not LUTRAM_MAX_DEPTH < depth <= self.max_depth:
            return None
        units = memory_bram18(bits, depth, reads, 0, 1 if shared else 0)
        luts = lutram_luts(bits, depth, reads, shared)
        if not units or luts > self.luts_per_bram36 * units / 2 \
                or self.luts + luts > self.lut_budget:
            return None
        self.luts += luts
        self.taken.append((depth, bits, reads, units / 2, luts))
        full, rest = divmod(depth, LUTRAM_ROWS)
        return [LUTRAM_ROWS] * full + ([rest] if rest else [])


_POLICY = contextvars.ContextVar("fpdeep_distributed_ram", default=None)


@contextlib.contextmanager
def distributed_ram(lut_budget, **kw):
    """Inside: :func:`packed_memory` moves shallow memories to distributed RAM by the rules of
    a :class:`DistributedRAM` (yielded), until ``lut_budget`` LUTs are spent. Outside (every
    simulation and test by default) a packed memory is always one memory."""
    policy = DistributedRAM(lut_budget, **kw)
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def packed_memory(m, name, *, width, lanes, depth, w_addr, w_en, w_data, r_addr, r_en,
                  init=None, r2_addr=None, r2_en=None, distributable=True):
    """Add memory ``name`` to module ``m``: ``depth`` rows of ``lanes`` words of ``width`` bits,
    one write port (``w_data`` the whole row, enables all equal to ``w_en``, in groups of
    :func:`packed_granularity`) and one synchronous, non-transparent read port. ``init``: the
    rows (:func:`pack_rows`), default zeros. Returns ``(memory, read data)`` (lane ``j`` in
    bits ``[j*width, (j+1)*width)``).

    ``r2_addr`` / ``r2_en``: a second synchronous, non-transparent read port; then the result is
    ``(memory, read data, second read data)``. Give the first read port the write port's
    address signal (``r_addr is w_addr``, the caller muxing reads and writes) and synthesis
    builds one true dual-port block RAM (port A writes or reads, port B reads) instead of a
    copy per read port (``fpdeep_hw.build.rtl_memories`` counts it so).

    Inside :func:`distributed_ram` a shallow memory may be built as pieces of at most 64 rows
    in distributed RAM (:class:`DistributedRAM`; ``distributable=False`` keeps it whole): the
    same ports, timing and contents (each read port's data comes from the piece its address
    fell in when it was read); the first piece is returned as the memory."""
    from amaranth.hdl import Mux, unsigned

    from .fast_init import memory
    policy = _POLICY.get()
    pieces = None
    if policy is not None and distributable:
        pieces = policy.pieces(lanes * width, depth, 1 if r2_addr is None else 2,
                               r_addr is w_addr)
    if pieces is not None:
        return _pieces(m, name, pieces, width=width, lanes=lanes, w_addr=w_addr, w_en=w_en,
                       w_data=w_data, r_addr=r_addr, r_en=r_en, init=init, r2_addr=r2_addr,
                       r2_en=r2_en)
    mem = memory(shape=unsigned(lanes * width), depth=depth, init=init or [])
    m.submodules[name] = mem
    wp = mem.write_port(granularity=packed_granularity(width, lanes))
    rp = mem.read_port()
    m.d.comb += [
        wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(Mux(w_en, (1 << len(wp.en)) - 1, 0)),
        rp.addr.eq(r_addr), rp.en.eq(r_en),
    ]
    if r2_addr is None:
        return mem, rp.data
    rp2 = mem.read_port()
    m.d.comb += [rp2.addr.eq(r2_addr), rp2.en.eq(r2_en)]
    return mem, rp.data, rp2.data


def _pieces(m, name, pieces, *, width, lanes, w_addr, w_en, w_data, r_addr, r_en, init,
            r2_addr, r2_en):
    """:func:`packed_memory` as pieces of ``pieces`` rows (distributed RAM)."""
    from amaranth.hdl import Mux, Signal, unsigned

    from .fast_init import memory
    rows = list(init or [])
    bases = [sum(pieces[:i]) for i in range(len(pieces))]
    sels = []
    ports = [(r_addr, r_en)] + ([] if r2_addr is None else [(r2_addr, r2_en)])
    for j, (addr, en) in enumerate(ports):
        sel = Signal(range(max(len(pieces), 2)), name=f"{name}_sel{j}")
        which = 0
        for i, base in enumerate(bases[1:], 1):
            which = Mux(addr >= base, i, which)
        with m.If(en):
            m.d.sync += sel.eq(which)
        sels.append(sel)
    outs = [[] for _ in ports]
    first = None
    for i, (base, d) in enumerate(zip(bases, pieces)):
        mem = memory(shape=unsigned(lanes * width), depth=d, init=rows[base:base + d],
                     attrs={"ram_style": "distributed"})
        m.submodules[f"{name}_p{i}"] = mem
        first = first if first is not None else mem
        # one address signal for the write and a read with the write port's address, so the
        # piece stays one memory with a shared read/write port
        wa = Signal(range(max(d, 2)), name=f"{name}_p{i}_waddr")
        m.d.comb += wa.eq(w_addr - base if base else w_addr)
        wp = mem.write_port(granularity=packed_granularity(width, lanes))
        inside = w_addr < base + d
        if base:
            inside = inside & (w_addr >= base)
        m.d.comb += [wp.addr.eq(wa), wp.data.eq(w_data),
                     wp.en.eq(Mux(w_en & inside, (1 << len(wp.en)) - 1, 0))]
        for j, (addr, en) in enumerate(ports):
            rp = mem.read_port()
            if addr is w_addr:
                m.d.comb += rp.addr.eq(wa)
            else:
                m.d.comb += rp.addr.eq(addr - base if base else addr)
            m.d.comb += rp.en.eq(en)
            outs[j].append(rp.data)
    data = []
    for j, sel in enumerate(sels):
        d = outs[j][0]
        for i in range(1, len(pieces)):
            d = Mux(sel == i, outs[j][i], d)
        # one signal: the users slice the row lane by lane, and a slice of an expression
        # rebuilds the whole expression in Amaranth's back end (quadratic in the lanes)
        row = Signal(lanes * width, name=f"{name}_rd{j}")
        m.d.comb += row.eq(d)
        data.append(row)
    return (first, *data)
