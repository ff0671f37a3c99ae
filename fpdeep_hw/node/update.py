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

__all__ = ["WeightUpdate", "OffchipWeightUpdate", "master_set_fold", "LR_FRAC"]

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
            **self._extra_members(),
        })

    def _extra_members(self):
        return {}

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

    def _wire_lanes(self, m, lanes, olds, *, load, hit, s1_valid, consume, adv, new, flags):
        """Connect the per-element lanes: each one's gradient from ``grad``'s payload, its
        master word ``olds[k]``, the shared controls; their new masters joined into ``new``,
        their clamp flags into ``flags``, their working weights into ``wr``'s data."""
        n = self._numerics
        g_bits = self.grad.payload.as_value()
        g0, gw = self._grad_layout["data"].offset, n.gradient.width
        for k, lane in enumerate(lanes):
            m.d.comb += [
                lane.grad.eq(g_bits[g0 + gw * k:g0 + gw * (k + 1)]), lane.old.eq(olds[k]),
                lane.load.eq(load), lane.hit.eq(hit), lane.s1_valid.eq(s1_valid), lane.consume.eq(consume),
                lane.adv.eq(adv),
            ]
        wr_data = self.wr.payload.data
        m.d.comb += [
            new.eq(join((lane.new for lane in lanes), n.master.width)),
            flags.eq(join((lane.flag for lane in lanes), 1)),
            wr_data.eq(join((lane.wr for lane in lanes), len(Value.cast(wr_data)) // len(lanes))),
        ]

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
                r_addr=r_addr, r_en=r_en, distributable=False)   # read back by master_of
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
        self._wire_lanes(m, lanes, [r_data[k] for k in range(nb)], load=take, hit=hit,
                         s1_valid=s1_valid, consume=consume, adv=adv, new=w_data, flags=flags)

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
    the gradient register (loaded when ``load``: a gradient word taken), ``new =
    saturate(master - step)`` with the one-entry forwarding register (``hit``), and the
    working weight ``requantize(old, master.frac, weight)`` of pass 2 into the output register
    ``wr`` (loaded when ``adv``); ``flag`` is the element's clamp of this cycle (pass 1 step or
    saturation while ``s1_valid``, pass 2 working weight while ``consume``). ``old`` is the
    bank's read data."""

    def __init__(self, *, numerics, lr_q):
        n = numerics
        self._numerics, self._lr_q = n, lr_q
        self.key = (lr_q, *((f.width, f.frac, f.rounding)
                            for f in (n.gradient, n.master, n.weight)))
        super().__init__({
            "grad": In(signed(n.gradient.width)), "old": In(signed(n.master.width)),
            "load": In(1), "hit": In(1), "s1_valid": In(1), "consume": In(1), "adv": In(1),
            "new": Out(signed(n.master.width)), "flag": Out(1),
            "wr": Out(signed(n.weight.width)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self._numerics
        mw = n.master.width
        s1_grad = Signal(signed(n.gradient.width))
        fwd_data = Signal(signed(mw))
        m.d.sync += fwd_data.eq(self.new)
        with m.If(self.load):
            m.d.sync += s1_grad.eq(self.grad)
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


def master_fifo_depths(burst, prefetch):
    """Words of :class:`OffchipWeightUpdate`'s read-ahead FIFO (``prefetch x burst``, at least
    4: a FIFO of fewer has no pointer bits) and write FIFO (two bursts)."""
    return max(prefetch * burst, 4), 2 * burst


def master_set_fold(bits, burst, prefetch, limit, memory_word_bits=None):
    """The fold (memory words per set) of an off-chip master copy of sets of ``bits``, in bursts
    of ``burst`` sets with ``prefetch`` bursts read ahead: what
    :func:`~fpdeep_hw.memory.folded_fifo.lutram_fifo_fold` gives for its two FIFOs
    (:func:`master_fifo_depths` sets), at most ``limit`` and, with ``memory_word_bits`` (the
    bits the memory gives per cycle at its peak), at most ``bits // memory_word_bits`` (at
    least 1), so that the fold never makes the update slower than the memory could feed it.
    ``NodeTop`` folds its updates so; ``fpdeep_hw.build`` checks the ports' widths with it."""
    from ..memory.folded_fifo import lutram_fifo_fold
    if memory_word_bits is not None:
        limit = min(limit, max(1, bits // memory_word_bits))
    return lutram_fifo_fold(bits, master_fifo_depths(burst, prefetch), limit)


class OffchipWeightUpdate(WeightUpdate):
    """:class:`WeightUpdate` with the master copy in external memory (the plan's place for it:
    ``fpdeep_map`` counts the master copies of convolution layers off chip, read, updated and
    written back once per mini-batch).

    Same ports, same arithmetic, same ``overflow`` count as :class:`WeightUpdate`, plus the burst
    port ``mem`` (:data:`~fpdeep_hw.memory.offchip_act_ram.MEMORY_PORTS`) to the memory
    controller. A master set is ``lanes x kernel x kernel`` elements side by side (element
    ``s*K*K + ky*K + kx`` at bits ``[k*mw, (k+1)*mw)``, two's complement: ``set_width`` bits),
    kept in the memory as ``fold`` words (rows) of ``word_width = ceil(set_width / fold)``
    bits, row ``r`` holding the set's bits ``[r*word_width, (r+1)*word_width)`` (the last row
    padded with zeros): set ``a``, row ``r`` at word ``base + a*fold + r``. A burst is
    ``burst`` words, a multiple of ``fold``, so whole sets; the region is ``ext_words`` words,
    ``depth`` sets rounded up to whole bursts (the padding sets are read and written back
    unchanged). The memory must hold the initial master copy before training starts
    (:meth:`init_words`: the host loads it on a board; in simulation
    :meth:`sim.dram_model.DRAMModel.load`).

    On chip there are only two small FIFOs: ``prefetch x burst`` words read ahead and two bursts
    of new masters waiting to be written (``fifo_depths``, in words). The memory is swept in
    order, for ever:

    * **Pass 1** (gradients): the sweep's words are read ahead, before the gradients come. Each
      ``grad`` word is taken with the next master word (the gradients must come in address
      order ``0 .. depth-1``, as the LGB and BGB drain them); the new master goes to the write
      FIFO, and whole bursts are written back.
    * **Pass 2** (working weights): its reads are issued once every write burst of pass 1 is
      acknowledged (so they return the new masters). Once ``start`` has been seen, each word
      read becomes one ``wr`` set, in address order. ``done`` pulses on the last.
      The next pass 1's reads follow at once.

    **Folds** (``fold > 1``): both FIFOs are
    :class:`~fpdeep_hw.memory.folded_fifo.FoldedFIFO` s keeping each set as its ``fold`` rows,
    with a row side towards the memory: the read-ahead FIFO takes a row per cycle from
    ``mem.r`` and gives whole sets, the write FIFO takes whole sets and gives a row per cycle to
    ``mem.w``. So a gradient word is taken at most every ``fold`` cycles (the new master waits
    in pass 1's register until the write FIFO takes it), and pass 2 gives a set every ``fold``
    cycles: the pace of a memory that gives a row per cycle. A whole set is 10,368 to 25,920
    bits on VGG-16's conv layers and a board's memory gives about a thousand bits per cycle
    (``NodeTop(master_fold=, memory_word_bits=)`` folds the sets to about that), and a port as
    narrow as a row keeps a node's memory ports within what one module's inputs can number
    (``fpdeep_hw.build.MAX_INPUT_BITS``). ``fold = 1`` is a word per set, the circuit without
    folds.

    Timing: ``LATENCY = 2``: with pass 1 written and acknowledged and pass 2's first words read
    ahead, a ``start`` pulse in cycle ``t`` makes the first ``wr`` word valid in cycle ``t + 2``;
    the sets then follow one per cycle (one per ``fold`` cycles) as long as the memory delivers
    them. Pass 1 takes one gradient word per cycle (per ``fold`` cycles) while the memory reads
    one word and writes one per cycle. After the last gradient word the update waits for the
    memory: the last burst is written, then acknowledged, then pass 2's first burst is read
    (about twice the memory's latency).

    Parameters
    ----------
    numerics, kernel, lanes, depth, lr_q, init
        As :class:`WeightUpdate`; ``init`` is what :meth:`init_words` packs.
    burst : int
        Words per burst (``>= 2``, a multiple of ``fold``).
    base : int
        First word of the region in the memory (a multiple of ``burst``).
    addr_width : int
        Width of the port's word addresses (holds ``base + ext_words - 1``).
    prefetch : int
        Bursts read ahead (``>= 1``; the read FIFO holds ``prefetch x burst`` words).
    fold : int
        Memory words (rows) per set (``>= 1``, at most the set's bits; see above).

    Members
    -------
    mem : ``Out(memory_port_signature(word_width, addr_width))``
        The burst port.
    """

    LATENCY = 2

    def __init__(self, *, numerics, kernel, lanes, depth, lr_q, init=None, burst=16, base=0,
                 addr_width=32, prefetch=2, fold=1):
        for arg, value, low in (("burst", burst, 2), ("base", base, 0),
                                ("addr_width", addr_width, 1), ("prefetch", prefetch, 1),
                                ("fold", fold, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"OffchipWeightUpdate {arg} must be an integer >= {low}, "
                                 f"not {value!r}")
        if base % burst:
            raise ValueError(f"OffchipWeightUpdate base must be a multiple of the burst "
                             f"({burst}), not {base}")
        if burst % fold:
            raise ValueError(f"OffchipWeightUpdate burst {burst} is not a multiple of the fold "
                             f"({fold}): a burst holds whole sets")
        if isinstance(depth, int) and depth >= 1:
            top = base + -(-depth // (burst // fold)) * burst - 1
            if top.bit_length() > addr_width:
                raise ValueError(f"OffchipWeightUpdate addr_width {addr_width} cannot address "
                                 f"word {top}")
        self._burst, self._base, self._prefetch = burst, base, prefetch
        self._addr_width, self._fold = addr_width, fold
        super().__init__(numerics=numerics, kernel=kernel, lanes=lanes, depth=depth, lr_q=lr_q,
                         init=init)
        if fold > self.set_width:
            raise ValueError(f"OffchipWeightUpdate fold {fold} is more than the set's "
                             f"{self.set_width} bits")

    def _extra_members(self):
        from ..memory.offchip_act_ram import memory_port_signature
        return {"mem": Out(memory_port_signature(self.word_width, self._addr_width))}

    burst = property(lambda self: self._burst)
    base = property(lambda self: self._base)
    prefetch = property(lambda self: self._prefetch)
    fold = property(lambda self: self._fold)
    fifo_depths = property(lambda self: master_fifo_depths(self._burst, self._prefetch),
                           doc="Words (rows) of the read-ahead FIFO and of the write FIFO")
    addr_width = property(lambda self: self._addr_width)
    set_width = property(lambda self: self._lanes * self._kernel ** 2
                         * self._numerics.master.width, doc="Bits of a master set")
    word_width = property(lambda self: -(-self.set_width // self._fold),
                          doc="Bits of a memory word: a row, ``ceil(set_width / fold)``")
    burst_sets = property(lambda self: self._burst // self._fold, doc="Sets per burst")
    ext_bursts = property(lambda self: -(-self._depth // self.burst_sets))
    ext_words = property(lambda self: self.ext_bursts * self._burst)
    ext_sets = property(lambda self: self.ext_bursts * self.burst_sets,
                        doc="Sets of the region, ``depth`` and the padding")

    @property
    def banks(self):
        raise AttributeError("OffchipWeightUpdate keeps its master copy in external memory: "
                             "decode the memory's words with master_sets")

    def master_of(self, ctx, k, a):
        raise AttributeError("OffchipWeightUpdate keeps its master copy in external memory: "
                             "decode the memory's words with master_sets")

    def init_words(self):
        """``{word address: int}``: the initial master copy as the memory must hold it (the
        region ``base .. base + ext_words - 1``, a set's ``fold`` rows from its low bits;
        padding words 0)."""
        mw, f, ww = self._numerics.master.width, self._fold, self.word_width
        flat = self._init.reshape(self._depth, -1)
        sets = pack_rows(flat, mw) + [0] * (self.ext_sets - self._depth)
        mask = (1 << ww) - 1
        return {self._base + a * f + r: (int(v) >> (r * ww)) & mask
                for a, v in enumerate(sets) for r in range(f)}

    def master_sets(self, words):
        """The master copy ``(depth, lanes, kernel, kernel)`` decoded from the memory's words
        ``{address: int}`` (e.g. ``DRAMModel.storage``)."""
        mw, f, ww = self._numerics.master.width, self._fold, self.word_width
        nb = self._lanes * self._kernel * self._kernel
        out = np.zeros((self._depth, nb), dtype=np.int64)
        for a in range(self._depth):
            v = sum(int(words[self._base + a * f + r]) << (r * ww) for r in range(f))
            for k in range(nb):
                e = (v >> (k * mw)) & ((1 << mw) - 1)
                out[a, k] = e - (1 << mw) if e >> (mw - 1) else e
        return out.reshape(self._depth, self._lanes, self._kernel, self._kernel)

    def elaborate(self, platform):
        from amaranth.lib.fifo import SyncFIFOBuffered

        from ..memory.folded_fifo import FoldedFIFO
        m = Module()
        n = self._numerics
        # memory words (rows): B a burst, F read ahead; sets: E a sweep
        depth, B, N, f = self._depth, self._burst, self.ext_bursts, self._fold
        E = self.ext_sets
        F = self._prefetch * B
        nb = self._lanes * self._kernel * self._kernel
        mw = n.master.width
        W = self.set_width
        mem = self.mem

        # words read ahead (at least 4 entries: a FIFO of fewer has no pointer bits) and new
        # masters to write; folded, each keeps a set as its `fold` rows, the memory's words
        # (fold 1: SyncFIFOBuffered of whole sets)
        rd_depth, wr_depth = self.fifo_depths
        if f > 1:
            rf = FoldedFIFO(width=W, depth=rd_depth // f, fold=f, rows_in=True)
            wf = FoldedFIFO(width=W, depth=wr_depth // f, fold=f, rows_out=True)
        else:
            rf = SyncFIFOBuffered(width=W, depth=rd_depth)
            wf = SyncFIFOBuffered(width=W, depth=wr_depth)
        m.submodules.rf, m.submodules.wf = rf, wf
        rf_in, rf_out, wf_in, wf_out = rf.w_stream, rf.r_stream, wf.w_stream, wf.r_stream
        # memory words in each FIFO (rows taken, less `fold` for each set given; a set's rows
        # given, less those of the sets not yet taken whole: a SyncFIFOBuffered's level)
        rf_words = Signal(range(rd_depth + 1))
        wf_words = Signal(range(wr_depth + 1))
        r_fire = Signal()
        m.d.comb += r_fire.eq(mem.r.valid & mem.r.ready)
        m.d.sync += [
            rf_words.eq(rf_words + r_fire - Mux(rf_out.valid & rf_out.ready, f, 0)),
            wf_words.eq(wf_words + Mux(wf_in.valid & wf_in.ready, f, 0)
                        - (wf_out.valid & wf_out.ready)),
        ]
        lanes = []
        for k in range(nb):
            lane = _UpdateLane(numerics=n, lr_q=self._lr_q)
            m.submodules[f"lane_{k}"] = shared(lane, lane.key)
            lanes.append(lane)
        flags = Signal(nb)
        _count_flags(m, flags, self.overflow)

        # -- reader: sweeps of N bursts, for ever; a pass-2 sweep once pass 1 is acknowledged ---
        rq = Signal(range(max(N, 2)))          # next burst of the sweep to request
        sweep2 = Signal()                      # the sweep being requested is a pass 2
        p1_written = Signal()                  # this mini-batch's pass-1 bursts all acknowledged
        in_flight = Signal(range(F + 1))       # words requested, not yet received
        ar_valid = Signal()
        ar_addr = Signal.like(mem.ar.payload)
        can_read = Signal()
        m.d.comb += [
            mem.ar.valid.eq(ar_valid), mem.ar.payload.eq(ar_addr),
            can_read.eq(~ar_valid & (rf_words + in_flight + B <= F) & (~sweep2 | p1_written)),
            rf_in.valid.eq(mem.r.valid), rf_in.payload.eq(mem.r.payload),
            mem.r.ready.eq(rf_in.ready),
        ]
        with m.If(can_read):
            m.d.sync += [ar_valid.eq(1), ar_addr.eq(self._base + rq * B)]
            with m.If(rq == N - 1):
                m.d.sync += [rq.eq(0), sweep2.eq(~sweep2)]
                with m.If(sweep2):
                    m.d.sync += p1_written.eq(0)
            with m.Else():
                m.d.sync += rq.eq(rq + 1)
        with m.If(mem.ar.valid & mem.ar.ready):
            m.d.sync += ar_valid.eq(0)
        m.d.sync += in_flight.eq(in_flight + Mux(can_read, B, 0) - r_fire)

        # -- writer: an address once a burst's words are in the write FIFO (the next address
        # while the previous burst's words still go out), then the words in order ----------
        wq = Signal(range(max(N, 2)))          # next burst to write
        owed = Signal(range(2 * B + 1))        # words of addressed bursts not yet sent
        aw_valid = Signal()
        aw_addr = Signal.like(mem.aw.payload)
        acks = Signal(range(max(N, 2)))
        w_send = Signal()
        issue = Signal()
        m.d.comb += [
            mem.aw.valid.eq(aw_valid), mem.aw.payload.eq(aw_addr),
            issue.eq(~aw_valid & (owed <= B) & (wf_words >= owed + B)),
            mem.w.valid.eq((owed != 0) & wf_out.valid), mem.w.payload.eq(wf_out.payload),
            w_send.eq(mem.w.valid & mem.w.ready),
            wf_out.ready.eq(w_send),
        ]
        with m.If(issue):
            m.d.sync += [aw_valid.eq(1), aw_addr.eq(self._base + wq * B),
                         wq.eq(Mux(wq == N - 1, 0, wq + 1))]
        with m.If(mem.aw.valid & mem.aw.ready):
            m.d.sync += aw_valid.eq(0)
        m.d.sync += owed.eq(owed + Mux(issue, B, 0) - w_send)
        m.d.comb += mem.b.ready.eq(1)
        with m.If(mem.b.valid):
            m.d.sync += acks.eq(Mux(acks == N - 1, 0, acks + 1))
            with m.If(acks == N - 1):
                m.d.sync += p1_written.eq(1)

        # -- the sweeps' words, in order ---------------------------------------------------------
        state = Signal(_State)
        padding = Signal()                     # pass 1 done, its padding words still to go back
        pending = Signal()                     # a start pulse not acted on yet
        idx = Signal(range(max(E, 2)))         # words of the current sweep taken
        last_word = Signal()
        m.d.comb += last_word.eq(idx == E - 1)
        head = rf_out.payload
        s1_valid = Signal()                    # a new master waits for the write FIFO
        s1_fire = Signal()                     # ... and goes in
        s1_old = Signal(W)
        room = Signal()
        m.d.comb += [
            # room for one more set beside the one waiting
            room.eq(wf_words + Mux(s1_valid, f, 0) <= 2 * B - f),
            s1_fire.eq(s1_valid & wf_in.ready),
        ]

        # pass 1: a gradient word and its master word
        take = Signal()
        m.d.comb += [
            self.grad.ready.eq((state == _State.IDLE) & ~padding & rf_out.valid & room
                               & (~s1_valid | s1_fire)),
            take.eq(self.grad.valid & self.grad.ready),
        ]
        with m.If(take):
            m.d.sync += [s1_valid.eq(1), s1_old.eq(head)]
        with m.Elif(s1_fire):
            m.d.sync += s1_valid.eq(0)
        pad_offer = Signal()                   # a padding word of pass 1 offered back ...
        pad_back = Signal()                    # ... and written
        m.d.comb += [
            pad_offer.eq(padding & rf_out.valid & room & ~s1_valid),
            pad_back.eq(pad_offer & wf_in.ready),
        ]
        new = Signal(W)
        m.d.comb += [
            wf_in.valid.eq(s1_valid | pad_offer),
            wf_in.payload.eq(Mux(s1_valid, new, head)),
        ]

        # pass 2: the working weights of each word
        adv = Signal()
        consume = Signal()
        pad_drop = Signal()
        popped_all = Signal()
        pop = Signal()
        m.d.comb += [
            adv.eq(~self.wr.valid | self.wr.ready),
            consume.eq((state == _State.WRITE) & ~popped_all & rf_out.valid & (idx < depth)
                       & adv),
            pad_drop.eq((state == _State.WRITE) & ~popped_all & rf_out.valid & (idx >= depth)),
            pop.eq(take | pad_back | consume | pad_drop),
            rf_out.ready.eq(pop),
            self.done.eq(self.wr.valid & self.wr.ready & (self.wr.payload.addr == depth - 1)),
            self.busy.eq((state != _State.IDLE) | padding | s1_valid),
        ]
        with m.If(adv):
            m.d.sync += [self.wr.valid.eq(consume), self.wr.payload.addr.eq(idx)]
        with m.If(pop):
            m.d.sync += idx.eq(Mux(last_word, 0, idx + 1))

        # one signal: a slice per lane of a Mux expression would lower the whole Mux per lane
        old = Signal(W)
        m.d.comb += old.eq(Mux(state == _State.WRITE, head, s1_old))
        # a lane's clamp flag counts once per set: when its new master goes into the FIFO
        self._wire_lanes(m, lanes, [old[k * mw:(k + 1) * mw] for k in range(nb)], load=take,
                         hit=0, s1_valid=s1_fire, consume=consume, adv=adv, new=new,
                         flags=flags)

        with m.If(self.start):
            m.d.sync += pending.eq(1)
        with m.If(state == _State.IDLE):
            with m.If(take & self.grad.payload.last):
                if E > depth:
                    m.d.sync += padding.eq(1)
                m.d.sync += state.eq(_State.WAIT)
        with m.Elif(state == _State.WAIT):
            with m.If(pad_back & last_word):
                m.d.sync += padding.eq(0)
            with m.If((pending | self.start) & ~padding & ~s1_valid):
                m.d.sync += [state.eq(_State.WRITE), pending.eq(0)]
        with m.Else():
            with m.If((consume | pad_drop) & last_word):
                m.d.sync += popped_all.eq(1)
            with m.If(popped_all & (~self.wr.valid | self.done)):
                m.d.sync += [state.eq(_State.IDLE), popped_all.eq(0)]
        return m
