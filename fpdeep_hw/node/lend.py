"""Parameter lending (paper 3.4.2, datapaths 5 and 6 of 5.1, BPRAM/BGB of 5.2.2).

A layer segment whose weights are *borrowed* (the plan's ``weights_borrowed``; the lender's
``bpram`` entry) keeps no LPRAM: a neighbour (the **lender**) keeps the weights in its BPRAM and
streams them to the node that uses them (the **borrower**) once per image for FP and once for EB;
the borrower's per-image gradients come back into the lender's BGB, and the lender's weight
update writes the new version into its BPRAM (and master copy).

Because each weight set arrives only once per image and use, the borrower cannot use the normal
FP/EB order (which re-reads every weight set for every output position). Its engines are
**weight-stationary**: for each weight set as it arrives (address order ``r*G + g`` of the shared
weight address map, ``docs/hw-node.md``) the whole stored input map is replayed through a line
buffer and every window is multiplied with that one set; the per-position partial sums
accumulate exactly in an accumulator memory (read-modify-write). Every sum stays exact, so the
arithmetic (and the golden model) is that of the normal engines.

Blocks:

* :class:`Lender` -- BPRAM + version-aware FP and EB weight streams + BGB + WeightUpdate, with
  the version rule of ``docs/training-spec.md`` enforced on the lender's side.
* :class:`WSFPLayer` -- weight-stationary FP of a borrowed conv segment (with its ReLU/max-pool).
* :class:`WSEBLayer` -- weight-stationary EB of a borrowed conv segment.
* :class:`WSPGLayer` -- weight-stationary PG of a borrowed conv segment: one gradient set per
  sweep of the stored activations and errors, for the lender's BGB (no accumulator of every
  borrowed weight).

Golden model: :mod:`sim.golden.layers` (``conv_fp``, ``fp_output``, ``relu``, ``maxpool``,
``conv_eb``, ``conv_pg``, ``accumulate_gradient``, ``average_gradient``, ``update``).
Test: ``tests/hw/test_lend.py``. Ports, set order, version handling and measured cycles:
``docs/hw-node.md``, "Parameter lending".
"""

from __future__ import annotations

import math

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from fpdeep_hw.compute.partial_adder import PartialAdder
from fpdeep_hw.compute.shared import shared
from fpdeep_hw.compute.sfu import MaxPool, arg_bits
from fpdeep_hw.memory.grad_buffer import BGB, _count_flags
from fpdeep_hw.memory.line_buffer import LineBuffer, LineBufferRuns
from fpdeep_hw.memory.offchip_act_ram import memory_port_signature
from fpdeep_hw.memory.param_ram import BPRAM, weight_set_layout
from fpdeep_hw.node.fp_layer import _check_args, _gather, _Loops, _post_ops, _vec
from fpdeep_hw.node.pg_layer import check_pg_engines, make_lgb, pg_members
from fpdeep_hw.node.update import OffchipWeightUpdate, WeightUpdate
from fpdeep_hw.wide import join
from fpdeep_hw.numerics import requantize, saturate, saturating_add, tree_sum
from sim.golden.line_buffer import Geometry, eb_geometry

__all__ = ["Lender", "WSFPLayer", "WSEBLayer", "WSPGLayer"]


