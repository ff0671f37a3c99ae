"""Special-function unit: ReLU and max-pool, forward and backward (paper section 5.2).

- :class:`ReLU` -- ReLU forward on a stream of channel vectors, with the mask the backward pass
  needs;
- :class:`ReLUBackward` -- errors in + mask in -> errors zeroed where the forward input was not
  positive;
- :class:`MaxPool` -- K x K stride s max-pool (2x2 s2, 3x3 s2, ...) of maps streamed in raster
  order, emitting the maximum and the argmax index ``ky * K + kx`` within the window;
- :class:`MaxPoolBackward` -- routes each pooled error to its argmax pixel, zeros elsewhere, output
  in raster order of the unpooled map.

Max-pool geometry is Caffe's: ceil mode, no padding, ``out = ceil((size - K) / s) + 1``; the last
window of a row/column may hang over the edge and is clipped to the pixels that exist. Ties pick
the first maximum in raster order of the window.

Golden model: :mod:`sim.golden.sfu`. Test: ``tests/hw/test_sfu.py``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from fpdeep_hw.numerics import OverflowCounter, saturate
from fpdeep_map.numerics import FixedFormat

__all__ = ["ReLU", "ReLUBackward", "MaxPool", "MaxPoolBackward", "pooled_size", "arg_bits"]


def pooled_size(size: int, k: int, stride: int) -> int:
    """Caffe ceil-mode pooled size (no padding): ``ceil((size - k) / stride) + 1``, at least 1."""
    return max(-(-(size - k) // stride), 0) + 1


def arg_bits(k: int) -> int:
    """Bits of an argmax index ``0 .. k*k - 1`` (at least 1)."""
    return max((k * k - 1).bit_length(), 1)


def _range(n):
    """``range(n)`` for a counter signal, never zero bits wide (Verilog has no zero-width nets)."""
    return range(max(n, 2))


def _check_lanes(kind, lanes):
    if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
        raise ValueError(f"{kind} lanes must be a positive integer, not {lanes!r}")


def _check_fmt(kind, fmt):
    if not isinstance(fmt, FixedFormat):
        raise TypeError(f"{kind} format must be a FixedFormat, not {fmt!r}")


def _check_pool(kind, k, stride, height, width):
    for name, value in (("kernel size", k), ("stride", stride), ("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{kind} {name} must be a positive integer, not {value!r}")
    if stride > k:
        raise ValueError(f"{kind} stride must not exceed the kernel size ({k}), not {stride!r}")


def _vector(fmt, lanes):
    return data.ArrayLayout(signed(fmt.width), lanes)


class ReLU(wiring.Component):
    """ReLU forward: ``o.data = max(i, 0)`` per lane, ``o.mask = i > 0`` per lane.

    Registered: a word transferred on ``i`` in cycle ``t`` is valid on ``o`` from cycle
    ``t + LATENCY`` (``LATENCY = 1``), one word per cycle when ``o`` is not stalled.

    Parameters
    ----------
    fmt : FixedFormat
        Activation format (only the width matters).
    lanes : int
        Activations per word (channel lanes), at least 1.

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(fmt.width), lanes)))``
    o : ``Out(stream.Signature(StructLayout({"data": ArrayLayout(signed(fmt.width), lanes),
        "mask": ArrayLayout(1, lanes)})))``
        The mask is stored (e.g. next to the activations) for :class:`ReLUBackward`.
    """

    LATENCY = 1

    def __init__(self, *, fmt, lanes):
        _check_fmt("ReLU", fmt)
        _check_lanes("ReLU", lanes)
        self._fmt, self._lanes = fmt, lanes
        out = data.StructLayout({"data": _vector(fmt, lanes), "mask": data.ArrayLayout(1, lanes)})
        super().__init__({
            "i": In(stream.Signature(_vector(fmt, lanes))),
            "o": Out(stream.Signature(out)),
        })

    @property
    def fmt(self):
        return self._fmt

    @property
    def lanes(self):
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        can_load = self.o.ready | ~self.o.valid
        m.d.comb += self.i.ready.eq(can_load)
        with m.If(can_load):
            m.d.sync += self.o.valid.eq(self.i.valid)
        with m.If(can_load & self.i.valid):
            for lane in range(self._lanes):
                x = self.i.payload[lane]
                positive = x > 0
                m.d.sync += [
                    self.o.payload.data[lane].eq(Mux(positive, x, 0)),
                    self.o.payload.mask[lane].eq(positive),
                ]
        return m


class ReLUBackward(wiring.Component):
    """ReLU backward: ``o = i`` where the mask bit is set, ``0`` elsewhere.

    Joins two streams: a result is formed only when both ``i`` (errors) and ``mask`` offer a word,
    and both are taken in the same cycle. Registered, ``LATENCY = 1``.

    Parameters
    ----------
    fmt : FixedFormat
        Error format (only the width matters).
    lanes : int
        Errors per word, at least 1.

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(fmt.width), lanes)))``
        Errors from the following layer.
    mask : ``In(stream.Signature(ArrayLayout(1, lanes)))``
        Masks recorded by :class:`ReLU` in forward propagation, same order.
    o : ``Out(stream.Signature(ArrayLayout(signed(fmt.width), lanes)))``
    """

    LATENCY = 1

    def __init__(self, *, fmt, lanes):
        _check_fmt("ReLU backward", fmt)
        _check_lanes("ReLU backward", lanes)
        self._fmt, self._lanes = fmt, lanes
        super().__init__({
            "i": In(stream.Signature(_vector(fmt, lanes))),
            "mask": In(stream.Signature(data.ArrayLayout(1, lanes))),
            "o": Out(stream.Signature(_vector(fmt, lanes))),
        })

    @property
    def fmt(self):
        return self._fmt

    @property
    def lanes(self):
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        can_load = self.o.ready | ~self.o.valid
        both = self.i.valid & self.mask.valid
        take = can_load & both
        m.d.comb += [self.i.ready.eq(take), self.mask.ready.eq(take)]
        with m.If(can_load):
            m.d.sync += self.o.valid.eq(both)
        with m.If(take):
            for lane in range(self._lanes):
                m.d.sync += self.o.payload[lane].eq(Mux(self.mask.payload[lane], self.i.payload[lane], 0))
        return m


class MaxPool(wiring.Component):
    """Max-pool forward of maps streamed in raster order, with the argmax of every window.

    Input: the ``height x width`` map of one group of ``lanes`` channels in raster order (one word
    = one pixel of every channel of the group), map after map with no gap needed. Output: the
    ``Ho x Wo`` pooled map in raster order, each word the per-lane maximum and its index
    ``ky * k + kx`` in the window (first maximum in raster order on ties). Ceil mode: see the
    module docstring; ``Ho = pooled_size(height, k, stride)``, ``Wo = pooled_size(width, k,
    stride)``.

    Structure: a row of ``ceil(k / stride)`` running horizontal window registers reduces each
    input row to ``Wo`` row maxima (one per window, ``kx`` of the maximum kept); these are
    combined down the columns in ``ceil(k / stride)`` line memories of ``Wo`` words (one per
    output row in progress, read-modify-write with a synchronous non-transparent read port and a
    bypass for back-to-back writes to the same column). The pipeline has 3 stages and advances as
    a whole when the output register is free or taken; ``i.ready`` is that advance condition.

    Latency: the pooled word whose window completes with the input word transferred in cycle ``t``
    is valid on ``o`` from cycle ``t + LATENCY`` (``LATENCY = 3``).

    Parameters
    ----------
    fmt : FixedFormat
        Activation format (only the width matters).
    lanes : int
        Channels per word, at least 1.
    k, stride : int
        Window size and stride, ``1 <= stride <= k``.
    height, width : int
        Map size.

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(fmt.width), lanes)))``
    o : ``Out(stream.Signature(StructLayout({"max": ArrayLayout(signed(fmt.width), lanes),
        "arg": ArrayLayout(arg_bits(k), lanes)})))``
    """

    LATENCY = 3

    def __init__(self, *, fmt, lanes, k, stride, height, width):
        _check_fmt("Max-pool", fmt)
        _check_lanes("Max-pool", lanes)
        _check_pool("Max-pool", k, stride, height, width)
        self._fmt, self._lanes = fmt, lanes
        self._k, self._stride, self._height, self._width = k, stride, height, width
        self._out_height = pooled_size(height, k, stride)
        self._out_width = pooled_size(width, k, stride)
        self._out_layout = data.StructLayout({
            "max": _vector(fmt, lanes), "arg": data.ArrayLayout(arg_bits(k), lanes)})
        super().__init__({
            "i": In(stream.Signature(_vector(fmt, lanes))),
            "o": Out(stream.Signature(self._out_layout)),
        })

    fmt = property(lambda self: self._fmt)
    lanes = property(lambda self: self._lanes)
    k = property(lambda self: self._k)
    stride = property(lambda self: self._stride)
    height = property(lambda self: self._height)
    width = property(lambda self: self._width)
    out_height = property(lambda self: self._out_height)
    out_width = property(lambda self: self._out_width)

    def elaborate(self, platform):
        m = Module()
        K, S, H, W = self._k, self._stride, self._height, self._width
        Ho, Wo, lanes = self._out_height, self._out_width, self._lanes
        nh = min(-(-K // S), Wo)   # horizontal windows open at once
        nv = min(-(-K // S), Ho)   # output rows in progress at once
        vec = _vector(self._fmt, lanes)
        args = data.ArrayLayout(arg_bits(K), lanes)
        entry = data.StructLayout({"max": vec, "arg": args})

        adv = Signal()
        m.d.comb += adv.eq(self.o.ready | ~self.o.valid)
        m.d.comb += self.i.ready.eq(adv)
        take = Signal()
        m.d.comb += take.eq(adv & self.i.valid)
        pixel = self.i.payload

        # ---- stage 0: input coordinates, horizontal windows, row state ------------------------
        x = Signal(_range(W))
        xphase = Signal(_range(S))  # x mod stride
        xcol = Signal(_range(Wo + 1))       # x // stride, saturating at Wo (no more window starts)
        nslot = Signal(_range(nh))  # slot of the next window to start: xcol mod nh
        y = Signal(_range(H))
        yphase = Signal(_range(S))
        ycol = Signal(_range(Ho + 1))
        vslot = Signal(_range(nv))

        row_end = x == W - 1
        start = (xphase == 0) & (xcol < Wo)

        hact = [Signal(name=f"hact{j}") for j in range(nh)]
        hkx = [Signal(_range(K), name=f"hkx{j}") for j in range(nh)]
        hox = [Signal(_range(Wo), name=f"hox{j}") for j in range(nh)]
        hwin = [Signal(entry, name=f"hwin{j}") for j in range(nh)]

        emit = Signal()
        emit_ox = Signal(_range(Wo))
        emit_val = Signal(entry)
        for j in range(nh):
            with m.If(take):
                with m.If(hact[j]):
                    new = Signal(entry, name=f"hnew{j}")
                    for lane in range(lanes):
                        greater = pixel[lane] > hwin[j].max[lane]
                        m.d.comb += [
                            new.max[lane].eq(Mux(greater, pixel[lane], hwin[j].max[lane])),
                            new.arg[lane].eq(Mux(greater, hkx[j], hwin[j].arg[lane])),
                        ]
                    with m.If((hkx[j] == K - 1) | row_end):
                        m.d.comb += [emit.eq(1), emit_ox.eq(hox[j]), emit_val.eq(new)]
                        m.d.sync += hact[j].eq(0)
                    with m.Else():
                        m.d.sync += [hwin[j].eq(new), hkx[j].eq(hkx[j] + 1)]
                with m.If(start & (nslot == j)):
                    first = Signal(entry, name=f"hfirst{j}")
                    m.d.comb += first.max.eq(pixel)  # arg = 0: the first pixel of the window
                    if K == 1:
                        m.d.comb += [emit.eq(1), emit_ox.eq(xcol), emit_val.eq(first)]
                    else:
                        with m.If(row_end):
                            m.d.comb += [emit.eq(1), emit_ox.eq(xcol), emit_val.eq(first)]
                        with m.Else():
                            m.d.sync += [hact[j].eq(1), hkx[j].eq(1), hox[j].eq(xcol),
                                         hwin[j].eq(first)]

        # row state of the current input row: per output-row slot r, active and ky
        vact = [Signal(init=int(r == 0), name=f"vact{r}") for r in range(nv)]
        vky = [Signal(_range(K), name=f"vky{r}") for r in range(nv)]
        vlast = [Signal(name=f"vlast{r}") for r in range(nv)]
        for r in range(nv):
            m.d.comb += vlast[r].eq((vky[r] == K - 1) | (y == H - 1))

        with m.If(take):
            with m.If(row_end):
                m.d.sync += [x.eq(0), xphase.eq(0), xcol.eq(0), nslot.eq(0)]
                with m.If(y == H - 1):
                    m.d.sync += [y.eq(0), yphase.eq(0), ycol.eq(0), vslot.eq(0)]
                    for r in range(nv):
                        m.d.sync += [vact[r].eq(r == 0), vky[r].eq(0)]
                with m.Else():
                    m.d.sync += y.eq(y + 1)
                    next_phase = Mux(yphase == S - 1, 0, yphase + 1)
                    next_col = Mux((yphase == S - 1) & (ycol < Ho), ycol + 1, ycol)
                    m.d.sync += [yphase.eq(next_phase), ycol.eq(next_col)]
                    next_start = (next_phase == 0) & (next_col < Ho)
                    next_vslot = Mux(vslot == nv - 1, 0, vslot + 1)
                    with m.If(next_start):
                        m.d.sync += vslot.eq(next_vslot)
                    for r in range(nv):
                        with m.If(next_start & (next_vslot == r)):
                            m.d.sync += [vact[r].eq(1), vky[r].eq(0)]
                        with m.Elif(vact[r]):
                            with m.If(vlast[r]):
                                m.d.sync += vact[r].eq(0)
                            with m.Else():
                                m.d.sync += vky[r].eq(vky[r] + 1)
            with m.Else():
                m.d.sync += x.eq(x + 1)
                with m.If(xphase == S - 1):
                    m.d.sync += xphase.eq(0)
                    with m.If(xcol < Wo):
                        m.d.sync += xcol.eq(xcol + 1)
                with m.Else():
                    m.d.sync += xphase.eq(xphase + 1)
                with m.If(start):
                    m.d.sync += nslot.eq(Mux(nslot == nh - 1, 0, nslot + 1))

        # ---- stage 1: register the row maximum; read the line memories --------------------------
        s1_valid = Signal()
        s1_ox = Signal(_range(Wo))
        s1_val = Signal(entry)
        s1_act = Signal(nv)
        s1_last = Signal(nv)
        s1_ky = [Signal(_range(K), name=f"s1_ky{r}") for r in range(nv)]
        with m.If(adv):
            m.d.sync += [
                s1_valid.eq(emit & take),
                s1_ox.eq(emit_ox),
                s1_val.eq(emit_val),
                s1_act.eq(Cat(*vact)),
                s1_last.eq(Cat(*vlast)),
            ]
            m.d.sync += [s1_ky[r].eq(vky[r]) for r in range(nv)]

        s2_valid = Signal()
        s2_ox = Signal(_range(Wo))
        s2_val = Signal(entry)
        s2_act = Signal(nv)
        s2_last = Signal(nv)
        s2_ky = [Signal(_range(K), name=f"s2_ky{r}") for r in range(nv)]
        with m.If(adv):
            m.d.sync += [s2_valid.eq(s1_valid), s2_ox.eq(s1_ox), s2_val.eq(s1_val),
                         s2_act.eq(s1_act), s2_last.eq(s1_last)]
            m.d.sync += [s2_ky[r].eq(s1_ky[r]) for r in range(nv)]

        # ---- stage 2: combine with the line memory, write back, emit finished windows ---------
        out_valid = Signal()
        out_val = Signal(entry)
        for r in range(nv):
            mem = Memory(shape=entry, depth=Wo, init=[])
            m.submodules[f"line{r}"] = mem
            rd = mem.read_port()
            wr = mem.write_port()
            bypass_valid = Signal(name=f"bypass_valid{r}")
            bypass = Signal(entry, name=f"bypass{r}")
            m.d.comb += [rd.addr.eq(s1_ox), rd.en.eq(adv)]
            old = Signal(entry, name=f"old{r}")
            m.d.comb += old.eq(Mux(bypass_valid, bypass, rd.data))
            new = Signal(entry, name=f"vnew{r}")
            first_row = s2_ky[r] == 0
            for lane in range(lanes):
                fresh = first_row | (s2_val.max[lane] > old.max[lane])
                m.d.comb += [
                    new.max[lane].eq(Mux(fresh, s2_val.max[lane], old.max[lane])),
                    new.arg[lane].eq(Mux(fresh, s2_ky[r] * K + s2_val.arg[lane], old.arg[lane])),
                ]
            write = adv & s2_valid & s2_act[r]
            m.d.comb += [wr.addr.eq(s2_ox), wr.data.eq(new), wr.en.eq(write)]
            with m.If(adv):
                m.d.sync += [bypass_valid.eq(write & (s2_ox == s1_ox)), bypass.eq(new)]
            with m.If(s2_valid & s2_act[r] & s2_last[r]):
                m.d.comb += [out_valid.eq(1), out_val.eq(new)]

        with m.If(adv):
            m.d.sync += self.o.valid.eq(out_valid)
            with m.If(out_valid):
                m.d.sync += self.o.payload.eq(out_val)
        return m


class MaxPoolBackward(wiring.Component):
    """Max-pool backward: each pooled error goes to its argmax pixel, zeros elsewhere.

    Inputs: the pooled errors (``i``) and the argmax indices recorded by :class:`MaxPool`
    (``arg``), both ``Ho x Wo`` in raster order, joined word by word. Output: the ``height x
    width`` error map in raster order. Where windows overlap (``k > stride``) a pixel can be the
    argmax of several windows; it receives the exact sum of their errors saturated to the error
    width, every clamped lane counting one overflow.

    Structure: pooled rows are written into ``ceil(k / stride) + 1`` line memories of ``Wo``
    words (one row ahead of the rows in use). Output row ``y`` only needs pooled rows
    ``oy <= min(y // stride, Ho - 1)``, so the output rows of band ``b`` (``y`` from ``b *
    stride`` to the row before band ``b + 1``; the last band runs to the bottom) are produced as
    soon as pooled row ``b`` is complete. A window of ``ceil(k / stride)`` columns per pooled row
    slides along with ``x`` (one synchronous read per column), and each output pixel sums the
    matching entries. Input stalls while it is a full row ahead of the output (and, at the end of
    a map, until the map's output is complete).

    Latency: the first output word of a map is valid on ``o`` ``LATENCY = 3`` cycles after the
    transfer of the last word of the map's pooled row 0; then one word per cycle unless stalled.

    Parameters
    ----------
    fmt : FixedFormat
        Error format (only the width matters).
    lanes : int
        Channels per word, at least 1.
    k, stride : int
        Window size and stride of the forward max-pool, ``1 <= stride <= k``.
    height, width : int
        Size of the unpooled map.

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(fmt.width), lanes)))``
        Pooled errors.
    arg : ``In(stream.Signature(ArrayLayout(arg_bits(k), lanes)))``
        Argmax indices from forward propagation, same order.
    o : ``Out(stream.Signature(ArrayLayout(signed(fmt.width), lanes)))``
        Unpooled errors.
    overflows : ``Out(32)``
        Saturating count of clamped lanes since reset.
    """

    LATENCY = 3

    def __init__(self, *, fmt, lanes, k, stride, height, width):
        _check_fmt("Max-pool backward", fmt)
        _check_lanes("Max-pool backward", lanes)
        _check_pool("Max-pool backward", k, stride, height, width)
        self._fmt, self._lanes = fmt, lanes
        self._k, self._stride, self._height, self._width = k, stride, height, width
        self._out_height = pooled_size(height, k, stride)
        self._out_width = pooled_size(width, k, stride)
        super().__init__({
            "i": In(stream.Signature(_vector(fmt, lanes))),
            "arg": In(stream.Signature(data.ArrayLayout(arg_bits(k), lanes))),
            "o": Out(stream.Signature(_vector(fmt, lanes))),
            "overflows": Out(32),
        })

    fmt = property(lambda self: self._fmt)
    lanes = property(lambda self: self._lanes)
    k = property(lambda self: self._k)
    stride = property(lambda self: self._stride)
    height = property(lambda self: self._height)
    width = property(lambda self: self._width)
    out_height = property(lambda self: self._out_height)
    out_width = property(lambda self: self._out_width)

    def elaborate(self, platform):
        m = Module()
        K, S, H, W = self._k, self._stride, self._height, self._width
        Ho, Wo, lanes = self._out_height, self._out_width, self._lanes
        n = min(-(-K // S), Ho)       # pooled rows contributing to one output row
        ncol = min(-(-K // S), Wo)    # pooled columns contributing to one output pixel
        nslots = n + 1
        vec = _vector(self._fmt, lanes)
        entry = data.StructLayout({"err": vec, "arg": data.ArrayLayout(arg_bits(K), lanes)})

        # ---- writer: pooled rows into the line memories ---------------------------------------
        band = Signal(_range(Ho))
        rows_in = Signal(_range(Ho + 1))
        wcol = Signal(_range(Wo))
        wslot = Signal(_range(nslots))
        frame_done = Signal()
        both = self.i.valid & self.arg.valid
        room = (rows_in < Ho) & (rows_in <= band + 1)
        take = Signal()
        m.d.comb += take.eq(both & room)
        m.d.comb += [self.i.ready.eq(take), self.arg.ready.eq(take)]
        with m.If(frame_done):
            m.d.sync += [rows_in.eq(0), wslot.eq(0), wcol.eq(0)]
        with m.Elif(take):
            with m.If(wcol == Wo - 1):
                m.d.sync += [wcol.eq(0), rows_in.eq(rows_in + 1),
                             wslot.eq(Mux(wslot == nslots - 1, 0, wslot + 1))]
            with m.Else():
                m.d.sync += wcol.eq(wcol + 1)

        # ---- reader, stage A: output coordinates, column fetches -------------------------------
        adv = Signal()
        m.d.comb += adv.eq(self.o.ready | ~self.o.valid)
        go = Signal()
        m.d.comb += go.eq(rows_in > band)
        issue = Signal()
        m.d.comb += issue.eq(adv & go)

        x = Signal(_range(W))
        xphase = Signal(_range(S))
        ccol = Signal(_range(Wo + 1))       # next pooled column to fetch
        xoff = Signal(_range(W + 1))        # x - stride * (newest fetched column)
        yoff = Signal(_range(H + 1))        # y - stride * band
        y = Signal(_range(H))
        head = Signal(_range(nslots))       # slot of pooled row `band`

        shift = Signal()
        m.d.comb += shift.eq((xphase == 0) & (ccol < Wo))
        xoff_now = Mux(shift, 0, xoff + 1)
        band_last_row = (y == H - 1) | ((band != Ho - 1) & (yoff == S - 1))

        with m.If(issue):
            m.d.sync += xoff.eq(xoff_now)
            with m.If(x == W - 1):
                m.d.sync += [x.eq(0), xphase.eq(0), ccol.eq(0)]
                with m.If(band_last_row):
                    m.d.sync += yoff.eq(0)
                    with m.If(band == Ho - 1):
                        m.d.sync += [band.eq(0), y.eq(0), head.eq(0)]
                        m.d.comb += frame_done.eq(1)
                    with m.Else():
                        m.d.sync += [band.eq(band + 1), y.eq(y + 1),
                                     head.eq(Mux(head == nslots - 1, 0, head + 1))]
                with m.Else():
                    m.d.sync += [yoff.eq(yoff + 1), y.eq(y + 1)]
            with m.Else():
                m.d.sync += [x.eq(x + 1), xphase.eq(Mux(xphase == S - 1, 0, xphase + 1))]
                with m.If(shift):
                    m.d.sync += ccol.eq(ccol + 1)

        # stage B registers
        b_valid = Signal()
        b_shift = Signal()
        b_rowstart = Signal()
        b_xoff = Signal(_range(W + 1))
        b_yoff = Signal(_range(H + 1))
        b_band = Signal(_range(Ho))
        b_head = Signal(_range(nslots))
        with m.If(adv):
            m.d.sync += [
                b_valid.eq(issue), b_shift.eq(shift), b_rowstart.eq(x == 0),
                b_xoff.eq(xoff_now), b_yoff.eq(yoff), b_band.eq(band), b_head.eq(head),
            ]

        rdata = []
        for p in range(nslots):
            mem = Memory(shape=entry, depth=Wo, init=[])
            m.submodules[f"row{p}"] = mem
            wr = mem.write_port()
            rd = mem.read_port()
            m.d.comb += [wr.addr.eq(wcol), wr.data.err.eq(self.i.payload),
                         wr.data.arg.eq(self.arg.payload), wr.en.eq(take & (wslot == p))]
            m.d.comb += [rd.addr.eq(ccol), rd.en.eq(adv)]
            rdata.append(rd.data)

        # ---- stage B: slide the column windows, sum the matching errors ------------------------
        win = [[Signal(entry, name=f"win{i}_{j}") for j in range(ncol)] for i in range(n)]
        win_ok = [Signal(ncol, name=f"win_ok{i}") for i in range(n)]
        windows = []  # per pooled row: the column window this pixel sees, and its valid bits
        out_word = Signal(vec)
        for i in range(n):
            slot = Signal(_range(nslots), name=f"slot{i}")
            if i == 0:
                m.d.comb += slot.eq(b_head)
            else:
                m.d.comb += slot.eq(Mux(b_head >= i, b_head - i, b_head + nslots - i))
            fetched = Signal(entry, name=f"fetched{i}")
            with m.Switch(slot):
                for p in range(nslots - 1):
                    with m.Case(p):
                        m.d.comb += fetched.eq(rdata[p])
                with m.Default():  # slot nslots - 1 (full case: no latch-like incomplete case)
                    m.d.comb += fetched.eq(rdata[nslots - 1])
            cur = [Signal(entry, name=f"cur{i}_{j}") for j in range(ncol)]
            cur_ok = Signal(ncol, name=f"cur_ok{i}")
            with m.If(b_shift):
                m.d.comb += cur[0].eq(fetched)
                for j in range(1, ncol):
                    m.d.comb += cur[j].eq(win[i][j - 1])
                m.d.comb += cur_ok.eq(Mux(b_rowstart, 1, Cat(1, win_ok[i][:ncol - 1])))
            with m.Else():
                for j in range(ncol):
                    m.d.comb += cur[j].eq(win[i][j])
                m.d.comb += cur_ok.eq(win_ok[i])
            with m.If(adv & b_valid):
                m.d.sync += [win[i][j].eq(cur[j]) for j in range(ncol)]
                m.d.sync += win_ok[i].eq(cur_ok)
            windows.append((cur, cur_ok))

        ovf_flags = []
        for lane in range(lanes):
            terms = []
            for i in range(n):
                cur, cur_ok = windows[i]
                row_ok = (b_band >= i) if i else Const(1, 1)
                ky = b_yoff + i * S
                for j in range(ncol):
                    kx = b_xoff + j * S
                    # ky < K is implied by the index comparison (kept for clarity); kx < K is
                    # needed: ky * K + kx with kx >= K would alias a pixel of the next window row
                    hit = (row_ok & cur_ok[j] & (ky < K) & (kx < K)
                           & (cur[j].arg[lane] == ky * K + kx))
                    terms.append(Mux(hit, cur[j].err[lane], 0))
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            value, overflow = saturate(total, self._fmt.width)
            m.d.comb += out_word[lane].eq(value)
            ovf_flags.append(overflow)

        m.submodules.overflow_counter = counter = OverflowCounter(inputs=lanes)
        with m.If(adv):
            m.d.sync += self.o.valid.eq(b_valid)
            with m.If(b_valid):
                m.d.sync += self.o.payload.eq(out_word)
        m.d.comb += [
            counter.inc.eq(Cat(*ovf_flags) & (adv & b_valid).replicate(lanes)),
            self.overflows.eq(counter.count),
        ]
        return m
