"""Weight update of one layer: averaged gradients -> master copy -> working weights in LPRAM.

Once per mini-batch (``docs/training-spec.md``, "Update"): the LGB's averaged gradient sets
arrive; for each weight ``step = requantize(avg * lr_q, gradient.frac + 16, master)``,
``master = saturate(master - step, master.width)``; when the version gate says so, the working
weights ``requantize(master, master.frac, weight)`` are written to the layer's LPRAM(s) as whole
weight sets ``{addr, data}`` (the address map of ``docs/hw-node.md``).

Golden model: :func:`sim.golden.layers.update` / ``working_weight``. Test:
``tests/hw/test_update.py``.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from fpdeep_map.numerics import NumericsConfig

from ..compute.shared import shared
from ..memory.grad_buffer import _count_flags
from ..memory.packing import lanes_per_memory, pack_rows, packed_memory
from ..numerics import requantize, saturate
from ..wide import join

__all__ = ["WeightUpdate", "LR_FRAC"]

#: Fractional bits of the learning-rate constant ``lr_q`` (unsigned, 16 bits).
LR_FRAC = 16


class _State(enum.Enum, shape=2):
    IDLE = 0        # taking gradients (pass 1)
    WAIT = 1        # pass 1 complete, waiting for ``start``
    WRITE = 2       # pass 2: master -> working weights -> ``wr``


def _set_layout(width, kernel, lanes):
    return data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(signed(width), kernel), kernel),
                            lanes)


class WeightUpdate(wiring.Component):
    """Master-copy update and working-weight write-back of one layer (one mini-batch at a time).

    Storage: the master copy, ``depth`` weight sets of ``lanes x kernel x kernel`` in the master
    format (Q4.20), the elements of a set side by side in :class:`~amaranth.lib.memory.Memory`
    rows of at most ``PACK_LANES`` elements (``packing.lanes_per_memory``; one write port, one
    synchronous non-transparent read port). On a board the master copy of a large layer lives
    off chip; here it is this on-chip memory standing in for it (same ports: one set per cycle).
    Initial contents: ``init`` (``quantize(w0, master)`` of the golden model).

    Two passes per mini-batch:

    1. **Gradients** (state ``IDLE``): each ``grad`` word ``{addr, data, last}`` (the LGB's
       output, gradient format) is taken in one cycle: the master set at ``addr`` is read in that
       cycle and written back the next,
       ``master = saturate(master - requantize(avg * lr_q, gradient.frac + 16, master))``
       (a one-entry forwarding register covers the same address in consecutive words). The word
       with ``last`` ends the pass; ``grad.ready`` stays low from then until pass 2 is over (a
       next mini-batch's gradients wait), so the LGB's drain (and PG) is not held by the gate
       unless two updates would overlap.
    2. **Write-back** (state ``WRITE``), once pass 1 is complete and ``start`` has been seen
       (a ``start`` pulse during pass 1 is remembered): addresses ``0 .. depth-1`` are read in
       order and ``wr`` carries ``{addr, data: requantize(master, master.frac, weight)}``, one
       set per cycle. ``done`` pulses in the cycle the last set is transferred: the LPRAM has
       taken every write before any read of the cycle after (``docs/hw-memory.md``), which is
       when the gate's ``fp_go``/``eb_go`` (registered) can first reflect it.

    ``overflow`` counts clamped elements of the step requantisation, the master saturation and
    the working-weight requantisation (the golden ``update``'s count).

    Timing: ``LATENCY = 3``: with pass 1 complete, a ``start`` pulse in cycle ``t`` makes the
    first ``wr`` word valid in cycle ``t + 3``; pass 2 takes ``depth`` cycles without stalls.
    Pass 1 takes one gradient word per cycle. A gradient word with ``last`` taken in cycle
    ``t`` lets a remembered ``start`` act in cycle ``t + 2`` (after that word's write-back).

    Parameters
    ----------
    numerics : NumericsConfig
        Formats: ``gradient`` in, ``master`` stored, ``weight`` out.
    kernel, lanes, depth : int
        Weight-set shape ``lanes x kernel x kernel`` (``P*S`` lanes) and number of sets (the
        LPRAM's ``weight_sets``).
    lr_q : int
        Learning rate as an unsigned 16-bit constant with 16 fractional bits (1 .. 65535),
        ``sim.golden.layers.lr_to_q(lr)``.
    init : array of shape ``(depth, lanes, kernel, kernel)``, optional
        Initial master weights (integers of the master format); default zeros.

    Members
    -------
    grad : ``In(stream.Signature(StructLayout({"addr", "data", "last"})))``
        Averaged gradients (the LGB's ``o``), ``data`` in the gradient format.
    start : ``In(1)``
        The version gate's ``update_start`` pulse.
    wr : ``Out(stream.Signature(StructLayout({"addr", "data"})))``
        Working weight sets for the LPRAM write ports (``LPRAM.wr`` layout, weight format).
    done : ``Out(1)``
        Pulse: the last working weight set of this update is transferred (gate ``update_done``).
    busy : ``Out(1)``
        An update is in progress (pass 1 started and pass 2 not finished).
    overflow : ``Out(32)``
        Saturating count of clamped elements.
    """

    LATENCY = 3

    def __init__(self, *, numerics, kernel, lanes, depth, lr_q, init=None):
        if not isinstance(numerics, NumericsConfig):
            raise TypeError(f"WeightUpdate numerics must be a NumericsConfig, not {numerics!r}")
        for arg, value in (("kernel size", kernel), ("lanes", lanes), ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"WeightUpdate {arg} must be a positive integer, not {value!r}")
        if (not isinstance(lr_q, (int, np.integer)) or isinstance(lr_q, bool)
                or not 1 <= int(lr_q) < 1 << LR_FRAC):
            raise ValueError(f"WeightUpdate learning rate must be an integer in 1..65535 "
                             f"(16 fractional bits), not {lr_q!r}")
        shape = (depth, lanes, kernel, kernel)
        master = numerics.master
        if init is None:
            init = np.zeros(shape, dtype=np.int64)
        else:
            init = np.asarray(init)
            if init.shape != shape:
                raise ValueError(f"WeightUpdate init must have shape (depth, lanes, kernel, "
                                 f"kernel) = {shape}, not {init.shape}")
            if init.size and init.dtype.kind not in "iu":
                raise TypeError(f"WeightUpdate init must hold integers, not {init.dtype}")
            if init.size and (init.min() < master.min_int or init.max() > master.max_int):
                raise ValueError(f"WeightUpdate init values must fit in {master.width} "
                                 f"signed bits")
            init = init.astype(np.int64)
        self._numerics = numerics
        self._kernel, self._lanes, self._depth = kernel, lanes, depth
        self._lr_q = int(lr_q)
        self._init = init
        self._banks = None
        addr = range(max(depth, 2))
        self._grad_layout = data.StructLayout({
            "addr": addr, "data": _set_layout(numerics.gradient.width, kernel, lanes), "last": 1})
        self._wr_layout = data.StructLayout({
            "addr": addr, "data": _set_layout(numerics.weight.width, kernel, lanes)})
        super().__init__({
            "grad": In(stream.Signature(self._grad_layout)),
            "start": In(1),
            "wr": Out(stream.Signature(self._wr_layout)),
            "done": Out(1),
            "busy": Out(1),
            "overflow": Out(32),
        })

    numerics = property(lambda self: self._numerics)
    kernel = property(lambda self: self._kernel)
    lanes = property(lambda self: self._lanes)
    depth = property(lambda self: self._depth)
    lr_q = property(lambda self: self._lr_q)
    init = property(lambda self: self._init.copy())
    grad_layout = property(lambda self: self._grad_layout)
    wr_layout = property(lambda self: self._wr_layout)

    @property
    def latency(self):
        return self.LATENCY

    @property
    def banks(self):
        """Where the last elaboration keeps each element's master copy: ``(memory, bit
        offset)`` per element ``(s, ky, kx)`` in ``s*K*K + ky*K + kx`` order (for reading the
        master copy in simulation: :meth:`master_of`)."""
        return self._banks

    def master_of(self, ctx, k, a):
        """The master weight of element ``k`` of set ``a``, read in a testbench ``ctx``."""
        mem, off = self._banks[k]
        mw = self._numerics.master.width
        v = (ctx.get(mem.data[a]) >> off) & ((1 << mw) - 1)
        return v - (1 << mw) if v >> (mw - 1) else v

    def elaborate(self, platform):
        m = Module()
        n = self._numerics
        K, L, depth = self._kernel, self._lanes, self._depth
        mem_depth = max(depth, 2)
        index = [(s, ky, kx) for s in range(L) for ky in range(K) for kx in range(K)]
        nb = len(index)
        mw = n.master.width
        m_layout = data.ArrayLayout(signed(mw), nb)

        r_addr = Signal(range(mem_depth))
        r_en = Signal()
        r_data = Signal(m_layout)
        w_addr = Signal(range(mem_depth))
        w_en = Signal()
        w_data = Signal(m_layout)
        self._banks = []
        # the per-element datapath (step, master saturation, working weight): one _UpdateLane
        # per element (identical lanes, one shared module in the build); the master copy stays
        # here (initial contents differ), the elements of a set side by side in rows of at most
        # PACK_LANES (a shallow bank of one element would take a whole block RAM)
        lanes = []
        reads = []
        for k in range(nb):
            lane = _UpdateLane(numerics=n, lr_q=self._lr_q)
            m.submodules[f"lane_{k}"] = shared(lane, lane.key)
            lanes.append(lane)
        per = lanes_per_memory(mw, nb)
        flat = self._init.reshape(depth, nb)
        for c, lo in enumerate(range(0, nb, per)):
            width = min(per, nb - lo)
            init = pack_rows(flat[:, lo:lo + width], mw) + [0] * (mem_depth - depth)
            bank, rd = packed_memory(
                m, f"master_{c}", width=mw, lanes=width, depth=mem_depth, init=init,
                w_addr=w_addr, w_en=w_en, w_data=w_data.as_value()[lo * mw:(lo + width) * mw],
                r_addr=r_addr, r_en=r_en)
            self._banks += [(bank, j * mw) for j in range(width)]
            reads.append(rd)
        # the wide signals in one statement each (fpdeep_hw/wide.py)
        m.d.comb += r_data.eq(Cat(*reads))

        flags = Signal(nb)
        _count_flags(m, flags, self.overflow)
        state = Signal(_State)
        pending = Signal()                    # a start pulse not acted on yet

        # -- pass 1: master -= step ---------------------------------------------------------------
        take = Signal()
        m.d.comb += [
            self.grad.ready.eq(state == _State.IDLE),
            take.eq(self.grad.valid & self.grad.ready),
        ]
        s1_valid = Signal()
        s1_addr = Signal(range(mem_depth))
        m.d.sync += [s1_valid.eq(take), s1_addr.eq(self.grad.payload.addr)]
        fwd_valid = Signal()
        fwd_addr = Signal(range(mem_depth))
        hit = Signal()
        m.d.comb += hit.eq(fwd_valid & (fwd_addr == s1_addr))
        m.d.comb += [w_addr.eq(s1_addr), w_en.eq(s1_valid)]
        m.d.sync += [fwd_valid.eq(s1_valid), fwd_addr.eq(s1_addr)]

        # -- pass 2: read master, working weights out ----------------------------------------------
        rd_addr = Signal(range(mem_depth))    # next address to read
        rd_left = Signal()
        h_valid = Signal()                    # r_data holds set h_addr (pass 2)
        h_addr = Signal(range(mem_depth))
        adv = Signal()
        consume = Signal()
        load = Signal()
        m.d.comb += [
            adv.eq(~self.wr.valid | self.wr.ready),
            consume.eq(h_valid & adv),
            load.eq((state == _State.WRITE) & rd_left & (~h_valid | consume)),
            self.done.eq(self.wr.valid & self.wr.ready & (self.wr.payload.addr == depth - 1)),
            self.busy.eq((state != _State.IDLE) | s1_valid),
        ]
        with m.If(state == _State.WRITE):
            m.d.comb += [r_addr.eq(rd_addr), r_en.eq(load)]
        with m.Else():
            m.d.comb += [r_addr.eq(self.grad.payload.addr), r_en.eq(1)]
        with m.If(load):
            m.d.sync += [h_valid.eq(1), h_addr.eq(rd_addr), rd_addr.eq(rd_addr + 1),
                         rd_left.eq(rd_addr != depth - 1)]
        with m.Elif(consume):
            m.d.sync += h_valid.eq(0)
        with m.If(adv):
            m.d.sync += [self.wr.valid.eq(h_valid), self.wr.payload.addr.eq(h_addr)]
        # element k of a set field straight from the payload signal: a nested view would slice the
        # whole field again in every statement (Amaranth's back end rebuilds the slices of each
        # statement, so the field's bits are built once per element: quadratic in the lanes)
        g_bits = self.grad.payload.as_value()
        g0, gw = self._grad_layout["data"].offset, n.gradient.width
        for k, (s, ky, kx) in enumerate(index):
            lane = lanes[k]
            m.d.comb += [
                lane.grad.eq(g_bits[g0 + gw * k:g0 + gw * (k + 1)]), lane.old.eq(r_data[k]),
                lane.hit.eq(hit), lane.s1_valid.eq(s1_valid), lane.consume.eq(consume),
                lane.adv.eq(adv),
            ]
        wr_data = self.wr.payload.data
        m.d.comb += [
            w_data.eq(join((lane.new for lane in lanes), mw)),
            flags.eq(join((lane.flag for lane in lanes), 1)),
            wr_data.eq(join((lane.wr for lane in lanes), len(Value.cast(wr_data)) // nb)),
        ]

        with m.If(self.start):
            m.d.sync += pending.eq(1)
        with m.If(state == _State.IDLE):
            with m.If(take & self.grad.payload.last):
                m.d.sync += state.eq(_State.WAIT)
        with m.Elif(state == _State.WAIT):
            # the last gradient's write-back happens in the first WAIT cycle
            with m.If((pending | self.start) & ~s1_valid):
                m.d.sync += [state.eq(_State.WRITE), pending.eq(0), rd_addr.eq(0),
                             rd_left.eq(1)]
        with m.Else():
            with m.If(self.done):
                m.d.sync += state.eq(_State.IDLE)
        return m


class _UpdateLane(wiring.Component):
    """One element of :class:`WeightUpdate`'s datapath (its master bank stays in the parent):
    the gradient register, ``new = saturate(master - step)`` with the one-entry forwarding
    register (``hit``), and the working weight ``requantize(old, master.frac, weight)`` of
    pass 2 into the output register ``wr`` (loaded when ``adv``); ``flag`` is the element's
    clamp of this cycle (pass 1 step or saturation, pass 2 working weight). ``old`` is the
    bank's read data."""

    def __init__(self, *, numerics, lr_q):
        n = numerics
        self._numerics, self._lr_q = n, lr_q
        self.key = (lr_q, *((f.width, f.frac, f.rounding)
                            for f in (n.gradient, n.master, n.weight)))
        super().__init__({
            "grad": In(signed(n.gradient.width)), "old": In(signed(n.master.width)),
            "hit": In(1), "s1_valid": In(1), "consume": In(1), "adv": In(1),
            "new": Out(signed(n.master.width)), "flag": Out(1),
            "wr": Out(signed(n.weight.width)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self._numerics
        mw = n.master.width
        s1_grad = Signal(signed(n.gradient.width))
        fwd_data = Signal(signed(mw))
        m.d.sync += [s1_grad.eq(self.grad), fwd_data.eq(self.new)]
        old = Mux(self.hit, fwd_data, self.old)
        step, o1 = requantize(s1_grad * self._lr_q, n.gradient.frac + LR_FRAC, n.master)
        value, o2 = saturate(old - step, mw)
        w, o3 = requantize(self.old, n.master.frac, n.weight)
        m.d.comb += [
            self.new.eq(value),
            self.flag.eq((self.s1_valid & (o1 | o2)) | (self.consume & o3)),
        ]
        with m.If(self.adv):
            m.d.sync += self.wr.eq(w)
        return m
