"""PG module of one layer: weight gradients per image, accumulated over a mini-batch (paper 5.5).

The layer's input activations, replayed from its Act-RAM, pass through a line buffer with the FP
geometry; each window meets the output errors of its position (the ``K x K`` decomposition of
the large gradient convolution, ``docs/hw-compute.md``). ``P x S`` tiles of ``K x K``
multipliers form ``window[s] * E[p]`` and add it into a per-image accumulator memory
(read-modify-write, exact; one memory: an image drains while the next one's first position
writes). When an image is complete its gradients are requantised to the
gradient format and added into the layer's :class:`~fpdeep_hw.memory.grad_buffer.LGB`; at the end
of a mini-batch the LGB hands the averages to the weight update (``grad``).

Golden model: :mod:`sim.golden.layers` (``conv_pg``, ``fc_pg``) and
:mod:`sim.golden.grad_buffer`. Test: ``tests/hw/test_pg_layer.py``.
"""

from __future__ import annotations

import math

from amaranth.hdl import Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from fpdeep_map.numerics import NumericsConfig
from sim.golden.line_buffer import Geometry

from ..memory.grad_buffer import LGB, _count_flags
from ..memory.offchip_grad_buffer import OffchipGradBuffer
from ..memory.packing import lanes_per_memory, packed_memory
from ..compute.shared import shared
from ..memory.line_buffer import LineBuffer, LineBufferRuns
from ..numerics import requantize, saturating_add
from ..wide import Lanes, join
from .fp_layer import layer_geometry

__all__ = ["PGLayer", "check_pg_engines", "pg_members"]


def _pos_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"PGLayer {name} must be a positive integer, not {value!r}")


class _PGLane(wiring.Component):
    """One element of :class:`PGLayer`'s accumulators: the stage-2 registers (product, forwarded
    old value), the saturating sum (``wd``, written back into the lane's word of the
    accumulator row) and the drain requantisation into the output register ``out`` (loaded when
    ``adv``). ``rd`` is the lane's word of the accumulator memory's read data (an accumulate
    read or a drain read: they never share a cycle). The parent drives every lane with the same
    control and keeps the memory; ``acc_flag`` / ``out_flag`` are the lane's overflow flags.
    All lanes of a layer are identical (one shared module in the build)."""

    def __init__(self, *, aw, ew, accw, frac_in, out_fmt):
        self._aw, self._ew, self._accw = aw, ew, accw
        self._frac_in, self._out_fmt = frac_in, out_fmt
        self.key = (aw, ew, accw, frac_in, out_fmt.width, out_fmt.frac, out_fmt.rounding)
        super().__init__({
            "win": In(signed(aw)), "err": In(signed(ew)),
            "hit2": In(1), "hitb": In(1), "first": In(1), "valid": In(1),
            "rd": In(signed(accw)),
            "consume": In(1), "adv": In(1),
            "wd": Out(signed(accw)),
            "acc_flag": Out(1), "out_flag": Out(1), "out": Out(signed(out_fmt.width)),
        })

    def elaborate(self, platform):
        m = Module()
        accw = self._accw
        prod = Signal(signed(self._aw + self._ew))
        old = Signal(signed(accw))
        wb_data = Signal(signed(accw))
        sums = Signal(signed(accw))
        m.d.sync += [
            prod.eq(self.win * self.err),
            old.eq(Mux(self.hit2, sums, Mux(self.hitb, wb_data, self.rd))),
            wb_data.eq(sums),
        ]
        total, ovf = saturating_add(old, prod, accw)
        m.d.comb += [
            sums.eq(Mux(self.first, prod, total)),
            self.wd.eq(sums),
            self.acc_flag.eq(self.valid & ~self.first & ovf),
        ]
        value, ovf2 = requantize(self.rd, self._frac_in, self._out_fmt)
        m.d.comb += self.out_flag.eq(self.consume & ovf2)
        with m.If(self.adv):
            m.d.sync += self.out.eq(value)
        return m


