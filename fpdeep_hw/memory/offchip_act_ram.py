"""Off-chip Act-RAM: the FIFO activation store kept in external memory (DRAM) through bursts.

The mapper keeps an Act-RAM off chip when it does not fit in block RAM
(``SegmentPlan.act_ram.offchip_words > 0``, ``fpdeep_map/plan.py``; e.g. every VGG-16 layer on
VC709). :class:`OffchipActRAM` has the stream interface of
:class:`fpdeep_hw.memory.act_ram.ActRAM` (``i``, ``o``, ``level``, ``full``, ``empty``), and
keeps its words in a ring of bursts in an external memory reached through a vendor-neutral burst
port (:data:`MEMORY_PORTS`), with small on-chip FIFOs on both sides. :func:`act_ram_for` picks
one or the other from a plan entry. The same FIFO for words of any shape is
:class:`OffchipFIFO` (its base class): the node keeps the ReLU-mask and argmax stores of a
segment in it where the plan keeps them off chip (``SegmentPlan.mask_store`` /
``arg_store.offchip_words > 0``; :func:`store_for` picks it or an on-chip ``SyncFIFOBuffered``).

Golden model: a FIFO (:mod:`sim.golden.act_ram` ``act_ram_order``: words out in order, none lost
or duplicated). External memory model for simulation: :mod:`sim.dram_model`. Board-side black
box: :class:`MemoryControllerBlackBox`. Test: ``tests/hw/test_offchip_act_ram.py``.
Documentation: ``docs/hw-memory.md``, "Off-chip Act-RAM".
"""

from __future__ import annotations

import math

from amaranth.hdl import (ClockSignal, Instance, Module, Mux, ResetSignal, Shape, Signal, Value,
                          signed)
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from fpdeep_map.numerics import FixedFormat

from .act_ram import ActRAM

__all__ = ["OffchipFIFO", "OffchipActRAM", "MemoryControllerBlackBox", "memory_port_signature",
           "act_ram_for", "store_for", "MEMORY_PORTS", "MEMORY_CONTROLLER"]

#: The burst port between an :class:`OffchipFIFO` (e.g. an :class:`OffchipActRAM`) and the
#: memory controller (all in the FIFO's clock domain; ``W`` = the word's bits, ``lanes *
#: fmt.width`` for an Act-RAM, ``A`` = ``addr_width``).
MEMORY_PORTS = {
    "aw": "out, stream of A bits: word address of a write burst's first word (bursts of "
          "`burst` consecutive words)",
    "w": "out, stream of W bits: the burst's words, in address order, bursts in aw order",
    "b": "in, stream of 1 bit (payload unused): one transfer per write burst written; a read "
         "of the burst's addresses issued after it returns the new words",
    "ar": "out, stream of A bits: word address of a read burst's first word",
    "r": "in, stream of W bits: the read bursts' words, in request order (room for every "
         "word requested is reserved; ready is always 1 but for an OffchipWeightUpdate with "
         "folded FIFOs, which takes a word every `fold` cycles: the controller holds the word "
         "while ready is low, as an AXI read channel does)",
}

#: Module name of the memory controller black box on a board.
MEMORY_CONTROLLER = "fpdeep_mem_ctrl"


def memory_port_signature(word_width, addr_width):
    """The burst port as seen from the Act-RAM (``Out`` = towards the memory)."""
    return wiring.Signature({
        "aw": Out(stream.Signature(addr_width)),
        "w": Out(stream.Signature(word_width)),
        "b": In(stream.Signature(1)),
        "ar": Out(stream.Signature(addr_width)),
        "r": In(stream.Signature(word_width)),
    })


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