def _pos_int(owner, name, value, low=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = "positive" if low == 1 else "non-negative"
        raise ValueError(f"{owner} {name} must be a {kind} integer, not {value!r}")


# ---------------------------------------------------------------------------------------------
# weight-stationary engine (shared by FP and EB)

class _WSLayer(wiring.Component):
    """Common datapath of :class:`WSFPLayer` and :class:`WSEBLayer` (see their docstrings)."""

    _owner = None

    def __init__(self, segment, network, numerics):
        geom = _check_args(self._owner, segment, network, numerics)
        if geom.kind != "conv":
            raise ValueError(f"{self._owner}: only conv segments are built, not "
                             f"{geom.kind!r} ({segment.layer!r})")
        self._geom = geom
        self._numerics = numerics
        self._set_layout = weight_set_layout(numerics.weight, geom.kernel, geom.p * geom.s)
        self._setup()
        if self._npos < 2:
            raise ValueError(f"{self._owner}: the swept map must have at least 2 positions")

    geometry = property(lambda self: self._geom)
    numerics = property(lambda self: self._numerics)
    set_layout = property(lambda self: self._set_layout)

    @property
    def weight_sets(self):
        """``R * G`` weight sets streamed per image (address order)."""
        return self._geom.out_groups * self._geom.groups

    @property
    def weights_per_image(self):
        """Weight words per image: ``R * G * P * S * K * K`` (padding lanes included)."""
        g = self._geom
        return self.weight_sets * g.p * g.s * g.kernel * g.kernel

    def _sweep_end(self):
        """Cycle (from the first input transfer, no stalls, sets at hand, idle before) in which
        the last window of an image's last set is taken: the store fills (``npix`` cycles), the
        replay starts one cycle later at the first pixel's scan step, the first window leaves
        the line buffer ``LineBuffer.latency`` after its last scan step, and the ``R*G`` replays
        follow each other every ``vheight * vwidth`` cycles."""
        lg = self._lb_geometry()
        vw = lg.vwidth
        p0 = lg.pad[0] * vw + lg.pad[1]
        k, st = lg.k, lg.stride
        e_last = ((lg.out_height - 1) * st + k - 1) * vw + (lg.out_width - 1) * st + k - 1
        return (self._npix + 1 + (e_last - p0) + LineBuffer.latency
                + (self.weight_sets - 1) * lg.vheight * vw)

    def _mac(self, m, win, wset, r, g):
        """Per-lane exact dot products of one window with one weight set (comb)."""
        raise NotImplementedError  # pragma: no cover - overridden

    def _build_core(self, m, *, in_port, tap, out_stream):
        """Frame store -> line buffer replay -> MAC -> accumulator -> drain -> ``out_stream``."""
        g = self._geom
        nm = self._numerics
        R, G = g.out_groups, g.groups
        iw = len(in_port.payload[0])
        L, Q, NPIX, NPOS = self._acc_lanes, self._q, self._npix, self._npos
        lanes_in = self._in_lanes
        aw_acc = nm.acc_width
        RG = R * G

        # ---- frame store: two banks of NPIX pixels, each replayed R*G times -------------------
        store = Memory(shape=_vec(iw, lanes_in), depth=2 * NPIX, init=[])
        m.submodules.store = store
        swp, srp = store.write_port(), store.read_port()
        full = [Signal(name=f"bank_full{b}") for b in range(2)]
        wbank = Signal()
        wpix = Signal(range(NPIX))
        bank_free = Mux(wbank, full[1], full[0]) == 0
        if tap is not None:
            m.submodules.tap = tapf = SyncFIFOBuffered(width=iw * lanes_in, depth=3)
            m.d.comb += [
                tap.valid.eq(tapf.r_rdy),
                tap.payload.eq(tapf.r_data),
                tapf.r_en.eq(tap.ready),
                tapf.w_data.eq(in_port.payload),
                in_port.ready.eq(bank_free & tapf.w_rdy),
            ]
        else:
            m.d.comb += in_port.ready.eq(bank_free)
        write = in_port.valid & in_port.ready
        if tap is not None:
            m.d.comb += tapf.w_en.eq(write)
        wlast = wpix == NPIX - 1
        m.d.comb += [swp.addr.eq(wbank * NPIX + wpix), swp.data.eq(in_port.payload),
                     swp.en.eq(write)]
        with m.If(write):
            m.d.sync += wpix.eq(Mux(wlast, 0, wpix + 1))
            with m.If(wlast):
                m.d.sync += wbank.eq(~wbank)

        lb = self._line_buffer(m, iw)
        rbank = Signal()
        rloops = _Loops(m, [RG, NPIX], "replay")
        r_valid = Signal()
        advance = ~r_valid | lb.i_ready
        issue = advance & Mux(rbank, full[1], full[0])
        rloops.step(issue)
        rlast = rloops.all_max(0)
        with m.If(issue & rlast):
            m.d.sync += rbank.eq(~rbank)
        for b in range(2):
            with m.If(write & wlast & (wbank == b)):
                m.d.sync += full[b].eq(1)
            with m.If(issue & rlast & (rbank == b)):
                m.d.sync += full[b].eq(0)
        with m.If(advance):
            m.d.sync += r_valid.eq(issue)
        m.d.comb += [srp.addr.eq(rbank * NPIX + rloops.idx[1]), srp.en.eq(advance)]
        lb.connect_input(m, r_valid, srp.data)

        # ---- weight registers: current set and one prefetched set -------------------------------
        cur = Signal(self._set_layout, name="w_cur")
        nxt = Signal(self._set_layout, name="w_nxt")
        cur_valid = Signal()
        nxt_full = Signal()
        w = self.w
        m.d.comb += w.ready.eq(~nxt_full)
        with m.If(w.valid & w.ready):
            m.d.sync += [nxt.eq(w.payload), nxt_full.eq(1)]

        # ---- MAC and read-modify-write accumulation --------------------------------------------
        # two halves used by alternate images, each its own memory with one read port that
        # serves the sweeps' reads or, while the half drains, the drain (a second read port on
        # one memory of both halves would make synthesis build the memory twice)
        HALF = Q * NPOS
        halves = []
        for h in range(2):
            mem = Memory(shape=_vec(aw_acc, L), depth=HALF, init=[])
            m.submodules[f"acc{h}"] = mem
            halves.append((mem.write_port(), mem.read_port()))
        acc_full = [Signal(name=f"acc_full{h}") for h in range(2)]
        mh = Signal()                                   # half the sweeps write
        sloops = _Loops(m, [R, G, NPOS], "sweep")
        r_i, g_i, pos_i = sloops.idx
        d_valid = Signal()                              # the drain's read stage holds a word
        dh_q = Signal()                                 # of this half
        take = (lb.o_valid & cur_valid & ~Mux(mh, acc_full[1], acc_full[0])
                & ~(d_valid & (dh_q == mh)))
        m.d.comb += [lb.o_ready.eq(take), self.busy.eq(take)]
        sloops.step(take)
        set_last = sloops.all_max(2)
        img_last = sloops.all_max(0)
        with m.If((~cur_valid | (take & set_last)) & nxt_full):
            m.d.sync += [cur.eq(nxt), cur_valid.eq(1), nxt_full.eq(0)]
        with m.Elif(take & set_last):
            m.d.sync += cur_valid.eq(0)
        q_i, first = self._acc_index(r_i, g_i)
        dot = self._mac(m, lb.window, cur, r_i, g_i)
        dot_q = [Signal(signed(len(d) + 1), name=f"dot_q{lane}") for lane, d in enumerate(dot)]
        addr = Signal(range(max(HALF, 2)))
        m.d.comb += addr.eq(q_i * NPOS + pos_i)
        addr_q = Signal.like(addr)
        mh_q = Signal()                                 # the half of the write in flight
        first_q = Signal()
        wen_q = Signal()
        ilast_q = Signal()
        m.d.sync += [wen_q.eq(take), ilast_q.eq(take & img_last)]
        with m.If(take):
            m.d.sync += [addr_q.eq(addr), mh_q.eq(mh), first_q.eq(first)]
            for lane in range(L):
                m.d.sync += dot_q[lane].eq(dot[lane])
        with m.If(take & img_last):
            m.d.sync += mh.eq(~mh)
        sums = Signal(_vec(aw_acc, L))
        acc_rd = Signal(_vec(aw_acc, L))                # the sweep's read (half mh_q)
        drain_rd = Signal(_vec(aw_acc, L))              # the drain's read (half dh_q)
        acc_ovf = Signal(range(L + 1))
        ovf_bits = []
        for lane in range(L):
            s, ovf = saturate(Mux(first_q, 0, acc_rd[lane]) + dot_q[lane], aw_acc)
            m.d.comb += sums[lane].eq(s)
            ovf_bits.append(ovf)
        m.d.comb += acc_ovf.eq(tree_sum(ovf_bits))
        with m.If(wen_q):
            m.d.sync += self.acc_overflows.eq(self.acc_overflows + acc_ovf)
        wh = Signal()                                   # half of the write in flight
        with m.If(ilast_q):
            m.d.sync += wh.eq(~wh)
            for h in range(2):
                with m.If(wh == h):
                    m.d.sync += acc_full[h].eq(1)

        # ---- drain: per position the Q words of L lanes, requantised, gathered -----------------
        dh = Signal()
        dloops = _Loops(m, [NPOS, Q], "drain")
        word = stream.Signature(_vec(self._out_fmt.width, L)).create(path=("drained",))
        d_adv = ~d_valid | word.ready
        d_issue = d_adv & Mux(dh, acc_full[1], acc_full[0])
        dloops.step(d_issue)
        dlast = dloops.all_max(0)
        with m.If(d_issue & dlast):
            m.d.sync += dh.eq(~dh)
            for h in range(2):
                with m.If(dh == h):
                    m.d.sync += acc_full[h].eq(0)
        with m.If(d_adv):
            m.d.sync += [d_valid.eq(d_issue), dh_q.eq(dh)]
        d_addr = Signal.like(addr)
        m.d.comb += [d_addr.eq(dloops.idx[1] * NPOS + dloops.idx[0]), word.valid.eq(d_valid)]
        for h, (wp, rp) in enumerate(halves):
            # the drain owns the half's read port from its first read until its last word has
            # left the read stage (the sweeps do not take into the half until then)
            drains = (acc_full[h] & (dh == h)) | (d_valid & (dh_q == h))
            m.d.comb += [
                wp.addr.eq(addr_q), wp.en.eq(wen_q & (mh_q == h)), wp.data.eq(sums),
                rp.addr.eq(Mux(drains, d_addr, addr)),
                rp.en.eq(Mux(drains, d_adv, take & (mh == h))),
            ]
        m.d.comb += [
            acc_rd.eq(Mux(mh_q, halves[1][1].data, halves[0][1].data)),
            drain_rd.eq(Mux(dh_q, halves[1][1].data, halves[0][1].data)),
        ]
        out_bits = []
        for lane in range(L):
            v, ovf = requantize(drain_rd[lane], self._frac_in, self._out_fmt)
            m.d.comb += word.payload[lane].eq(v)
            out_bits.append(ovf)
        with m.If(word.valid & word.ready):
            m.d.sync += self.out_overflows.eq(self.out_overflows + tree_sum(out_bits))
        d_last = Signal()                               # the word in the read stage ends the image
        with m.If(d_adv):
            m.d.sync += d_last.eq(d_issue & dlast)
        m.d.comb += self.done.eq(word.valid & word.ready & d_last)
        _gather(m, src=word, dst=out_stream, words=Q, lanes_in=L, lanes_out=self._out_lanes,
                name="gather")


class WSFPLayer(_WSLayer):
    """Weight-stationary forward propagation of a borrowed conv segment.

    The weights are not stored here: each image's ``R * G`` weight sets arrive on ``w`` from the
    lender (:class:`Lender`), once per image, in address order ``j = r*G + g`` (``r`` output
    group of ``P`` channels outer, ``g`` input group of ``S`` channels inner; the set layout and
    lane order of ``docs/hw-node.md``, "Weight address map"). Per image:

    1. the ``H x W`` input pixels (``C`` lanes) are written into one bank of a two-bank frame
       store (the other bank is being replayed) and passed on ``act`` (Act-RAM tap for PG);
    2. for each weight set ``(r, g)`` in turn the stored map is replayed through a
       :class:`LineBuffer` (FP geometry, all ``C`` lanes); each of the ``Ho x Wo`` windows is
       multiplied with the set (``P x S x K x K`` multipliers, one window per cycle):
       ``acc[r][pos][e] (+)= sum_{s,ky,kx} win[g*S+s][ky][kx] * set[e*S+s][ky][kx]``, written
       (``g = 0``) or added (read-modify-write) into accumulators of ``2 x R x Ho*Wo``
       words of ``P`` lanes (two halves for alternate images, each its own memory whose one
       read port serves the sweeps or, while the half drains, the drain);
    3. the finished half drains position by position (``R`` words of ``P`` lanes), each
       requantised to the activation format and gathered into one ``OC``-lane word, then ReLU
       and max-pool as in :class:`~fpdeep_hw.node.fp_layer.FPLayer`.

    The next set is prefetched into a second weight register while the current one is swept.
    Cycles per image without stalls: ``R * G`` replays of the line buffer's virtual map
    (``(H + 2P) * (W + 2P)`` scan steps each at stride 1; see :attr:`cycles_per_image`).
    The version of the weights is the lender's business (it streams the version the spec's rule
    gives for each image); this block has no gate.

    Parameters
    ----------
    segment : SegmentPlan
        The borrowed ``whole`` conv segment (``engines.fp`` gives ``P``, ``S``, ``kernel``).
    network : Network
    numerics : NumericsConfig

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(activation.width), C)))``
        Input pixels, raster order.
    w : ``In(stream.Signature(weight_set_layout(weight, K, P*S)))``
        Weight sets from the lender, ``R * G`` per image in address order.
    o : ``Out(stream.Signature(ArrayLayout(signed(activation.width), OC)))``
        Output pixels (after ReLU / pool).
    act : ``Out(stream.Signature(ArrayLayout(signed(activation.width), C)))``
        Tap of the input pixels for the Act-RAM.
    mask : ``Out(stream.Signature(ArrayLayout(1, OC)))``
        ReLU masks (only with a ReLU).
    arg : ``Out(stream.Signature(ArrayLayout(arg_bits(pool_k), OC)))``
        Argmax of the pooled pixels (only with a max-pool).
    done : ``Out(1)``
        Pulse with the last drained accumulator word of an image.
    busy : ``Out(1)``
        A window meets a weight set this cycle (multiplier utilisation).
    acc_overflows, out_overflows : ``Out(32)``
        Clamped accumulator elements (zero in a valid run) and activation requantisation clamps.
    """

    _owner = "WSFPLayer"

    def _setup(self):
        g, nm = self._geom, self._numerics
        aw = nm.activation.width
        self._in_lanes, self._out_lanes = g.in_channels, g.out_channels
        self._acc_lanes, self._q = g.p, g.out_groups
        self._npix, self._npos = g.pixels, g.conv_height * g.conv_width
        icp = g.split == "icp"
        # an ICP slice: its sums rounded to the partial format, added to the upstream ones
        self._out_fmt = nm.partial if icp else nm.activation
        self._frac_in = nm.activation.frac + nm.weight.frac
        ow = aw if g.completes else nm.partial.width
        members = {
            "i": In(stream.Signature(_vec(aw, g.in_channels))),
            "w": In(stream.Signature(self._set_layout)),
            "o": Out(stream.Signature(_vec(ow, g.out_channels))),
            "act": Out(stream.Signature(_vec(aw, g.in_channels))),
            "done": Out(1),
            "busy": Out(1),
            "acc_overflows": Out(32),
            "out_overflows": Out(32),
        }
        if icp:
            members["add_overflows"] = Out(32)
            if not g.icp_first:
                members["up"] = In(stream.Signature(_vec(nm.partial.width, g.out_channels)))
        if g.relu:
            members["mask"] = Out(stream.Signature(data.ArrayLayout(1, g.out_channels)))
        if g.pool is not None:
            members["arg"] = Out(stream.Signature(
                data.ArrayLayout(arg_bits(g.pool[0]), g.out_channels)))
        wiring.Component.__init__(self, members)

    def _lb_geometry(self):
        g = self._geom
        return Geometry(g.height, g.width, g.kernel, stride=g.stride, pad=g.pad)

    @property
    def cycles_per_image(self):
        """Scan steps per image without stalls: ``R * G`` replays of the virtual map."""
        lg = self._lb_geometry()
        return self.weight_sets * lg.vheight * lg.vwidth

    @property
    def latency(self):
        """Cycles from the transfer of an image's first input pixel to its first output word
        (no stalls, every weight set at hand, the module idle before, pixels at full rate):
        the end of the last set's sweep, 3 cycles to the first drained word, the ``R`` words of
        each gathered pixel (with a pool: the ``n1 + 1`` pixels up to the first complete
        window), ReLU and fork (2), max-pool and fork."""
        g = self._geom
        R = g.out_groups
        t = self._sweep_end() + 3
        if g.pool is None:
            return t + R + (2 if g.relu else 0)
        pk = g.pool[0]
        n1 = (min(pk, g.conv_height) - 1) * g.conv_width + min(pk, g.conv_width) - 1
        return t + (n1 + 1) * R + (2 if g.relu else 0) + MaxPool.LATENCY + 1

    def _line_buffer(self, m, iw):
        g = self._geom
        return LineBufferRuns(m, "lb", channels=g.in_channels, k=g.kernel, width=iw,
                              make=lambda c: LineBuffer(height=g.height, width=g.width,
                                                        channels=c, k=g.kernel, stride=g.stride,
                                                        pad=g.pad, shape=signed(iw)))

    def _acc_index(self, r, g):
        return r, (g == 0) if self._geom.groups > 1 else Const(1, 1)

    def _mac(self, m, win, wset, r, gi):
        g = self._geom
        K, P, S, C, G = g.kernel, g.p, g.s, g.in_channels, g.groups
        aw = self._numerics.activation.width
        sel = Signal(_win(aw, K, S), name="win_sel")
        for gg in range(G):
            with m.If(gi == gg):
                for s in range(S):
                    c = gg * S + s
                    m.d.comb += sel[s].eq(win[c] if c < C else 0)
        out = []
        for e in range(P):
            terms = [sel[s][ky][kx] * wset[e * S + s][ky][kx]
                     for s in range(S) for ky in range(K) for kx in range(K)]
            out.append(tree_sum(terms))
        return out

    def elaborate(self, platform):
        m = Module()
        g, nm = self._geom, self._numerics
        OC = g.out_channels
        gathered = stream.Signature(_vec(self._out_fmt.width, OC)).create(path=("gathered",))
        self._build_core(m, in_port=self.i, tap=self.act, out_stream=gathered)
        cur = gathered
        if g.split == "icp":
            # as FPLayer: the slice's partial sums plus the upstream ones (the last slice rounds
            # the total to the activation format)
            m.submodules.adder = adder = PartialAdder(
                lanes=OC, partial=nm.partial, output=nm.activation if g.completes else None,
                first=g.icp_first)
            wiring.connect(m, cur, adder.local)
            if not g.icp_first:
                wiring.connect(m, wiring.flipped(self.up), adder.upstream)
            m.d.comb += self.add_overflows.eq(adder.overflows)
            cur = adder.o
        _post_ops(m, self, cur, g, nm)
        return m


def _win(width, k, lanes):
    return data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(signed(width), k), k), lanes)


