"""PG module of one layer: weight gradients per image, accumulated over a mini-batch (paper 5.5).

The layer's input activations, replayed from its Act-RAM, pass through a line buffer with the FP
geometry; each window meets the output errors of its position (the ``K x K`` decomposition of
the large gradient convolution, ``docs/hw-compute.md``). ``P x S`` tiles of ``K x K``
multipliers form ``window[s] * E[p]`` and add it into a per-image accumulator memory
(read-modify-write, exact). When an image is complete its gradients are requantised to the
gradient format and added into the layer's :class:`~fpdeep_hw.memory.grad_buffer.LGB`; at the end
of a mini-batch the LGB hands the averages to the weight update (``grad``).

Golden model: :mod:`sim.golden.layers` (``conv_pg``, ``fc_pg``) and
:mod:`sim.golden.grad_buffer`. Test: ``tests/hw/test_pg_layer.py``.
"""

from __future__ import annotations

import math

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from fpdeep_map.numerics import NumericsConfig
from sim.golden.line_buffer import Geometry

from ..memory.grad_buffer import LGB, _count_flags
from ..memory.line_buffer import LineBuffer
from ..numerics import requantize, saturating_add

__all__ = ["PGLayer"]


def _pos_int(name, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"PGLayer {name} must be a {kind} integer, not {value!r}")


