"""Act-RAM: the FIFO activation store of a node (paper section 5.2.2, item 1).

Activations consumed by forward propagation (FP) are written here and read back, in the same
order, during backward propagation (BP) by the parameter-gradient module (PG).

Golden model: :mod:`sim.golden.act_ram`. Test: ``tests/hw/test_act_ram.py``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from fpdeep_map.numerics import FixedFormat

__all__ = ["ActRAM"]


class ActRAM(wiring.Component):
    """FIFO activation store in block RAM, streaming in and out at one word per cycle.

    One word holds ``lanes`` activations (one per channel lane ``S`` of the line buffer), each a
    signed integer of ``fmt.width`` bits. The storage is one :class:`amaranth.lib.memory.Memory`
    per lane, each of ``depth`` activations with one write port and one synchronous,
    non-transparent read port (all lanes share addresses and enables), so synthesis maps it to
    block RAM. A depth-1 Act-RAM uses 2-word memories (no zero-width address in Verilog).

    The read port's data register is the output register: a word is *fetched* from the memory one
    cycle before it is presented on ``o``, and it is fetched again ahead of time whenever ``o`` is
    taken, so ``o`` can transfer a word every cycle while data is stored (as
    :class:`amaranth.lib.fifo.SyncFIFOBuffered` does; that FIFO is not used because it keeps
    ``depth - 1`` words in memory plus one in a separate register and has no stream ports).
    The presented word keeps its memory slot until it is transferred, so the Act-RAM holds exactly
    ``depth`` words.

    Timing (all counted in clock cycles; cycle ``t`` is the cycle a transfer happens in):

    - a word transferred on ``i`` in cycle ``t`` into an empty Act-RAM is valid on ``o`` from
      cycle ``t + LATENCY`` (``LATENCY = 2``);
    - ``level`` counts the words transferred on ``i`` and not yet transferred on ``o``
      (it includes a word being presented on ``o``); it changes on the clock edge ending a
      transfer cycle;
    - ``i.ready`` is ``level != depth``: a write is refused exactly when the Act-RAM is full;
    - ``full`` is ``level == depth``, ``empty`` is ``level == 0``;
    - one word per cycle in and out needs ``depth >= 3`` (a word counts in ``level`` from the cycle
      after its write to the cycle it is read); depth 1 moves one word every 3 cycles, depth 2 two.

    Parameters
    ----------
    fmt : FixedFormat
        Activation format (only its width is used: the Act-RAM stores bits).
    lanes : int
        Activations per word (the channel lanes ``S``), at least 1.
    depth : int
        Capacity in words (the plan's Act-RAM depth), at least 1.

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(fmt.width), lanes)))``
        Words written during forward propagation.
    o : ``Out(stream.Signature(ArrayLayout(signed(fmt.width), lanes)))``
        The same words, in the same order, for backward propagation.
    level : ``Out(range(depth + 1))``
        Words stored (see above).
    full : ``Out(1)``
        ``level == depth``.
    empty : ``Out(1)``
        ``level == 0``.
    """

    LATENCY = 2

    def __init__(self, *, fmt, lanes, depth):
        if not isinstance(fmt, FixedFormat):
            raise TypeError(f"Act-RAM format must be a FixedFormat, not {fmt!r}")
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise ValueError(f"Act-RAM lanes must be a positive integer, not {lanes!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"Act-RAM depth must be a positive integer, not {depth!r}")
        self._fmt = fmt
        self._lanes = lanes
        self._depth = depth
        self._layout = data.ArrayLayout(signed(fmt.width), lanes)
        super().__init__({
            "i": In(stream.Signature(self._layout)),
            "o": Out(stream.Signature(self._layout)),
            "level": Out(range(depth + 1)),
            "full": Out(1),
            "empty": Out(1),
        })

    @property
    def fmt(self):
        return self._fmt

    @property
    def lanes(self):
        return self._lanes

    @property
    def depth(self):
        return self._depth

    @property
    def layout(self):
        """Payload layout of ``i`` and ``o``."""
        return self._layout

    @property
    def latency(self):
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()
        depth = self._depth

        # A depth-1 Act-RAM gets a 2-word memory (slot 1 unused) so that no address is 0 bits
        # wide: Verilog has no zero-width nets.
        mem_depth = max(depth, 2)
        # One memory per lane (``fmt.width`` bits wide), all with the same address and enables:
        # block RAM use is the same as for one wide memory, and the write-enable masks stay small
        # (the Python simulator cannot compile a write mask of a few thousand bits).
        w_addr, w_en = Signal(range(mem_depth)), Signal()
        r_addr, r_en = Signal(range(mem_depth)), Signal()
        for lane in range(self._lanes):
            bank = Memory(shape=signed(self._fmt.width), depth=mem_depth, init=[])
            m.submodules[f"lane_{lane}"] = bank
            bw = bank.write_port()
            br = bank.read_port()             # synchronous, non-transparent
            m.d.comb += [
                bw.addr.eq(w_addr), bw.data.eq(self.i.payload[lane]), bw.en.eq(w_en),
                br.addr.eq(r_addr), br.en.eq(r_en), self.o.payload[lane].eq(br.data),
            ]

        wr_addr = Signal(range(mem_depth))    # next slot to write
        rd_addr = Signal(range(mem_depth))    # next slot to fetch into the output register
        level = Signal(range(depth + 1))      # words stored, incl. the one presented on `o`
        o_valid = Signal()                    # the read port's data register holds a word

        do_write = Signal()
        do_read = Signal()
        fetch = Signal()
        m.d.comb += [
            self.i.ready.eq(level != depth),
            do_write.eq(self.i.valid & self.i.ready),
            do_read.eq(self.o.valid & self.o.ready),
            # a stored word is not yet in the output register, and the register is free or freed
            fetch.eq((level != o_valid) & (~o_valid | self.o.ready)),

            w_addr.eq(wr_addr),
            w_en.eq(do_write),
            r_addr.eq(rd_addr),
            r_en.eq(fetch),
            self.o.valid.eq(o_valid),

            self.level.eq(level),
            self.full.eq(level == depth),
            self.empty.eq(level == 0),
        ]

        with m.If(do_write):
            m.d.sync += wr_addr.eq(_wrap_incr(wr_addr, depth))
        with m.If(fetch):
            m.d.sync += rd_addr.eq(_wrap_incr(rd_addr, depth))
            m.d.sync += o_valid.eq(1)
        with m.Elif(do_read):
            m.d.sync += o_valid.eq(0)

        with m.If(do_write & ~do_read):
            m.d.sync += level.eq(level + 1)
        with m.Elif(do_read & ~do_write):
            m.d.sync += level.eq(level - 1)
        return m


def _wrap_incr(addr, depth):
    """``addr + 1`` modulo ``depth``."""
    if depth == 1:
        return 0
    return Mux(addr == depth - 1, 0, addr + 1)
