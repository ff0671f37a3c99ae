"""Gradient buffers LGB and BGB (paper section 5.2.2, items 4 and 5).

A gradient buffer accumulates the parameter-gradient contributions of a mini-batch of ``B``
images and, at the end of the mini-batch, hands out the average, converted to the gradient
format, to the weight update. The LGB buffers the gradients of the LPRAM's parameters (fed by the
local PG module); the BGB those of the BPRAM's parameters (fed by the link with the gradients a
neighbour computed with the parameters this node lends it).

Golden model: :mod:`sim.golden.grad_buffer`. Test: ``tests/hw/test_grad_buffer.py``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from fpdeep_map.numerics import FixedFormat

from ..numerics import requantize, saturating_add

__all__ = ["GradBuffer", "LGB", "BGB", "average_reciprocal"]


def average_reciprocal(batch, recip_bits):
    """Fixed-point reciprocal used to average over a ``batch`` that is not a power of two.

    Returns ``(R, r)``: ``R = floor(2**r / batch + 1/2)`` (round half up) with
    ``r = recip_bits + batch.bit_length() - 1``, so that ``2**(recip_bits-1) <= R < 2**recip_bits``
    (``R`` is an unsigned ``recip_bits``-bit constant) and ``|R / 2**r - 1 / batch|`` is at most
    ``2**-(r+1)``, a relative error of at most ``2**-recip_bits``. For a power of two ``batch``
    no reciprocal is used (``(1, log2(batch))`` is returned: an exact shift).
    """
    if batch & (batch - 1) == 0:
        return 1, batch.bit_length() - 1
    r = recip_bits + batch.bit_length() - 1
    return ((1 << (r + 1)) + batch) // (2 * batch), r


class _State(enum.Enum, shape=2):
    ACCUMULATE = 0
    FLUSH = 1
    DRAIN = 2


class GradBuffer(wiring.Component):
    """Mini-batch gradient accumulator and averager.

    Storage: the accumulators of ``depth`` gradient sets (``lanes x kernel x kernel`` signed
    ``acc_width``-bit integers with ``in_fmt.frac`` fractional bits), one
    :class:`~amaranth.lib.memory.Memory` (bank) of ``depth`` accumulators per element of a set,
    all banks sharing addresses and enables, each with one write port and one synchronous
    non-transparent read port (block RAM). Address ``a`` is the gradient of weight set ``a`` of
    the matching parameter RAM (same ``depth``, ``kernel``, ``lanes``).

    Accumulation: each word on ``i`` (``addr``, ``data``: a gradient set in ``in_fmt``) is added
    to the accumulators at ``addr``: read in the cycle it is accepted, added (saturating at
    ``acc_width`` bits, each clamped element counted in ``acc_overflow``) and written back the
    next cycle. A one-entry forwarding register supplies the sum just written when the next word
    has the same address, so ``i`` is accepted every cycle (``i.ready`` is 1 while accumulating).

    End of the mini-batch: the contribution with ``batch_done`` set is the last one of the
    mini-batch (it is accumulated like the others). The buffer then stops accepting ``i``, waits
    one cycle for that write, and *drains*: it reads every address in order ``0 .. depth-1`` and
    sends the averages on ``o`` (``addr``, ``data`` in ``out_fmt``, ``last`` on address
    ``depth - 1``). Each address is cleared (written with 0) in the same cycle it is read, so the
    drain pass also clears the buffer for the next mini-batch at no extra cost; addresses that
    received no contribution give 0. ``i`` is accepted again once the last address has been
    read and its word has moved to the output register.

    Averaging (``B = batch``), bit-exact in the golden model:

    - ``B`` a power of two: ``requantize(acc, in_fmt.frac + log2(B), out_fmt)``: one rounding per
      ``out_fmt.rounding`` (an arithmetic shift with the half-up increment), then saturation;
    - otherwise: ``requantize(acc * R, in_fmt.frac + r, out_fmt)`` with the unsigned constant
      ``R, r = average_reciprocal(B, recip_bits)`` (``R`` has ``recip_bits`` bits; relative error
      of ``R / 2**r`` against ``1/B`` at most ``2**-recip_bits``); the product is exact
      (``acc_width + recip_bits + 1`` bits) and rounded once.

    Each element clamped by the output saturation counts in ``out_overflow``.

    Timing: the word with ``batch_done`` accepted in cycle ``t`` makes the first average valid on
    ``o`` in cycle ``t + LATENCY`` (``LATENCY = 4``); without stalls on ``o`` one word per cycle
    follows, and ``i.ready`` is low for cycles ``t + 1 .. t + depth + 2``.

    Parameters
    ----------
    in_fmt : FixedFormat
        Format of the contributions (the accumulators keep its fractional bits).
    out_fmt : FixedFormat
        Gradient format of the averages (its rounding mode is used).
    acc_width : int
        Accumulator width, at least ``in_fmt.width`` (the plan's ``grad_acc_width``).
    kernel : int
        ``K``.
    lanes : int
        ``S``.
    depth : int
        Number of gradient sets (the depth of the matching parameter RAM).
    batch : int
        Mini-batch size ``B`` (1 .. 2**16).
    recip_bits : int
        Width of the unsigned reciprocal ``R`` for a ``batch`` that is not a power of two
        (8 .. 32). The default 17 makes ``R`` an 18-bit signed operand, so with
        ``acc_width <= 25`` each element's multiply is one DSP48E1 (25 x 18); the relative error
        of the average is then at most ``2**-17`` (a quarter LSB at the end of a 16-bit range).

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"addr", "data", "batch_done"})))``
        Gradient contributions: ``addr`` ``range(max(depth, 2))``, ``data`` a
        ``lanes x kernel x kernel`` array of ``signed(in_fmt.width)``, ``batch_done`` 1 bit.
    o : ``Out(stream.Signature(StructLayout({"addr", "data", "last"})))``
        Averaged gradients, address order: ``data`` an array of ``signed(out_fmt.width)``.
    acc_overflow : ``Out(32)``
        Accumulator elements clamped so far (saturating counter).
    out_overflow : ``Out(32)``
        Averaged elements clamped so far (saturating counter).
    """

    LATENCY = 4

    def __init__(self, *, in_fmt, out_fmt, acc_width, kernel, lanes, depth, batch,
                 recip_bits=17):
        name = type(self).__name__
        for arg, fmt in (("input format", in_fmt), ("output format", out_fmt)):
            if not isinstance(fmt, FixedFormat):
                raise TypeError(f"{name} {arg} must be a FixedFormat, not {fmt!r}")
        for arg, value in (("kernel size", kernel), ("lanes", lanes), ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} {arg} must be a positive integer, not {value!r}")
        if (not isinstance(acc_width, int) or isinstance(acc_width, bool)
                or not in_fmt.width <= acc_width <= 64):
            raise ValueError(f"{name} accumulator width must be an integer in "
                             f"{in_fmt.width}..64, not {acc_width!r}")
        if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 1 << 16:
            raise ValueError(f"{name} batch must be an integer in 1..65536, not {batch!r}")
        if (not isinstance(recip_bits, int) or isinstance(recip_bits, bool)
                or not 8 <= recip_bits <= 32):
            raise ValueError(f"{name} reciprocal width must be an integer in 8..32, "
                             f"not {recip_bits!r}")
        self._in_fmt = in_fmt
        self._out_fmt = out_fmt
        self._acc_width = acc_width
        self._kernel = kernel
        self._lanes = lanes
        self._depth = depth
        self._batch = batch
        self._recip_bits = recip_bits
        self._mem_depth = max(depth, 2)       # no zero-width address at depth 1
        addr = range(self._mem_depth)

        def grad_set(width):
            return data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(
                signed(width), kernel), kernel), lanes)

        self._in_layout = data.StructLayout({
            "addr": addr, "data": grad_set(in_fmt.width), "batch_done": 1})
        self._out_layout = data.StructLayout({
            "addr": addr, "data": grad_set(out_fmt.width), "last": 1})
        super().__init__({
            "i": In(stream.Signature(self._in_layout)),
            "o": Out(stream.Signature(self._out_layout)),
            "acc_overflow": Out(32),
            "out_overflow": Out(32),
        })

    @property
    def in_fmt(self):
        return self._in_fmt

    @property
    def out_fmt(self):
        return self._out_fmt

    @property
    def acc_width(self):
        return self._acc_width

    @property
    def kernel(self):
        return self._kernel

    @property
    def lanes(self):
        return self._lanes

    @property
    def depth(self):
        return self._depth

    @property
    def batch(self):
        return self._batch

    @property
    def recip_bits(self):
        return self._recip_bits

    @property
    def reciprocal(self):
        """``(R, r)`` of :func:`average_reciprocal` for this buffer's batch."""
        return average_reciprocal(self._batch, self._recip_bits)

    @property
    def in_layout(self):
        return self._in_layout

    @property
    def out_layout(self):
        return self._out_layout

    @property
    def latency(self):
        return self.LATENCY

    def _index(self):
        return [(s, ky, kx) for s in range(self._lanes)
                for ky in range(self._kernel) for kx in range(self._kernel)]

    def elaborate(self, platform):
        m = Module()
        depth, mem_depth = self._depth, self._mem_depth
        index = self._index()
        n = len(index)
        acc_shape = signed(self._acc_width)
        acc_layout = data.ArrayLayout(acc_shape, n)

        # One memory (bank) per element of a gradient set, as the parameter RAMs: narrow words
        # map to block RAM as well as one wide word would, and keep every write-enable mask
        # small (a single word of hundreds of accumulators is more than the Python simulator
        # can compile).
        w_port = _Ports(acc_layout, mem_depth)    # the banks' ports seen together
        r_port = _Ports(acc_layout, mem_depth)
        for k in range(n):
            bank = Memory(shape=acc_shape, depth=mem_depth, init=[])
            m.submodules[f"bank_{k}"] = bank
            bw = bank.write_port()
            br = bank.read_port()             # synchronous, non-transparent
            m.d.comb += [
                bw.addr.eq(w_port.addr), bw.data.eq(w_port.data[k]), bw.en.eq(w_port.en),
                br.addr.eq(r_port.addr), br.en.eq(r_port.en), r_port.data[k].eq(br.data),
            ]

        acc_flags = Signal(n)                 # per element: clamped by the accumulation
        out_flags = Signal(n)                 # per element: clamped by the averaging
        _count_flags(m, acc_flags, self.acc_overflow)
        _count_flags(m, out_flags, self.out_overflow)

        state = Signal(_State)

        # -- accumulation: stage 0 reads, stage 1 adds and writes back ---------------------------
        do_accept = Signal()
        m.d.comb += [
            self.i.ready.eq(state == _State.ACCUMULATE),
            do_accept.eq(self.i.valid & self.i.ready),
        ]
        s1_valid = Signal()
        s1_addr = Signal(range(mem_depth))
        s1_data = Signal(data.ArrayLayout(signed(self._in_fmt.width), n))
        m.d.sync += [
            s1_valid.eq(do_accept),
            s1_addr.eq(self.i.payload.addr),
        ]
        for k, (s, ky, kx) in enumerate(index):
            m.d.sync += s1_data[k].eq(self.i.payload.data[s][ky][kx])

        fwd_valid = Signal()                  # the write of the previous cycle, for forwarding
        fwd_addr = Signal(range(mem_depth))
        fwd_data = Signal(acc_layout)
        hit = Signal()
        m.d.comb += hit.eq(fwd_valid & (fwd_addr == s1_addr))
        sums = Signal(acc_layout)
        for k in range(n):
            old = Mux(hit, fwd_data[k], r_port.data[k])
            total, overflow = saturating_add(old, s1_data[k], self._acc_width)
            m.d.comb += [
                sums[k].eq(total),
                acc_flags[k].eq(s1_valid & overflow),
            ]
        m.d.sync += [
            fwd_valid.eq(s1_valid),
            fwd_addr.eq(s1_addr),
            fwd_data.eq(sums),
        ]

        # -- drain: stage A is the read port's data register, stage B the output register -------
        d_addr = Signal(range(mem_depth))     # next address to read
        d_left = Signal()                     # addresses remain to be read
        a_valid = Signal()
        a_addr = Signal(range(mem_depth))
        a_last = Signal()
        b_advance = Signal()
        a_advance = Signal()
        issue = Signal()
        m.d.comb += [
            b_advance.eq(~self.o.valid | self.o.ready),
            a_advance.eq(~a_valid | b_advance),
            issue.eq((state == _State.DRAIN) & a_advance & d_left),
        ]

        with m.If(state == _State.ACCUMULATE):
            m.d.comb += [
                r_port.addr.eq(self.i.payload.addr),
                r_port.en.eq(1),
            ]
        with m.Else():
            m.d.comb += [
                r_port.addr.eq(d_addr),
                r_port.en.eq(a_advance),
            ]
        with m.If(state == _State.DRAIN):
            m.d.comb += [                     # read-and-clear
                w_port.addr.eq(d_addr),
                w_port.data.eq(0),
                w_port.en.eq(issue),
            ]
        with m.Else():
            m.d.comb += [                     # accumulate (in FLUSH: the batch's last word)
                w_port.addr.eq(s1_addr),
                w_port.data.eq(sums),
                w_port.en.eq(s1_valid),
            ]

        with m.Switch(state):
            with m.Case(_State.ACCUMULATE):
                with m.If(do_accept & self.i.payload.batch_done):
                    m.d.sync += state.eq(_State.FLUSH)
            with m.Case(_State.FLUSH):
                m.d.sync += [
                    state.eq(_State.DRAIN),
                    d_addr.eq(0),
                    d_left.eq(1),
                ]
            with m.Default():                 # DRAIN
                with m.If(issue):
                    m.d.sync += [
                        d_addr.eq(d_addr + 1),
                        d_left.eq(d_addr != depth - 1),
                    ]
                with m.If(a_valid & a_last & b_advance):
                    m.d.sync += state.eq(_State.ACCUMULATE)

        with m.If(a_advance):
            m.d.sync += [
                a_valid.eq(issue),
                a_addr.eq(d_addr),
                a_last.eq(d_addr == depth - 1),
            ]

        # averaging between stage A and stage B
        recip, r = self.reciprocal
        frac_in = self._in_fmt.frac + r
        with m.If(b_advance):
            m.d.sync += [
                self.o.valid.eq(a_valid),
                self.o.payload.addr.eq(a_addr),
                self.o.payload.last.eq(a_last),
            ]
        for k, (s, ky, kx) in enumerate(index):
            acc = r_port.data[k]
            product = acc if recip == 1 else acc * recip
            value, overflow = requantize(product, frac_in, self._out_fmt)
            m.d.comb += out_flags[k].eq(a_valid & b_advance & overflow)
            with m.If(b_advance):
                m.d.sync += self.o.payload.data[s][ky][kx].eq(value)
        return m


