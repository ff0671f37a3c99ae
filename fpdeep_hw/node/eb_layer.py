"""EB module of one layer of a node and the backward front of its ReLU / max-pool (paper 4.4, 5.4).

* :class:`BPFront` -- the errors of a layer's *output* as they arrive from above (the pooled map
  when the layer pools) and the stored argmax and mask streams -> :class:`MaxPoolBackward` ->
  :class:`ReLUBackward` -> ``E_out`` of the convolution, twice: ``o`` for the EB module and
  ``pg`` for the PG module.
* :class:`EBLayer` -- ``E_out`` (raster order, ``OC`` lanes) -> transposed line buffer (all
  ``OC`` channels) -> window replay (input-channel group ``g`` outer, output-channel group ``r``
  of ``P`` lanes inner) -> :class:`CEArray` ``.eb`` (``S`` engines of ``P`` tiles, the FP weight
  sets, read from the EB module's own LPRAM written by the same update stream, or with
  ``shared_weights`` from the second read port of the layer's one LPRAM in the node) ->
  requantise to the error format -> gather (``G`` words of ``S`` lanes -> one pixel of ``C``
  lanes) -> input errors out (raster order). FC: the one error word of ``OC`` lanes per image is
  held and replayed for every pixel and lane group of the layer below, which receives its
  errors as pixels of ``C`` lanes in raster order.

Split segments (``docs/hw-node.md``, "Split layers"): an ICP segment is a layer with ``C`` = its
input-channel slice (complete errors of those channels, no change); an **OCP** segment (``OC`` =
its output-channel slice) rounds its partial input errors of all ``C`` channels to the
``partial`` format and a :class:`~fpdeep_hw.compute.partial_adder.PartialAdder` adds the partial
errors of the next node of the span (``up``; none on the span's last node), passing the sum back
(``o`` in the partial format) or, on the span's first node, rounding it to the error format.
``BPFront`` needs no change (OCP: each node's own channels; ICP: on the completing node only).

Golden model: :mod:`sim.golden.layers` (``conv_eb``, ``ocp_conv_eb``, ``fc_eb``, ``maxpool_backward``,
``relu_backward``). Test: ``tests/hw/test_eb_layer.py``. Ports and timing: ``docs/hw-node.md``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from fpdeep_hw.compute.conv_engine import CEArray
from fpdeep_hw.compute.partial_adder import PartialAdder
from fpdeep_hw.compute.sfu import MaxPoolBackward, ReLUBackward, arg_bits
from fpdeep_hw.memory.line_buffer import LineBuffer, LineBufferRuns
from fpdeep_hw.wide import Lanes, lane_runs
from fpdeep_map.numerics import NumericsConfig
from sim.golden.line_buffer import eb_geometry

from .fp_layer import (_ImageGate, _WeightSequencer, _check_args, _fork, _gather, _lpram_reader,
                       _own_lpram, _pack_init, _replay, _vec, _weight_members, _win)

__all__ = ["BPFront", "EBLayer"]


class BPFront(wiring.Component):
    """Max-pool and ReLU backward of a layer segment: output errors in, ``E_out`` out (twice).

    Parameters
    ----------
    segment, network, numerics
        As :class:`~fpdeep_hw.node.fp_layer.FPLayer`.

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(error.width), OC)))``
        Errors of the layer's output (the pooled map with a pool), raster order.
    arg : ``In(stream.Signature(ArrayLayout(arg_bits(pool_k), OC)))``
        The FP's argmax stream of the same image (only with a max-pool).
    mask : ``In(stream.Signature(ArrayLayout(1, OC)))``
        The FP's ReLU masks of the same image (only with a ReLU).
    o, pg : ``Out(stream.Signature(ArrayLayout(signed(error.width), OC)))``
        ``E_out`` of the convolution (``conv_height x conv_width`` pixels per image), for EB
        and for PG; a word leaves on both together.
    overflows : ``Out(32)``
        Max-pool backward's saturation count (overlapping windows only).
    """

    def __init__(self, segment, network, numerics=NumericsConfig()):
        self._geom = geom = _check_args("BPFront", segment, network, numerics)
        self._numerics = numerics
        ew = numerics.error.width
        members = {
            "i": In(stream.Signature(_vec(ew, geom.out_channels))),
            "o": Out(stream.Signature(_vec(ew, geom.out_channels))),
            "pg": Out(stream.Signature(_vec(ew, geom.out_channels))),
            "overflows": Out(32),
        }
        if geom.pool is not None:
            members["arg"] = In(stream.Signature(
                data.ArrayLayout(arg_bits(geom.pool[0]), geom.out_channels)))
        if geom.relu:
            members["mask"] = In(stream.Signature(data.ArrayLayout(1, geom.out_channels)))
        super().__init__(members)

    geometry = property(lambda self: self._geom)

    @property
    def latency(self):
        """Cycles to the first ``E_out`` word, counted from the transfer of the last input word
        of pooled row 0 (with a pool) or of the first input word (without), masks waiting."""
        g = self._geom
        return ((MaxPoolBackward.LATENCY if g.pool is not None else 0)
                + (ReLUBackward.LATENCY if g.relu else 0) + 1)

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        fmt = self._numerics.error
        OC = g.out_channels
        cur = wiring.flipped(self.i)
        if g.pool is not None:
            pk, ps = g.pool
            m.submodules.unpool = unpool = MaxPoolBackward(
                fmt=fmt, lanes=OC, k=pk, stride=ps, height=g.conv_height, width=g.conv_width)
            wiring.connect(m, cur, unpool.i)
            wiring.connect(m, wiring.flipped(self.arg), unpool.arg)
            m.d.comb += self.overflows.eq(unpool.overflows)
            cur = unpool.o
        else:
            m.d.comb += self.overflows.eq(0)
        if g.relu:
            m.submodules.unrelu = unrelu = ReLUBackward(fmt=fmt, lanes=OC)
            wiring.connect(m, cur, unrelu.i)
            wiring.connect(m, wiring.flipped(self.mask), unrelu.mask)
            cur = unrelu.o
        _fork(m, src_valid=cur.valid, src_ready=cur.ready,
              branches=[(self.o, cur.payload), (self.pg, cur.payload)])
        return m


class EBLayer(wiring.Component):
    """Error back-propagation of one layer segment (conv or FC): ``E_out`` in, ``E_in`` out.

    Parameters
    ----------
    segment, network, numerics
        As :class:`~fpdeep_hw.node.fp_layer.FPLayer`; the segment must have EB engines (not the
        first compute layer) equal in shape to its FP engines.
    weights : array, optional
        Initial working weights, as for ``FPLayer`` (same address map).
    shared_weights : bool
        As for ``FPLayer``: the weights come from a shared LPRAM (``w_addr`` / ``w_data``).

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(error.width), OC)))``
        ``E_out``: conv: ``conv_height x conv_width`` pixels per image, raster order; FC: one
        word per image.
    o : ``Out(stream.Signature(ArrayLayout(signed(width), C)))``
        ``E_in``: ``H x W`` pixels of ``C`` lanes per image, raster order (FC: the pixels of the
        layer below, features C-major as the FC weights index them). ``width`` is
        ``error.width``, except on an OCP segment other than the span's first: ``partial.width``
        (partial errors of all ``C`` input channels, for the previous node's ``up``).
    up : ``In(stream.Signature(ArrayLayout(signed(partial.width), C)))``
        OCP segments but the span's last: the next node's partial errors (its ``o``).
    add_overflows : ``Out(32)``
        OCP segments: the partial adder's clamps.
    wr : ``In(stream.Signature(StructLayout({"addr", "data"})))``
        Write port of this module's LPRAM copy; feed it the same writes as the FP module's.
        With ``shared_weights=True`` there is no LPRAM inside and, instead of ``wr``,
        ``w_addr`` (out: weight-set addresses) and ``w_data`` (in: the sets one cycle later) go
        to a shared ``LPRAM(readers=2)`` (``NodeTop``: EB on its second read port).
    go, start, done, busy, acc_overflows, out_overflows, clear_overflows
        As :class:`~fpdeep_hw.node.fp_layer.FPLayer` (the gate counts ``E_out`` images;
        ``out_overflows`` counts error-format clamps).
    """

    def __init__(self, segment, network, numerics=NumericsConfig(), *, weights=None,
                 shared_weights=False):
        self._geom = geom = _check_args("EBLayer", segment, network, numerics)
        if not geom.has_eb:
            raise ValueError(f"EBLayer: layer {geom.name!r} has no EB engines")
        self._numerics = numerics
        self._init = _pack_init(geom, weights, numerics.weight, "EBLayer")
        # before any sub-block exists (a refused argument leaves no unused elaboratable)
        self._lp = _own_lpram("EBLayer", geom, numerics, self._init, shared_weights)
        ew = numerics.error.width
        pw = numerics.partial.width
        ocp = geom.split == "ocp"
        self._ce = CEArray.eb(k=geom.kernel, s=geom.s, p=geom.p, numerics=numerics,
                              out_fmt="partial" if ocp else "error")
        ow = pw if ocp and not geom.ocp_eb_last else ew
        members = {
            "i": In(stream.Signature(_vec(ew, geom.out_channels))),
            "o": Out(stream.Signature(_vec(ow, geom.in_channels))),
            "go": In(1),
            "start": Out(1),
            "done": Out(1),
            "busy": Out(1),
            "acc_overflows": Out(32),
            "out_overflows": Out(32),
            "clear_overflows": In(1),
        }
        if ocp:
            members["add_overflows"] = Out(32)
            if not geom.ocp_eb_first:
                members["up"] = In(stream.Signature(_vec(pw, geom.in_channels)))
        members.update(_weight_members(geom, numerics, self._lp))
        super().__init__(members)

    geometry = property(lambda self: self._geom)
    numerics = property(lambda self: self._numerics)

    @property
    def latency(self):
        """Cycles from the transfer of an image's first ``E_out`` word to its first ``E_in``
        word (no stalls, ``go`` high, idle before; conv layers with ``G * R >= 4``)."""
        g = self._geom
        gr = g.groups * g.out_groups
        if g.kind == "fc":
            # the weight sequencer claims the image the cycle after ``start``: its first set is
            # valid 2 cycles after the error word's transfer, one after the replayed window
            return 2 + gr + self._ce.latency
        eg = eb_geometry(g.height, g.width, g.kernel, g.stride, g.pad)
        pt, pl = eg.pad[0], eg.pad[1]
        d = (g.kernel - 1) * eg.vwidth + (g.kernel - 1) - (pt * eg.vwidth + pl)
        adder = PartialAdder.LATENCY if g.split == "ocp" else 0
        return d + LineBuffer.latency + gr + self._ce.latency + 1 + adder

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        ew = self._numerics.error.width
        K, C, OC, P, S = g.kernel, g.in_channels, g.out_channels, g.p, g.s
        R, G = g.out_groups, g.groups
        m.submodules.ce = ce = self._ce
        lp = _lpram_reader(m, self)
        m.d.comb += [
            self.acc_overflows.eq(ce.acc_overflows),
            self.out_overflows.eq(ce.out_overflows),
            ce.clear_overflows.eq(self.clear_overflows),
            self.busy.eq(ce.win.valid & ce.win.ready),
        ]
        words = g.conv_height * g.conv_width if g.kind == "conv" else 1
        gate = _ImageGate(m, go=self.go, start=self.start, words=words, name="gate")
        inner_ready = Signal()
        m.d.comb += [
            self.i.ready.eq(gate.ok & inner_ready),
            gate.transfer.eq(self.i.valid & self.i.ready),
        ]
        if g.kind == "conv":
            lb = LineBufferRuns(m, "lb", channels=OC, k=K, width=ew,
                                make=lambda c: LineBuffer.transposed(
                                    height=g.height, width=g.width, channels=c, k=K,
                                    stride=g.stride, pad=g.pad, shape=signed(ew)))
            lb.connect_input(m, self.i.valid & gate.ok, self.i.payload)
            m.d.comb += inner_ready.eq(lb.i_ready)
            _replay(m, src_valid=lb.o_valid, src_ready=lb.o_ready, src_payload=lb.window,
                    dst=ce.win, k=K, lanes_in=OC, group_lanes=P, counts=[G, R], sel=1,
                    name="replay")
            counts, strides, acc_from = [g.height * g.width, G, R], [0, 1, G], 2
        else:
            HW = g.pixels
            # the error word as 1 x 1 windows (runs of lanes where OC x ew exceeds one value)
            wins = []
            for j, (lo, hi) in enumerate(lane_runs(OC, ew)):
                w = Signal(_win(ew, 1, hi - lo), name="win" if lo == 0 and hi == OC
                           else f"win{j}")
                m.d.comb += w.eq(self.i.payload.as_value()[lo * ew:hi * ew])
                wins.append((lo, w))
            win = Lanes(wins)
            _replay(m, src_valid=self.i.valid & gate.ok, src_ready=inner_ready, src_payload=win,
                    dst=ce.win, k=1, lanes_in=OC, group_lanes=P, counts=[HW, G, R], sel=2,
                    name="replay")
            counts, strides, acc_from = [HW, G, R], [G, 1, HW * G], 2

        seq = _WeightSequencer(m, lp=lp, gate=gate, counts=counts, strides=strides,
                               acc_from=acc_from, name="wseq")
        m.d.comb += [
            ce.wt.valid.eq(lp.rd_data.valid),
            lp.rd_data.ready.eq(ce.wt.ready),
            ce.wt.payload.last.eq(seq.last),
            self.done.eq(ce.wt.valid & ce.wt.ready & seq.img_last),
        ]
        # EB engine s, tile e <- set lane e*S + s (the FP set, transposed)
        for s in range(S):
            for e in range(P):
                m.d.comb += ce.wt.payload.weights[s][e].eq(lp.rd_data.payload[e * S + s])

        cw = len(ce.o.payload[0])
        gathered = stream.Signature(_vec(cw, C)).create(path=("gathered",))
        _gather(m, src=ce.o, dst=gathered, words=G, lanes_in=S, lanes_out=C, name="gather")
        if g.split == "ocp":
            nm = self._numerics
            m.submodules.adder = adder = PartialAdder(
                lanes=C, partial=nm.partial, output=nm.error if g.ocp_eb_last else None,
                first=g.ocp_eb_first)
            wiring.connect(m, gathered, adder.local)
            if not g.ocp_eb_first:
                wiring.connect(m, wiring.flipped(self.up), adder.upstream)
            m.d.comb += self.add_overflows.eq(adder.overflows)
            wiring.connect(m, adder.o, wiring.flipped(self.o))
        else:
            wiring.connect(m, gathered, wiring.flipped(self.o))
        return m
