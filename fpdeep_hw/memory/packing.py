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

import math

import numpy as np

__all__ = ["PACK_LANES", "lanes_per_memory", "packed_granularity", "pack_rows", "packed_memory"]

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


def packed_memory(m, name, *, width, lanes, depth, w_addr, w_en, w_data, r_addr, r_en,
                  init=None, r2_addr=None, r2_en=None):
    """Add memory ``name`` to module ``m``: ``depth`` rows of ``lanes`` words of ``width`` bits,
    one write port (``w_data`` the whole row, enables all equal to ``w_en``, in groups of
    :func:`packed_granularity`) and one synchronous, non-transparent read port. ``init``: the
    rows (:func:`pack_rows`), default zeros. Returns ``(memory, read data)`` (lane ``j`` in
    bits ``[j*width, (j+1)*width)``).

    ``r2_addr`` / ``r2_en``: a second synchronous, non-transparent read port; then the result is
    ``(memory, read data, second read data)``. Give the first read port the write port's
    address signal (``r_addr is w_addr``, the caller muxing reads and writes) and synthesis
    builds one true dual-port block RAM (port A writes or reads, port B reads) instead of a
    copy per read port (``fpdeep_hw.build.rtl_memories`` counts it so)."""
    from amaranth.hdl import Mux, unsigned

    from .fast_init import memory
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

