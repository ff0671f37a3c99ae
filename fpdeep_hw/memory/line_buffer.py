"""Line buffer: a raster pixel stream in, ``K x K`` windows (padded, strided, dilated) out.

Golden model: :mod:`sim.golden.line_buffer`. Test: ``tests/hw/test_line_buffer.py``.
Dataflow and port contract: ``docs/hw-compute.md``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, Const, Mux, Shape, signed
from amaranth.lib import wiring, stream, data
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sim.golden.line_buffer import Geometry, eb_geometry, normalize_pad

from ..wide import Lanes, join, lane_runs

__all__ = ["LineBuffer", "LineBufferRuns"]


def _check_int(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TypeError(f"Line buffer {name} must be an integer >= {minimum}, not {value!r}")


class LineBuffer(wiring.Component):
    """``K`` rows of a feature map for ``S`` channels, emitting ``K x K`` windows in raster order.

    The block scans the *virtual map* -- the input map with ``dilation - 1`` zeros inserted
    between pixels (EB's zero insertion) and zero padding ``(top, left, bottom, right)`` around
    it -- one position per cycle, in raster order. At a position that holds an input pixel it
    takes one word from ``i``; at a zero position it takes nothing. Each position whose window
    (``K x K`` positions ending there, on the stride grid) is complete yields one word on ``o``.
    Images follow each other without a gap: after the last virtual position the scan restarts.

    Storage: the ``K - 1`` previous virtual rows live in one :class:`~amaranth.lib.memory.Memory`
    of ``width`` rows (one per *input* column; padding and inserted zero columns take no storage),
    each row holding ``K - 1`` pixels of ``S`` values -- a cascade: reading column ``x`` gives rows
    ``y-1 .. y-K+1`` and the same column is written back shifted by one row with the new pixel
    in front. The read port is synchronous and non-transparent (block RAM). Only the window is in
    flip-flops (``K x K x S``; with channel groups a reset-less column chain, see below).

    Channel groups (``groups = G``): a pixel of ``G * S`` channels arrives as ``G`` consecutive
    words of ``S`` channels (group 0 first) and every window position yields ``G`` windows, one
    per group, in group order -- the order in which a CE array of ``S`` tiles accumulates over
    input-channel groups (EB: ``G = OC / P`` groups of ``P`` error channels). The scan then takes
    ``G`` steps per virtual position; the rows hold all ``G`` groups (``width * G`` memory words)
    and the window is a chain of ``(K - 1) * G + 1`` columns with a tap every ``G`` columns.

    Repeat (``repeat = R``): each window is offered ``R`` times in a row on ``o`` (FP and PG with
    ``OC = R * P`` output channels: the same window meets ``R`` weight sets). Groups and repeat
    cannot be combined (a single accumulator per engine needs all groups of one output group
    before the next output group, i.e. the whole group sequence replayed, not each window).

    Timing: ``o.valid`` rises :attr:`latency` (= 2) cycles after the scan step of a window's
    last position (for a window ending on an input pixel: after the cycle that pixel's word was
    transferred). Without stalls the scan takes one cycle per virtual position (and group), so an
    image takes ``vheight * vwidth * groups`` cycles and windows leave one per cycle along an
    output row at stride 1 (``K - 1`` start-up columns per row and the strided positions in
    between emit nothing); with ``repeat = R`` each window occupies ``o`` for ``R`` cycles.

    Parameters
    ----------
    height, width : int
        Size of the streamed map.
    channels : int
        ``S``: channel values per input word and per window.
    k : int
        Window size ``K``.
    stride : int
        Window step in the virtual map.
    pad : int or (top, left, bottom, right)
        Zero padding.
    dilation : int
        Zero insertion factor (``stride`` of the forward layer for EB), 1 for none.
    flip : bool
        Emit windows rotated by 180 degrees (EB: convolve with the unflipped kernels).
    groups : int
        ``G``: words (channel groups of ``S``) per pixel; ``G`` windows per position.
    repeat : int
        ``R``: transfers of each window on ``o``.
    shape : shape-like
        Shape of one channel value (default ``signed(16)``).

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(shape, channels)))``
        Pixels in raster order (``groups`` words per pixel).
    o : ``Out(stream.Signature(ArrayLayout(ArrayLayout(ArrayLayout(shape, k), k), channels)))``
        Windows ``o.payload[s][ky][kx]`` in raster order of the output map.
    """

    latency = 2

    def __init__(self, *, height, width, channels, k, stride=1, pad=0, dilation=1, flip=False,
                 groups=1, repeat=1, shape=signed(16), src_loc_at=0):
        _check_int("height", height, 1)
        _check_int("width", width, 1)
        _check_int("channel count", channels, 1)
        _check_int("kernel size", k, 1)
        _check_int("stride", stride, 1)
        _check_int("dilation", dilation, 1)
        _check_int("group count", groups, 1)
        _check_int("repeat count", repeat, 1)
        if groups > 1 and repeat > 1:
            raise ValueError(f"Line buffer cannot both group channels and repeat windows "
                             f"(groups={groups}, repeat={repeat})")
        if isinstance(pad, int) and not isinstance(pad, bool):
            pad = normalize_pad(pad)
        elif isinstance(pad, list):
            pad = tuple(pad)
        if (not isinstance(pad, tuple) or len(pad) != 4 or
                not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pad)):
            raise TypeError(f"Line buffer padding must be a non-negative integer or a 4-tuple of them, "
                            f"not {pad!r}")
        self._geom = Geometry(height, width, k, stride=stride, pad=pad, dilation=dilation)
        g = self._geom
        if g.vheight < k or g.vwidth < k:
            raise ValueError(f"Line buffer window {k}x{k} does not fit the padded map "
                             f"{g.vheight}x{g.vwidth}")
        self._channels = channels
        self._groups, self._repeat = groups, repeat
        self._flip = bool(flip)
        self._shape = shape
        self._pixel = data.ArrayLayout(shape, channels)
        self._window = data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(shape, k), k), channels)
        super().__init__({
            "i": In(stream.Signature(self._pixel)),
            "o": Out(stream.Signature(self._window)),
        }, src_loc_at=1 + src_loc_at)

    @classmethod
    def transposed(cls, *, height, width, channels, k, stride=1, pad=0, groups=1,
                   shape=signed(16)):
        """EB's arrangement for a forward layer on a ``height x width`` map (see module docs).

        The stream is the layer's *output error* map (``out_height x out_width`` of the forward
        layer); the windows are zero-inserted by ``stride``, padded by ``k - 1 - pad`` (plus the
        remainder rows/columns bottom/right) and flipped; ``height * width`` window positions per
        map. ``channels`` error channels per word (``P``), ``groups`` words per pixel (``OC / P``).
        """
        g = eb_geometry(height, width, k, stride, pad)
        return cls(channels=channels, flip=True, groups=groups, shape=shape, src_loc_at=1,
                   **g.as_kwargs())

    # read-only parameters
    geometry = property(lambda self: self._geom)
    height = property(lambda self: self._geom.height)
    width = property(lambda self: self._geom.width)
    k = property(lambda self: self._geom.k)
    stride = property(lambda self: self._geom.stride)
    pad = property(lambda self: self._geom.pad)
    dilation = property(lambda self: self._geom.dilation)
    channels = property(lambda self: self._channels)
    groups = property(lambda self: self._groups)
    repeat = property(lambda self: self._repeat)
    flip = property(lambda self: self._flip)
    out_height = property(lambda self: self._geom.out_height)
    out_width = property(lambda self: self._geom.out_width)

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        K, H, W, S, d, st = g.k, g.height, g.width, self._channels, g.dilation, g.stride
        G, R = self._groups, self._repeat
        pt, pl, pb, pr = g.pad
        Hv, Wv = g.vheight, g.vwidth

        def counter(n, name):
            # a residue counter modulo n; constant 0 (no register) when n == 1
            return Signal(range(n), name=name) if n > 1 else Const(0, 1)

        def step(m, ctr, n):
            if n > 1:
                m.d.sync += ctr.eq(Mux(ctr == n - 1, 0, ctr + 1))

        def clear(m, *ctrs):
            m.d.sync += [c.eq(0) for c in ctrs if isinstance(c, Signal)]

        def ge(sig, c):
            # ``sig >= c`` without a constant-true comparison in the Verilog (lint)
            return sig >= c if c > 0 else Const(1, 1)

        # --- stage S0: scan step (vy, vx, group) of the virtual map ---
        grp = counter(G, "grp")        # channel group of this step
        vx = Signal(range(Wv))
        xd = counter(d, "xd")          # (vx - pl) mod dilation, 0 left of the map
        cx = Signal(range(W + 1))      # input columns passed in this row
        xs = counter(st, "xs")         # (vx - K + 1) mod stride, 0 before K - 1
        vy = Signal(range(Hv))
        yd = counter(d, "yd")
        ry = Signal(range(H + 1))
        ys = counter(st, "ys")
        depth = max(W * G, 2)          # memory words: one per input column and group
        addr = Signal(range(depth)) if G > 1 else cx   # = cx * G + grp

        real_x = ge(vx, pl) & (xd == 0) & (cx < W)
        real_y = ge(vy, pt) & (yd == 0) & (ry < H)
        real = real_x & real_y
        emit = ge(vx, K - 1) & (xs == 0) & ge(vy, K - 1) & (ys == 0)

        # --- stage S1: memory read data of the scanned column + the new pixel ---
        s1_valid = Signal()
        s1_real_x = Signal()
        s1_emit = Signal()
        s1_addr = Signal(range(depth))
        s1_pixel = Signal(self._pixel)

        # --- stage W: a chain of (K-1)*G + 1 columns, [0] newest; the window taps every G ---
        chain = [[Signal(self._pixel, name=f"col{c}_{ky}", reset_less=True) for ky in range(K)]
                 for c in range((K - 1) * G + 1)]

        rep = counter(R, "rep")        # transfers of the current window so far
        if R > 1:
            advance = ~self.o.valid | (self.o.ready & (rep == R - 1))
            with m.If(self.o.valid & self.o.ready):
                step(m, rep, R)
        else:
            advance = ~self.o.valid | self.o.ready
        fire = advance & (~real | self.i.valid)
        m.d.comb += self.i.ready.eq(advance & real)

        with m.If(fire):
            if G > 1:
                with m.If(real_x):
                    m.d.sync += addr.eq(addr + 1)
            with m.If(grp == G - 1):
                clear(m, grp)
                with m.If(vx == Wv - 1):
                    clear(m, vx, xd, cx, xs)
                    if G > 1:
                        m.d.sync += addr.eq(0)
                    with m.If(vy == Hv - 1):
                        clear(m, vy, yd, ry, ys)
                    with m.Else():
                        m.d.sync += vy.eq(vy + 1)
                        with m.If(ge(vy, pt)):
                            step(m, yd, d)
                        with m.If(real_y):
                            m.d.sync += ry.eq(ry + 1)
                        with m.If(ge(vy, K - 1)):
                            step(m, ys, st)
                with m.Else():
                    m.d.sync += vx.eq(vx + 1)
                    with m.If(ge(vx, pl)):
                        step(m, xd, d)
                    with m.If(real_x):
                        m.d.sync += cx.eq(cx + 1)
                    with m.If(ge(vx, K - 1)):
                        step(m, xs, st)
            with m.Else():
                step(m, grp, G)

        with m.If(advance):
            m.d.sync += s1_valid.eq(fire)
        with m.If(fire):
            m.d.sync += [
                s1_real_x.eq(real_x),
                s1_emit.eq(emit),
                s1_addr.eq(addr),
                s1_pixel.eq(Mux(real, self.i.payload, 0)),
            ]

        # column entering the chain, top (oldest row) to bottom (row being scanned)
        column = [Signal(self._pixel, name=f"col_{r}") for r in range(K)]
        m.d.comb += column[K - 1].eq(Mux(s1_real_x, s1_pixel, 0))
        if K > 1:
            rows_layout = data.ArrayLayout(self._pixel, K - 1)   # [0] = newest row
            m.submodules.rows = rows = Memory(shape=rows_layout, depth=depth, init=[])
            rd = rows.read_port()               # synchronous, non-transparent
            wr = rows.write_port()
            # No read/write collision: a word is written one step after its read, and two
            # consecutive scan steps never read the same word (the map is at least K wide, so a
            # 1-column map has K - 1 >= 1 padding columns between its rows).
            m.d.comb += [
                rd.addr.eq(addr),
                rd.en.eq(fire & real_x),
                wr.addr.eq(s1_addr),
                wr.en.eq(advance & s1_valid & s1_real_x),
                wr.data[0].eq(s1_pixel),
            ]
            for j in range(1, K - 1):
                m.d.comb += wr.data[j].eq(rd.data[j - 1])
            for r in range(K - 1):
                m.d.comb += column[r].eq(Mux(s1_real_x, rd.data[K - 2 - r], 0))

        with m.If(advance):
            m.d.sync += self.o.valid.eq(s1_valid & s1_emit)
            with m.If(s1_valid):
                for c in range(len(chain) - 1, 0, -1):
                    for ky in range(K):
                        m.d.sync += chain[c][ky].eq(chain[c - 1][ky])
                for ky in range(K):
                    m.d.sync += chain[0][ky].eq(column[ky])

        def window(ky, kx):             # natural orientation, kx = K - 1 newest
            return chain[(K - 1 - kx) * G][ky]

        # one statement for the whole window (element [s][ky][kx], s outermost): see wide.py
        w = Shape.cast(self._shape).width
        m.d.comb += self.o.payload.eq(join(
            ((window(K - 1 - ky, K - 1 - kx) if self._flip else window(ky, kx))[s_]
             for s_ in range(S) for ky in range(K) for kx in range(K)), w))
        return m


class LineBufferRuns:
    """One line buffer's windows held by several :class:`LineBuffer` s, each over a run of the
    pixel's lanes, where a window of all lanes is wider than one value can be
    (:data:`~fpdeep_hw.wide.MAX_VALUE_BITS`: VGG-16's 512-lane 3 x 3 windows of 16 bits).

    ``make(channels)`` builds one line buffer (the same geometry for every run, ``k x k``
    windows of ``width``-bit elements). They are added
    to ``m`` as ``name`` (one run: the same circuit as one line buffer) or ``name0``, ``name1``...
    Every run's line buffer gets the same ``i.valid`` and ``o.ready`` (:attr:`o_ready`, a signal
    for the caller to drive); having the same geometry and the same control inputs, they step
    in lockstep, so ``i_ready`` and ``o_valid`` are the first one's. :attr:`window` reads lane
    ``c`` of the window (``window[c][ky][kx]``).
    """

    def __init__(self, m, name, *, channels, k, width, make):
        self.runs = lane_runs(channels, k * k * width)
        self.parts = [make(hi - lo) for lo, hi in self.runs]
        for j, lb in enumerate(self.parts):
            m.submodules[name if len(self.parts) == 1 else f"{name}{j}"] = lb
        self.i_ready = self.parts[0].i.ready
        self.o_valid = self.parts[0].o.valid
        self.o_ready = Signal(name=f"{name}_o_ready")
        m.d.comb += [lb.o.ready.eq(self.o_ready) for lb in self.parts]
        self.window = Lanes((lo, lb.o.payload) for (lo, _), lb in zip(self.runs, self.parts))

    def connect_input(self, m, valid, pixel):
        """Drive every run's ``i`` from ``valid`` and the lanes of ``pixel`` (an array view)."""
        raw = pixel.as_value()
        w = len(raw) // len(pixel)
        for (lo, hi), lb in zip(self.runs, self.parts):
            m.d.comb += [lb.i.valid.eq(valid), lb.i.payload.eq(raw[lo * w:hi * w])]