def check_pg_engines(owner, segment, geom):
    """The segment has PG engines of the FP engines' shape (one gradient set is one weight set
    of the shared LPRAM address map)."""
    pg = segment.engines.get("pg")
    if pg is None:
        raise ValueError(f"{owner}: segment {segment.layer!r} has no PG engines")
    if (pg.p, pg.s) != (geom.p, geom.s):
        raise ValueError(f"{owner}: segment {segment.layer!r} PG engines {pg.p}x{pg.s} differ "
                         f"from FP engines {geom.p}x{geom.s} (the weight address map is shared)")


def make_lgb(geom, numerics, batch, fold, mem=None):
    """The LGB of a PG module: an :class:`LGB` (``mem`` ``None``), or an
    :class:`~fpdeep_hw.memory.offchip_grad_buffer.OffchipGradBuffer` with the burst port
    keywords ``mem`` (``burst``, ``base``, ``prefetch``, ``addr_width``, ``fold``: the ring
    ``NodeTop`` gives it; a convolution layer's, whose PG drains in address order)."""
    kw = dict(in_fmt=numerics.gradient, out_fmt=numerics.gradient,
              acc_width=numerics.grad_acc_width, kernel=geom.kernel, lanes=geom.p * geom.s,
              depth=geom.weight_sets, batch=batch)
    if mem is None:
        return LGB(**kw, fold=fold)
    if geom.kind != "conv":
        raise ValueError(f"an off-chip LGB takes its sets in address order: a convolution "
                         f"layer's, not {geom.kind!r}")
    return OffchipGradBuffer(**kw, **mem)


def pg_members(geom, numerics):
    """The ports of a PG module (:class:`PGLayer` and the weight-stationary
    :class:`~fpdeep_hw.node.lend.WSPGLayer`): ``a``, ``e``, ``grad``, ``pg_done``,
    ``busy_cycles``, ``acc_overflow``, ``out_overflow``."""
    K, P, S = geom.kernel, geom.p, geom.s
    grad_set = data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(
        signed(numerics.gradient.width), K), K), P * S)
    grad_layout = data.StructLayout({"addr": range(max(geom.weight_sets, 2)),
                                     "data": grad_set, "last": 1})
    return {
        "a": In(stream.Signature(data.ArrayLayout(signed(numerics.activation.width),
                                                  geom.in_channels))),
        "e": In(stream.Signature(data.ArrayLayout(signed(numerics.error.width),
                                                  geom.out_channels))),
        "grad": Out(stream.Signature(grad_layout)),
        "pg_done": Out(1),
        "busy_cycles": Out(32),
        "acc_overflow": Out(32), "out_overflow": Out(32),
    }


