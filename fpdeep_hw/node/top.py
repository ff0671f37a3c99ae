"""The training node: every module of every layer a node holds, wired into one closed loop.

Generated from one node entry of a plan (``fpdeep_map.plan.Plan``): for each segment (a whole
compute layer with its ReLU / max-pool) an :class:`~fpdeep_hw.node.fp_layer.FPLayer`, its
:class:`~fpdeep_hw.memory.act_ram.ActRAM`, the mask and argmax FIFOs, a
:class:`~fpdeep_hw.node.eb_layer.BPFront`, an :class:`~fpdeep_hw.node.eb_layer.EBLayer` (not for
the first layer), a :class:`~fpdeep_hw.node.pg_layer.PGLayer`, a
:class:`~fpdeep_hw.node.update.WeightUpdate` and a
:class:`~fpdeep_hw.node.version_gate.VersionGate`; after the last layer the
:class:`~fpdeep_hw.compute.loss.LossUnit`. Data flows on chip only:

``images -> FP 1 -> FP 2 -> ... -> FP L -> loss (+ labels) -> BPFront L -> EB L -> BPFront L-1 ->
... -> BPFront 1``; each ``BPFront l`` also feeds ``PG l``, which reads ``l``'s input back from its
Act-RAM; at the end of each mini-batch ``PG l``'s averaged gradients update the master copy in
``WeightUpdate l``, which writes the working weights into the LPRAMs of ``FP l`` and ``EB l``
when the gate says the weight version may change (``docs/training-spec.md``).

Every module runs concurrently (the fine-grained pipeline): a layer starts an image as soon as its
line buffer has the rows it needs, FP of later images overlaps BP of earlier ones, and the gates
hold FP / EB at a mini-batch boundary exactly as the version rule says. The lags ``D_l`` come
from :func:`sim.golden.train.lags_from_plan`, so the RTL and the golden model agree by
construction.

A node of a multi-node plan holds a contiguous run of whole layers and exchanges activations and
errors with its neighbours through ports (``a_in``/``e_out`` towards the previous node,
``a_out``/``e_in`` towards the next); :class:`fpdeep_hw.node.cluster.Cluster` chains such nodes
through link framers and link models.

Golden model: :class:`sim.golden.train.GoldenTrainer`. Test / harness:
``tests/sim/test_train_node.py``, ``tests/sim/test_cluster.py``, ``python -m sim.train`` (``sim/train.py``). Ports, sizing and
measured figures: ``docs/hw-node.md``, "Node top".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from fpdeep_map.network import Network
from fpdeep_map.plan import Plan
from sim.golden import layers as golden
from sim.golden.train import lags_from_plan, weight_shape

from ..compute.loss import LossUnit
from ..memory.act_ram import ActRAM
from .eb_layer import BPFront, EBLayer
from .fp_layer import FPLayer, LayerGeometry, layer_geometry
from .pg_layer import PGLayer
from .update import WeightUpdate
from .version_gate import VersionGate

__all__ = ["NodeTop", "NodeLayer"]


@dataclass
class NodeLayer:
    """The modules of one layer of a :class:`NodeTop` (for simulation monitors).

    Members
    -------
    name : str
    segment : SegmentPlan
    geometry : LayerGeometry
    lag : int
        ``D_l``.
    fp, act_ram, bp, eb, pg, update, gate
        The modules (``eb`` is ``None`` for the first layer).
    mask_fifo, arg_fifo : SyncFIFOBuffered or None
        The stores of the ReLU masks and pool argmaxes between FP and BPFront.
    act_images : float
        Act-RAM capacity in images of the layer's input.
    """

    name: str
    segment: object
    geometry: LayerGeometry
    lag: int
    fp: FPLayer
    act_ram: ActRAM
    mask_fifo: SyncFIFOBuffered | None
    arg_fifo: SyncFIFOBuffered | None
    bp: BPFront
    eb: EBLayer | None
    pg: PGLayer
    update: WeightUpdate
    gate: VersionGate
    act_images: float


class NodeTop(wiring.Component):
    """A whole training node built from one node entry of a plan.

    Parameters
    ----------
    plan : fpdeep_map.plan.Plan
    node : int
        Index of the node entry. Its segments must be a contiguous run of whole compute layers,
        in order. A node holding every compute layer closes the training loop itself; otherwise
        the node takes its first layer's input from the previous node (``a_in``; the first node
        takes ``images`` from the host), hands its last layer's output to the next node
        (``a_out``) and takes the errors of that output back (``e_in``); a node that is not the
        first sends its first layer's input errors back (``e_out``). Only the node holding the
        last layer has the loss unit and ``labels``. :class:`~fpdeep_hw.node.cluster.Cluster`
        joins such nodes through links.
    network : fpdeep_map.network.Network
        The plan's network (the last compute layer an FC followed by the loss).
    lr : float
        Learning rate (``lr_q = sim.golden.layers.lr_to_q(lr)``).
    init_master : dict
        ``{compute layer: int array}`` initial master weights (master format, the golden
        model's ``weight_shape``), e.g. :func:`sim.golden.train.init_weights`.
    batch : int, optional
        Mini-batch size; default ``plan.batch``.
    fifo_images : int, optional
        Depth, in images, of the decoupling FIFOs between FP layers, on both BPFront outputs
        and after each EB (default 1; 0 connects the modules directly, which costs throughput:
        ``docs/hw-node.md``, "Node top").

    Members
    -------
    images : ``In(stream.Signature(ArrayLayout(signed(activation.width), C)))``
        First node only: input pixels (``C`` channel lanes of the network input, quantized to
        the activation format), raster order, images back to back.
    a_in : ``In(stream.Signature(ArrayLayout(signed(activation.width), C)))``
        Other nodes (instead of ``images``): the first layer's input from the previous node.
    a_out : ``Out(stream.Signature(ArrayLayout(signed(activation.width), C_out)))``
        All but the last node: the last layer's output (after ReLU / pool), for the next node.
    e_in : ``In(stream.Signature(ArrayLayout(signed(error.width), C_out)))``
        All but the last node: the errors of ``a_out``, from the next node.
    e_out : ``Out(stream.Signature(ArrayLayout(signed(error.width), C)))``
        All but the first node: the errors of the first layer's input, for the previous node.
    labels : ``In(stream.Signature(range(classes)))``
        Last node only: one word per image, in image order (taken with the image's scores by
        the loss unit).
    flush : ``In(1)``
        Level, raised by the host after the last image's last pixel was taken: the run has
        ended, so each layer's gate waives the FP condition of the update (once that layer's FP
        has finished every image that entered) and the last mini-batch's update is written.
    updates : ``Out(32)``
        Updates written by the first layer's weight update (for observation).
    images_in : ``Out(32)``
        Images whose last pixel entered the node (on ``images`` / ``a_in``).
    x_in : property
        ``images`` or ``a_in``.
    first, last : bool
        Whether the node holds the network's first / last compute layer.
    layers : list of :class:`NodeLayer`
        The modules of each layer (plain attribute, not a port).
    loss : LossUnit or None
        The loss unit (last node only).
    lags : dict
        ``{layer: D_l}``.
    """

    def __init__(self, plan, node, network, *, lr, init_master, batch=None, fifo_images=1):
        if not isinstance(plan, Plan):
            raise TypeError(f"NodeTop plan must be a Plan, not {plan!r}")
        if not isinstance(network, Network):
            raise TypeError(f"NodeTop network must be a Network, not {network!r}")
        if plan.network != network.name:
            raise ValueError(f"NodeTop: the plan is for network {plan.network!r}, not "
                             f"{network.name!r}")
        if isinstance(node, bool) or not isinstance(node, int) or not (
                0 <= node < len(plan.node_plans)):
            raise ValueError(f"NodeTop node must be an integer in 0..{len(plan.node_plans) - 1}, "
                             f"not {node!r}")
        if batch is None:
            batch = plan.batch
        if isinstance(fifo_images, bool) or not isinstance(fifo_images, int) or fifo_images < 0:
            raise ValueError(f"NodeTop fifo_images must be a non-negative integer, not "
                             f"{fifo_images!r}")
        self.fifo_images = fifo_images
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"NodeTop batch must be a positive integer, not {batch!r}")
        np_ = plan.node_plans[node]
        segs = list(np_.segments)
        for s in segs:
            if s.split != "whole":
                raise ValueError(f"NodeTop: segment {s.layer!r} of node {node} is split "
                                 f"({s.split!r}); only whole layers are built (multi-node "
                                 f"layers are not built yet)")
        compute = network.compute_layers()
        names = [l.name for l in compute]
        held = [s.layer for s in segs]
        i0 = names.index(held[0]) if held and held[0] in names else -1
        if i0 < 0 or names[i0:i0 + len(held)] != held:
            raise ValueError(f"NodeTop: node {node} holds layers {held}, but a node needs a "
                             f"contiguous run of whole compute layers of {network.name!r} in "
                             f"order: {names}")
        self._first = i0 == 0
        self._last = i0 + len(held) == len(names)
        loss_layer = next((l for l in network.layers if l.kind == "loss"), None)
        if self._last and (loss_layer is None or compute[-1].kind != "fc" or segs[-1].post):
            raise ValueError(f"NodeTop: network {network.name!r} must end in an FC layer without "
                             f"ReLU/pool followed by the loss")
        if not isinstance(init_master, dict):
            raise TypeError(f"NodeTop init_master must be a dict of arrays, not {init_master!r}")
        num = plan.numerics
        lr_q = golden.lr_to_q(lr)
        lags = lags_from_plan(plan)
        self._plan, self._node, self._network = plan, node, network
        self._numerics = num
        self._batch = batch
        self._lr_q = lr_q
        self.lags = lags
        self.layers = []
        for k, seg in enumerate(segs):
            layer = network.layer(seg.layer)
            geo = layer_geometry(seg, network)
            if seg.layer not in init_master:
                raise ValueError(f"NodeTop: no initial weights for layer {seg.layer!r}")
            master = np.asarray(init_master[seg.layer])
            if master.shape != weight_shape(layer):
                raise ValueError(f"NodeTop: initial weights of {seg.layer!r} have shape "
                                 f"{master.shape}, expected {weight_shape(layer)}")
            master = master.astype(np.int64)
            working, _ = golden.working_weight(master, num)
            lag = lags[seg.layer]
            C, HW = geo.in_channels, geo.pixels
            depth = math.ceil(seg.act_ram.words / C)
            if depth < max(lag, 1) * HW:
                raise ValueError(f"NodeTop: the Act-RAM of {seg.layer!r} ({seg.act_ram.words} "
                                 f"words = {depth} pixels of {C} lanes) cannot hold the lag of "
                                 f"{lag} images of {HW} pixels")
            fp = FPLayer(seg, network, num, weights=working)
            act = ActRAM(fmt=num.activation, lanes=C, depth=depth)
            conv_px = geo.conv_height * geo.conv_width
            out_px = geo.out_height * geo.out_width
            mask_fifo = arg_fifo = None
            if geo.relu:
                mask_fifo = SyncFIFOBuffered(width=geo.out_channels, depth=(lag + 1) * conv_px)
            if geo.pool is not None:
                arg_fifo = SyncFIFOBuffered(width=len(fp.arg.payload.as_value()),
                                            depth=(lag + 1) * out_px)
            bp = BPFront(seg, network, num)
            eb = EBLayer(seg, network, num, weights=working) if geo.has_eb else None
            if k > 0 and eb is None:
                raise ValueError(f"NodeTop: layer {seg.layer!r} has no EB engines")
            pg = PGLayer(seg, network, num, batch=batch)
            upd = WeightUpdate(numerics=num, kernel=geo.kernel, lanes=geo.p * geo.s,
                               depth=geo.weight_sets, lr_q=lr_q,
                               init=geo.pack_weights(master))
            gate = VersionGate(batch=batch, lag=lag, eb=eb is not None)
            self.layers.append(NodeLayer(
                name=seg.layer, segment=seg, geometry=geo, lag=lag, fp=fp, act_ram=act,
                mask_fifo=mask_fifo, arg_fifo=arg_fifo, bp=bp, eb=eb, pg=pg, update=upd,
                gate=gate, act_images=depth / HW))
        first = self.layers[0].geometry
        act = lambda n: stream.Signature(data.ArrayLayout(signed(num.activation.width), n))
        err = lambda n: stream.Signature(data.ArrayLayout(signed(num.error.width), n))
        members = {"images" if self._first else "a_in": In(act(first.in_channels))}
        self.loss = None
        if self._last:
            self.loss = LossUnit(numerics=num, classes=compute[-1].out_channels,
                                 kind=loss_layer.loss)
            members["labels"] = In(stream.Signature(range(self.loss.classes)))
        else:
            out_c = self.layers[-1].geometry.out_channels
            members["a_out"] = Out(act(out_c))
            members["e_in"] = In(err(out_c))
        if not self._first:
            members["e_out"] = Out(err(first.in_channels))
        members["flush"] = In(1)
        members["updates"] = Out(32)
        members["images_in"] = Out(32)
        super().__init__(members)

    plan = property(lambda self: self._plan)
    node = property(lambda self: self._node)
    network = property(lambda self: self._network)
    numerics = property(lambda self: self._numerics)
    batch = property(lambda self: self._batch)
    lr_q = property(lambda self: self._lr_q)
    first = property(lambda self: self._first)
    last = property(lambda self: self._last)

    @property
    def x_in(self):
        """The first layer's input port: ``images`` (first node) or ``a_in``."""
        return self.images if self._first else self.a_in

    @property
    def mac_units(self):
        """Multipliers of the node's CE arrays (FP, EB, PG of every layer)."""
        total = 0
        for nl in self.layers:
            k2 = nl.geometry.kernel ** 2
            arrays = 3 if nl.eb is not None else 2
            total += arrays * nl.geometry.p * nl.geometry.s * k2
        return total

    @staticmethod
    def _fifo(m, name, src, dst, depth):
        """``src -> SyncFIFOBuffered(depth) -> dst`` (payloads as bits; 0: a direct connection)."""
        if depth == 0:
            wiring.connect(m, src, dst)
            return
        fifo = SyncFIFOBuffered(width=len(src.payload.as_value()), depth=depth)
        m.submodules[name] = fifo
        m.d.comb += [
            fifo.w_stream.valid.eq(src.valid),
            fifo.w_stream.payload.eq(src.payload.as_value()),
            src.ready.eq(fifo.w_stream.ready),
            dst.valid.eq(fifo.r_stream.valid),
            dst.payload.eq(fifo.r_stream.payload),
            fifo.r_stream.ready.eq(dst.ready),
        ]

    def elaborate(self, platform):
        m = Module()
        L = self.layers
        # image counter at the input (for the per-layer flush)
        px = L[0].geometry.pixels
        in_count = Signal(range(max(px, 2)))
        in_last = Signal()
        in_xfer = self.x_in.valid & self.x_in.ready
        m.d.comb += in_last.eq(in_xfer & (in_count == px - 1))
        if px > 1:
            with m.If(in_xfer):
                m.d.sync += in_count.eq(Mux(in_count == px - 1, 0, in_count + 1))
        with m.If(in_last):
            m.d.sync += self.images_in.eq(self.images_in + 1)
        wiring.connect(m, wiring.flipped(self.x_in), L[0].fp.i)

        for k, nl in enumerate(L):
            n = nl.name
            fp, act, bp, eb, pg, upd, gate = (nl.fp, nl.act_ram, nl.bp, nl.eb, nl.pg, nl.update,
                                               nl.gate)
            m.submodules[f"{n}_fp"] = fp
            m.submodules[f"{n}_act"] = act
            m.submodules[f"{n}_bp"] = bp
            m.submodules[f"{n}_pg"] = pg
            m.submodules[f"{n}_upd"] = upd
            m.submodules[f"{n}_gate"] = gate
            if eb is not None:
                m.submodules[f"{n}_eb"] = eb
            # forward chain
            g = nl.geometry
            conv_px, out_px = g.conv_height * g.conv_width, g.out_height * g.out_width
            if k + 1 < len(L):
                self._fifo(m, f"{n}_fwd", fp.o, L[k + 1].fp.i, self.fifo_images * out_px)
            elif self._last:
                wiring.connect(m, fp.o, self.loss.z)
            else:
                wiring.connect(m, fp.o, wiring.flipped(self.a_out))
            wiring.connect(m, fp.act, act.i)
            wiring.connect(m, act.o, pg.a)
            for name, fifo in (("mask", nl.mask_fifo), ("arg", nl.arg_fifo)):
                if fifo is None:
                    continue
                m.submodules[f"{n}_{name}"] = fifo
                src, dst = getattr(fp, name), getattr(bp, name)
                m.d.comb += [
                    fifo.w_stream.valid.eq(src.valid),
                    fifo.w_stream.payload.eq(src.payload.as_value()),
                    src.ready.eq(fifo.w_stream.ready),
                    dst.valid.eq(fifo.r_stream.valid),
                    dst.payload.eq(fifo.r_stream.payload),
                    fifo.r_stream.ready.eq(dst.ready),
                ]
            # backward chain
            if eb is not None:
                self._fifo(m, f"{n}_eout_eb", bp.o, eb.i, self.fifo_images * conv_px)
                if k > 0:
                    self._fifo(m, f"{n}_ein", eb.o, L[k - 1].bp.i,
                               self.fifo_images * g.pixels)
                else:
                    self._fifo(m, f"{n}_ein", eb.o, wiring.flipped(self.e_out),
                               self.fifo_images * g.pixels)
                self._fifo(m, f"{n}_eout_pg", bp.pg, pg.e, self.fifo_images * conv_px)
            else:
                m.d.comb += bp.o.ready.eq(1)       # the first layer's E_out feeds PG only
                wiring.connect(m, bp.pg, pg.e)
            wiring.connect(m, pg.grad, upd.grad)
            # the update's write stream goes to both LPRAM copies (both always ready)
            targets = [fp.wr] + ([eb.wr] if eb is not None else [])
            ready = 1
            for t in targets:
                m.d.comb += [t.valid.eq(upd.wr.valid),
                             t.payload.eq(upd.wr.payload.as_value())]
                ready = ready & t.ready
            m.d.comb += upd.wr.ready.eq(ready)
            # the version gate
            m.d.comb += [
                gate.fp_start.eq(fp.start), fp.go.eq(gate.fp_go), gate.fp_done.eq(fp.done),
                gate.pg_done.eq(pg.pg_done),
                upd.start.eq(gate.update_start), gate.update_done.eq(upd.done),
                fp.clear_overflows.eq(0),
            ]
            if eb is not None:
                m.d.comb += [gate.eb_start.eq(eb.start), eb.go.eq(gate.eb_go),
                             gate.eb_done.eq(eb.done), eb.clear_overflows.eq(0)]
            # flush: only once this layer's FP has finished every image that entered the node
            outstanding = Signal(signed(24), name=f"{n}_outstanding")
            m.d.sync += outstanding.eq(outstanding + in_last - fp.done)
            m.d.comb += gate.flush.eq(self.flush & (outstanding == 0) & ~in_last)
        if self._last:
            m.submodules.loss = self.loss
            wiring.connect(m, wiring.flipped(self.labels), self.loss.label)
            wiring.connect(m, self.loss.o, L[-1].bp.i)
        else:
            wiring.connect(m, wiring.flipped(self.e_in), L[-1].bp.i)
        m.d.comb += self.updates.eq(L[0].gate.updates)
        return m