class WSEBLayer(_WSLayer):
    """Weight-stationary error backpropagation of a borrowed conv segment.

    Per image the ``Ho x Wo`` output errors ``E_out`` (``OC`` lanes, raster order, after pool
    and ReLU backward) are stored in a two-bank frame store; for each weight set ``(r, g)`` as
    it arrives on ``w`` (``R * G`` per image, address order ``r*G + g``, the layout of
    :class:`WSFPLayer`) the stored map is replayed through a transposed :class:`LineBuffer`
    (``LineBuffer.transposed``: zero insertion, padding ``K-1-P``, flipped windows, all ``OC``
    lanes) and each of the ``H x W`` windows is multiplied with the set:
    ``acc[g][pos][s] (+)= sum_{e,ky,kx} win[r*P+e][ky][kx] * set[e*S+s][ky][kx]`` (written for
    ``r = 0``, added after), in accumulators of ``2 x G x H*W`` words of ``S`` lanes (two
    halves in two memories, as :class:`WSFPLayer`).
    The finished half drains position by position (``G`` words of ``S`` lanes) requantised
    from ``error.frac + weight.frac`` to the error format and gathered to ``C`` lanes.

    Parameters
    ----------
    As :class:`WSFPLayer` (the segment must have EB engines).

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(error.width), OC)))``
        ``E_out`` in raster order.
    w : ``In(stream.Signature(weight_set_layout(weight, K, P*S)))``
        Weight sets from the lender, ``R * G`` per image in address order.
    o : ``Out(stream.Signature(ArrayLayout(signed(error.width), C)))``
        ``E_in`` in raster order.
    done, busy, acc_overflows, out_overflows
        As :class:`WSFPLayer` (``out_overflows``: error requantisation clamps).
    """

    _owner = "WSEBLayer"

    def _setup(self):
        g, nm = self._geom, self._numerics
        if not g.has_eb:
            raise ValueError(f"WSEBLayer: segment {g.name!r} has no EB")
        ew = nm.error.width
        self._in_lanes, self._out_lanes = g.out_channels, g.in_channels
        self._acc_lanes, self._q = g.s, g.groups
        self._npix, self._npos = g.conv_height * g.conv_width, g.pixels
        ocp = g.split == "ocp"
        # an OCP slice: its errors rounded to the partial format, added along the span
        self._out_fmt = nm.partial if ocp else nm.error
        self._frac_in = nm.error.frac + nm.weight.frac
        ow = nm.partial.width if ocp and not g.ocp_eb_last else ew
        members = {
            "i": In(stream.Signature(_vec(ew, g.out_channels))),
            "w": In(stream.Signature(self._set_layout)),
            "o": Out(stream.Signature(_vec(ow, g.in_channels))),
            "done": Out(1),
            "busy": Out(1),
            "acc_overflows": Out(32),
            "out_overflows": Out(32),
        }
        if ocp:
            members["add_overflows"] = Out(32)
            if not g.ocp_eb_first:
                members["up"] = In(stream.Signature(_vec(nm.partial.width, g.in_channels)))
        wiring.Component.__init__(self, members)

    def _lb_geometry(self):
        g = self._geom
        return eb_geometry(g.height, g.width, g.kernel, g.stride, g.pad)

    @property
    def cycles_per_image(self):
        """Scan steps per image without stalls: ``R * G`` replays of the transposed virtual map."""
        eg = self._lb_geometry()
        return self.weight_sets * eg.vheight * eg.vwidth

    @property
    def latency(self):
        """Cycles from the transfer of an image's first ``E_out`` word to its first ``E_in``
        word (no stalls, sets at hand, idle before): the end of the last set's sweep, 3 cycles
        to the first drained word, ``G`` words gathered."""
        return self._sweep_end() + 3 + self._geom.groups

    def _line_buffer(self, m, iw):
        g = self._geom
        return LineBufferRuns(m, "lb", channels=g.out_channels, k=g.kernel, width=iw,
                              make=lambda c: LineBuffer.transposed(
                                  height=g.height, width=g.width, channels=c, k=g.kernel,
                                  stride=g.stride, pad=g.pad, shape=signed(iw)))

    def _acc_index(self, r, g):
        return g, (r == 0) if self._geom.out_groups > 1 else Const(1, 1)

    def _mac(self, m, win, wset, ri, gi):
        g = self._geom
        K, P, S, OC, R = g.kernel, g.p, g.s, g.out_channels, g.out_groups
        ew = self._numerics.error.width
        sel = Signal(_win(ew, K, P), name="win_sel")
        for rr in range(R):
            with m.If(ri == rr):
                for e in range(P):
                    o = rr * P + e
                    m.d.comb += sel[e].eq(win[o] if o < OC else 0)
        out = []
        for s in range(S):
            terms = [sel[e][ky][kx] * wset[e * S + s][ky][kx]
                     for e in range(P) for ky in range(K) for kx in range(K)]
            out.append(tree_sum(terms))
        return out

    def elaborate(self, platform):
        m = Module()
        g, nm = self._geom, self._numerics
        if g.split != "ocp":
            self._build_core(m, in_port=self.i, tap=None, out_stream=wiring.flipped(self.o))
            return m
        # as EBLayer: the slice's partial errors plus those of the later slices (the span's
        # first slice rounds the total to the error format)
        C = g.in_channels
        gathered = stream.Signature(_vec(self._out_fmt.width, C)).create(path=("gathered",))
        self._build_core(m, in_port=self.i, tap=None, out_stream=gathered)
        m.submodules.adder = adder = PartialAdder(
            lanes=C, partial=nm.partial, output=nm.error if g.ocp_eb_last else None,
            first=g.ocp_eb_first)
        wiring.connect(m, gathered, adder.local)
        if not g.ocp_eb_first:
            wiring.connect(m, wiring.flipped(self.up), adder.upstream)
        m.d.comb += self.add_overflows.eq(adder.overflows)
        wiring.connect(m, adder.o, wiring.flipped(self.o))
        return m