class PGLayer(wiring.Component):
    """Parameter-gradient module of one layer segment.

    Built like the FP/EB modules (``docs/hw-node.md``): from one plan segment, the network and the
    plan's numerics; shapes from :func:`~fpdeep_hw.node.fp_layer.layer_geometry`. The PG engines
    (``engines.pg``: ``P`` output lanes x ``S`` input lanes of ``K x K`` multipliers) must have
    the FP engines' shape, because one accumulator word is one weight set of the shared LPRAM
    address map: ``G = ceil(C / S)`` input groups, ``R = ceil(OC / P)`` output groups.

    Dataflow per image, conv (``docs/hw-compute.md``, "PG"):

    - ``a``: the layer's input activations replayed from the Act-RAM, ``H x W`` pixels in raster
      order, one word of ``C`` lanes per pixel (the FP module's ``act`` tap framing);
    - ``e``: ``E_out`` (after pool/ReLU backward: ``BPFront.pg``), ``Hc x Wc`` positions in raster
      order, one word of ``OC`` lanes per position;
    - a :class:`LineBuffer` with the FP geometry makes one ``C x K x K`` window per position,
      followed by a window FIFO (the scan runs ahead over padding and image boundaries while a
      window is in use);
    - each window is used for ``R * G`` steps (output group ``r`` outer, input group ``g``
      inner), each step one cycle of the ``P x S x K x K`` multipliers:
      ``acc[r*G + g][e*S + s][ky][kx] += window[g*S + s][ky][kx] * E[r*P + e]`` (lanes past ``C``
      or ``OC`` multiply by 0, so padding lanes get gradient 0); the error word is held for the
      position's ``R * G`` steps and taken with the last one;
    - the accumulators (``P*S*K*K`` lanes of signed ``acc_width``) are one memory of ``N = R *
      G`` rows, all lanes side by side (split in rows of at most ``packing.PACK_LANES`` lanes),
      with one write and one read port: a simple dual-port block RAM. The first position of an
      image writes the product instead of adding (no clearing pass). Read-modify-write in
      three stages with forwarding of the two writes in flight (so ``N`` of 1 or 2 works);
    - drain: once an image's last step is issued, its words are read in step order
      (:attr:`drain_order`), requantised (``error.frac + activation.frac`` -> ``gradient``) and
      added into the :class:`LGB` at their address (the LPRAM weight-set address ``r*G + g``,
      lanes ``e*S + s``), one word per cycle; ``batch_done`` on the last word of the last image
      of each mini-batch of ``batch``. The drain runs under the next image's first position:
      those steps write their products without reading, one word per step in the same order,
      so step ``j`` is issued once the drain has read word ``j`` (or reads it in that cycle), and
      steps that read (later positions) wait until the drained words have left the read port.
      One memory therefore serves two images at once, where two halves used by alternate images
      were needed before (``docs/hw-node.md``, PGLayer).

    FC (``kind: fc``, kernel 1): ``a`` brings the pixels of the layer below (``C`` lanes), ``e``
    one word of ``OC`` errors per image (held for the whole image); each pixel ``pix`` is a
    ``1 x 1`` window used for ``R * G`` steps at address ``(r*H*W + pix)*G + g``
    (``N = R*H*W*G``); every weight gets exactly one product per image (no adds). The drain
    follows the steps' order, so the LGB receives an FC layer's words in that order.

    Rounding and saturation: ``docs/training-spec.md`` (PG, gradient buffer): exact per-image
    sums saturating at ``acc_width`` (``acc_overflow``, zero in a bit-exact run), one
    requantisation (``out_overflow``), the LGB's accumulation and averaging
    (``lgb_acc_overflow``, ``lgb_out_overflow``).

    Timing: :attr:`latency` = 3 cycles from the transfer of an image's last ``e`` word (it is
    taken with the image's last multiply step) to its first gradient word valid at the LGB input
    (``N >= 3``; with ``N`` of 1 or 2 the drain waits up to two more cycles for the image's last
    writes). One multiply step per cycle whenever a window and its errors are there; the drain
    (``N`` words, one per cycle) overlaps the next image's first position, which it holds back
    only when the LGB (or the link, ``lgb=False``) does not take its words.
    ``busy_cycles`` counts multiply steps (CE utilisation = steps / cycles,
    ``docs/hw-node.md``).

    Parameters
    ----------
    segment : fpdeep_map.plan.SegmentPlan
        The layer's plan segment (with ``engines.pg``): ``whole``, or a conv ``icp`` / ``ocp``
        slice, whose gradients are those of its own weights (``C`` / ``OC`` = the slice;
        ``a`` / ``e`` carry the slice's channels; ``docs/hw-node.md``, "Split layers").
    network : fpdeep_map.network.Network
    numerics : NumericsConfig
    batch : int
        Mini-batch size ``B`` (the plan's ``batch``).
    fifo_depth : int, optional
        Window FIFO depth (conv); default: the longest run of line-buffer scan steps without a
        window (image boundary, padding) divided by ``R * G``, plus 2.
    lgb : bool
        ``True`` (default): gradients accumulate in a local :class:`LGB` and ``grad`` carries
        its mini-batch averages. ``False`` (a segment whose parameters a neighbour keeps,
        :mod:`fpdeep_hw.node.lend`): no LGB; ``grad`` carries every image's gradient sets in the
        gradient format (``last`` marks the mini-batch's last word) for the lender's BGB, and the
        ``lgb_*`` counters stay 0.
    lgb_fold : int
        The LGB's ``fold`` (:class:`~fpdeep_hw.memory.grad_buffer.GradBuffer`; default 1).
        Folded, the LGB takes a word every ``fold`` cycles, so the drain of an image's ``N``
        words takes ``fold * N`` cycles and holds back the next image's first position by
        about ``(fold - 1) * N`` cycles (``NodeTop(grad_fold=)`` keeps that within
        ``1 / FOLD_COST`` of the layer's cycles).
    lgb_mem : dict, optional
        The LGB's accumulators in external memory (a conv layer whose plan keeps them off
        chip, ``lgb.offchip_words``): the keywords ``burst``, ``base``, ``prefetch``,
        ``addr_width``, ``fold`` of an :class:`~fpdeep_hw.memory.offchip_grad_buffer.
        OffchipGradBuffer`, built at once (:attr:`lgb`) so that ``NodeTop`` can wire its burst
        port ``lgb.mem`` (``fold`` equal to ``lgb_fold``). The words the LGB takes are the
        same; their pace is the memory's (a set every ``fold`` cycles at most).

    Members
    -------
    a : ``In(stream.Signature(ArrayLayout(signed(activation.width), C)))``
    e : ``In(stream.Signature(ArrayLayout(signed(error.width), OC)))``
    grad : ``Out(stream.Signature(StructLayout({"addr", "data", "last"})))``
        The LGB's averaged gradients per mini-batch, address order: ``data`` one weight set
        ``P*S x K x K`` in the gradient format (the LPRAM set layout).
    pg_done : ``Out(1)``
        One-cycle strobe: an image's gradients have all entered the LGB (the version gate's PG).
    busy_cycles : ``Out(32)``
        Multiply steps so far (saturating).
    acc_overflow, out_overflow, lgb_acc_overflow, lgb_out_overflow : ``Out(32)``
        Saturating counts of clamped elements.
    """

    def __init__(self, segment, network, numerics, *, batch, fifo_depth=None, lgb=True,
                 lgb_fold=1, lgb_mem=None, src_loc_at=0):
        if not isinstance(numerics, NumericsConfig):
            raise TypeError(f"PGLayer numerics must be a NumericsConfig, not {numerics!r}")
        geom = layer_geometry(segment, network)
        check_pg_engines("PGLayer", segment, geom)
        _pos_int("batch", batch)
        if not isinstance(lgb, bool):
            raise TypeError(f"PGLayer lgb must be a bool, not {lgb!r}")
        self._use_lgb = lgb
        _pos_int("LGB fold", lgb_fold)
        self._lgb_fold = lgb_fold
        if lgb_mem is not None and not lgb:
            raise ValueError("PGLayer: lgb_mem needs lgb=True")
        self._geom = geom
        self._numerics = numerics
        self._batch = batch
        if geom.kind == "conv":
            self._lbgeom = Geometry(geom.height, geom.width, geom.kernel, stride=geom.stride,
                                    pad=geom.pad)
            self._positions = geom.conv_height * geom.conv_width
            if fifo_depth is None:
                fifo_depth = self._default_fifo_depth()
            _pos_int("FIFO depth", fifo_depth)
        else:
            self._lbgeom = None
            self._positions = geom.pixels
            fifo_depth = 0
        self._fifo_depth = fifo_depth
        # the LGB of the last elaboration; an off-chip one from the start (NodeTop wires its
        # burst port)
        self._lgb_mem = lgb_mem
        self._lgb = None if lgb_mem is None else make_lgb(geom, numerics, batch, lgb_fold,
                                                         lgb_mem)
        super().__init__({
            **pg_members(geom, numerics),
            "lgb_acc_overflow": Out(32), "lgb_out_overflow": Out(32),
        }, src_loc_at=1 + src_loc_at)

    # read-only parameters
    geometry = property(lambda self: self._geom)
    kind = property(lambda self: self._geom.kind)
    batch = property(lambda self: self._batch)
    fifo_depth = property(lambda self: self._fifo_depth)
    positions = property(lambda self: self._positions)

    @property
    def weight_sets(self):
        """``N``: LGB depth and accumulator words per image (the LPRAM's ``weight_sets``)."""
        return self._geom.weight_sets

    @property
    def drain_order(self):
        """The accumulator addresses in the order an image's gradient words leave for the LGB:
        the order of the image's steps, ``0 .. N-1`` for conv; FC ``(r*H*W + pix)*G + g`` for
        each pixel ``pix``, then ``r``, then ``g`` (the LGB accumulates by address, so any order
        gives the same sums; the last word is address ``N - 1`` either way)."""
        geo = self._geom
        if geo.kind != "fc":
            return list(range(geo.weight_sets))
        G, R, hw = geo.groups, geo.out_groups, geo.pixels
        return [(r * hw + pix) * G + g for pix in range(hw) for r in range(R) for g in range(G)]

    @property
    def steps_per_image(self):
        """Multiply steps per image: ``positions * R * G`` (the ideal cycles per image)."""
        return self._positions * self._geom.out_groups * self._geom.groups

    @property
    def lgb(self):
        """The :class:`LGB` of the last elaboration (for monitoring in simulation)."""
        return self._lgb

    LATENCY = 3

    @property
    def latency(self):
        """Cycles from the transfer of an image's last ``e`` word (with its last multiply step)
        to its first gradient word valid at the LGB input, for ``N >= 3``: the drain starts in
        the next cycle (the image's last step issued), then the read and the output register
        (``LATENCY = 3``)."""
        return self.LATENCY

    def _default_fifo_depth(self):
        g = self._lbgeom
        k, st = g.k, g.stride
        ends = sorted((oy * st + k - 1) * g.vwidth + ox * st + k - 1
                      for oy in range(g.out_height) for ox in range(g.out_width))
        gaps = [b - a - 1 for a, b in zip(ends, ends[1:])]
        gaps.append(g.vheight * g.vwidth - ends[-1] - 1 + ends[0])     # across images
        steps = self._geom.out_groups * self._geom.groups
        return max(2, math.ceil(max(gaps) / steps) + 2)

    def elaborate(self, platform):
        m = Module()
        n, geo = self._numerics, self._geom
        P, S, K = geo.p, geo.s, geo.kernel
        C, OC = geo.in_channels, geo.out_channels
        G, R = geo.groups, geo.out_groups
        N = geo.weight_sets
        fc = geo.kind == "fc"
        aw, ew, accw = n.activation.width, n.error.width, n.acc_width
        win_layout = data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(signed(aw), K), K), C)

        if self._use_lgb:
            if self._lgb_mem is None:
                self._lgb = make_lgb(geo, n, self._batch, self._lgb_fold)
            m.submodules.lgb = lgb = self._lgb
            wiring.connect(m, lgb.o, wiring.flipped(self.grad))
            m.d.comb += [self.lgb_acc_overflow.eq(lgb.acc_overflow),
                         self.lgb_out_overflow.eq(lgb.out_overflow)]
            q = lgb.i
        else:   # borrowed parameters: per-image gradients leave for the lender's BGB
            self._lgb = None
            q = stream.Signature(data.StructLayout({
                "addr": range(max(N, 2)), "data": self.grad.payload.data.shape(),
                "batch_done": 1})).create(path=("pg_out",))
            m.d.comb += [
                self.grad.valid.eq(q.valid), q.ready.eq(self.grad.ready),
                self.grad.payload.addr.eq(q.payload.addr),
                self.grad.payload.data.eq(q.payload.data),
                self.grad.payload.last.eq(q.payload.batch_done),
            ]

        # -- window source ----------------------------------------------------------------------
        src_valid = Signal()
        src_ready = Signal()
        if not fc:
            # windows of all C lanes, in runs of lanes where one value cannot hold them; each
            # run's line buffer and FIFO see the same control, so the runs step in lockstep
            lb = LineBufferRuns(m, "lb", channels=C, k=K, width=aw, make=lambda c: LineBuffer(
                height=geo.height, width=geo.width, channels=c, k=K, stride=geo.stride,
                pad=geo.pad, shape=signed(aw)))
            lb.connect_input(m, self.a.valid, self.a.payload)
            m.d.comb += self.a.ready.eq(lb.i_ready)
            wins = []
            for j, ((lo, hi), part) in enumerate(zip(lb.runs, lb.parts)):
                fifo = SyncFIFOBuffered(width=len(part.o.payload.as_value()),
                                        depth=self._fifo_depth)
                m.submodules["fifo" if len(lb.runs) == 1 else f"fifo{j}"] = fifo
                w = Signal(data.ArrayLayout(win_layout.elem_shape, hi - lo),
                           name="src_win" if len(lb.runs) == 1 else f"src_win{j}")
                m.d.comb += [
                    fifo.w_data.eq(part.o.payload.as_value()),
                    fifo.w_en.eq(lb.o_valid),
                    w.eq(fifo.r_data),
                    fifo.r_en.eq(src_ready),
                ]
                if j == 0:
                    m.d.comb += [lb.o_ready.eq(fifo.w_rdy), src_valid.eq(fifo.r_rdy)]
                wins.append((lo, w))
            src_win = Lanes(wins)
        else:
            src_win = Signal(win_layout)
            m.d.comb += [src_valid.eq(self.a.valid), self.a.ready.eq(src_ready)]
            m.d.comb += src_win.eq(join((self.a.payload[c] for c in range(C)), aw))

        # -- issue (stage 0): window x error group x input group ---------------------------------
        # ``idx`` numbers the steps of one sweep of the accumulators, the order in which the
        # drain reads them: conv ``r*G + g`` within a position (= the address), FC the step of
        # the image (pixel outer, then ``r``, then ``g``)
        g = Signal(range(max(G, 2)))
        r = Signal(range(max(R, 2)))
        pos = Signal(range(max(self._positions, 2)))
        idx = Signal(range(max(N, 2)))
        window_last = (r == R - 1) & (g == G - 1)
        image_last = window_last & (pos == self._positions - 1)
        first = Signal()                      # the step writes its product (no old value read)
        m.d.comb += first.eq(1 if fc else pos == 0)
        issue = Signal()
        ok = Signal()                         # the drain allows this step (below)
        m.d.comb += [
            issue.eq(src_valid & self.e.valid & ok),
            src_ready.eq(issue & window_last),
            self.e.ready.eq(issue & (image_last if fc else window_last)),
        ]
        with m.If(issue):
            m.d.sync += [
                g.eq(Mux(g == G - 1, 0, g + 1)),
                idx.eq(Mux(idx == N - 1, 0, idx + 1)),
                self.busy_cycles.eq(Mux(self.busy_cycles == 2**32 - 1, self.busy_cycles,
                                        self.busy_cycles + 1)),
            ]
            with m.If(g == G - 1):
                m.d.sync += r.eq(Mux(r == R - 1, 0, r + 1))
                with m.If(r == R - 1):
                    m.d.sync += pos.eq(Mux(pos == self._positions - 1, 0, pos + 1))

        banks = [(e, s, ky, kx) for e in range(P) for s in range(S)
                 for ky in range(K) for kx in range(K)]
        nb = len(banks)
        depth = N                             # accumulator words (one per weight set)
        addr0 = Signal(range(depth))
        if fc:
            m.d.comb += addr0.eq((r * geo.pixels + pos) * G + g)
        else:
            m.d.comb += addr0.eq(idx)

        frac_in = n.error.frac + n.activation.frac
        # one accumulator lane per element of a set (multiply-accumulate, drain requantisation);
        # identical lanes, converted once by the build (shared)
        lanes = []
        for k in range(nb):
            lane = _PGLane(aw=aw, ew=ew, accw=accw, frac_in=frac_in, out_fmt=n.gradient)
            m.submodules[f"acc_{k}"] = shared(lane, lane.key)
            lanes.append(lane)

        # -- stage 1: operand lanes selected (padding lanes 0) ------------------------------------
        s1_valid = Signal()
        s1_addr = Signal(range(depth))
        s1_first = Signal()
        s1_win = Signal(data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(signed(aw), K), K), S))
        s1_err = Signal(data.ArrayLayout(signed(ew), P))
        m.d.sync += [s1_valid.eq(issue), s1_addr.eq(addr0), s1_first.eq(first)]
        with m.Switch(g):
            for gi in range(G):
                with (m.Case(gi) if gi < G - 1 else m.Default()):
                    m.d.sync += s1_win.eq(join(
                        (src_win[gi * S + s][ky][kx] if gi * S + s < C else 0
                         for s in range(S) for ky in range(K) for kx in range(K)), aw))
        with m.Switch(r):
            for ri in range(R):
                with (m.Case(ri) if ri < R - 1 else m.Default()):
                    m.d.sync += s1_err.eq(join(
                        (self.e.payload[ri * P + e] if ri * P + e < OC else 0
                         for e in range(P)), ew))

        # -- stage 2: products and old values (forwarded); write-back ----------------------------
        s2_valid = Signal()
        s2_addr = Signal(range(depth))
        s2_first = Signal()
        wb_valid = Signal()                   # the write of the previous cycle
        wb_addr = Signal(range(depth))
        hit2 = s2_valid & (s2_addr == s1_addr)
        hitb = wb_valid & (wb_addr == s1_addr)
        m.d.sync += [s2_valid.eq(s1_valid), s2_addr.eq(s1_addr), s2_first.eq(s1_first)]
        acc_flags = Signal(nb)
        for k, (e, s, ky, kx) in enumerate(banks):
            lane = lanes[k]
            m.d.comb += [
                lane.win.eq(s1_win[s][ky][kx]), lane.err.eq(s1_err[e]),
                lane.hit2.eq(hit2), lane.hitb.eq(hitb), lane.first.eq(s2_first),
                lane.valid.eq(s2_valid),
            ]
        m.d.comb += acc_flags.eq(join((lane.acc_flag for lane in lanes), 1))
        _count_flags(m, acc_flags, self.acc_overflow)
        m.d.sync += [wb_valid.eq(s2_valid), wb_addr.eq(s2_addr)]

        # -- drain under the next image's first position ------------------------------------------
        # Once an image's last step is issued its words are read in step order (``dr_idx``),
        # requantised and sent into the LGB, one per cycle. The next image's first position
        # writes its products without reading (``first``), one word per step in the same
        # order, so it follows the drain: a step of index ``idx`` is issued only once the drain
        # has read word ``idx`` (or reads it in the same cycle). Steps that read (later
        # positions) wait until the drain's last word has left the read register. A word is read
        # only when none of the image's last writes to it is still in the pipeline (``N`` of 1
        # or 2).
        dr_left = Signal()                    # words of a finished image not read yet
        dr_idx = Signal(range(max(N, 2)))
        dr_addr = Signal(range(max(N, 2)))
        h_valid = Signal()                    # the read data holds word h_addr
        h_addr = Signal(range(max(N, 2)))
        h_last = Signal()
        img = Signal(range(max(self._batch, 2)))
        q_img_last = Signal()
        adv = Signal()
        consume = Signal()
        load = Signal()
        hazard = Signal()
        if fc:
            dr_g = Signal(range(max(G, 2)))
            dr_r = Signal(range(max(R, 2)))
            dr_pos = Signal(range(max(self._positions, 2)))
            m.d.comb += dr_addr.eq((dr_r * geo.pixels + dr_pos) * G + dr_g)
            with m.If(load):
                m.d.sync += dr_g.eq(Mux(dr_g == G - 1, 0, dr_g + 1))
                with m.If(dr_g == G - 1):
                    m.d.sync += dr_r.eq(Mux(dr_r == R - 1, 0, dr_r + 1))
                    with m.If(dr_r == R - 1):
                        m.d.sync += dr_pos.eq(Mux(dr_pos == self._positions - 1, 0,
                                                  dr_pos + 1))
        else:
            m.d.comb += dr_addr.eq(dr_idx)
        m.d.comb += [
            hazard.eq((s1_valid & (s1_addr == dr_addr)) | (s2_valid & (s2_addr == dr_addr))),
            adv.eq(~q.valid | q.ready),
            consume.eq(h_valid & adv),
            load.eq(dr_left & (~h_valid | consume) & ~hazard),
            ok.eq(Mux(first,
                      ~dr_left | (dr_idx > idx) | (load & (dr_idx == idx)),
                      ~dr_left & ~(h_valid & ~consume))),
            self.pg_done.eq(q.valid & q.ready & q_img_last),
        ]
        with m.If(load):
            m.d.sync += [h_valid.eq(1), h_addr.eq(dr_addr), h_last.eq(dr_idx == N - 1),
                         dr_idx.eq(Mux(dr_idx == N - 1, 0, dr_idx + 1))]
            with m.If(dr_idx == N - 1):
                m.d.sync += dr_left.eq(0)
        with m.Elif(consume):
            m.d.sync += h_valid.eq(0)
        with m.If(issue & image_last):
            m.d.sync += dr_left.eq(1)         # the drain indices are at 0 again already
        with m.If(consume & h_last):
            m.d.sync += img.eq(Mux(img == self._batch - 1, 0, img + 1))

        out_flags = Signal(nb)
        with m.If(adv):
            m.d.sync += [
                q.valid.eq(h_valid),
                q.payload.addr.eq(h_addr),
                q.payload.batch_done.eq(h_last & (img == self._batch - 1)),
                q_img_last.eq(h_last),
            ]
        for lane in lanes:
            m.d.comb += [lane.consume.eq(consume), lane.adv.eq(adv)]

        # -- the accumulator memory: the lanes' words side by side in rows of at most PACK_LANES
        # (all lanes share the addresses), one write and one read port (a simple dual-port block
        # RAM); the read port serves the accumulate reads or the drain. Its read data holds
        # while a drained word waits for the output register (the port reads only for a drain
        # load or an accumulating step then) ---
        r_en = Signal()
        m.d.comb += r_en.eq(load | (issue & ~first) | ~(dr_left | h_valid))
        per = lanes_per_memory(accw, nb)
        for c, lo in enumerate(range(0, nb, per)):
            part = lanes[lo:lo + per]
            _, rd = packed_memory(m, f"bank_{c}", width=accw, lanes=len(part), depth=depth,
                                  w_addr=s2_addr, w_en=s2_valid,
                                  w_data=join((lane.wd for lane in part), accw),
                                  r_addr=Mux(load, dr_addr, addr0), r_en=r_en)
            for j, lane in enumerate(part):
                m.d.comb += lane.rd.eq(rd[j * accw:(j + 1) * accw])
        q_data = q.payload.data
        m.d.comb += [
            out_flags.eq(join((lane.out_flag for lane in lanes), 1)),
            q_data.eq(join((lane.out for lane in lanes), len(Value.cast(q_data)) // nb)),
        ]
        _count_flags(m, out_flags, self.out_overflow)
        return m
