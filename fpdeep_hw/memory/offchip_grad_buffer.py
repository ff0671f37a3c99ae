"""Gradient buffer whose accumulators are in external memory (the plan's ``lgb.offchip_words``:
``fpdeep_map`` spills the gradient accumulators of large convolution layers off chip).

:class:`OffchipGradBuffer` is a :class:`~fpdeep_hw.memory.grad_buffer.GradBuffer` (same
arguments, ports, arithmetic, overflow counts and output order) whose ``depth`` sets of
accumulators live in a ring of the node's external memory behind a burst port ``mem``
(:func:`~fpdeep_hw.memory.offchip_act_ram.memory_port_signature`), with only two small FIFOs on
chip. Golden model: :class:`sim.golden.grad_buffer.GradBufferModel` (as the on-chip buffer).
Test: ``tests/hw/test_offchip_grad_buffer.py``. Documentation: ``docs/hw-memory.md``,
"Off-chip gradient buffer".
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..compute.shared import shared
from ..numerics import requantize, saturating_add
from ..wide import join
from .grad_buffer import GradBuffer, _count_flags

__all__ = ["OffchipGradBuffer"]


class OffchipGradBuffer(GradBuffer):
    """Mini-batch gradient accumulator and averager with its accumulators off chip.

    Storage: set ``a`` is ``fold`` rows of ``row_lanes = ceil(lanes * K * K / fold)``
    accumulators of ``acc_width`` bits side by side (element ``j * row_lanes + l`` of the set in
    lane ``l`` of row ``j``, lane ``l`` at bits ``[l * acc_width, (l + 1) * acc_width)``, two's
    complement; the last row's lanes beyond the set hold 0), a memory word each: set ``a``, row
    ``j`` at word ``base + a * fold + j``. A burst is ``burst`` words, a multiple of ``fold``,
    so whole sets; the ring is ``ext_words`` words, ``depth`` sets rounded up to whole bursts
    (the padding sets are written with 0 and never given out). Nothing needs to be in the
    memory before training.

    Order: the contributions of each image must come in address order ``0 .. depth-1``, every
    address once per image (an LGB fed by a convolution layer's PG: ``PGLayer`` and
    ``WSPGLayer`` drain in that order). The mini-batch ends with its ``batch``-th image (the
    producer's ``batch_done`` on that image's last word is implied by the count and not used).
    The buffer sweeps its ring once per image and once more per mini-batch, in order:

    * **pass 0** (the mini-batch's first image): each row of a contribution is written as it is
      (sign-extended: ``0 + x``), nothing is read;
    * **passes 1 .. B-1**: each row's old sums are read ahead (up to ``prefetch`` bursts), the
      contribution's row added (saturating at ``acc_width``, each clamped element counted in
      ``acc_overflow``) and the new sums written back, a burst at a time;
    * **pass B** (the drain): the sums are read and averaged as :class:`GradBuffer` averages
      them (each clamped element counted in ``out_overflow``); a set leaves on ``o`` with its
      last row (``addr``, ``last`` on address ``depth - 1``).

    A burst is read only once the write of the same burst in the pass before was acknowledged
    (``mem.b``), so every read returns what the last pass wrote; a pass-0 row is written only
    after the drain before it has received every row. The contribution on ``i`` is held by its
    producer while its ``fold`` rows are processed, one per cycle, and taken with the last; so
    the buffer takes a set every ``fold`` cycles at most, and less when the memory is slower.
    ``i`` is not taken during the drain (as :class:`GradBuffer`).

    Timing depends on the memory; with one word read and one written per cycle and the reads
    ahead, a pass runs at a row per cycle. The drain needs the last image's writes acknowledged
    before its first read returns: about twice the memory's latency after the mini-batch's last
    contribution.

    Parameters
    ----------
    in_fmt, out_fmt, acc_width, kernel, lanes, depth, batch, recip_bits, fold
        As :class:`GradBuffer` (``fold``: memory words per set).
    burst : int
        Words per burst (``>= 2``, a multiple of ``fold``).
    base : int
        First word of the ring in the memory (a multiple of ``burst``).
    addr_width : int
        Width of the port's word addresses (holds ``base + ext_words - 1``).
    prefetch : int
        Bursts read ahead (``>= 1``; the read FIFO holds ``prefetch x burst`` words).

    Members
    -------
    i, o, acc_overflow, out_overflow
        As :class:`GradBuffer`.
    mem : ``Out(memory_port_signature(word_width, addr_width))``
        The burst port.
    """

    LATENCY = None          # the memory's

    def __init__(self, *, in_fmt, out_fmt, acc_width, kernel, lanes, depth, batch,
                 recip_bits=17, fold=1, burst=16, base=0, addr_width=32, prefetch=2):
        for arg, value, low in (("burst", burst, 2), ("base", base, 0),
                                ("addr_width", addr_width, 1), ("prefetch", prefetch, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"OffchipGradBuffer {arg} must be an integer >= {low}, "
                                 f"not {value!r}")
        if isinstance(fold, int) and fold >= 1 and burst % fold:
            raise ValueError(f"OffchipGradBuffer burst {burst} is not a multiple of the fold "
                             f"({fold}): a burst holds whole sets")
        if base % burst:
            raise ValueError(f"OffchipGradBuffer base must be a multiple of the burst "
                             f"({burst}), not {base}")
        self._burst, self._base, self._prefetch = burst, base, prefetch
        self._addr_width = addr_width
        super().__init__(in_fmt=in_fmt, out_fmt=out_fmt, acc_width=acc_width, kernel=kernel,
                         lanes=lanes, depth=depth, batch=batch, recip_bits=recip_bits,
                         fold=fold)
        top = base + self.ext_words - 1
        if top.bit_length() > addr_width:
            raise ValueError(f"OffchipGradBuffer addr_width {addr_width} cannot address word "
                             f"{top}")

    def _extra_members(self):
        from .offchip_act_ram import memory_port_signature
        return {"mem": Out(memory_port_signature(self.word_width, self._addr_width))}

    burst = property(lambda self: self._burst)
    base = property(lambda self: self._base)
    prefetch = property(lambda self: self._prefetch)
    addr_width = property(lambda self: self._addr_width)
    word_width = property(lambda self: self.row_lanes * self._acc_width,
                          doc="Bits of a memory word: a row of ``row_lanes`` accumulators")
    burst_sets = property(lambda self: self._burst // self._fold, doc="Sets per burst")
    ext_bursts = property(lambda self: -(-self._depth // self.burst_sets))
    ext_sets = property(lambda self: self.ext_bursts * self.burst_sets)
    ext_words = property(lambda self: self.ext_bursts * self._burst,
                         doc="Words of the ring: ``depth`` sets in whole bursts")
    fifo_depths = property(lambda self: (self._prefetch * self._burst, 2 * self._burst),
                           doc="Words of the read-ahead FIFO and of the write FIFO")

    @property
    def latency(self):
        raise AttributeError("OffchipGradBuffer has no fixed latency: it depends on the memory")

    def elaborate(self, platform):
        m = Module()
        B, N, f = self._batch, self._depth, self._fold
        c, accw, iw = self.row_lanes, self._acc_width, self._in_fmt.width
        n = self._lanes * self._kernel ** 2
        BL, NB, NS = self._burst, self.ext_bursts, self.ext_sets
        mem = self.mem

        recip, r = self.reciprocal
        lanes = []
        for k in range(c):
            lane = _OffchipGradLane(in_width=iw, acc_width=accw, recip=recip,
                                    frac_in=self._in_fmt.frac + r, out_fmt=self._out_fmt)
            m.submodules[f"lane_{k}"] = shared(lane, lane.key)
            lanes.append(lane)

        rd_depth, wr_depth = self.fifo_depths
        m.submodules.rd_fifo = rd_fifo = SyncFIFOBuffered(width=self.word_width, depth=rd_depth)
        m.submodules.wr_fifo = wr_fifo = SyncFIFOBuffered(width=self.word_width, depth=wr_depth)
        m.d.comb += [rd_fifo.w_data.eq(mem.r.payload), rd_fifo.w_en.eq(mem.r.valid),
                     mem.r.ready.eq(rd_fifo.w_rdy), mem.b.ready.eq(1)]

        # ---- acknowledgements: bursts of the write pass `ap` acknowledged so far (`aj`) ------
        ap = Signal(range(B + 1))
        aj = Signal(range(NB + 1))
        ack = mem.b.valid
        # ---- reader: bursts of pass `rp` (1 .. B) in order, each once the same burst of the
        # pass before is acknowledged and the read FIFO has room beside the words requested ---
        rp = Signal(range(B + 1), init=1)
        rj = Signal(range(NB))
        pending = Signal(range(rd_depth + 1))     # words requested and not yet taken
        pop = Signal()
        ar_fire = mem.ar.valid & mem.ar.ready
        m.d.comb += [
            mem.ar.valid.eq(((ap >= rp) | ((ap == rp - 1) & (aj > rj)))
                            & (pending <= rd_depth - BL)),
            mem.ar.payload.eq(self._base + rj * BL),
        ]
        m.d.sync += pending.eq(pending + Mux(ar_fire, BL, 0) - pop)
        wrap = ar_fire & (rj == NB - 1) & (rp == B)
        with m.If(ar_fire):
            m.d.sync += rj.eq(Mux(rj == NB - 1, 0, rj + 1))
            with m.If(rj == NB - 1):
                m.d.sync += rp.eq(Mux(rp == B, 1, rp + 1))
        # the drain's last read waited for the mini-batch's last acknowledgement: the next
        # mini-batch's passes count from 0 (no write is in flight)
        with m.If(wrap):
            m.d.sync += [ap.eq(0), aj.eq(0)]
        with m.Elif(ack):
            m.d.sync += [aj.eq(Mux(aj == NB - 1, 0, aj + 1)),
                         ap.eq(Mux(aj == NB - 1, ap + 1, ap))]

        # ---- writer: a burst address, then its words, whenever the FIFO holds a burst --------
        wb = Signal(range(NB))
        w_left = Signal(range(BL + 1))
        m.d.comb += [
            mem.aw.valid.eq((w_left == 0) & (wr_fifo.r_level >= BL)),
            mem.aw.payload.eq(self._base + wb * BL),
            mem.w.valid.eq((w_left != 0) & wr_fifo.r_rdy),
            mem.w.payload.eq(wr_fifo.r_data),
            wr_fifo.r_en.eq((w_left != 0) & mem.w.ready),
        ]
        with m.If(mem.aw.valid & mem.aw.ready):
            m.d.sync += [w_left.eq(BL), wb.eq(Mux(wb == NB - 1, 0, wb + 1))]
        with m.Elif(mem.w.valid & mem.w.ready):
            m.d.sync += w_left.eq(w_left - 1)

        # ---- rows: pass `pp` (0 .. B), set `sa`, row `sj` ------------------------------------
        pp = Signal(range(B + 1))
        sa = Signal(range(max(NS, 2)))
        sj = Signal(range(f)) if f > 1 else Const(0, 1)
        real = sa < N
        drain = pp == B
        reads = pp != 0
        takes = real & ~drain
        o = self.o
        out_free = ~o.valid | o.ready
        step = Signal()
        m.d.comb += [
            step.eq((~reads | rd_fifo.r_rdy) & (~takes | self.i.valid)
                    & Mux(drain, out_free, wr_fifo.w_rdy)),
            pop.eq(step & reads),
            rd_fifo.r_en.eq(pop),
            self.i.ready.eq(step & takes & (sj == f - 1)),
            wr_fifo.w_en.eq(step & ~drain),
            wr_fifo.w_data.eq(join((lane.wd for lane in lanes), accw)),
        ]
        with m.If(step):
            if f > 1:
                m.d.sync += sj.eq(Mux(sj == f - 1, 0, sj + 1))
            with m.If(sj == f - 1):
                m.d.sync += sa.eq(Mux(sa == NS - 1, 0, sa + 1))
                with m.If(sa == NS - 1):
                    m.d.sync += pp.eq(Mux(drain, 0, pp + 1))

        # the contribution's row `sj` (0 for padding sets and the drain)
        i_bits = self.i.payload.as_value()
        i0 = self._in_layout["data"].offset
        din = Signal(c * iw)
        padded = Signal(f * c * iw)
        m.d.comb += padded.eq(i_bits[i0:i0 + n * iw])
        if f == 1:
            m.d.comb += din.eq(Mux(takes, padded, 0))
        else:
            with m.If(takes):
                with m.Switch(sj):
                    for j in range(f):
                        with (m.Case(j) if j < f - 1 else m.Default()):
                            m.d.comb += din.eq(padded[j * c * iw:(j + 1) * c * iw])
        old = rd_fifo.r_data
        for k, lane in enumerate(lanes):
            m.d.comb += [lane.din.eq(din[k * iw:(k + 1) * iw]),
                         lane.rd.eq(old[k * accw:(k + 1) * accw]), lane.first.eq(~reads)]
        acc_flags, out_flags = Signal(c), Signal(c)
        m.d.comb += [
            acc_flags.eq(Mux(step & takes, join((lane.acc_flag for lane in lanes), 1), 0)),
            out_flags.eq(Mux(step & drain & real, join((lane.out_flag for lane in lanes), 1),
                             0)),
        ]
        _count_flags(m, acc_flags, self.acc_overflow)
        _count_flags(m, out_flags, self.out_overflow)

        # ---- the drain's output: rows 0 .. f-2 of a set gathered, the set leaves with its last
        ow = self._out_fmt.width
        row = Signal(c * ow)
        gathered = Signal((f - 1) * c * ow) if f > 1 else None
        avg = join((lane.avg for lane in lanes), ow)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(step & drain & real):
            with m.If(sj == f - 1):
                m.d.sync += [o.valid.eq(1), row.eq(avg), o.payload.addr.eq(sa),
                             o.payload.last.eq(sa == N - 1)]
            if f > 1:
                for j in range(f - 1):
                    with m.If(sj == j):
                        m.d.sync += gathered[j * c * ow:(j + 1) * c * ow].eq(avg)
        m.d.comb += o.payload.data.eq(
            (row if f == 1 else Cat(gathered, row))[:n * ow])
        return m


class _OffchipGradLane(wiring.Component):
    """One element of an :class:`OffchipGradBuffer` row: the new sum ``wd`` (``din`` alone when
    ``first``, else ``rd + din`` saturating at ``acc_width``; ``acc_flag`` its clamp) and the
    average ``avg`` of the sum read (``rd``, as :class:`GradBuffer` averages; ``out_flag`` its
    clamp). Combinational; identical lanes (one shared module in the build)."""

    def __init__(self, *, in_width, acc_width, recip, frac_in, out_fmt):
        self._in_width, self._acc_width = in_width, acc_width
        self._recip, self._frac_in, self._out_fmt = recip, frac_in, out_fmt
        self.key = ("offchip_grad", in_width, acc_width, recip, frac_in, out_fmt.width,
                    out_fmt.frac, out_fmt.rounding)
        super().__init__({
            "din": In(signed(in_width)), "rd": In(signed(acc_width)), "first": In(1),
            "wd": Out(signed(acc_width)), "acc_flag": Out(1),
            "avg": Out(signed(out_fmt.width)), "out_flag": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        total, overflow = saturating_add(self.rd, self.din, self._acc_width)
        product = self.rd if self._recip == 1 else self.rd * self._recip
        value, overflow2 = requantize(product, self._frac_in, self._out_fmt)
        m.d.comb += [
            self.wd.eq(Mux(self.first, self.din, total)),
            self.acc_flag.eq(~self.first & overflow),
            self.avg.eq(value),
            self.out_flag.eq(overflow2),
        ]
        return m