class OffchipFIFO(wiring.Component):
    """FIFO of words of any shape in external memory, streaming in and out at one word per cycle.

    Words (of ``shape``) pass through three places, always in order:

    - the **write-combining FIFO** (on chip, ``2 * burst`` words) behind ``i``;
    - the **external ring**: ``ext_bursts = ceil(depth / burst)`` bursts of ``burst`` words at
      word addresses ``base .. base + ext_bursts * burst - 1`` (``ext_words``). Whenever the
      write-combining FIFO holds a whole burst and the ring has a free burst slot, the burst is
      written (``mem.aw`` then ``burst`` words on ``mem.w``). A burst is read back (``mem.ar``)
      once its write was acknowledged (``mem.b``) and the prefetch FIFO has room for it beside
      every word already requested, so ``mem.r`` is always ready; its slot is free again once
      its last word has returned;
    - the **prefetch FIFO** (on chip, ``prefetch * burst`` words) in front of ``o``: up to
      ``prefetch`` bursts are requested ahead, so the ring delivers close to one word per cycle
      when ``prefetch * burst`` exceeds the memory's read latency plus about three bursts
      (measured with ``sim.dram_model``, burst 16, 2 words per cycle: 0.98 words per cycle at
      latency 20 with ``prefetch`` 4, 0.82 with 2; 0.95 at latency 60 with 8; see
      ``docs/hw-memory.md``).

    **Bypass.** While the ring is empty (nothing written and not yet returned, no burst being
    written) words go from the write-combining FIFO straight to the prefetch FIFO, so a short
    residency never touches the memory and words left over that do not fill a burst (the end of
    a run) still come out. A burst is written only when the ring is not empty or the prefetch
    FIFO refuses the next word; once a burst is in the ring, words follow it through the ring
    (the order is kept) until the ring has drained.

    Capacity: ``depth`` words (as :class:`ActRAM`, or a ``SyncFIFOBuffered`` of that depth).
    ``level`` counts the words transferred on
    ``i`` and not yet on ``o``; ``i.ready`` is ``level != depth`` and the write-combining FIFO
    not full (it is full only while the memory refuses or delays writes: the ring holds at least
    ``depth`` words). ``full`` is ``level == depth``, ``empty`` is ``level == 0``.

    Timing: through the bypass a word transferred on ``i`` in cycle ``t`` into an empty
    FIFO is valid on ``o`` from cycle ``t + LATENCY`` (``LATENCY = 4``: two cycles through
    each on-chip FIFO). Through the ring a
    burst's first word is valid on ``o`` one cycle after it arrives on ``mem.r``; one word per
    cycle in and out needs a memory that moves two words per cycle (one written, one read).

    Parameters
    ----------
    shape : shape-castable
        Shape of a word (e.g. ``unsigned(W)``, an ``ArrayLayout``); the memory port carries its
        bits (``Shape.cast(shape).width``, at least 1).
    depth : int
        Capacity in words, at least 1.
    burst : int
        Words per memory burst, a power of two from 2 to 256.
    base : int
        Word address of the ring in the external memory (a multiple of ``burst``).
    addr_width : int
        Bits of a word address on the memory port (the ring must fit).
    prefetch : int
        Bursts of the prefetch FIFO, at least 2.

    Members
    -------
    i : ``In(stream.Signature(shape))``
        Words in (an Act-RAM: written during forward propagation).
    o : ``Out(stream.Signature(shape))``
        The same words, in order (an Act-RAM: for backward propagation).
    level : ``Out(range(depth + 1))``
    full, empty : ``Out(1)``
    mem : ``Out(memory_port_signature(W, addr_width))``
        The burst port to the memory controller (:data:`MEMORY_PORTS`; ``W`` the word's bits).
    """

    LATENCY = 4
    #: How error messages name the block.
    _WHAT = "Off-chip FIFO"

    def __init__(self, *, shape, depth, burst=16, base=0, addr_width=32, prefetch=4):
        what = self._WHAT
        try:
            width = Shape.cast(shape).width
        except TypeError:
            raise TypeError(f"{what} shape must be a shape, not {shape!r}") from None
        if width < 1:
            raise ValueError(f"{what} words must have at least 1 bit, not {width}")
        if not _is_int(depth) or depth < 1:
            raise ValueError(f"{what} depth must be a positive integer, not {depth!r}")
        if not _is_int(burst) or not 2 <= burst <= 256 or burst & (burst - 1):
            raise ValueError(f"{what} burst must be a power of two from 2 to 256, "
                             f"not {burst!r}")
        if not _is_int(base) or base < 0 or base % burst:
            raise ValueError(f"{what} base must be a non-negative multiple of the "
                             f"burst ({burst}), not {base!r}")
        if not _is_int(prefetch) or prefetch < 2:
            raise ValueError(f"{what} prefetch must be an integer of at least 2 "
                             f"bursts, not {prefetch!r}")
        if not _is_int(addr_width) or addr_width < 1:
            raise ValueError(f"{what} address width must be a positive integer, "
                             f"not {addr_width!r}")
        ext_bursts = math.ceil(depth / burst)
        if base + ext_bursts * burst > 1 << addr_width:
            raise ValueError(f"{what} ring of {ext_bursts * burst} words at {base} "
                             f"does not fit in {addr_width} address bits")
        self._shape, self._width, self._depth = shape, width, depth
        self._burst, self._base, self._addr_width = burst, base, addr_width
        self._ext_bursts = ext_bursts
        self._prefetch = prefetch
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
            "level": Out(range(depth + 1)),
            "full": Out(1),
            "empty": Out(1),
            "mem": Out(memory_port_signature(width, addr_width)),
        })

    shape = property(lambda self: self._shape)
    width = property(lambda self: self._width)
    depth = property(lambda self: self._depth)
    burst = property(lambda self: self._burst)
    base = property(lambda self: self._base)
    addr_width = property(lambda self: self._addr_width)
    latency = property(lambda self: self.LATENCY)

    @property
    def ext_bursts(self):
        """Burst slots of the external ring (``ceil(depth / burst)``)."""
        return self._ext_bursts

    @property
    def ext_words(self):
        """Words of external memory the ring occupies (``ext_bursts * burst``)."""
        return self._ext_bursts * self._burst

    @property
    def prefetch(self):
        """Bursts of the prefetch FIFO."""
        return self._prefetch

    @property
    def wc_words(self):
        """Words of the write-combining FIFO: ``2 * burst``."""
        return 2 * self._burst

    @property
    def prefetch_words(self):
        """Words of the prefetch FIFO: ``prefetch * burst``."""
        return self._prefetch * self._burst

    def elaborate(self, platform):
        m = Module()
        B, N, D = self._burst, self._ext_bursts, self._depth
        W = self._width
        F = self._prefetch * B
        mem = self.mem

        m.submodules.wc = wc = SyncFIFOBuffered(width=W, depth=2 * B)     # write-combining
        m.submodules.pf = pf = SyncFIFOBuffered(width=W, depth=F)         # prefetch

        # ---- level and the input ------------------------------------------------------------
        level = Signal(range(D + 1))
        take_i = self.i.valid & self.i.ready
        take_o = self.o.valid & self.o.ready
        m.d.comb += [
            self.i.ready.eq((level != D) & wc.w_rdy),
            wc.w_en.eq(take_i),
            wc.w_data.eq(Value.cast(self.i.payload)),
            self.o.valid.eq(pf.r_rdy),
            self.o.payload.eq(pf.r_data),
            pf.r_en.eq(self.o.ready),
            self.level.eq(level),
            self.full.eq(level == D),
            self.empty.eq(level == 0),
        ]
        with m.If(take_i & ~take_o):
            m.d.sync += level.eq(level + 1)
        with m.Elif(take_o & ~take_i):
            m.d.sync += level.eq(level - 1)

        # ---- ring bookkeeping (counters of bursts, modulo 2 N, and words) ------------------
        cnt = range(2 * N)
        written = Signal(cnt)          # aw issued
        acked = Signal(cnt)            # b received
        requested = Signal(cnt)        # ar issued
        returned = Signal(cnt)         # last word of a read burst received
        r_words = Signal(range(B))     # words of the current read burst received
        in_flight = Signal(range(F + 1))   # words requested and not yet received

        def diff(a, b):
            return Mux(a >= b, a - b, a + 2 * N - b)

        def inc(c):
            return Mux(c == 2 * N - 1, 0, c + 1)

        def slot_addr(c):
            slot = Mux(c >= N, c - N, c)
            return self._base + slot * B

        # ---- writer: aw, then B words from the write-combining FIFO ---------------------------
        w_busy = Signal()              # sending a burst's words
        w_count = Signal(range(B))
        ring_empty = Signal()
        m.d.comb += ring_empty.eq(~w_busy & (written == returned))
        bypass = Signal()
        m.d.comb += bypass.eq(ring_empty & ~mem.aw.valid)
        start = Signal()
        m.d.comb += start.eq(~w_busy & ~mem.aw.valid & (wc.r_level >= B) &
                             (diff(written, returned) < N) & (~ring_empty | ~pf.w_rdy))
        aw_addr = Signal.like(mem.aw.payload)
        m.d.comb += [mem.aw.payload.eq(aw_addr)]
        aw_valid = Signal()
        m.d.comb += mem.aw.valid.eq(aw_valid)
        with m.If(start):
            m.d.sync += [aw_valid.eq(1), aw_addr.eq(slot_addr(written)), w_busy.eq(1),
                         w_count.eq(0), written.eq(inc(written))]
        with m.If(mem.aw.valid & mem.aw.ready):
            m.d.sync += aw_valid.eq(0)
        # burst words: straight from the FIFO's output (valid does not depend on ready)
        m.d.comb += [mem.w.valid.eq(w_busy & wc.r_rdy), mem.w.payload.eq(wc.r_data)]
        with m.If(mem.w.valid & mem.w.ready):
            m.d.sync += w_count.eq(w_count + 1)
            with m.If(w_count == B - 1):
                m.d.sync += w_busy.eq(0)
        m.d.comb += mem.b.ready.eq(1)
        with m.If(mem.b.valid):
            m.d.sync += acked.eq(inc(acked))

        # ---- reader: a burst written and acknowledged, room for it in the prefetch FIFO ------
        ar_valid = Signal()
        ar_addr = Signal.like(mem.ar.payload)
        m.d.comb += [mem.ar.valid.eq(ar_valid), mem.ar.payload.eq(ar_addr)]
        can_read = (~ar_valid & (requested != acked) &
                    (pf.level + in_flight + B <= F))
        with m.If(can_read):
            m.d.sync += [ar_valid.eq(1), ar_addr.eq(slot_addr(requested)),
                         requested.eq(inc(requested))]
        with m.If(mem.ar.valid & mem.ar.ready):
            m.d.sync += ar_valid.eq(0)
        r_take = mem.r.valid
        m.d.comb += mem.r.ready.eq(1)
        with m.If(r_take):
            m.d.sync += r_words.eq(Mux(r_words == B - 1, 0, r_words + 1))
            with m.If(r_words == B - 1):
                m.d.sync += returned.eq(inc(returned))
        m.d.sync += in_flight.eq(in_flight + Mux(can_read, B, 0) - r_take)

        # ---- the prefetch FIFO's input: read data, or the bypass ------------------------------
        with m.If(bypass):
            m.d.comb += [pf.w_en.eq(wc.r_rdy), pf.w_data.eq(wc.r_data),
                         wc.r_en.eq(pf.w_rdy)]
        with m.Else():
            m.d.comb += [pf.w_en.eq(r_take), pf.w_data.eq(mem.r.payload),
                         wc.r_en.eq(mem.w.valid & mem.w.ready)]
        return m