class PGLayer(wiring.Component):
    """Parameter-gradient module of one layer segment.

    Built from one plan segment (``engines.pg``: ``P`` output-channel lanes, ``S`` input-channel
    lanes, kernel ``K``; ``in_channels``/``out_channels``), the shape of the activations it
    streams and the plan's numerics. ``IC`` input channels make ``Gc = ceil(IC / S)`` channel
    groups, ``OC`` output channels ``Go = ceil(OC / P)`` error groups.

    Dataflow per image (conv):

    - ``a``: activations ``H x W``, raster order, ``Gc`` words of ``S`` lanes per pixel (group 0
      first; lanes past ``IC`` are ignored);
    - ``e``: errors ``E_out`` of the layer's output (after pool/ReLU backward), ``Ho x Wo`` raster
      order, ``Go`` words of ``P`` lanes per position (lanes past ``OC`` ignored);
    - a :class:`LineBuffer` (FP geometry, ``groups=Gc``) makes ``Gc`` windows per position; a
      window FIFO after it lets the scan run ahead over padding while a window is used;
    - per position, for each channel group ``gc`` (window) and each error group ``go``: one
      cycle of the ``P x S x K x K`` multipliers: ``acc[go, gc][p][s][ky][kx] += window[s][ky][kx]
      * E[go*P + p]``; the first position of an image writes the product instead of adding (no
      clearing pass). The accumulator memory has ``2 * Go * Gc`` words of ``P x S x K x K``
      signed ``acc_width`` accumulators (one bank per element), two halves used by alternate
      images, so one image's accumulation overlaps the previous image's drain;
    - drain of a finished image: each word gives ``P`` gradient sets, requantised
      (``error.frac + activation.frac`` -> ``gradient``), sent to the LGB one per cycle at address
      ``oc * Gc + gc`` (``oc = go * P + p < OC``: the LPRAM's weight-set address), with
      ``batch_done`` on the last word of the last image of each mini-batch of ``batch``.

    FC segments (``kind: fc``, kernel 1): the activations are the ``Gc`` words of one image in
    arrival order (pixel by pixel of the ``C x H x W`` input, ``ceil(C / S)`` words per pixel),
    the errors ``Go`` words; there is no line buffer: every word is its own ``1 x 1`` window,
    ``g[o][word j][s] = E[o] * a_j[s]`` at LGB address ``o * Gc + j`` (so the LPRAM holds
    the FC weights in arrival order: set ``o * Gc + j``, lane ``s`` is feature
    ``c * H * W + y * W + x`` of pixel ``(y, x)``, channel ``c = (j mod ceil(C/S)) * S + s``).

    Rounding and saturation follow ``docs/training-spec.md``: per-image sums exact (saturating at
    ``acc_width``, counted in ``acc_overflow``), one requantisation to the gradient format
    (``out_overflow``), the LGB's saturating accumulation and averaging (``lgb_acc_overflow``,
    ``lgb_out_overflow``).

    Timing: :attr:`latency` = ``Go * Gc + 7`` cycles from the image's last ``e`` word to its
    first gradient word offered to the LGB when that word is the last input the image waits for.
    Throughput: one multiply step per cycle while windows and errors are available; the drain of
    an image (``OC * Gc`` LGB words, one per cycle) overlaps the next image's accumulation (two
    accumulator halves), so it costs nothing when ``P <= positions``; ``busy_cycles`` counts the
    multiply steps (CE utilisation = steps / cycles).

    Parameters
    ----------
    segment : fpdeep_map.plan.SegmentPlan
        The layer's plan segment (``kind``, ``in_channels``, ``out_channels``, ``engines['pg']``).
    in_shape : (C, H, W)
        Shape of the activations as they stream (for FC: the previous layer's output map).
    stride, pad : int
        Convolution stride and padding (conv only; FC: 1 and 0).
    numerics : NumericsConfig
    batch : int
        Mini-batch size ``B``.
    fifo_depth : int, optional
        Window FIFO depth (conv); default: enough for the longest run of scan steps without a
        window (image boundary, padding rows) at full multiply rate.

    Members
    -------
    a : ``In(stream.Signature(ArrayLayout(signed(activation.width), S)))``
    e : ``In(stream.Signature(ArrayLayout(signed(error.width), P)))``
    grad : ``Out(stream.Signature(LGB.out_layout))``
        Averaged gradients of each mini-batch, ``{addr, data, last}`` (``data``: ``S x K x K``).
    pg_done : ``Out(1)``
        One-cycle strobe: an image's gradients have all entered the LGB (the version gate's PG).
    busy_cycles : ``Out(32)``
        Cycles in which the multipliers worked (one ``P x S x K x K`` product step).
    acc_overflow, out_overflow, lgb_acc_overflow, lgb_out_overflow : ``Out(32)``
        Saturating counts of clamped elements.
    """

    def __init__(self, *, segment, in_shape, stride=1, pad=0, numerics, batch, fifo_depth=None,
                 src_loc_at=0):
        if not isinstance(numerics, NumericsConfig):
            raise TypeError(f"PGLayer numerics must be a NumericsConfig, not {numerics!r}")
        if getattr(segment, "kind", None) not in ("conv", "fc"):
            raise ValueError(f"PGLayer segment must be a conv or fc plan segment, not {segment!r}")
        if "pg" not in segment.engines:
            raise ValueError(f"PGLayer segment {segment.layer} has no PG engines")
        pg = segment.engines["pg"]
        if (not isinstance(in_shape, (tuple, list)) or len(in_shape) != 3
                or not all(isinstance(v, int) and v >= 1 for v in in_shape)):
            raise ValueError(f"PGLayer input shape must be (C, H, W) of positive integers, "
                             f"not {in_shape!r}")
        _pos_int("stride", stride)
        _pos_int("padding", pad, 0)
        _pos_int("batch", batch)
        self._kind = segment.kind
        self._k = pg.kernel
        self._p, self._s = pg.p, pg.s
        ic = segment.in_channels[1] - segment.in_channels[0]
        oc = segment.out_channels[1] - segment.out_channels[0]
        c, h, w = in_shape
        if self._kind == "conv":
            if c != ic:
                raise ValueError(f"PGLayer input shape has {c} channels, the segment reads {ic}")
            self._gpix = -(-ic // self._s)
            self._gc = self._gpix
        else:
            if self._k != 1 or stride != 1 or pad != 0:
                raise ValueError("PGLayer FC segment must have kernel 1, stride 1 and padding 0")
            if c * h * w != ic:
                raise ValueError(f"PGLayer input shape {tuple(in_shape)} has {c * h * w} "
                                 f"features, the FC segment reads {ic}")
            self._gpix = -(-c // self._s)
            self._gc = self._gpix * h * w
        self._in_shape = tuple(in_shape)
        self._ic, self._oc, self._c = ic, oc, c
        self._go = -(-oc // self._p)
        self._stride, self._pad = stride, pad
        self._numerics = numerics
        self._batch = batch
        self._name = segment.layer
        n = numerics
        act, err = n.activation, n.error
        if self._kind == "conv":
            self._geom = Geometry(h, w, self._k, stride=stride, pad=pad)
            if self._geom.vheight < self._k or self._geom.vwidth < self._k:
                raise ValueError(f"PGLayer window {self._k}x{self._k} does not fit the padded "
                                 f"map {self._geom.vheight}x{self._geom.vwidth}")
            self._positions = self._geom.out_height * self._geom.out_width
            if fifo_depth is None:
                fifo_depth = self._default_fifo_depth()
            _pos_int("FIFO depth", fifo_depth)
        else:
            self._geom = None
            self._positions = 1
            fifo_depth = 0
        self._fifo_depth = fifo_depth
        self._lgb_depth = oc * self._gc
        self._lgb = None                      # the LGB and line buffer of the last elaboration
        self._lb = None
        grad_set = data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(
            signed(n.gradient.width), self._k), self._k), self._s)
        grad_layout = data.StructLayout({"addr": range(max(self._lgb_depth, 2)),
                                         "data": grad_set, "last": 1})
        super().__init__({
            "a": In(stream.Signature(data.ArrayLayout(signed(act.width), self._s))),
            "e": In(stream.Signature(data.ArrayLayout(signed(err.width), self._p))),
            "grad": Out(stream.Signature(grad_layout)),
            "pg_done": Out(1),
            "busy_cycles": Out(32),
            "acc_overflow": Out(32), "out_overflow": Out(32),
            "lgb_acc_overflow": Out(32), "lgb_out_overflow": Out(32),
        }, src_loc_at=1 + src_loc_at)

    @classmethod
    def from_plan(cls, plan, network, layer, *, node=0, **kwargs):
        """Build the PG module of ``layer`` from the plan segment on ``node`` and the network's
        shapes (the FC input map is the output of the layer before it)."""
        seg = next(s for s in plan.node_plans[node].segments if s.layer == layer)
        layers = network.layers
        idx = next(i for i, lay in enumerate(layers) if lay.name == layer)
        lay = layers[idx]
        if seg.kind == "fc":
            in_shape = tuple(layers[idx - 1].out_shape) if idx else tuple(network.input_shape)
            return cls(segment=seg, in_shape=in_shape, numerics=plan.numerics,
                       batch=plan.batch, src_loc_at=1, **kwargs)
        return cls(segment=seg, in_shape=tuple(lay.in_shape), stride=lay.stride,
                   pad=lay.padding, numerics=plan.numerics, batch=plan.batch, src_loc_at=1,
                   **kwargs)

    # read-only parameters
    kind = property(lambda self: self._kind)
    kernel = property(lambda self: self._k)
    p = property(lambda self: self._p)
    s = property(lambda self: self._s)
    in_channels = property(lambda self: self._ic)
    out_channels = property(lambda self: self._oc)
    channel_groups = property(lambda self: self._gc)
    error_groups = property(lambda self: self._go)
    positions = property(lambda self: self._positions)
    batch = property(lambda self: self._batch)
    fifo_depth = property(lambda self: self._fifo_depth)
    lgb_depth = property(lambda self: self._lgb_depth)
    out_height = property(lambda self: self._geom.out_height if self._geom else 1)
    out_width = property(lambda self: self._geom.out_width if self._geom else 1)

    @property
    def lgb(self):
        """The :class:`LGB` of the last elaboration (for monitoring in simulation)."""
        return self._lgb

    @property
    def steps_per_image(self):
        """Multiply cycles per image: ``positions * Gc * Go`` (the ideal cycles per image)."""
        return self._positions * self._gc * self._go

    @property
    def latency(self):
        """Cycles from the transfer of an image's last ``e`` word to its first gradient word
        valid at the LGB input, when that word is the last input the image waits for (its
        windows in the FIFO, the previous position finished, the other half drained):
        ``Go * Gc + 7`` (the error registers swap, ``Go * Gc`` multiply steps, two pipeline
        stages to the write-back, the drain start, the read and the output register)."""
        return self._go * self._gc + 7

    def _default_fifo_depth(self):
        g = self._geom
        k, st = g.k, g.stride
        ends = set()
        for oy in range(g.out_height):
            for ox in range(g.out_width):
                ends.add((oy * st + k - 1) * g.vwidth + ox * st + k - 1)
        total = g.vheight * g.vwidth
        ordered = sorted(ends)
        gaps = [b - a - 1 for a, b in zip(ordered, ordered[1:])]
        gaps.append(total - ordered[-1] - 1 + ordered[0])       # across the image boundary
        gap = max(gaps) * self._gc                              # scan steps without a window
        return max(2, math.ceil(gap / (self._gc * self._go)) + 2) * self._gc

    def elaborate(self, platform):
        m = Module()
        n = self._numerics
        P, S, K = self._p, self._s, self._k
        Gc, Go, Gpix = self._gc, self._go, self._gpix
        N = Gc * Go
        aw, ew, accw = n.activation.width, n.error.width, n.acc_width
        win_layout = data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(signed(aw), K), K), S)
        self._lgb = lgb = LGB(in_fmt=n.gradient, out_fmt=n.gradient,
                              acc_width=n.grad_acc_width, kernel=K, lanes=S,
                              depth=self._lgb_depth, batch=self._batch)
        m.submodules.lgb = lgb
        wiring.connect(m, lgb.o, wiring.flipped(self.grad))
        m.d.comb += [self.lgb_acc_overflow.eq(lgb.acc_overflow),
                     self.lgb_out_overflow.eq(lgb.out_overflow)]

        # -- window source ----------------------------------------------------------------------
        src_valid = Signal()
        src_ready = Signal()
        src_win = Signal(win_layout)
        if self._kind == "conv":
            c, h, w = self._in_shape
            self._lb = lb = LineBuffer(height=h, width=w, channels=S, k=K, stride=self._stride,
                                       pad=self._pad, groups=Gc, shape=signed(aw))
            m.submodules.lb = lb
            wiring.connect(m, wiring.flipped(self.a), lb.i)
            m.submodules.fifo = fifo = SyncFIFOBuffered(width=win_layout.size,
                                                        depth=self._fifo_depth)
            m.d.comb += [
                fifo.w_data.eq(lb.o.payload.as_value()),
                fifo.w_en.eq(lb.o.valid),
                lb.o.ready.eq(fifo.w_rdy),
                src_valid.eq(fifo.r_rdy),
                src_win.eq(fifo.r_data),
                fifo.r_en.eq(src_ready),
            ]
        else:
            m.d.comb += [
                src_valid.eq(self.a.valid),
                self.a.ready.eq(src_ready),
            ]
            for s in range(S):
                m.d.comb += src_win[s][0][0].eq(self.a.payload[s])

        # -- error registers: the next position's words are collected while one is used --------
        e_next = Signal(data.ArrayLayout(data.ArrayLayout(signed(ew), P), Go))
        e_cur = Signal(data.ArrayLayout(data.ArrayLayout(signed(ew), P), Go))
        e_cnt = Signal(range(max(Go, 2)))
        e_full = Signal()
        cur_valid = Signal()
        swap = Signal()
        release = Signal()                    # the current position's last step issues
        m.d.comb += [
            swap.eq(e_full & (~cur_valid | release)),
            self.e.ready.eq(~e_full | swap),
        ]
        with m.If(swap):
            m.d.sync += [e_cur.eq(e_next), cur_valid.eq(1), e_full.eq(0)]
        with m.Elif(release):
            m.d.sync += cur_valid.eq(0)
        with m.If(self.e.valid & self.e.ready):
            with m.Switch(e_cnt):
                for g in range(Go):
                    with (m.Case(g) if g < Go - 1 else m.Default()):
                        m.d.sync += e_next[g].eq(self.e.payload)
            m.d.sync += [
                e_cnt.eq(Mux(e_cnt == Go - 1, 0, e_cnt + 1)),
                e_full.eq(e_cnt == Go - 1),
            ]

        # -- issue (stage 0) ----------------------------------------------------------------------
        go = Signal(range(max(Go, 2)))
        gc = Signal(range(max(Gc, 2)))
        gp = Signal(range(max(Gpix, 2)))      # channel group within the pixel (lane mask)
        pos = Signal(range(max(self._positions, 2)))
        half = Signal()
        busy = Signal(2)                      # half in use (first issue .. end of its drain)
        done = Signal(2)                      # half's image complete
        first_pos = pos == 0
        last_step = (go == Go - 1) & (gc == Gc - 1)
        last_img = last_step & (pos == self._positions - 1)
        half_free = Signal()
        m.d.comb += half_free.eq(~first_pos | (go != 0) | (gc != 0) | ~busy.bit_select(half, 1))
        issue = Signal()
        m.d.comb += [
            issue.eq(src_valid & cur_valid & half_free),
            src_ready.eq(issue & (go == Go - 1)),
            release.eq(issue & last_step),
        ]
        with m.If(issue):
            m.d.sync += [
                go.eq(Mux(go == Go - 1, 0, go + 1)),
                self.busy_cycles.eq(Mux(self.busy_cycles == 2**32 - 1, self.busy_cycles,
                                        self.busy_cycles + 1)),
            ]
            with m.If(go == Go - 1):
                m.d.sync += [gc.eq(Mux(gc == Gc - 1, 0, gc + 1)),
                             gp.eq(Mux(gp == Gpix - 1, 0, gp + 1))]
                with m.If(gc == Gc - 1):
                    m.d.sync += pos.eq(Mux(pos == self._positions - 1, 0, pos + 1))
                    with m.If(pos == self._positions - 1):
                        m.d.sync += half.eq(~half)

        banks = [(p, s, ky, kx) for p in range(P) for s in range(S)
                 for ky in range(K) for kx in range(K)]
        nb = len(banks)
        depth = 2 * N
        acc_layout = data.ArrayLayout(signed(accw), nb)
        addr0 = Signal(range(depth))
        m.d.comb += addr0.eq(Mux(half, N, 0) + gc * Go + go)

        # drain-side read port signals (declared here, driven below)
        d_addr = Signal(range(depth))
        d_en = Signal()
        rd_acc = Signal(acc_layout)           # stage-1 read data (accumulate port)
        rd_drain = Signal(acc_layout)         # drain read data
        w_addr = Signal(range(depth))
        w_en = Signal()
        w_data = Signal(acc_layout)
        for k in range(nb):
            bank = Memory(shape=signed(accw), depth=depth, init=[])
            m.submodules[f"acc_{k}"] = bank
            wp = bank.write_port()
            rp = bank.read_port()
            dp = bank.read_port()
            m.d.comb += [
                wp.addr.eq(w_addr), wp.data.eq(w_data[k]), wp.en.eq(w_en),
                rp.addr.eq(addr0), rp.en.eq(1), rd_acc[k].eq(rp.data),
                dp.addr.eq(d_addr), dp.en.eq(d_en), rd_drain[k].eq(dp.data),
            ]

        # -- stage 1: operands registered; stage 2: products and old values ----------------------
        s1_valid = Signal()
        s1_addr = Signal(range(depth))
        s1_first = Signal()
        s1_last = Signal()
        s1_half = Signal()
        s1_win = Signal(win_layout)
        s1_err = Signal(data.ArrayLayout(signed(ew), P))
        m.d.sync += [
            s1_valid.eq(issue), s1_addr.eq(addr0), s1_first.eq(first_pos),
            s1_last.eq(last_img), s1_half.eq(half),
        ]
        with m.Switch(go):
            for g in range(Go):
                with (m.Case(g) if g < Go - 1 else m.Default()):
                    m.d.sync += s1_err.eq(e_cur[g])
        # lanes past the input channels (last channel group of a pixel) multiply by zero
        valid_last = self._c - (Gpix - 1) * S
        for s in range(S):
            lane_ok = (gp != Gpix - 1) | (s < valid_last) if valid_last < S else 1
            for ky in range(K):
                for kx in range(K):
                    m.d.sync += s1_win[s][ky][kx].eq(Mux(lane_ok, src_win[s][ky][kx], 0))

        s2_valid = Signal()
        s2_addr = Signal(range(depth))
        s2_first = Signal()
        s2_last = Signal()
        s2_half = Signal()
        s2_prod = Signal(data.ArrayLayout(signed(aw + ew), nb))
        s2_old = Signal(acc_layout)
        # forwarding: the write happening now (stage 2) and the one of the previous cycle
        wb_valid = Signal()
        wb_addr = Signal(range(depth))
        wb_data = Signal(acc_layout)
        hit2 = s2_valid & (s2_addr == s1_addr)
        hitb = wb_valid & (wb_addr == s1_addr)
        m.d.sync += [s2_valid.eq(s1_valid), s2_addr.eq(s1_addr), s2_first.eq(s1_first),
                     s2_last.eq(s1_last), s2_half.eq(s1_half)]
        sums = Signal(acc_layout)
        acc_flags = Signal(nb)
        for k, (p, s, ky, kx) in enumerate(banks):
            m.d.sync += [
                s2_prod[k].eq(s1_win[s][ky][kx] * s1_err[p]),
                s2_old[k].eq(Mux(hit2, sums[k], Mux(hitb, wb_data[k], rd_acc[k]))),
            ]
            total, ovf = saturating_add(s2_old[k], s2_prod[k], accw)
            m.d.comb += [
                sums[k].eq(Mux(s2_first, s2_prod[k], total)),
                acc_flags[k].eq(s2_valid & ~s2_first & ovf),
            ]
        _count_flags(m, acc_flags, self.acc_overflow)
        m.d.comb += [w_addr.eq(s2_addr), w_en.eq(s2_valid), w_data.eq(sums)]
        m.d.sync += [wb_valid.eq(s2_valid), wb_addr.eq(s2_addr), wb_data.eq(sums)]
        set_done = Signal(2)
        m.d.comb += set_done.eq(Mux(s2_valid & s2_last, Mux(s2_half, 0b10, 0b01), 0))

        # -- drain: one accumulator word gives P gradient sets, one per cycle to the LGB ---------
        dr_half = Signal()
        dr_go = Signal(range(max(Go, 2)))
        dr_gc = Signal(range(max(Gc, 2)))
        dr_left = Signal()                    # addresses of the draining image left to read
        dr_active = Signal()
        h_valid = Signal()                    # rd_drain holds word (h_go, h_gc)
        h_go = Signal(range(max(Go, 2)))
        h_gc = Signal(range(max(Gc, 2)))
        h_lastaddr = Signal()
        h_p = Signal(range(max(P, 2)))
        img = Signal(range(max(self._batch, 2)))
        p_last_lane = self._oc - (Go - 1) * P - 1     # last lane of the last error group
        h_plast = Signal()
        m.d.comb += h_plast.eq(Mux(h_go == Go - 1, h_p == p_last_lane, h_p == P - 1))

        q = lgb.i
        q_img_last = Signal()
        adv = Signal()
        consume = Signal()
        load = Signal()
        end_drain = Signal()
        m.d.comb += [
            adv.eq(~q.valid | q.ready),
            consume.eq(h_valid & adv),
            load.eq(dr_active & dr_left & (~h_valid | (consume & h_plast))),
            d_addr.eq(Mux(dr_half, N, 0) + dr_gc * Go + dr_go),
            d_en.eq(load),
            end_drain.eq(consume & h_plast & h_lastaddr),
            self.pg_done.eq(q.valid & q.ready & q_img_last),
        ]
        with m.If(load):
            m.d.sync += [
                h_valid.eq(1), h_go.eq(dr_go), h_gc.eq(dr_gc), h_p.eq(0),
                h_lastaddr.eq((dr_go == Go - 1) & (dr_gc == Gc - 1)),
                dr_go.eq(Mux(dr_go == Go - 1, 0, dr_go + 1)),
            ]
            with m.If(dr_go == Go - 1):
                m.d.sync += dr_gc.eq(Mux(dr_gc == Gc - 1, 0, dr_gc + 1))
                with m.If(dr_gc == Gc - 1):
                    m.d.sync += dr_left.eq(0)
        with m.Elif(consume):
            m.d.sync += h_p.eq(h_p + 1)
            with m.If(h_plast):
                m.d.sync += h_valid.eq(0)

        clear_busy = Signal(2)
        m.d.comb += clear_busy.eq(Mux(end_drain, Mux(dr_half, 0b10, 0b01), 0))
        with m.If(~dr_active & done.bit_select(dr_half, 1)):
            m.d.sync += [dr_active.eq(1), dr_left.eq(1)]
        with m.If(end_drain):
            m.d.sync += [dr_active.eq(0), dr_half.eq(~dr_half),
                         img.eq(Mux(img == self._batch - 1, 0, img + 1))]
        set_busy = Signal(2)
        m.d.comb += set_busy.eq(Mux(issue & first_pos & (go == 0) & (gc == 0),
                                    Mux(half, 0b10, 0b01), 0))
        m.d.sync += [
            busy.eq((busy | set_busy) & ~clear_busy),
            done.eq((done | set_done) & ~clear_busy),
        ]

        # output register (the LGB's input word)
        frac_in = n.error.frac + n.activation.frac
        out_flags = Signal(S * K * K)
        lane = Signal(data.ArrayLayout(signed(accw), S * K * K))
        with m.Switch(h_p):
            for p in range(P):
                with (m.Case(p) if p < P - 1 else m.Default()):
                    for j in range(S * K * K):
                        m.d.comb += lane[j].eq(rd_drain[p * S * K * K + j])
        with m.If(adv):
            m.d.sync += [
                q.valid.eq(h_valid),
                q.payload.addr.eq((h_go * P + h_p) * Gc + h_gc),
                q.payload.batch_done.eq(h_plast & h_lastaddr & (img == self._batch - 1)),
                q_img_last.eq(h_plast & h_lastaddr),
            ]
        for j in range(S * K * K):
            s, r = divmod(j, K * K)
            ky, kx = divmod(r, K)
            value, ovf = requantize(lane[j], frac_in, n.gradient)
            m.d.comb += out_flags[j].eq(consume & ovf)
            with m.If(adv):
                m.d.sync += q.payload.data[s][ky][kx].eq(value)
        _count_flags(m, out_flags, self.out_overflow)
        return m
