"""A FIFO of wide words kept as ``fold`` narrower rows per word (build-time block RAM saving).

Block RAM is bought in primitives of fixed aspect ratios (512 x 72 at the widest, simple dual
port), so a shallow FIFO of wide words wastes most of its primitives: a decoupling FIFO of two
rows of VGG-16 conv3_1's errors on node 4 (111 words of 4,096 bits) takes 57 RAMB36 of which it
fills 22 %. Where words come no faster than one every ``fold`` cycles (a layer's engines take
``R * G`` cycles per pixel), the FIFO can keep each word as ``fold`` rows of
``ceil(width / fold)`` bits in a memory ``fold`` times deeper and narrower: the same bits in
fewer primitives (that FIFO: 15 RAMB36 at ``fold = 4``).

:class:`FoldedFIFO` does that with no extra copy of a word:

- write side: the word offered on ``w_stream`` is held by its producer (a stream's payload is
  stable until taken) while its ``fold`` chunks go into the inner FIFO, chunk 0 (bits
  ``[0, cw)``) first, one per cycle; the word is taken (``w_stream.ready``) with its last chunk;
- storage: an :class:`~amaranth.lib.fifo.SyncFIFOBuffered` of ``fold * depth`` chunks;
- read side: chunks ``0 .. fold-2`` are gathered into a register, and the word is offered on
  ``r_stream`` while the inner FIFO offers its last chunk (so its payload is the register and
  that chunk, stable until taken); it is taken with that chunk.

**Row sides** (``rows_in`` / ``rows_out``): either side can instead take or give the rows
themselves, one ``ceil(width / fold)``-bit row per transfer, row 0 of a word first (its bits
``[0, cw)``; the last row's bits above ``width`` are zeros on the way out and ignored on the way
in). That is the side of a memory whose word is one row: the off-chip update's burst port
(:class:`~fpdeep_hw.node.update.OffchipWeightUpdate`), which reads rows into a FIFO that gives
whole sets and writes rows out of one that takes whole sets. A row side transfers a row per
cycle; capacity stays ``depth`` words (``fold * depth`` rows).

So a word is accepted every ``fold`` cycles at most and offered every ``fold`` cycles at most;
``fold = 1`` is exactly a ``SyncFIFOBuffered(width, depth)``. Capacity: ``depth`` whole words
in the inner FIFO. Latency (both sides always ready, empty FIFO): a word offered in cycle ``t``
is taken with its last row in cycle ``t + fold - 1`` and offered on ``r_stream`` from cycle
``t + fold + 1`` (:attr:`latency`; for ``fold = 1`` the two cycles of ``SyncFIFOBuffered``).
Same members as ``SyncFIFOBuffered`` (``w_stream``, ``r_stream``), so it drops in where one
is.

Golden model: a FIFO passes its words on unchanged and in order (the identity), which is what
the test checks, word by word, under random stalls on both sides. Where it is used:
``NodeTop(fifo_fold=)`` (the build's row FIFOs, :func:`row_fifo_fold`) and
``NodeTop(master_fold=)`` (the off-chip updates' FIFOs of whole weight sets, in distributed
RAM: :func:`lutram_fifo_fold`). Test:
``tests/hw/test_folded_fifo.py``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from fpdeep_map.costs import LUTRAM_MAX_DEPTH, bram18_tiles, lutram_luts

__all__ = ["FoldedFIFO", "row_fifo_fold", "lutram_fifo_fold"]

#: Most rows per word :func:`row_fifo_fold` considers.
MAX_FOLD = 64
#: :func:`row_fifo_fold` takes the smallest fold within this factor of the fewest units.
FOLD_SLACK = 1.1


def row_fifo_fold(width, depth, limit):
    """The fold for a FIFO of ``depth`` words of ``width`` bits whose words come at most one
    every ``limit`` cycles: the smallest power of two up to ``limit`` (and :data:`MAX_FOLD`
    and ``width``) whose :class:`FoldedFIFO` needs at most :data:`FOLD_SLACK` times the fewest
    block RAM units any of them needs (:func:`fpdeep_map.costs.bram18_tiles`, the estimate
    ``report.json`` uses; a ``SyncFIFOBuffered`` keeps ``depth - 1`` words in its memory); 1
    where folding saves nothing (a FIFO in distributed RAM, or one already deep). The smaller
    fold keeps the higher rate for almost the same block RAM (VGG-16 node 4's 4,096-bit, 111-word
    FIFOs: 29 units folded by 4, 28 by 32)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"row_fifo_fold: limit must be a positive integer, not {limit!r}")
    units = {}
    f = 1
    while f <= min(limit, MAX_FOLD, width):
        units[f] = bram18_tiles(-(-width // f), f * depth - 1)
        f *= 2
    least = min(units.values())
    if least == units[1]:
        return 1
    return min(f for f, u in units.items() if u <= FOLD_SLACK * least)


def lutram_fifo_fold(width, depths, limit):
    """The fold for FIFOs of ``depth`` words (one per entry of ``depths``) of ``width`` bits
    kept in distributed RAM, whose words come at most one every ``limit`` cycles: the smallest
    power of two up to ``limit`` (and :data:`MAX_FOLD` and ``width``) whose folded FIFOs stay
    in distributed RAM (``fold * depth - 1`` rows at most
    :data:`~fpdeep_map.costs.LUTRAM_MAX_DEPTH`) and need at most :data:`FOLD_SLACK` times the
    fewest LUTs any of them needs (:func:`fpdeep_map.costs.lutram_luts`, the estimate
    ``report.json`` uses); 1 where folding saves nothing or a FIFO is in block RAM unfolded.

    Used for :class:`~fpdeep_hw.node.update.OffchipWeightUpdate`'s two FIFOs of whole weight
    sets (8 words of 10,368 to 15,552 bits on VGG-16 node 4: 7 rows of RAM32M, 10,368 LUTs for
    15,552 bits; folded by 4, 31 rows of 3,888 bits: 2,592). The folded FIFO's gather register
    (``(fold - 1) / fold`` of a word) takes the place of the unfolded one's output register, so
    the flip-flops stay about the same."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"lutram_fifo_fold: limit must be a positive integer, not {limit!r}")
    depths = tuple(depths)
    if any(d - 1 > LUTRAM_MAX_DEPTH for d in depths):
        return 1
    luts = {}
    f = 1
    while f <= min(limit, MAX_FOLD, width) and all(f * d - 1 <= LUTRAM_MAX_DEPTH
                                                    for d in depths):
        luts[f] = sum(lutram_luts(-(-width // f), f * d - 1) for d in depths)
        f *= 2
    least = min(luts.values())
    if least == luts[1]:
        return 1
    return min(f for f, n in luts.items() if n <= FOLD_SLACK * least)


class FoldedFIFO(wiring.Component):
    """FIFO of ``depth`` words of ``width`` bits, each kept as ``fold`` rows (see the module).

    Parameters
    ----------
    width : int
        Bits per word (at least 1).
    depth : int
        Words it holds (at least 1).
    fold : int
        Rows per word, ``1 .. width``.

    Members
    -------
    w_stream : ``In(stream.Signature(width))``
        (``chunk_width`` bits with ``rows_in``: one row per transfer)
    r_stream : ``Out(stream.Signature(width))``
        (``chunk_width`` bits with ``rows_out``)
    """

    def __init__(self, *, width, depth, fold, rows_in=False, rows_out=False):
        for name, value, low in (("width", width, 1), ("depth", depth, 1), ("fold", fold, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"FoldedFIFO: {name} must be an integer of at least {low}, "
                                 f"not {value!r}")
        if fold > width:
            raise ValueError(f"FoldedFIFO: fold {fold} is more than the width {width}")
        for name, value in (("rows_in", rows_in), ("rows_out", rows_out)):
            if not isinstance(value, bool):
                raise TypeError(f"FoldedFIFO: {name} must be a bool, not {value!r}")
        self._width, self._depth, self._fold = width, depth, fold
        self._chunk = -(-width // fold)
        self._rows_in, self._rows_out = rows_in, rows_out
        super().__init__({
            "w_stream": In(stream.Signature(self._chunk if rows_in else width)),
            "r_stream": Out(stream.Signature(self._chunk if rows_out else width))})

    width = property(lambda self: self._width)
    depth = property(lambda self: self._depth)
    fold = property(lambda self: self._fold)
    chunk_width = property(lambda self: self._chunk, doc="``ceil(width / fold)`` bits per row")
    rows_in = property(lambda self: self._rows_in)
    rows_out = property(lambda self: self._rows_out)

    @property
    def latency(self):
        """Cycles from a word offered to an empty FIFO (both sides ready) to it offered on
        ``r_stream``: ``fold + 1`` (2 for ``fold = 1``, as ``SyncFIFOBuffered``). With a row side
        the same holds from the first row offered to the word (``rows_in``) or from the word to
        its last row (``rows_out``); with both, a row takes 2 cycles."""
        if self._rows_in and self._rows_out:
            return 2
        return self._fold + 1

    def elaborate(self, platform):
        m = Module()
        w, r, f, cw = self._width, self.r_stream, self._fold, self._chunk
        inner = SyncFIFOBuffered(width=cw if f > 1 else w, depth=f * self._depth)
        m.submodules.inner = inner
        if f == 1:
            m.d.comb += [
                inner.w_stream.valid.eq(self.w_stream.valid),
                inner.w_stream.payload.eq(self.w_stream.payload),
                self.w_stream.ready.eq(inner.w_stream.ready),
                r.valid.eq(inner.r_stream.valid),
                r.payload.eq(inner.r_stream.payload),
                inner.r_stream.ready.eq(r.ready),
            ]
            return m
        if self._rows_in:
            # write side: the rows as they come
            wiring.connect(m, wiring.flipped(self.w_stream), inner.w_stream)
        else:
            self._split(m, inner)
        if self._rows_out:
            # read side: the rows as they are
            wiring.connect(m, inner.r_stream, wiring.flipped(r))
        else:
            self._gather(m, inner)
        return m

    def _split(self, m, inner):
        """Write side: the held word's chunks into ``inner``, one per cycle."""
        f, cw = self._fold, self._chunk
        padded = Signal(f * cw)
        m.d.comb += padded.eq(self.w_stream.payload)
        chunks = [padded[j * cw:(j + 1) * cw] for j in range(f)]
        # chunk `wi` of the held word
        wi = Signal(range(f))
        wlast = wi == f - 1
        with m.Switch(wi):
            for j in range(f - 1):
                with m.Case(j):
                    m.d.comb += inner.w_stream.payload.eq(chunks[j])
            with m.Default():
                m.d.comb += inner.w_stream.payload.eq(chunks[f - 1])
        m.d.comb += [
            inner.w_stream.valid.eq(self.w_stream.valid),
            self.w_stream.ready.eq(inner.w_stream.ready & wlast),
        ]
        with m.If(inner.w_stream.valid & inner.w_stream.ready):
            m.d.sync += wi.eq(_wrap(wi, f))

    def _gather(self, m, inner):
        """Read side: gather chunks 0 .. f-2, offer the word with the last one."""
        w, r, f, cw = self._width, self.r_stream, self._fold, self._chunk
        ri = Signal(range(f))
        rlast = ri == f - 1
        gathered = Signal((f - 1) * cw)
        for j in range(f - 1):
            with m.If(inner.r_stream.valid & ~rlast & (ri == j)):
                m.d.sync += gathered[j * cw:(j + 1) * cw].eq(inner.r_stream.payload)
        m.d.comb += [
            r.valid.eq(inner.r_stream.valid & rlast),
            r.payload.eq(Cat(gathered, inner.r_stream.payload)[:w]),
            inner.r_stream.ready.eq(~rlast | r.ready),
        ]
        with m.If(inner.r_stream.valid & inner.r_stream.ready):
            m.d.sync += ri.eq(_wrap(ri, f))


def _wrap(counter, f):
    """``counter + 1`` modulo ``f``."""
    return Mux(counter == f - 1, 0, counter + 1)