class OffchipActRAM(OffchipFIFO):
    """FIFO activation store in external memory: an :class:`OffchipFIFO` of words of ``lanes``
    activations (``ArrayLayout(signed(fmt.width), lanes)``), the stream interface of
    :class:`ActRAM`.

    Parameters
    ----------
    fmt : FixedFormat
        Activation format (only its width is used).
    lanes : int
        Activations per word, at least 1.
    depth, burst, base, addr_width, prefetch
        As :class:`OffchipFIFO`.

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(fmt.width), lanes)))``
        Words written during forward propagation.
    o : ``Out(stream.Signature(ArrayLayout(signed(fmt.width), lanes)))``
        The same words, in order, for backward propagation.
    level, full, empty, mem
        As :class:`OffchipFIFO` (``mem``: ``memory_port_signature(lanes * fmt.width,
        addr_width)``).
    """

    _WHAT = "Off-chip Act-RAM"

    def __init__(self, *, fmt, lanes, depth, burst=16, base=0, addr_width=32, prefetch=4):
        if not isinstance(fmt, FixedFormat):
            raise TypeError(f"Off-chip Act-RAM format must be a FixedFormat, not {fmt!r}")
        if not _is_int(lanes) or lanes < 1:
            raise ValueError(f"Off-chip Act-RAM lanes must be a positive integer, not {lanes!r}")
        self._fmt, self._lanes = fmt, lanes
        super().__init__(shape=data.ArrayLayout(signed(fmt.width), lanes), depth=depth,
                         burst=burst, base=base, addr_width=addr_width, prefetch=prefetch)

    fmt = property(lambda self: self._fmt)
    lanes = property(lambda self: self._lanes)
    layout = property(lambda self: self._shape)