class _Ports:
    """Address, data and enable of the banks' write (or read) ports, driven together."""

    def __init__(self, layout, depth):
        self.addr = Signal(range(depth))
        self.data = Signal(layout)
        self.en = Signal()


def _count_flags(m, flags, count):
    """Add the number of set bits of ``flags`` to the register ``count`` every cycle, sticking at
    its maximum. The population count is a balanced adder tree: a gradient set has up to
    ``lanes * K * K`` (hundreds of) flags, and :class:`fpdeep_hw.numerics.OverflowCounter` sums
    its inputs as one linear chain, which the simulator cannot compile at that size."""
    terms = [flags[k] for k in range(len(flags))]
    while len(terms) > 1:
        terms = [terms[k] + terms[k + 1] if k + 1 < len(terms) else terms[k]
                 for k in range(0, len(terms), 2)]
    total = Signal(len(count) + 1 + len(flags).bit_length())
    m.d.comb += total.eq(count + terms[0])
    m.d.sync += count.eq(Mux(total >= 1 << len(count), (1 << len(count)) - 1, total))


class LGB(GradBuffer):
    """Local gradient buffer: a :class:`GradBuffer` for the LPRAM's parameters, fed by the local
    PG module. Parameters and members as :class:`GradBuffer`."""


class BGB(GradBuffer):
    """Balanced gradient buffer: a :class:`GradBuffer` for the BPRAM's parameters, fed by the link
    with the gradients the neighbour computes with the lent parameters (words arrive in the
    neighbour's order; the address says which weight set each belongs to, and the neighbour marks
    its last contribution of the mini-batch with ``batch_done``). Its averages go to the weight
    update of the BPRAM. Parameters and members as :class:`GradBuffer`."""
