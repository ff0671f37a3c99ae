"""LPRAM and BPRAM: multi-bank parameter RAMs (paper section 5.2.2, items 2 and 3).

The LPRAM caches the parameters the local convolution engines use; it delivers one whole
``S x K x K`` weight set per cycle from ``S*K*K`` banks (the paper's ``SF x K x K``-bank line
buffer, each bank holding one parameter of every weight set). The BPRAM has the same storage and
also lends its contents to a neighbour: on request it streams a range of weight sets out.
Both are written by the weight update.

Golden model: :mod:`sim.golden.param_ram`. Test: ``tests/hw/test_param_ram.py``.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from fpdeep_map.numerics import FixedFormat

from .packing import lanes_per_memory, pack_rows, packed_memory

__all__ = ["weight_set_layout", "LPRAM", "BPRAM"]


def weight_set_layout(fmt, kernel, lanes):
    """``ArrayLayout`` of one weight set: ``set[s][ky][kx]``, ``lanes`` x ``kernel`` x ``kernel``
    signed elements of ``fmt.width`` bits."""
    return data.ArrayLayout(
        data.ArrayLayout(data.ArrayLayout(signed(fmt.width), kernel), kernel), lanes)


class _ParamRAM(wiring.Component):
    _lend = False

    def __init__(self, *, fmt, kernel, lanes, depth, init=None, readers=1):
        name = type(self).__name__
        if readers not in (1, 2) or isinstance(readers, bool) or (readers == 2 and self._lend):
            raise ValueError(f"{name} readers must be 1" + ("" if self._lend else " or 2")
                             + f", not {readers!r}")
        self._readers = readers
        if not isinstance(fmt, FixedFormat):
            raise TypeError(f"{name} format must be a FixedFormat, not {fmt!r}")
        for arg, value in (("kernel size", kernel), ("lanes", lanes), ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} {arg} must be a positive integer, not {value!r}")
        shape = (depth, lanes, kernel, kernel)
        if init is None:
            init = np.zeros(shape, dtype=np.int64)
        else:
            init = np.asarray(init)
            if init.shape != shape:
                raise ValueError(f"{name} init must have shape (depth, lanes, kernel, kernel) = "
                                 f"{shape}, not {init.shape}")
            if init.size and init.dtype.kind not in "iu":
                raise TypeError(f"{name} init must hold integers, not {init.dtype}")
            if init.size and (init.min() < fmt.min_int or init.max() > fmt.max_int):
                raise ValueError(f"{name} init values must fit in {fmt.width} signed bits")
            init = init.astype(np.int64)
        self._fmt = fmt
        self._kernel = kernel
        self._lanes = lanes
        self._depth = depth
        self._init = init
        self._set_layout = weight_set_layout(fmt, kernel, lanes)
        # Addresses are at least 1 bit wide (Verilog has no zero-width nets); a depth-1 RAM gets
        # a 2-word memory whose second word is never addressed by a valid address.
        self._mem_depth = max(depth, 2)
        addr = range(self._mem_depth)
        self._write_layout = data.StructLayout({"addr": addr, "data": self._set_layout})
        members = {
            "rd_addr": In(stream.Signature(addr)),
            "rd_data": Out(stream.Signature(self._set_layout)),
            "wr": In(stream.Signature(self._write_layout)),
        }
        if readers == 2:
            members["rd2_addr"] = In(stream.Signature(addr))
            members["rd2_data"] = Out(stream.Signature(self._set_layout))
        if self._lend:
            self._lend_req_layout = data.StructLayout({
                "first": addr, "count": range(depth + 1)})
            self._lend_layout = data.StructLayout({
                "addr": addr, "data": self._set_layout, "last": 1})
            members["lend_req"] = In(stream.Signature(self._lend_req_layout))
            members["lend"] = Out(stream.Signature(self._lend_layout))
        super().__init__(members)

    LATENCY = 1

    @property
    def fmt(self):
        return self._fmt

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
    def banks(self):
        """Number of memories: one per element of a weight set (``lanes * kernel**2``)."""
        return self._lanes * self._kernel * self._kernel

    @property
    def init(self):
        """Initial contents, a read-only ``(depth, lanes, kernel, kernel)`` int64 array."""
        view = self._init.view()
        view.flags.writeable = False
        return view

    @property
    def set_layout(self):
        return self._set_layout

    @property
    def readers(self):
        """Read ports: 1, or 2 (an LPRAM shared by a layer's FP and EB modules)."""
        return self._readers

    @property
    def write_layout(self):
        return self._write_layout

    @property
    def latency(self):
        return self.LATENCY

    def _lend_requests(self, m, step):
        """The lend request being served (BPRAM): ``active``, the address of its next set and
        the sets left. ``lend_req`` is taken while none is active; a set is issued (the address
        steps, modulo ``depth``) in each cycle with ``step`` high while ``active``."""
        depth = self._depth
        active = Signal()
        l_addr = Signal(range(self._mem_depth))
        l_left = Signal(range(depth + 1))
        m.d.comb += self.lend_req.ready.eq(~active)
        with m.If(self.lend_req.valid & self.lend_req.ready):
            m.d.sync += [
                active.eq(self.lend_req.payload.count != 0),
                l_addr.eq(self.lend_req.payload.first),
                l_left.eq(self.lend_req.payload.count),
            ]
        with m.Elif(active & step):
            m.d.sync += [
                active.eq(l_left != 1),
                l_addr.eq(0 if depth == 1 else Mux(l_addr == depth - 1, 0, l_addr + 1)),
                l_left.eq(l_left - 1),
            ]
        return active, l_addr, l_left

    def elaborate(self, platform):
        m = Module()
        depth = self._depth
        mem_depth = self._mem_depth

        # Output stage shared by every read: the read ports' data registers plus these.
        o_valid = Signal()
        advance = Signal()        # the output stage takes a new word (or stays empty) this cycle
        issue = Signal()          # a read is issued this cycle
        rd_addr = Signal(range(mem_depth))

        if self._lend:
            o_lend = Signal()     # the word in the output stage belongs to `lend`
            o_addr = Signal(range(mem_depth))
            o_last = Signal()
            active, l_addr, l_left = self._lend_requests(m, advance)
            m.d.comb += [
                advance.eq(~o_valid | Mux(o_lend, self.lend.ready, self.rd_data.ready)),
                self.rd_addr.ready.eq(advance & ~active),
                issue.eq(advance & (active | self.rd_addr.valid)),
                rd_addr.eq(Mux(active, l_addr, self.rd_addr.payload)),
                self.rd_data.valid.eq(o_valid & ~o_lend),
                self.lend.valid.eq(o_valid & o_lend),
                self.lend.payload.addr.eq(o_addr),
                self.lend.payload.last.eq(o_last),
            ]
            with m.If(advance):
                m.d.sync += [
                    o_lend.eq(active),
                    o_addr.eq(l_addr),
                    o_last.eq(l_left == 1),
                ]
        else:
            # with a second reader, the first reader's port also writes: it yields to a write
            writing = self.wr.valid if self._readers == 2 else 0
            m.d.comb += [
                advance.eq(~o_valid | self.rd_data.ready),
                self.rd_addr.ready.eq(advance & ~writing),
                issue.eq(advance & self.rd_addr.valid & ~writing),
                rd_addr.eq(self.rd_addr.payload),
                self.rd_data.valid.eq(o_valid),
            ]
        with m.If(advance):
            m.d.sync += o_valid.eq(issue)

        m.d.comb += self.wr.ready.eq(1)
        do_write = self.wr.valid & self.wr.ready
        w_addr = self.wr.payload.addr
        read2 = {}
        if self._readers == 2:
            # port A: the write, or the first reader's read (one address signal, so synthesis
            # makes one true dual-port block RAM); port B: the second reader
            a_addr = Signal(range(mem_depth))
            m.d.comb += a_addr.eq(Mux(do_write, self.wr.payload.addr, rd_addr))
            w_addr = rd_addr = a_addr
            o2_valid = Signal()
            advance2 = Signal()
            m.d.comb += [
                advance2.eq(~o2_valid | self.rd2_data.ready),
                self.rd2_addr.ready.eq(advance2),
                self.rd2_data.valid.eq(o2_valid),
            ]
            with m.If(advance2):
                m.d.sync += o2_valid.eq(self.rd2_addr.valid)
            read2 = {"r2_addr": self.rd2_addr.payload, "r2_en": advance2}
        # element k of a set field straight from the payload signal: a nested view would slice the
        # whole field again in every statement (Amaranth's back end rebuilds the slices of each
        # statement, so the field's bits are built once per element: quadratic in the lanes)
        wr_bits = self.wr.payload.as_value()
        d0 = self._write_layout["data"].offset
        fw = self._fmt.width
        # the elements of a set side by side in rows of at most PACK_LANES (a shallow bank of
        # one element would take a whole block RAM): bank c holds elements [lo, lo + width) in
        # (s, ky, kx) order, the layout's bit order
        nb = self._lanes * self._kernel ** 2
        flat = self._init.reshape(depth, nb)
        per = lanes_per_memory(fw, nb)
        out, out2 = [], []
        for c, lo in enumerate(range(0, nb, per)):
            width = min(per, nb - lo)
            _, rd, *rd2 = packed_memory(
                m, f"bank_{c}", width=fw, lanes=width, depth=mem_depth,
                init=pack_rows(flat[:, lo:lo + width], fw),
                w_addr=w_addr, w_en=do_write,
                w_data=wr_bits[d0 + fw * lo:d0 + fw * (lo + width)],
                r_addr=rd_addr, r_en=advance, **read2)
            out.append(rd)
            out2 += rd2
        # the read data as one assignment per word, banks in (s, ky, kx) order (the layout's
        # bit order): piecewise assignments to a wide combinational signal cost the back end
        # the whole word per piece
        m.d.comb += self.rd_data.payload.as_value().eq(Cat(*out))
        if out2:
            m.d.comb += self.rd2_data.payload.as_value().eq(Cat(*out2))
        if self._lend:
            m.d.comb += self.lend.payload.data.as_value().eq(Cat(*out))
        return m


class LPRAM(_ParamRAM):
    """Local parameter RAM: ``lanes * kernel**2`` banks of ``depth`` weights, one weight set per
    cycle.

    Weight set ``a`` (``0 <= a < depth``) is ``set[s][ky][kx]`` for channel lane ``s`` and kernel
    position ``(ky, kx)``; the elements ``(s, ky, kx)`` of a set sit side by side in rows of
    :class:`~amaranth.lib.memory.Memory` banks of at most ``PACK_LANES`` elements
    (:mod:`fpdeep_hw.memory.packing`), each with one write port and one synchronous,
    non-transparent read port (block RAM). For the plan's LPRAM of a node computing ``P`` output
    channels per cycle over ``S`` input-channel lanes, a CE's LPRAM has ``lanes = S`` and
    ``depth`` = (output channels it computes) x (input-channel groups of ``S``), the address
    being ``oc_local * groups + group`` (the order is the caller's; the RAM does not interpret it).

    Reads: an address transferred on ``rd_addr`` in cycle ``t`` gives its weight set on
    ``rd_data`` from cycle ``t + LATENCY`` (``LATENCY = 1``); one set per cycle when ``rd_data``
    is not stalled (``rd_addr.ready`` follows ``rd_data.ready``).

    Writes: a whole weight set at a time (``wr``: ``addr`` and ``data``), always accepted
    (``wr.ready`` is 1). The weight update produces whole sets in address order.

    Read/write ordering: a read accepted in cycle ``t`` returns the contents after every write
    accepted in a cycle before ``t``; a write accepted in the same cycle ``t`` to the same address
    is not seen (the read port is not transparent). Equivalently, a word that first becomes valid
    on ``rd_data`` in cycle ``v`` reflects the writes accepted before cycle ``v - 1``.

    Parameters
    ----------
    fmt : FixedFormat
        Weight format (only the width is used).
    kernel : int
        ``K`` (a set is ``lanes x K x K``).
    lanes : int
        ``S``, input-channel lanes.
    depth : int
        Number of weight sets. Addresses must be below ``depth``; address fields are
        ``range(max(depth, 2))`` (at least 1 bit: Verilog has no zero-width nets).
    init : array of shape ``(depth, lanes, kernel, kernel)``, optional
        Initial weights as integers of ``fmt`` (default all zero).
    readers : int
        ``1`` (default) or ``2``: a second read port (``rd2_addr`` / ``rd2_data``, the same
        timing and ordering) for a layer's FP and EB modules sharing one LPRAM. The first read
        port then shares its address with the write port (port A of a true dual-port block RAM,
        the second reader port B): a read on ``rd_addr`` is not taken in a cycle with a write
        (``rd_addr.ready`` is low while ``wr.valid``), reads on ``rd2_addr`` are. The node writes
        only while neither module reads (the version gate), so neither waits there.

    Members
    -------
    rd_addr : ``In(stream.Signature(range(max(depth, 2))))``
        Addresses of the weight sets to read.
    rd_data : ``Out(stream.Signature(weight_set_layout(fmt, kernel, lanes)))``
        The weight sets, in request order.
    rd2_addr, rd2_data : as ``rd_addr`` / ``rd_data``, with ``readers=2`` only
        The second reader.
    wr : ``In(stream.Signature(StructLayout({"addr": range(max(depth, 2)), "data": set layout})))``
        Weight-set writes (updates).
    """


class BPRAM(_ParamRAM):
    """Balanced parameter RAM: the storage and ports of :class:`LPRAM`, plus a lending port that
    streams weight sets to a neighbour.

    A request on ``lend_req`` (``first``, ``count``) makes the BPRAM send ``count`` weight sets on
    ``lend``, addresses ``first, first + 1, ...`` modulo ``depth``, each with its ``addr`` and with
    ``last`` set on the final one (``count = 0`` sends nothing; a whole pass is ``first = 0,
    count = depth``). A new request is accepted once the previous one has issued all its reads.
    ``lend`` and ``rd_data`` share the memories' read ports and one output register: while a
    request is being served ``rd_addr`` is not accepted (lending has priority), and a stalled
    output (either stream) holds the other back. The first word of a request is valid on ``lend``
    ``LATENCY + 1`` cycles after the request is accepted, then one per cycle without stalls.
    The read/write ordering rule of :class:`LPRAM` applies to ``lend`` words as well: a word that
    first becomes valid in cycle ``v`` reflects the writes accepted before cycle ``v - 1``.

    The updated parameters come back through the weight update into ``wr`` (their gradients
    arrive in this node's BGB).

    Folded (``fold = f > 1``): a set is ``f`` rows of ``ceil(lanes * K * K / f)`` elements
    (the last row padded), row ``r`` of set ``a`` at memory row ``r * depth + a`` (the memories
    are ``f`` times deeper and ``1 / f`` as wide: a BPRAM of few sets fills the rows of its
    block RAM that it would leave empty). A read (``rd_addr`` or a lent word) reads the set's
    rows in ``f`` consecutive cycles into a row register each (the last one is the memories'
    read data): a set every ``f`` cycles, the first word of a request ``LATENCY + f`` cycles
    after it is accepted. A write takes ``f`` cycles, a row each while ``wr.valid``;
    ``wr.ready`` is high in the cycle of its last row. The ordering rule is the same (the rows
    of a read and of a write are consecutive cycles, so every row of a word first valid in
    cycle ``v`` sees the writes accepted before ``v - 1``). The lender reads the weights at the
    link's pace, far below a set per cycle, and the update writes a set every few cycles: the
    node folds a BPRAM where it saves block RAM (:class:`~fpdeep_hw.node.top.NodeTop`).

    Parameters
    ----------
    As :class:`LPRAM`, and

    fold : int
        ``f`` (default 1, the unfolded RAM above).

    Members
    -------
    rd_addr, rd_data, wr
        As :class:`LPRAM`.
    lend_req : ``In(stream.Signature(StructLayout({"first": range(max(depth, 2)), "count": range(depth + 1)})))``
        Lending requests.
    lend : ``Out(stream.Signature(StructLayout({"addr": range(max(depth, 2)), "data": set layout, "last": 1})))``
        Lent weight sets.
    """

    _lend = True

    def __init__(self, *, fold=1, **kw):
        if not isinstance(fold, int) or isinstance(fold, bool) or fold < 1:
            raise ValueError(f"BPRAM fold must be a positive integer, not {fold!r}")
        self._fold = fold
        super().__init__(**kw)

    @property
    def fold(self):
        """Rows per weight set (1: unfolded)."""
        return self._fold

    @property
    def row_elements(self):
        """Elements per memory row: ``ceil(lanes * K * K / fold)``."""
        return -(-self.banks // self._fold)

    @property
    def first_latency(self):
        """Cycles from an accepted request (or read address) to its first word without
        stalls: ``LATENCY + fold - 1`` after the read of its first row, ``LATENCY + fold``
        after a lend request (the unfolded RAM: 1 and 2)."""
        return self.LATENCY + self._fold

    def elaborate(self, platform):
        if self._fold == 1:
            return super().elaborate(platform)
        return self._elaborate_folded()

    def _elaborate_folded(self):
        m = Module()
        f, depth, D = self._fold, self._depth, self._mem_depth
        fw, nb, c = self._fmt.width, self.banks, self.row_elements
        rows = f * D

        # -- writes: row r of the set on `wr` in the r-th cycle of its valid run
        w_row = Signal(range(f))
        w_off = Signal(range(rows))            # r * D
        with m.If(self.wr.valid):
            with m.If(w_row == f - 1):
                m.d.sync += [w_row.eq(0), w_off.eq(0)]
            with m.Else():
                m.d.sync += [w_row.eq(w_row + 1), w_off.eq(w_off + D)]
        m.d.comb += self.wr.ready.eq(w_row == f - 1)
        w_addr = Signal(range(rows))
        m.d.comb += w_addr.eq(self.wr.payload.addr + w_off)
        wr_bits = self.wr.payload.as_value()
        d0 = self._write_layout["data"].offset
        w_data = Signal(c * fw)
        with m.Switch(w_row):
            for r in range(f):
                lo, hi = min(nb, r * c), min(nb, (r + 1) * c)
                # the last row as the default: a case for every value of w_row (lint)
                with (m.Case(r) if r < f - 1 else m.Default()):
                    m.d.comb += w_data.eq(wr_bits[d0 + fw * lo:d0 + fw * hi])

        # -- reads: a set's rows in f consecutive cycles, started when the output is free
        o_valid = Signal()
        o_lend = Signal()
        o_addr = Signal(range(D))
        o_last = Signal()
        taken = Signal()
        start = Signal()                       # row 0 of a set is read this cycle
        busy = Signal()                        # rows 1 .. f-1 of the set are being read
        r_row = Signal(range(f))               # the row read this cycle while busy
        r_off = Signal(range(rows))            # its r * D
        s_addr = Signal(range(D))              # the set being read
        s_addr_now = Signal(range(D))
        active, l_addr, l_left = self._lend_requests(m, start)
        m.d.comb += [
            taken.eq(Mux(o_lend, self.lend.ready, self.rd_data.ready)),
            start.eq(~busy & (~o_valid | taken) & (active | self.rd_addr.valid)),
            self.rd_addr.ready.eq(~busy & (~o_valid | taken) & ~active),
            s_addr_now.eq(Mux(active, l_addr, self.rd_addr.payload)),
            self.rd_data.valid.eq(o_valid & ~o_lend),
            self.lend.valid.eq(o_valid & o_lend),
            self.lend.payload.addr.eq(o_addr),
            self.lend.payload.last.eq(o_last),
        ]
        with m.If(start):
            m.d.sync += [busy.eq(1), r_row.eq(1), r_off.eq(D), s_addr.eq(s_addr_now),
                         o_lend.eq(active), o_addr.eq(l_addr), o_last.eq(l_left == 1)]
        with m.Elif(busy):
            m.d.sync += [busy.eq(r_row != f - 1), r_row.eq(r_row + 1), r_off.eq(r_off + D)]
        last = Signal()                        # the set's last row is read this cycle
        m.d.comb += last.eq(busy & (r_row == f - 1))
        with m.If(last):
            m.d.sync += o_valid.eq(1)
        with m.Elif(taken):
            m.d.sync += o_valid.eq(0)
        issue = start | busy
        r_addr = Signal(range(rows))
        m.d.comb += r_addr.eq(Mux(start, s_addr_now, s_addr + r_off))

        init = np.zeros((rows, c), dtype=np.int64)
        flat = np.zeros((D, f * c), dtype=np.int64)
        flat[:depth, :nb] = self._init.reshape(depth, nb)
        for r in range(f):
            init[r * D:(r + 1) * D] = flat[:, r * c:(r + 1) * c]
        per = lanes_per_memory(fw, c)
        out = []
        for j, lo in enumerate(range(0, c, per)):
            width = min(per, c - lo)
            _, rd = packed_memory(
                m, f"bank_{j}", width=fw, lanes=width, depth=rows,
                init=pack_rows(init[:, lo:lo + width], fw), w_addr=w_addr,
                w_en=self.wr.valid, w_data=w_data[fw * lo:fw * (lo + width)], r_addr=r_addr,
                r_en=issue)
            out.append(rd)
        row_data = Cat(*out)
        # rows 0 .. f-2 into their registers the cycle after their read
        p_valid = Signal()
        p_row = Signal(range(f))
        m.d.sync += [p_valid.eq(issue), p_row.eq(Mux(start, 0, r_row))]
        held = [Signal(c * fw, name=f"row_{r}") for r in range(f - 1)]
        for r in range(f - 1):
            with m.If(p_valid & (p_row == r)):
                m.d.sync += held[r].eq(row_data)
        word = Signal(f * c * fw)
        m.d.comb += word.eq(Cat(*held, row_data))
        m.d.comb += [self.rd_data.payload.as_value().eq(word[:nb * fw]),
                     self.lend.payload.data.as_value().eq(word[:nb * fw])]
        return m