class MemoryControllerBlackBox(wiring.Component):
    """The board's memory controller (e.g. Xilinx MIG with an AXI4 slave) as a black box.

    On a platform it is ``Instance("fpdeep_mem_ctrl", ...)``: the vendor-specific part, to be
    replaced in Vivado by the memory interface IP (DDR3 SODIMM on VC709, DDR4 on KCU105, HBM or
    DDR4 on U280) behind a small adapter from this burst port to AXI4 (``aw`` -> AWADDR with
    AWLEN = ``burst - 1``, ``w`` -> WDATA with WLAST on every ``burst``-th word, ``b`` <- BVALID,
    ``ar`` -> ARADDR with ARLEN = ``burst - 1``, ``r`` <- RDATA; word addresses times the word's
    bytes), crossing from ``sync`` into the controller's user clock. Ports of the module:
    ``clk``, ``rst`` (in) and, per member of :data:`MEMORY_PORTS`, ``<name>_valid``,
    ``<name>_ready`` and ``<name>_data`` (AXI directions: ``aw``/``w``/``ar`` into the
    controller, ``b``/``r`` out of it). In simulation (no platform) it is not used: connect the
    Act-RAM's port to :class:`sim.dram_model.DRAMModel` instead.

    Parameters
    ----------
    word_width, addr_width : int
        As the Act-RAM's port.
    module : str
        Module name (default :data:`MEMORY_CONTROLLER`).

    Members
    -------
    port : ``In(memory_port_signature(word_width, addr_width))``
        The Act-RAM's burst port.
    """

    def __init__(self, word_width, addr_width, *, module=MEMORY_CONTROLLER):
        if not isinstance(module, str) or not module.isidentifier():
            raise ValueError(f"memory controller module must be a Verilog identifier, "
                             f"not {module!r}")
        self._module = module
        super().__init__({"port": In(memory_port_signature(word_width, addr_width))})

    def elaborate(self, platform):
        if platform is None:
            raise ValueError("MemoryControllerBlackBox is only built for a platform; in "
                             "simulation use sim.dram_model.DRAMModel")
        m = Module()
        p = self.port
        kw = {"i_clk": ClockSignal("sync"), "i_rst": ResetSignal("sync", allow_reset_less=True)}
        for name, to_ctrl in (("aw", True), ("w", True), ("b", False), ("ar", True),
                              ("r", False)):
            s = getattr(p, name)
            d_in, d_out = ("i", "o") if to_ctrl else ("o", "i")
            kw[f"{d_in}_{name}_valid"] = s.valid
            kw[f"{d_in}_{name}_data"] = s.payload
            kw[f"{d_out}_{name}_ready"] = s.ready
        m.submodules.ctrl = Instance(self._module, **kw)
        return m


