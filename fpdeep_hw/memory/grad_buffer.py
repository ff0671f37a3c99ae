"""Gradient buffers LGB and BGB (paper section 5.2.2, items 4 and 5).

A gradient buffer accumulates the parameter-gradient contributions of a mini-batch of ``B``
images and, at the end of the mini-batch, hands out the average, converted to the gradient
format, to the weight update. The LGB buffers the gradients of the LPRAM's parameters (fed by the
local PG module); the BGB those of the BPRAM's parameters (fed by the link with the gradients a
neighbour computed with the parameters this node lends it).

Golden model: :mod:`sim.golden.grad_buffer`. Test: ``tests/hw/test_grad_buffer.py``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from fpdeep_map.numerics import FixedFormat

from ..compute.shared import shared
from ..numerics import requantize, saturating_add, tree_sum
from ..wide import join
from .packing import lanes_per_memory, packed_memory

__all__ = ["GradBuffer", "LGB", "BGB", "average_reciprocal", "grad_buffer_fold"]

#: Most rows per set :func:`grad_buffer_fold` considers.
MAX_GRAD_FOLD = 64
#: :func:`grad_buffer_fold` takes the smallest fold within this factor of the fewest units.
GRAD_FOLD_SLACK = 1.05


def grad_buffer_bram18(acc_width, elements, depth, fold):
    """RAMB18 units of a :class:`GradBuffer`'s accumulators (``elements`` of ``acc_width``
    bits per set, ``depth`` sets) folded by ``fold``: its banks of at most ``PACK_LANES``
    lanes of ``f * max(depth, 2)`` rows, each :func:`fpdeep_map.costs.bram18_tiles` (what the
    build's estimate counts)."""
    from fpdeep_map.costs import bram18_tiles
    c = -(-elements // fold)
    per = lanes_per_memory(acc_width, c)
    rows = fold * max(depth, 2)
    return sum(bram18_tiles(min(per, c - lo) * acc_width, rows) for lo in range(0, c, per))


def grad_buffer_fold(acc_width, elements, depth, limit):
    """The fold of a gradient buffer of ``depth`` sets of ``elements`` accumulators of
    ``acc_width`` bits that may take and give a set at most every ``limit`` cycles: the
    smallest fold up to ``limit`` (and :data:`MAX_GRAD_FOLD` and ``elements``) whose
    accumulators need at most :data:`GRAD_FOLD_SLACK` times the fewest block RAM units any of
    them needs (:func:`grad_buffer_bram18`); 1 where folding saves nothing. A memory's
    primitives are 512 rows deep at the widest, so a buffer of fewer sets wastes rows that a
    fold fills: VGG-16 node 4's BGB of 164 conv5_2 sets, folded by 3, fills 492 of 512."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"grad_buffer_fold: limit must be a positive integer, not {limit!r}")
    units = {f: grad_buffer_bram18(acc_width, elements, depth, f)
             for f in range(1, min(limit, MAX_GRAD_FOLD, elements) + 1)}
    least = min(units.values())
    if least == units[1]:
        return 1
    return min(f for f, u in units.items() if u <= GRAD_FOLD_SLACK * least)


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
    ``acc_width``-bit integers with ``in_fmt.frac`` fractional bits): ``depth`` rows of the
    elements of a set side by side, in :class:`~amaranth.lib.memory.Memory` banks of at most
    ``PACK_LANES`` elements (:mod:`fpdeep_hw.memory.packing`), each with one write port and
    one synchronous non-transparent read port (block RAM). Address ``a`` is the gradient of
    weight set ``a`` of the matching parameter RAM (same ``depth``, ``kernel``, ``lanes``).

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

    **Folded** (``fold = f > 1``, a build-time saving for buffers that take and give far less
    than a set per cycle: a BGB fed by the link, an LGB fed once per weight set and image): the
    accumulators of a set are ``f`` rows of ``c = ceil(lanes * K * K / f)`` elements (element
    ``j * c + l`` of a set in lane ``l`` of its row ``j``; the last row's lanes beyond the set
    stay 0), set ``a``'s row ``j`` at memory row ``a * f + j``: ``f`` times the rows, ``1 / f``
    of the width, the same bits, and ``c`` element datapaths instead of ``lanes * K * K``. A
    word on ``i`` is held by its producer while its ``f`` rows are read, added and written back,
    one per cycle, and taken with its last row (a word every ``f`` cycles at most; no
    forwarding is needed, a row is written the cycle after it was read and read again ``f``
    cycles later at the earliest). The drain reads (and clears) the rows in order; each row's
    averages are gathered and a set is offered on ``o`` with its last row's, so a set every
    ``f`` cycles. The arithmetic, the counts and the order of ``o`` are the unfolded buffer's;
    the timing is: ``LATENCY + f - 1`` to the first average and ``i.ready`` low for
    ``f * depth + 2`` cycles after the batch's last row.

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
    fold : int
        Rows per set (``1 .. lanes * K * K``; default 1: a set per row, a set per cycle).

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
                 recip_bits=17, fold=1):
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
        if (not isinstance(fold, int) or isinstance(fold, bool)
                or not 1 <= fold <= lanes * kernel * kernel):
            raise ValueError(f"{name} fold must be an integer in 1..{lanes * kernel * kernel} "
                             f"(the elements of a set), not {fold!r}")
        self._fold = fold
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
            **self._extra_members(),
        })

    def _extra_members(self):
        """Members a subclass adds (``OffchipGradBuffer``: its burst port)."""
        return {}

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
    def fold(self):
        """Rows per set (see above)."""
        return self._fold

    @property
    def row_lanes(self):
        """Elements per row, ``ceil(lanes * K * K / fold)``."""
        return -(-self._lanes * self._kernel ** 2 // self._fold)

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

    def elaborate(self, platform):
        m = Module()
        depth, mem_depth, f = self._depth, self._mem_depth, self._fold
        n = self._lanes * self._kernel ** 2
        c = self.row_lanes                    # elements per row (all of a set unfolded)
        rows = f * mem_depth

        # Each element's datapath is one _GradLane (identical lanes: one shared module in the
        # build); the accumulators are memories of the lanes side by side (all lanes share the
        # addresses), rows of at most PACK_LANES lanes: a shallow bank of one element would
        # take a whole block RAM, a row of lanes fills its width (docs/hw-node.md). Folded, a
        # lane serves element l of every row of a set.
        recip, r = self.reciprocal
        frac_in = self._in_fmt.frac + r
        accw = self._acc_width
        lanes = []
        for k in range(c):
            lane = _GradLane(in_width=self._in_fmt.width, acc_width=accw, recip=recip,
                             frac_in=frac_in, out_fmt=self._out_fmt)
            m.submodules[f"lane_{k}"] = shared(lane, lane.key)
            lanes.append(lane)
        w_addr = Signal(range(rows))
        w_en = Signal()
        w_zero = Signal()
        r_addr = Signal(range(rows))
        r_en = Signal()
        per = lanes_per_memory(accw, c)
        for b, lo in enumerate(range(0, c, per)):
            part = lanes[lo:lo + per]
            _, rd = packed_memory(m, f"bank_{b}", width=accw, lanes=len(part), depth=rows,
                               w_addr=w_addr, w_en=w_en,
                               w_data=join((lane.wd for lane in part), accw),
                               r_addr=r_addr, r_en=r_en)
            for j, lane in enumerate(part):
                m.d.comb += lane.rd.eq(rd[j * accw:(j + 1) * accw])

        acc_flags = Signal(c)                 # per element: clamped by the accumulation
        out_flags = Signal(c)                 # per element: clamped by the averaging
        _count_flags(m, acc_flags, self.acc_overflow)
        _count_flags(m, out_flags, self.out_overflow)

        state = Signal(_State)

        # -- accumulation: stage 0 reads row `wj` of the offered set, stage 1 adds and writes ---
        wj = Signal(range(f)) if f > 1 else Const(0, 1)
        w_last = (wj == f - 1) if f > 1 else Const(1, 1)
        do_row = Signal()                     # a row of the offered set is read
        do_accept = Signal()                  # ... its last: the set is taken
        m.d.comb += [
            do_row.eq(self.i.valid & (state == _State.ACCUMULATE)),
            self.i.ready.eq((state == _State.ACCUMULATE) & w_last),
            do_accept.eq(self.i.valid & self.i.ready),
        ]
        if f > 1:
            with m.If(do_row):
                m.d.sync += wj.eq(Mux(w_last, 0, wj + 1))
        i_row = Signal(range(rows))
        m.d.comb += i_row.eq(self.i.payload.addr * f + wj if f > 1 else self.i.payload.addr)
        s1_valid = Signal()
        s1_addr = Signal(range(rows))
        m.d.sync += [
            s1_valid.eq(do_row),
            s1_addr.eq(i_row),
        ]
        hit = Signal()
        if f == 1:
            # the write of the previous cycle, forwarded to a word of the same address
            fwd_valid = Signal()
            fwd_addr = Signal(range(rows))
            m.d.comb += hit.eq(fwd_valid & (fwd_addr == s1_addr))
            m.d.sync += [
                fwd_valid.eq(s1_valid),
                fwd_addr.eq(s1_addr),
            ]

        # -- drain: stage A is the read port's data register, stage B the lanes' output
        # registers (a row's averages); folded, rows 0 .. f-2 of a set wait in `gathered` ------
        d_row = Signal(range(rows))           # next row to read
        d_left = Signal()                     # rows remain to be read
        a_valid = Signal()
        a_row = Signal(range(f)) if f > 1 else Const(0, 1)
        a_addr = Signal(range(mem_depth))
        a_last = Signal()
        # stage B's address and last flag are the output's (the same for every row of a set);
        # unfolded, its valid flag too
        b_addr, b_last = self.o.payload.addr, self.o.payload.last
        b_valid = self.o.valid if f == 1 else Signal()
        b_row = Signal(range(f)) if f > 1 else Const(0, 1)
        b_advance = Signal()
        a_advance = Signal()
        issue = Signal()
        d_j = Signal(range(f)) if f > 1 else Const(0, 1)
        d_set = Signal(range(mem_depth)) if f > 1 else None   # the set of row d_row
        o_row = b_row == f - 1 if f > 1 else Const(1, 1)
        if f > 1:
            m.d.comb += self.o.valid.eq(b_valid & o_row)
        m.d.comb += [
            b_advance.eq(~b_valid | ~o_row | self.o.ready),
            a_advance.eq(~a_valid | b_advance),
            issue.eq((state == _State.DRAIN) & a_advance & d_left),
        ]

        with m.If(state == _State.ACCUMULATE):
            m.d.comb += [
                r_addr.eq(i_row),
                r_en.eq(1),
            ]
        with m.Else():
            m.d.comb += [
                r_addr.eq(d_row),
                r_en.eq(a_advance),
            ]
        with m.If(state == _State.DRAIN):
            m.d.comb += [                     # read-and-clear
                w_addr.eq(d_row),
                w_zero.eq(1),
                w_en.eq(issue),
            ]
        with m.Else():
            m.d.comb += [                     # accumulate (in FLUSH: the batch's last row)
                w_addr.eq(s1_addr),
                w_en.eq(s1_valid),
            ]

        with m.Switch(state):
            with m.Case(_State.ACCUMULATE):
                with m.If(do_accept & self.i.payload.batch_done):
                    m.d.sync += state.eq(_State.FLUSH)
            with m.Case(_State.FLUSH):
                m.d.sync += [
                    state.eq(_State.DRAIN),
                    d_row.eq(0),
                    d_left.eq(1),
                ]
                if f > 1:
                    m.d.sync += [d_j.eq(0), d_set.eq(0)]
            with m.Default():                 # DRAIN
                with m.If(issue):
                    m.d.sync += [
                        d_row.eq(d_row + 1),
                        d_left.eq(d_row != f * depth - 1),
                    ]
                    if f > 1:
                        with m.If(d_j == f - 1):
                            m.d.sync += [d_j.eq(0), d_set.eq(d_set + 1)]
                        with m.Else():
                            m.d.sync += d_j.eq(d_j + 1)
                with m.If(a_valid & a_last & b_advance):
                    m.d.sync += state.eq(_State.ACCUMULATE)

        set_of_read = d_set if f > 1 else d_row
        with m.If(a_advance):
            m.d.sync += [
                a_valid.eq(issue),
                a_addr.eq(set_of_read),
                a_last.eq(d_row == f * depth - 1),
            ]
            if f > 1:
                m.d.sync += a_row.eq(d_j)

        # averaging between stage A and stage B (in the lanes)
        with m.If(b_advance):
            m.d.sync += [
                b_valid.eq(a_valid),
                b_addr.eq(a_addr),
                b_last.eq(a_last),
            ]
            if f > 1:
                m.d.sync += b_row.eq(a_row)
        # element k of a set field straight from the payload signal: a nested view would slice the
        # whole field again in every statement (Amaranth's back end rebuilds the slices of each
        # statement, so the field's bits are built once per element: quadratic in the lanes)
        i_bits = self.i.payload.as_value()
        i0, iw = self._in_layout["data"].offset, self._in_fmt.width
        din = Signal(c * iw)                  # the elements of the row being read
        if f == 1:
            m.d.comb += din.eq(i_bits[i0:i0 + n * iw])
        else:
            padded = Signal(f * c * iw)
            m.d.comb += padded.eq(i_bits[i0:i0 + n * iw])
            with m.Switch(wj):
                for j in range(f):
                    with m.Case(j):
                        m.d.comb += din.eq(padded[j * c * iw:(j + 1) * c * iw])
        for k, lane in enumerate(lanes):
            m.d.comb += [
                lane.din.eq(din[iw * k:iw * (k + 1)]),
                lane.s1_valid.eq(s1_valid), lane.hit.eq(hit), lane.w_zero.eq(w_zero),
                lane.a_valid.eq(a_valid), lane.b_advance.eq(b_advance),
            ]
        # the wide signals in one statement each (fpdeep_hw/wide.py)
        o_data = self.o.payload.data
        ow = len(Value.cast(o_data)) // n
        row_out = join((lane.out for lane in lanes), ow)
        m.d.comb += [
            acc_flags.eq(join((lane.acc_flag for lane in lanes), 1)),
            out_flags.eq(join((lane.out_flag for lane in lanes), 1)),
        ]
        if f == 1:
            m.d.comb += o_data.eq(row_out)
        else:
            # rows 0 .. f-2 of the set in the output stage; the set leaves with its last row
            gathered = Signal((f - 1) * c * ow)
            for j in range(f - 1):
                with m.If(b_valid & b_advance & (b_row == j)):
                    m.d.sync += gathered[j * c * ow:(j + 1) * c * ow].eq(row_out)
            m.d.comb += o_data.eq(Cat(gathered, row_out)[:n * ow])
        return m


class _GradLane(wiring.Component):
    """One element of a :class:`GradBuffer`: the input register, the forwarding register and
    saturating sum of the accumulation (``wd``, written back into the lane's word of the row;
    0 when ``w_zero``, the drain's read-and-clear), and the averaging of the drained value
    into the output register ``out`` (loaded when ``b_advance``). ``rd`` is the lane's word of
    the row read (synchronous, non-transparent). Every lane of a buffer gets the same control
    and is identical; the parent keeps the memories."""

    def __init__(self, *, in_width, acc_width, recip, frac_in, out_fmt):
        self._in_width, self._acc_width = in_width, acc_width
        self._recip, self._frac_in, self._out_fmt = recip, frac_in, out_fmt
        self.key = (in_width, acc_width, recip, frac_in, out_fmt.width, out_fmt.frac,
                    out_fmt.rounding)
        super().__init__({
            "din": In(signed(in_width)), "s1_valid": In(1), "hit": In(1), "w_zero": In(1),
            "rd": In(signed(acc_width)), "wd": Out(signed(acc_width)),
            "a_valid": In(1), "b_advance": In(1),
            "acc_flag": Out(1), "out_flag": Out(1), "out": Out(signed(out_fmt.width)),
        })

    def elaborate(self, platform):
        m = Module()
        accw = self._acc_width
        s1_data = Signal(signed(self._in_width))
        fwd_data = Signal(signed(accw))
        sums = Signal(signed(accw))
        m.d.sync += [s1_data.eq(self.din), fwd_data.eq(sums)]
        old = Mux(self.hit, fwd_data, self.rd)
        total, overflow = saturating_add(old, s1_data, accw)
        m.d.comb += [
            sums.eq(total),
            self.acc_flag.eq(self.s1_valid & overflow),
            self.wd.eq(Mux(self.w_zero, 0, sums)),
        ]
        acc = self.rd
        product = acc if self._recip == 1 else acc * self._recip
        value, overflow2 = requantize(product, self._frac_in, self._out_fmt)
        m.d.comb += self.out_flag.eq(self.a_valid & self.b_advance & overflow2)
        with m.If(self.b_advance):
            m.d.sync += self.out.eq(value)
        return m


def _count_flags(m, flags, count):
    """Add the number of set bits of ``flags`` to the register ``count`` every cycle, sticking at
    its maximum. The population count is a balanced adder tree (:func:`~fpdeep_hw.numerics.
    tree_sum`): a gradient set has up to ``lanes * K * K`` (hundreds of) flags."""
    total = Signal(len(count) + 1 + len(flags).bit_length())
    m.d.comb += total.eq(count + tree_sum(flags[k] for k in range(len(flags))))
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