# ---------------------------------------------------------------------------------------------
# weight-stationary PG

class _WSPGLane(wiring.Component):
    """One element of :class:`WSPGLayer`'s gradient registers: the product register (``win *
    err`` when ``en``), the exact sum over an image's positions (``acc``: the product for the
    sweep's first position, ``first``, added after; saturating at ``accw``) and the output
    register, the finished sum requantised (loaded when ``en & done``). ``acc_flag`` /
    ``out_flag`` are the lane's overflow flags. All lanes of a layer are identical (one shared
    module in the build)."""

    def __init__(self, *, aw, ew, accw, frac_in, out_fmt):
        self._aw, self._ew, self._accw = aw, ew, accw
        self._frac_in, self._out_fmt = frac_in, out_fmt
        self.key = ("wspg", aw, ew, accw, frac_in, out_fmt.width, out_fmt.frac,
                    out_fmt.rounding)
        super().__init__({
            "win": In(signed(aw)), "err": In(signed(ew)),
            "en": In(1), "valid": In(1), "first": In(1), "done": In(1),
            "out": Out(signed(out_fmt.width)), "acc_flag": Out(1), "out_flag": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        prod = Signal(signed(self._aw + self._ew))
        acc = Signal(signed(self._accw))
        total, ovf = saturating_add(acc, prod, self._accw)
        value, ovf2 = requantize(acc, self._frac_in, self._out_fmt)
        with m.If(self.en):
            m.d.sync += prod.eq(self.win * self.err)
            with m.If(self.valid):
                m.d.sync += acc.eq(Mux(self.first, prod, total))
            with m.If(self.done):
                m.d.sync += self.out.eq(value)
        m.d.comb += [
            self.acc_flag.eq(self.en & self.valid & ~self.first & ovf),
            self.out_flag.eq(self.en & self.done & ovf2),
        ]
        return m


class WSPGLayer(wiring.Component):
    """Weight-stationary parameter gradients of a borrowed conv segment.

    The drop-in for ``PGLayer(..., lgb=False)`` (same ports, same gradient sets in the same
    order): where :class:`~fpdeep_hw.node.pg_layer.PGLayer` visits every weight set at every
    position and so keeps an exact accumulator of every weight of the segment (``R * G`` words
    of ``P*S*K*K`` lanes of ``acc_width`` bits), this block visits every position for one
    weight set at a time, as :class:`WSFPLayer` and :class:`WSEBLayer` do, and keeps one set's
    sums in registers. Per image:

    1. the ``H x W`` input activations (``a``, ``C`` lanes, replayed from the Act-RAM) and the
       ``Ho x Wo`` output errors (``e``, ``OC`` lanes, after pool/ReLU backward) are written into
       one bank each of two two-bank frame stores;
    2. for each weight set ``(r, g)`` in address order ``r*G + g`` the stored activations are
       replayed through a :class:`LineBuffer` (FP geometry, all ``C`` lanes) and each window
       meets the error word of its position, read from the error store in lockstep:
       ``acc[e*S+s][ky][kx] (+)= win[g*S+s][ky][kx] * E[r*P+e]`` (``P x S x K x K``
       multipliers, one window per cycle; lanes past ``C`` or ``OC`` multiply by 0);
    3. after the set's last position its sums are requantised (``error.frac + activation.frac``
       -> ``gradient``) into the output register and leave on ``grad`` with their address,
       while the next set accumulates.

    The first sweep of an image follows the frames as they arrive (a pixel is replayed, an error
    word used, once it has been written); the later sweeps need the whole frames, and the next
    image's frames are written into the other banks meanwhile. Storage: the two frame stores
    (``2 x H*W`` words of ``C`` activations, ``2 x Ho*Wo`` words of ``OC`` errors) instead of
    the accumulator memory.

    Rounding and saturation: as :class:`PGLayer` (exact sums saturating at ``acc_width``,
    counted in ``acc_overflow``, zero in a bit-exact run; one requantisation, counted in
    ``out_overflow``); golden model :func:`sim.golden.layers.conv_pg`.

    Timing: one window per cycle whenever the line buffer has one, its error word is there and
    the output register is free or leaving (the pipeline stalls only when a finished set meets
    a full output register that is not taken). :attr:`cycles_per_image`: ``R * G`` replays of
    the line buffer's virtual map, as :class:`WSFPLayer`; :attr:`latency`: the first set.

    Parameters
    ----------
    segment : SegmentPlan
        The borrowed ``whole`` conv segment (``engines.pg`` of the FP engines' shape).
    network : Network
    numerics : NumericsConfig
    batch : int
        Mini-batch size ``B``: ``grad.last`` marks the last set of every ``B``-th image.
    lgb : bool
        ``False`` (default; a borrowed segment): no LGB, ``grad`` as below. ``True`` (a layer
        of the node's own weights, ``NodeTop(ws_pg=)``): the sets go into a local LGB and
        ``grad`` carries its mini-batch averages, ``pg_done`` strobes with an image's last set
        into it, and the ``lgb_acc_overflow`` / ``lgb_out_overflow`` members are added: the
        ports of :class:`~fpdeep_hw.node.pg_layer.PGLayer`.
    lgb_fold, lgb_mem
        With ``lgb=True``: as :class:`~fpdeep_hw.node.pg_layer.PGLayer`'s (the LGB folded;
        its accumulators off chip).

    Members
    -------
    a : ``In(stream.Signature(ArrayLayout(signed(activation.width), C)))``
    e : ``In(stream.Signature(ArrayLayout(signed(error.width), OC)))``
    grad : ``Out(stream.Signature(StructLayout({"addr", "data", "last"})))``
        Every image's ``R * G`` gradient sets in address order, in the gradient format (the
        LPRAM set layout), for the lender's BGB.
    pg_done : ``Out(1)``
        One-cycle strobe with the transfer of an image's last set.
    busy_cycles : ``Out(32)``
        Multiply steps (windows taken) so far (saturating).
    acc_overflow, out_overflow : ``Out(32)``
        Saturating counts of clamped elements.
    """

    def __init__(self, segment, network, numerics, *, batch, lgb=False, lgb_fold=1,
                 lgb_mem=None, src_loc_at=0):
        geom = _check_args("WSPGLayer", segment, network, numerics)
        if geom.kind != "conv":
            raise ValueError(f"WSPGLayer: only conv segments are built, not {geom.kind!r} "
                             f"({segment.layer!r})")
        check_pg_engines("WSPGLayer", segment, geom)
        _pos_int("WSPGLayer", "batch", batch)
        self._positions = geom.conv_height * geom.conv_width
        if self._positions < 2:
            raise ValueError("WSPGLayer: the swept map must have at least 2 positions")
        self._geom = geom
        self._numerics = numerics
        self._batch = batch
        self._lbgeom = Geometry(geom.height, geom.width, geom.kernel, stride=geom.stride,
                                pad=geom.pad)
        if not isinstance(lgb, bool):
            raise TypeError(f"WSPGLayer lgb must be a bool, not {lgb!r}")
        _pos_int("WSPGLayer", "LGB fold", lgb_fold)
        self._use_lgb, self._lgb_fold = lgb, lgb_fold
        if lgb_mem is not None and not lgb:
            raise ValueError("WSPGLayer: lgb_mem needs lgb=True")
        # the LGB of the last elaboration; an off-chip one from the start (NodeTop wires its
        # burst port)
        self._lgb_mem = lgb_mem
        self._lgb = None if lgb_mem is None else make_lgb(geom, numerics, batch, lgb_fold,
                                                         lgb_mem)
        members = pg_members(geom, numerics)
        if lgb:
            members.update(lgb_acc_overflow=Out(32), lgb_out_overflow=Out(32))
        super().__init__(members, src_loc_at=1 + src_loc_at)

    geometry = property(lambda self: self._geom)
    numerics = property(lambda self: self._numerics)
    batch = property(lambda self: self._batch)
    positions = property(lambda self: self._positions)

    @property
    def lgb(self):
        """The :class:`~fpdeep_hw.memory.grad_buffer.LGB` of the last elaboration (``lgb=True``;
        for monitoring in simulation), else ``None``."""
        return self._lgb

    @property
    def weight_sets(self):
        """``N = R * G`` gradient sets per image."""
        return self._geom.weight_sets

    @property
    def drain_order(self):
        """The addresses of an image's gradient sets in the order they leave: ``0 .. N-1``."""
        return list(range(self._geom.weight_sets))

    @property
    def steps_per_image(self):
        """Multiply steps per image: ``positions * R * G`` (as :class:`PGLayer`)."""
        return self._positions * self._geom.weight_sets

    @property
    def cycles_per_image(self):
        """Scan steps per image without stalls: ``R * G`` replays of the virtual map."""
        lg = self._lbgeom
        return self._geom.weight_sets * lg.vheight * lg.vwidth

    #: Cycles from the take of a set's last window to the set valid on ``grad``: operand
    #: registers, product, sum, requantised output.
    LATENCY = 4

    @property
    def latency(self):
        """Cycles from the transfer of the first ``a`` word after reset (in cycle 0) to the first
        gradient set valid on ``grad`` (no stalls, ``a`` at full rate, every error word written
        before its window): the line buffer scans the top padding (``p0`` steps) from cycle 0;
        pixel ``p`` is written in cycle ``p`` and can be replayed from cycle ``p + 1``, so the
        first pixel meets its scan step in cycle ``max(2, p0)``; the first sweep's last window
        leaves the line buffer ``LineBuffer.latency`` after its last scan step, then
        :attr:`LATENCY`. The ``R * G - 1`` later sets follow every ``vheight * vwidth``
        cycles."""
        lg = self._lbgeom
        vw = lg.vwidth
        p0 = lg.pad[0] * vw + lg.pad[1]
        k, st = lg.k, lg.stride
        e_last = ((lg.out_height - 1) * st + k - 1) * vw + (lg.out_width - 1) * st + k - 1
        return max(2, p0) + (e_last - p0) + LineBuffer.latency + self.LATENCY

    def elaborate(self, platform):
        m = Module()
        geo, n = self._geom, self._numerics
        P, S, K = geo.p, geo.s, geo.kernel
        C, OC = geo.in_channels, geo.out_channels
        G, R = geo.groups, geo.out_groups
        N = geo.weight_sets
        NPIX, NPOS = geo.pixels, self._positions
        aw, ew, accw = n.activation.width, n.error.width, n.acc_width
        if self._use_lgb:
            # the image's sets accumulate in a local LGB (a layer of this node's own weights);
            # ``grad`` carries its mini-batch averages, as PGLayer's
            if self._lgb_mem is None:
                self._lgb = make_lgb(geo, n, self._batch, self._lgb_fold)
            m.submodules.lgb = lgb = self._lgb
            wiring.connect(m, lgb.o, wiring.flipped(self.grad))
            q = self.grad.signature.create(path=("pg_out",))
            m.d.comb += [
                lgb.i.valid.eq(q.valid), q.ready.eq(lgb.i.ready),
                lgb.i.payload.addr.eq(q.payload.addr), lgb.i.payload.data.eq(q.payload.data),
                lgb.i.payload.batch_done.eq(q.payload.last),
                self.lgb_acc_overflow.eq(lgb.acc_overflow),
                self.lgb_out_overflow.eq(lgb.out_overflow),
            ]
        else:
            self._lgb = None
            q = self.grad

        # ---- frame stores: two banks each, written in arrival order --------------------------
        def frame_store(name, port, lanes, width, words, **read_kw):
            mem = Memory(shape=_vec(width, lanes), depth=2 * words, init=[])
            m.submodules[name] = mem
            wp = mem.write_port()
            rp = mem.read_port(**({"transparent_for": (wp,)} if read_kw.get("transparent")
                                  else {}))
            full = [Signal(name=f"{name}_full{b}") for b in range(2)]
            wbank = Signal(name=f"{name}_wbank")
            wpix = Signal(range(max(words, 2)), name=f"{name}_wpix")
            m.d.comb += port.ready.eq(~Mux(wbank, full[1], full[0]))
            write = port.valid & port.ready
            wlast = wpix == words - 1
            m.d.comb += [wp.addr.eq(wbank * words + wpix), wp.data.eq(port.payload),
                         wp.en.eq(write)]
            with m.If(write):
                m.d.sync += wpix.eq(Mux(wlast, 0, wpix + 1))
                with m.If(wlast):
                    m.d.sync += wbank.eq(~wbank)
                    for b in range(2):
                        with m.If(wbank == b):
                            m.d.sync += full[b].eq(1)

            def written(bank, idx):
                """Word ``idx`` of ``bank`` holds the image the reader expects: the bank is
                full, or the writer is filling it (with that image) and is past ``idx``."""
                return Mux(bank, full[1], full[0]) | ((wbank == bank) & (wpix > idx))
            return rp, full, written

        arp, a_full, a_written = frame_store("act_store", self.a, C, aw, NPIX)
        # the error word of a window is read ahead (the address of the next step), so a word
        # written in the cycle of its read must be seen: a transparent read port
        erp, e_full, e_written = frame_store("err_store", self.e, OC, ew, NPOS,
                                             transparent=True)

        # ---- replay: the activations through the line buffer, once per weight set ------------
        lb = LineBufferRuns(m, "lb", channels=C, k=K, width=aw, make=lambda c: LineBuffer(
            height=geo.height, width=geo.width, channels=c, k=K, stride=geo.stride,
            pad=geo.pad, shape=signed(aw)))
        rbank = Signal()
        rloops = _Loops(m, [N, NPIX], "replay")
        r_valid = Signal()
        advance = ~r_valid | lb.i_ready
        issue = advance & a_written(rbank, rloops.idx[1])
        rloops.step(issue)
        rlast = rloops.all_max(0)
        with m.If(issue & rlast):
            m.d.sync += rbank.eq(~rbank)
            for b in range(2):
                with m.If(rbank == b):
                    m.d.sync += a_full[b].eq(0)
        with m.If(advance):
            m.d.sync += r_valid.eq(issue)
        m.d.comb += [arp.addr.eq(rbank * NPIX + rloops.idx[1]), arp.en.eq(advance)]
        lb.connect_input(m, r_valid, arp.data)

        # ---- sweep: one window per step, the error word of its position ----------------------
        en = Signal()                   # the pipeline moves (a finished set has room)
        sloops = _Loops(m, [R, G, NPOS], "sweep")
        r_i, g_i, pos_i = sloops.idx
        sbank = Signal()
        take = lb.o_valid & e_written(sbank, pos_i) & en
        m.d.comb += lb.o_ready.eq(take)
        sloops.step(take)
        pos_last = sloops.at_max[2]
        img_last = sloops.all_max(0)
        with m.If(take & img_last):
            m.d.sync += sbank.eq(~sbank)
            for b in range(2):
                with m.If(sbank == b):
                    m.d.sync += e_full[b].eq(0)
        # the error store reads the word of the next step's position (the current one while
        # no window is taken): its data is the word of ``pos_i`` in every cycle
        pos_next = Mux(take, Mux(pos_last, 0, pos_i + 1), pos_i)
        bank_next = Mux(take & img_last, ~sbank, sbank)
        m.d.comb += [erp.addr.eq(bank_next * NPOS + pos_next), erp.en.eq(1)]
        with m.If(take):
            m.d.sync += self.busy_cycles.eq(Mux(self.busy_cycles == 2**32 - 1,
                                                self.busy_cycles, self.busy_cycles + 1))

        # ---- stage 1: operand lanes (padding lanes 0) ----------------------------------------
        s1_valid, s1_first, s1_last, s1_ilast = (Signal(name=f"s1_{x}")
                                                 for x in ("valid", "first", "last", "ilast"))
        s1_addr = Signal(range(max(N, 2)))
        s1_win = Signal(_win(aw, K, S))
        s1_err = Signal(_vec(ew, P))
        win = lb.window
        with m.If(en):
            m.d.sync += [s1_valid.eq(take), s1_first.eq(pos_i == 0), s1_last.eq(pos_last),
                         s1_ilast.eq(img_last), s1_addr.eq(r_i * G + g_i)]
            with m.Switch(g_i):
                for gi in range(G):
                    with (m.Case(gi) if gi < G - 1 else m.Default()):
                        m.d.sync += s1_win.eq(join(
                            (win[gi * S + s][ky][kx] if gi * S + s < C else 0
                             for s in range(S) for ky in range(K) for kx in range(K)), aw))
            with m.Switch(r_i):
                for ri in range(R):
                    with (m.Case(ri) if ri < R - 1 else m.Default()):
                        m.d.sync += s1_err.eq(join(
                            (erp.data[ri * P + e] if ri * P + e < OC else 0
                             for e in range(P)), ew))

        # ---- stage 2 (products) and 3 (sums) in the lanes; the finished set's flags ----------
        s2_valid, s2_first, s2_last, s2_ilast = (Signal(name=f"s2_{x}")
                                                 for x in ("valid", "first", "last", "ilast"))
        s2_addr = Signal.like(s1_addr)
        s3_done, s3_ilast = Signal(), Signal()
        s3_addr = Signal.like(s1_addr)
        with m.If(en):
            m.d.sync += [s2_valid.eq(s1_valid), s2_first.eq(s1_first), s2_last.eq(s1_last),
                         s2_ilast.eq(s1_ilast), s2_addr.eq(s1_addr),
                         s3_done.eq(s2_valid & s2_last), s3_ilast.eq(s2_ilast),
                         s3_addr.eq(s2_addr)]
        frac_in = n.error.frac + n.activation.frac
        lanes = []
        for k, (e, s, ky, kx) in enumerate((e, s, ky, kx) for e in range(P) for s in range(S)
                                           for ky in range(K) for kx in range(K)):
            lane = _WSPGLane(aw=aw, ew=ew, accw=accw, frac_in=frac_in, out_fmt=n.gradient)
            m.submodules[f"acc_{k}"] = shared(lane, lane.key)
            m.d.comb += [lane.win.eq(s1_win[s][ky][kx]), lane.err.eq(s1_err[e]),
                         lane.en.eq(en), lane.valid.eq(s2_valid), lane.first.eq(s2_first),
                         lane.done.eq(s3_done)]
            lanes.append(lane)
        _count_flags(m, Cat(*(lane.acc_flag for lane in lanes)), self.acc_overflow)
        _count_flags(m, Cat(*(lane.out_flag for lane in lanes)), self.out_overflow)

        # ---- output register -----------------------------------------------------------------
        q_ilast = Signal()
        img = Signal(range(max(self._batch, 2)))
        m.d.comb += [
            en.eq(~(s3_done & q.valid & ~q.ready)),
            q.payload.data.eq(join((lane.out for lane in lanes), n.gradient.width)),
            self.pg_done.eq(q.valid & q.ready & q_ilast),
        ]
        with m.If(q.valid & q.ready):
            m.d.sync += q.valid.eq(0)
        with m.If(en & s3_done):
            m.d.sync += [q.valid.eq(1), q.payload.addr.eq(s3_addr), q_ilast.eq(s3_ilast),
                         q.payload.last.eq(s3_ilast & (img == self._batch - 1))]
            with m.If(s3_ilast):
                m.d.sync += img.eq(Mux(img == self._batch - 1, 0, img + 1))
        return m


# ---------------------------------------------------------------------------------------------
# lender

class Lender(wiring.Component):
    """The lender's side of a borrowed segment: BPRAM, weight streams, BGB, update, version gate.

    Storage: a :class:`BPRAM` with the segment's ``R * G`` working weight sets
    (``P*S x K x K``, weight format; the shared address map), a :class:`WeightUpdate` holding
    the master copy, a :class:`BGB` accumulating the gradients the borrower returns.

    Weight streams (each ``R * G`` sets per image, address order ``0 .. R*G-1``):

    * ``fp_w``: FP of image ``i`` gets version ``max(0, (i - D) // B)``: read through the BPRAM's
      lending port (``lend_req`` of one set at a time) into a ``fifo_depth``-set FIFO;
    * ``eb_w``: EB of image ``i`` gets version ``i // B``: read through the BPRAM's ``rd_addr``
      port into a second FIFO.

    A read is issued only when its FIFO has room for it (so neither stream's stall can block the
    other in the shared read stage). Version rule (mirror of
    :class:`~fpdeep_hw.node.version_gate.VersionGate`): with ``v`` updates applied, FP sets of
    image ``i`` are read only while ``i < (v+1)*B + D`` and EB sets while ``i < (v+1)*B``; the
    update ``v -> v+1`` is started (``WeightUpdate.start``) once FP of images ``< (v+1)*B + D``
    and EB of images ``< (v+1)*B`` have all left the FIFOs; its write-back goes into the BPRAM
    (``wr``), its ``done`` increments ``v``. So every set read carries exactly the version the
    spec gives, whatever the stalls.

    Gradients: ``grad`` takes the borrower's per-image gradient sets (``addr``, ``data`` in the
    gradient format, ``R * G`` words per image in any address order); the lender marks the last
    word of every ``B``-th image ``batch_done`` for the BGB, whose averages feed the update.

    End of run: ``flush`` (level, raised once the borrower's FP has taken every set of its last
    image) stops the FP stream and waives the FP condition of the update, so the last
    mini-batches' updates are written and EB of the last ``D`` images gets its version (the
    :class:`~fpdeep_hw.node.version_gate.VersionGate` ``flush``). FP sets already buffered for
    a next image that never comes are left unused. An incomplete last mini-batch is not
    averaged (its gradients stay in the BGB).

    Parameters
    ----------
    segment : SegmentPlan
        The borrowed segment (as the borrower's :class:`WSFPLayer` is built from).
    network : Network
    numerics : NumericsConfig
    batch : int
        ``B``.
    lr_q : int
        Learning rate constant (``sim.golden.layers.lr_to_q``).
    lag : int, optional
        ``D``; default ``floor(segment.act_ram_images)`` (the spec's ``D_l``).
    master : array ``(OC, C, K, K)``, optional
        Initial master weights (master format integers); default zeros.
    fifo_depth : int
        Sets in flight or buffered per stream (default 2; the FIFO itself has at least 3
        entries, a Verilog-friendly depth).
    sets : (int, int), optional
        The range ``[lo, hi)`` of the segment's ``R * G`` weight sets this lender keeps (default
        all). A segment may be lent by several nodes, each keeping a contiguous range of sets
        (``NodeTop``: ranges in node order, the borrower's own share among them): the BPRAM, BGB
        and master copy hold ``hi - lo`` sets, the weight streams carry sets ``lo .. hi-1`` per
        image, and gradient addresses (of the whole segment) are taken relative to ``lo``.
    master_mem : dict, optional
        Keywords of an :class:`~fpdeep_hw.node.update.OffchipWeightUpdate` (the master copy
        off chip, burst port ``mem``); default ``None``: on chip.
    bgb_fold : int
        The BGB's ``fold`` (:class:`~fpdeep_hw.memory.grad_buffer.GradBuffer`; default 1): it
        takes the link's gradient sets far below a set per cycle; folded, its drain into the
        update gives a set every ``bgb_fold`` cycles.
    bpram_fold : int
        The BPRAM's ``fold`` (:class:`~fpdeep_hw.memory.param_ram.BPRAM`; default 1): folded,
        it gives the weight streams a set every ``bpram_fold`` cycles and takes the update's
        write-back at that pace.

    A layer without EB (the network's first) has no ``eb_w``; its version rule has no EB
    condition.

    Members
    -------
    fp_w, eb_w : ``Out(stream.Signature(weight_set_layout(weight, K, P*S)))``
        Weight sets for the borrower's FP and EB (``eb_w`` only for a layer with EB).
    grad : ``In(stream.Signature(StructLayout({"addr", "data"})))``
        Per-image gradient sets from the borrower (``data``: ``P*S x K x K`` gradient format;
        ``addr`` the set's address in the whole segment, ``lo <= addr < hi``).
    flush : ``In(1)``
        End of run (see above).
    fp_images, eb_images, grad_images, updates : ``Out(32)``
        Images whose FP / EB sets have all been sent, images of gradients received, updates
        applied (the current version).
    bgb_acc_overflow, bgb_out_overflow, update_overflow : ``Out(32)``
        Saturation counters of the BGB and the update.
    """

    def __init__(self, segment, network, numerics, *, batch, lr_q, lag=None, master=None,
                 fifo_depth=2, sets=None, master_mem=None, bgb_fold=1, bpram_fold=1):
        geom = _check_args("Lender", segment, network, numerics)
        if master_mem is not None and not isinstance(master_mem, dict):
            raise TypeError(f"Lender master_mem must be None or a dict of OffchipWeightUpdate "
                            f"keywords, not {master_mem!r}")
        self._master_mem = master_mem
        if not isinstance(bgb_fold, int) or isinstance(bgb_fold, bool) or bgb_fold < 1:
            raise ValueError(f"Lender bgb_fold must be a positive integer, not {bgb_fold!r}")
        self._bgb_fold = bgb_fold
        if not isinstance(bpram_fold, int) or isinstance(bpram_fold, bool) or bpram_fold < 1:
            raise ValueError(f"Lender bpram_fold must be a positive integer, not "
                             f"{bpram_fold!r}")
        self._bpram_fold = bpram_fold
        total = geom.out_groups * geom.groups
        if sets is None:
            sets = (0, total)
        if (not isinstance(sets, tuple) or len(sets) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in sets)
                or not 0 <= sets[0] < sets[1] <= total):
            raise ValueError(f"Lender sets must be a range (lo, hi) with 0 <= lo < hi <= "
                             f"{total}, not {sets!r}")
        self._sets = sets
        self._total_sets = total
        _pos_int("Lender", "batch", batch)
        if lag is None:
            lag = int(math.floor(segment.act_ram_images))
        _pos_int("Lender", "lag", lag, low=0)
        _pos_int("Lender", "fifo depth", fifo_depth)
        self._geom, self._numerics = geom, numerics
        self._batch, self._lag, self._fifo_depth = batch, lag, fifo_depth
        K, PS = geom.kernel, geom.p * geom.s
        RG = geom.out_groups * geom.groups
        if master is None:
            master = np.zeros((geom.out_channels, geom.in_channels, K, K), dtype=np.int64)
        master = np.asarray(master)
        mfmt = numerics.master
        if master.size and (master.min() < mfmt.min_int or master.max() > mfmt.max_int):
            raise ValueError(f"Lender master weights must fit in {mfmt.width} signed bits")
        msets = geom.pack_weights(master)[sets[0]:sets[1]]
        from sim.golden.layers import working_weight
        wsets, _ = working_weight(msets, numerics)
        self._lr_q = lr_q
        self._msets, self._wsets = msets, np.asarray(wsets, dtype=np.int64)
        if (not isinstance(lr_q, (int, np.integer)) or isinstance(lr_q, bool)
                or not 1 <= int(lr_q) < 1 << 16):
            raise ValueError(f"Lender learning rate must be an integer in 1..65535 "
                             f"(16 fractional bits), not {lr_q!r}")
        self._set_layout = weight_set_layout(numerics.weight, K, PS)
        self._grad_layout = data.StructLayout({
            "addr": range(max(RG, 2)),
            "data": weight_set_layout(numerics.gradient, K, PS)})
        self._parts = None
        self._eb = geom.has_eb
        super().__init__({
            "fp_w": Out(stream.Signature(self._set_layout)),
            **({"eb_w": Out(stream.Signature(self._set_layout))} if geom.has_eb else {}),
            "grad": In(stream.Signature(self._grad_layout)),
            "flush": In(1),
            "fp_images": Out(32), "eb_images": Out(32), "grad_images": Out(32),
            "updates": Out(32),
            "bgb_acc_overflow": Out(32), "bgb_out_overflow": Out(32),
            "update_overflow": Out(32),
            # the update's burst port: a memory word is a row of a set's `fold`
            **({"mem": Out(memory_port_signature(
                -(-PS * K * K * numerics.master.width // master_mem.get("fold", 1)),
                master_mem.get("addr_width", 32)))}
               if master_mem is not None else {}),
        })

    geometry = property(lambda self: self._geom)
    batch = property(lambda self: self._batch)
    lag = property(lambda self: self._lag)

    def _storage(self):
        """The BPRAM, the update (master copy) and the BGB, made on first use (elaboration or
        a simulation monitor reading them)."""
        if self._parts is None:
            g, nm = self._geom, self._numerics
            K, PS, RG = g.kernel, g.p * g.s, self.weight_sets
            self._parts = (
                BPRAM(fmt=nm.weight, kernel=K, lanes=PS, depth=RG, init=self._wsets,
                      fold=self._bpram_fold),
                (WeightUpdate if self._master_mem is None else OffchipWeightUpdate)(
                    numerics=nm, kernel=K, lanes=PS, depth=RG, lr_q=self._lr_q,
                    init=self._msets, **(self._master_mem or {})),
                BGB(in_fmt=nm.gradient, out_fmt=nm.gradient, acc_width=nm.grad_acc_width,
                    kernel=K, lanes=PS, depth=RG, batch=self._batch, fold=self._bgb_fold))
        return self._parts

    bpram = property(lambda self: self._storage()[0])
    update = property(lambda self: self._storage()[1])
    bgb = property(lambda self: self._storage()[2])
    set_layout = property(lambda self: self._set_layout)
    grad_layout = property(lambda self: self._grad_layout)

    sets = property(lambda self: self._sets)
    total_sets = property(lambda self: self._total_sets)
    has_eb = property(lambda self: self._eb)

    @property
    def weight_sets(self):
        """Sets this lender keeps (``hi - lo``): per image and stream."""
        return self._sets[1] - self._sets[0]

    @property
    def weights_per_image(self):
        """Weight words per image and stream: ``(hi - lo) * P*S*K*K``."""
        g = self._geom
        return self.weight_sets * g.p * g.s * g.kernel * g.kernel

    def elaborate(self, platform):
        m = Module()
        B, D, RG, depth = self._batch, self._lag, self.weight_sets, self._fifo_depth
        m.submodules.bpram = bp = self.bpram
        m.submodules.update = upd = self.update
        if self._master_mem is not None:
            wiring.connect(m, upd.mem, wiring.flipped(self.mem))
        m.submodules.bgb = bgb = self.bgb
        wiring.connect(m, upd.wr, bp.wr)
        wiring.connect(m, bgb.o, upd.grad)
        m.d.comb += [self.bgb_acc_overflow.eq(bgb.acc_overflow),
                     self.bgb_out_overflow.eq(bgb.out_overflow),
                     self.update_overflow.eq(upd.overflow)]
        width = self._set_layout.size

        flush = Signal()
        m.d.sync += flush.eq(self.flush)
        fp_limit = Signal(32, init=B + D)       # FP images < fp_limit may use the version
        eb_limit = Signal(32, init=B)
        # ---- FP stream: lending port, one set per request ----------------------------------------
        m.submodules.fp_fifo = fpf = SyncFIFOBuffered(width=width, depth=max(depth, 3))
        fp_set = Signal(range(max(RG, 2)))
        fp_iss = Signal(32)
        fp_fly = Signal(range(depth + 2))
        fp_room = (fpf.level + fp_fly) < depth
        m.d.comb += [
            bp.lend_req.valid.eq((fp_iss < fp_limit) & fp_room & ~flush),
            bp.lend_req.payload.first.eq(fp_set),
            bp.lend_req.payload.count.eq(1),
            fpf.w_en.eq(bp.lend.valid),
            fpf.w_data.eq(bp.lend.payload.data),
            bp.lend.ready.eq(fpf.w_rdy),
        ]
        req = bp.lend_req.valid & bp.lend_req.ready
        got = bp.lend.valid & bp.lend.ready
        with m.If(req):
            m.d.sync += fp_set.eq(Mux(fp_set == RG - 1, 0, fp_set + 1))
            with m.If(fp_set == RG - 1):
                m.d.sync += fp_iss.eq(fp_iss + 1)
        m.d.sync += fp_fly.eq(fp_fly + req - got)
        fp_out = Signal(range(max(RG, 2)))
        m.d.comb += [self.fp_w.valid.eq(fpf.r_rdy), self.fp_w.payload.eq(fpf.r_data),
                     fpf.r_en.eq(self.fp_w.ready)]
        with m.If(self.fp_w.valid & self.fp_w.ready):
            m.d.sync += fp_out.eq(Mux(fp_out == RG - 1, 0, fp_out + 1))
            with m.If(fp_out == RG - 1):
                m.d.sync += self.fp_images.eq(self.fp_images + 1)

        eb_fly = Signal(range(depth + 2))
        eb_iss = Signal(32)
        if self._eb:  # the network's first layer has no EB: no stream, no EB condition
            # ---- EB stream: rd_addr port ----------------------------------------------------------
            m.submodules.eb_fifo = ebf = SyncFIFOBuffered(width=width, depth=max(depth, 3))
            eb_set = Signal(range(max(RG, 2)))
            eb_room = (ebf.level + eb_fly) < depth
            m.d.comb += [
                bp.rd_addr.valid.eq((eb_iss < eb_limit) & eb_room),
                bp.rd_addr.payload.eq(eb_set),
                ebf.w_en.eq(bp.rd_data.valid),
                ebf.w_data.eq(bp.rd_data.payload),
                bp.rd_data.ready.eq(ebf.w_rdy),
            ]
            ereq = bp.rd_addr.valid & bp.rd_addr.ready
            egot = bp.rd_data.valid & bp.rd_data.ready
            with m.If(ereq):
                m.d.sync += eb_set.eq(Mux(eb_set == RG - 1, 0, eb_set + 1))
                with m.If(eb_set == RG - 1):
                    m.d.sync += eb_iss.eq(eb_iss + 1)
            m.d.sync += eb_fly.eq(eb_fly + ereq - egot)
            eb_out = Signal(range(max(RG, 2)))
            m.d.comb += [self.eb_w.valid.eq(ebf.r_rdy), self.eb_w.payload.eq(ebf.r_data),
                         ebf.r_en.eq(self.eb_w.ready)]
            with m.If(self.eb_w.valid & self.eb_w.ready):
                m.d.sync += eb_out.eq(Mux(eb_out == RG - 1, 0, eb_out + 1))
                with m.If(eb_out == RG - 1):
                    m.d.sync += self.eb_images.eq(self.eb_images + 1)
        else:
            m.d.comb += bp.rd_addr.valid.eq(0), bp.rd_data.ready.eq(1)

        # ---- gradients into the BGB -------------------------------------------------------------
        g_set = Signal(range(max(RG, 2)))
        g_img = Signal(range(max(B, 2)))
        g_last = (g_set == RG - 1) if RG > 1 else Const(1, 1)
        b_last = (g_img == B - 1) if B > 1 else Const(1, 1)
        m.d.comb += [
            bgb.i.valid.eq(self.grad.valid),
            bgb.i.payload.addr.eq(self.grad.payload.addr - self._sets[0]),
            bgb.i.payload.data.eq(self.grad.payload.data),
            bgb.i.payload.batch_done.eq(g_last & b_last),
            self.grad.ready.eq(bgb.i.ready),
        ]
        with m.If(self.grad.valid & self.grad.ready):
            if RG > 1:
                m.d.sync += g_set.eq(Mux(g_last, 0, g_set + 1))
            with m.If(g_last):
                m.d.sync += self.grad_images.eq(self.grad_images + 1)
                if B > 1:
                    m.d.sync += g_img.eq(Mux(b_last, 0, g_img + 1))

        # ---- version gate: start the update when both streams are done with the old version --
        started = Signal()
        ready_fp = (((self.fp_images >= fp_limit) & (fp_iss == fp_limit)) | flush) & \
            (fp_fly == 0)
        if self._eb:
            ready_eb = (self.eb_images >= eb_limit) & (eb_iss == eb_limit) & (eb_fly == 0)
        else:
            ready_eb = 1
        go = ready_fp & ready_eb & ~started
        m.d.comb += upd.start.eq(go)
        with m.If(go):
            m.d.sync += started.eq(1)
        with m.If(upd.done):
            m.d.sync += [started.eq(0), self.updates.eq(self.updates + 1),
                         fp_limit.eq(fp_limit + B), eb_limit.eq(eb_limit + B)]
        return m