def act_ram_for(seg, fmt, lanes, depth, **kwargs):
    """The Act-RAM of a plan segment: :class:`OffchipActRAM` when the plan keeps part of it off
    chip (``seg.act_ram.offchip_words > 0``), else :class:`ActRAM`.

    ``kwargs`` (``burst``, ``base``, ``addr_width``) go to :class:`OffchipActRAM` only. The
    caller must connect the off-chip one's ``mem`` port (``isinstance(ram, OffchipActRAM)``) to a
    memory controller (one per Act-RAM, or through an arbiter: not built).
    """
    if seg.act_ram.offchip_words > 0:
        return OffchipActRAM(fmt=fmt, lanes=lanes, depth=depth, **kwargs)
    return ActRAM(fmt=fmt, lanes=lanes, depth=depth)


def store_for(entry, shape, depth, **kwargs):
    """A store of ``depth`` words of ``shape`` (a segment's ReLU masks or pool argmaxes) for
    the plan entry ``entry`` (``SegmentPlan.mask_store`` / ``arg_store``; ``None`` for a plan
    of before these entries): :class:`OffchipFIFO` (``kwargs``: ``burst``, ``base``,
    ``addr_width``, ``prefetch``) when the plan keeps it off chip (``entry.offchip_words >
    0``), else an on-chip ``SyncFIFOBuffered(width=Shape.cast(shape).width, depth=depth)``
    (its payloads are bits). The caller connects the off-chip one's ``mem`` port."""
    if entry is not None and entry.offchip_words > 0:
        return OffchipFIFO(shape=shape, depth=depth, **kwargs)
    return SyncFIFOBuffered(width=Shape.cast(shape).width, depth=depth)
