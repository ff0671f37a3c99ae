"""FP module of one layer of a node: activations in, activations out (paper sections 4.3, 5.3).

Built from one plan segment (``fpdeep_map.plan.SegmentPlan``), the network's layer shapes and the
plan's numerics; the engine shape ``P x S`` is the segment's ``engines.fp``. Dataflow:

* **conv**: pixels (``C`` lanes) -> image gate -> :class:`~fpdeep_hw.memory.line_buffer.LineBuffer`
  (FP geometry, all ``C`` channels) -> window replay (each window ``R x G`` times: output group
  ``r`` outer, input-channel group ``g`` of ``S`` lanes inner) -> :class:`CEArray` ``.fp``
  (``P`` engines x ``S`` tiles, weights from an :class:`LPRAM` through the weight sequencer,
  requantised to the activation format) -> gather (``R`` words of ``P`` lanes -> one word of
  ``OC`` lanes) -> :class:`ReLU` (mask out) -> :class:`MaxPool` if the segment's ``post`` has one
  (argmax out) -> activations out.
* **fc** (``kernel: 1``): pixels (``C`` lanes, ``H x W`` of them) -> image gate -> a two-bank
  pixel store -> ``R`` passes over the image's features (pixel by pixel, ``G`` groups of ``S``
  lanes each), the ``K = 1`` engines using the weight of each feature -> gather -> (ReLU if the
  segment has one; not after the last FC) -> one word of ``OC`` lanes per image.

Split segments (``docs/hw-node.md``, "Split layers"; rules: ``docs/training-spec.md``): an
**ICP** segment is built on its input-channel slice (``C`` = the slice), its CE array rounds to
the ``partial`` format, and a :class:`~fpdeep_hw.compute.partial_adder.PartialAdder` after the
gather adds the upstream node's partial sums (``up``; none on the first node of the span) and
either passes the sums on (``o`` in the partial format) or, on the completing node, rounds them
to the activation format before the ReLU / max-pool. An **OCP** segment is a layer with
``OC`` = its output-channel slice (nothing else changes).

Side outputs: the layer input tap ``act`` (every input pixel as it is consumed, for the Act-RAM
that PG replays), the ReLU ``mask`` stream and the pool ``arg`` stream (for :class:`BPFront`).

The shared blocks of the EB module (:mod:`fpdeep_hw.node.eb_layer`) live here too: the layer
geometry, the weight address map (:meth:`LayerGeometry.pack_weights`), the image gate, the window
replay, the weight sequencer and the gather stage.

Golden model: :mod:`sim.golden.layers` (``conv_fp``, ``fp_output``, ``relu``, ``maxpool``,
``fc_fp``). Test: ``tests/hw/test_fp_layer.py``. Ports, address map, gate handshake, latencies
and measured utilisation: ``docs/hw-node.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from fpdeep_hw.compute.conv_engine import CEArray
from fpdeep_hw.compute.partial_adder import PartialAdder
from fpdeep_hw.compute.sfu import MaxPool, ReLU, arg_bits, pooled_size
from fpdeep_hw.memory.line_buffer import LineBuffer, LineBufferRuns
from fpdeep_hw.memory.param_ram import LPRAM, weight_set_layout
from fpdeep_hw.wide import Lanes
from fpdeep_map.network import Network
from fpdeep_map.numerics import NumericsConfig
from fpdeep_map.plan import SegmentPlan
from sim.golden.line_buffer import Geometry

__all__ = ["LayerGeometry", "layer_geometry", "FPLayer"]


def _cdiv(a, b):
    return -(-a // b)


@dataclass(frozen=True)
class LayerGeometry:
    """Shapes of one layer segment as the FP/EB modules build them (read from the plan).

    Members
    -------
    name, kind : str
        Layer name, ``"conv"`` or ``"fc"``.
    in_channels, height, width : int
        ``C x H x W`` of the streamed input map (for an FC layer the map of the layer below,
        whose pixels arrive one by one; the features flatten C-major).
    kernel, stride, pad : int
        Convolution geometry (FC: 1, 1, 0).
    out_channels : int
        ``OC``.
    conv_height, conv_width : int
        Map after the convolution (FC: 1 x 1).
    out_height, out_width : int
        Map after the optional max-pool.
    p, s : int
        Engines and tiles of the FP (and EB) CE arrays: the segment's ``engines.fp``.
    relu : bool
        A ReLU follows (in the segment's ``post``).
    pool : (k, stride) or None
        Max-pool in the segment's ``post``.
    has_eb : bool
        The segment has EB engines (every layer but the first).
    split : str
        ``"whole"``, ``"icp"`` or ``"ocp"`` (the segment's ``split``).
    in_lo, out_lo : int
        First input / output channel of the layer this segment holds (its slice is
        ``[in_lo, in_lo + in_channels)`` and ``[out_lo, out_lo + out_channels)``).
    layer_in_channels, layer_out_channels : int
        Channels of the whole layer (``in_channels`` / ``out_channels`` for a whole segment).
    """

    name: str
    kind: str
    in_channels: int
    height: int
    width: int
    kernel: int
    stride: int
    pad: int
    out_channels: int
    conv_height: int
    conv_width: int
    out_height: int
    out_width: int
    p: int
    s: int
    relu: bool
    pool: tuple | None
    has_eb: bool
    split: str = "whole"
    in_lo: int = 0
    out_lo: int = 0
    layer_in_channels: int = 0
    layer_out_channels: int = 0

    @property
    def icp_first(self):
        """ICP: the first node of the span (no upstream partial sums)."""
        return self.split == "icp" and self.in_lo == 0

    @property
    def completes(self):
        """The segment finishes its output channels (not an ICP segment before the last)."""
        return self.split != "icp" or self.in_lo + self.in_channels == self.layer_in_channels

    @property
    def ocp_eb_first(self):
        """OCP: the first node of the backward partial-error chain (the span's last node)."""
        return self.split == "ocp" and self.out_lo + self.out_channels == self.layer_out_channels

    @property
    def ocp_eb_last(self):
        """OCP: the node that rounds the summed partial errors (the span's first node)."""
        return self.split == "ocp" and self.out_lo == 0

    @property
    def groups(self):
        """``G = ceil(C / S)``: input-channel groups of ``S`` lanes."""
        return _cdiv(self.in_channels, self.s)

    @property
    def out_groups(self):
        """``R = ceil(OC / P)``: output-channel groups of ``P`` engines."""
        return _cdiv(self.out_channels, self.p)

    @property
    def pixels(self):
        """``H * W`` pixels of the input map."""
        return self.height * self.width

    @property
    def weight_sets(self):
        """LPRAM depth: ``R * G`` (conv) or ``R * H * W * G`` (fc) sets of ``P*S x K x K``."""
        n = self.out_groups * self.groups
        return n * self.pixels if self.kind == "fc" else n

    @property
    def fp_words_per_image(self):
        """CE-array words of one image's FP (= EB): MACs / (``P*S*K*K``), padded lanes included."""
        if self.kind == "fc":
            return self.weight_sets
        return self.conv_height * self.conv_width * self.out_groups * self.groups

    @property
    def eb_words_per_image(self):
        if self.kind == "fc":
            return self.weight_sets
        return self.height * self.width * self.out_groups * self.groups

    def pack_weights(self, w):
        """LPRAM contents ``(weight_sets, P*S, K, K)`` of the weights ``w``.

        ``w`` is ``(OC, C, K, K)`` (conv) or ``(OC, C*H*W)`` (fc, features C-major). Set
        ``r*G + g`` (conv) / ``(r*H*W + pix)*G + g`` (fc) lane ``e*S + s`` holds
        ``w[r*P + e][g*S + s]`` (fc: feature ``(g*S + s)*H*W + pix``); lanes past ``OC`` or
        ``C`` hold zero. See ``docs/hw-node.md``, "Weight address map".
        """
        w = np.asarray(w, dtype=np.int64)
        K, P, S, R, G = self.kernel, self.p, self.s, self.out_groups, self.groups
        C, OC = self.in_channels, self.out_channels
        if self.kind == "fc":
            HW = self.pixels
            if w.shape != (OC, C * HW):
                raise ValueError(f"FC weights must have shape {(OC, C * HW)}, not {w.shape}")
            full = np.zeros((R * P, G * S, HW), dtype=np.int64)
            full[:OC, :C] = w.reshape(OC, C, HW)
            # [r, e, g, s, pix] -> [r, pix, g, e, s]
            t = full.reshape(R, P, G, S, HW).transpose(0, 4, 2, 1, 3)
            return t.reshape(R * HW * G, P * S, 1, 1).copy()
        if w.shape != (OC, C, K, K):
            raise ValueError(f"conv weights must have shape {(OC, C, K, K)}, not {w.shape}")
        full = np.zeros((R * P, G * S, K, K), dtype=np.int64)
        full[:OC, :C] = w
        t = full.reshape(R, P, G, S, K, K).transpose(0, 2, 1, 3, 4, 5)
        return t.reshape(R * G, P * S, K, K).copy()

    def unpack_weights(self, sets):
        """Inverse of :meth:`pack_weights` (drops the padding lanes)."""
        sets = np.asarray(sets, dtype=np.int64)
        K, P, S, R, G = self.kernel, self.p, self.s, self.out_groups, self.groups
        C, OC = self.in_channels, self.out_channels
        if self.kind == "fc":
            HW = self.pixels
            t = sets.reshape(R, HW, G, P, S).transpose(0, 3, 2, 4, 1)
            return t.reshape(R * P, G * S, HW)[:OC, :C].reshape(OC, C * HW).copy()
        t = sets.reshape(R, G, P, S, K, K).transpose(0, 2, 1, 3, 4, 5)
        return t.reshape(R * P, G * S, K, K)[:OC, :C].copy()


def layer_geometry(segment, network):
    """The :class:`LayerGeometry` of a plan segment (raises ``ValueError`` on what is not built)."""
    if not isinstance(segment, SegmentPlan):
        raise TypeError(f"Layer segment must be a SegmentPlan, not {segment!r}")
    if not isinstance(network, Network):
        raise TypeError(f"Layer network must be a Network, not {network!r}")
    if segment.split not in ("whole", "icp", "ocp"):
        raise ValueError(f"Layer {segment.layer!r}: unknown split {segment.split!r}")
    layer = network.layer(segment.layer)
    if layer.kind not in ("conv", "fc") or layer.kind != segment.kind:
        raise ValueError(f"Layer {segment.layer!r} is not a conv or fc layer")
    if layer.groups != 1:
        raise ValueError(f"Layer {segment.layer!r}: grouped convolutions are not built")
    fp = segment.engines["fp"]
    eb = segment.engines.get("eb")
    if eb is not None and (eb.p, eb.s) != (fp.p, fp.s):
        raise ValueError(f"Layer {segment.layer!r}: EB engines {eb.p}x{eb.s} differ from FP "
                         f"engines {fp.p}x{fp.s} (the weight address map is shared)")
    if layer.kind == "conv":
        c, h, w = layer.in_shape
        k, st, pad = layer.kernel, layer.stride, layer.padding
    else:
        idx = network.index(layer.name)
        c, h, w = network.layers[idx - 1].out_shape if idx > 0 else layer.in_shape
        k, st, pad = 1, 1, 0
    if fp.kernel != k:
        raise ValueError(f"Layer {segment.layer!r}: engine kernel {fp.kernel} differs from the "
                         f"layer's {k}")
    oc = layer.out_channels
    features = c if layer.kind == "conv" else c * h * w
    layer_c, layer_oc = c, oc
    in_lo = out_lo = 0
    if segment.split == "whole":
        if list(segment.in_channels) != [0, features] or list(segment.out_channels) != [0, oc]:
            raise ValueError(f"Layer {segment.layer!r}: segment channels "
                             f"{segment.in_channels} -> {segment.out_channels} are not the whole "
                             f"layer ([0, {features}] -> [0, {oc}])")
    else:
        lo, hi = (int(x) for x in segment.channels)
        total = features if segment.split == "icp" else oc
        if not 0 <= lo < hi <= total or (lo, hi) == (0, total):
            raise ValueError(f"Layer {segment.layer!r}: {segment.split} channels "
                             f"{list(segment.channels)} must be part of [0, {total}]")
        if segment.split == "icp":
            done = [0, oc] if hi == features else []
            if (list(segment.in_channels) != [lo, hi] or list(segment.out_channels) != [0, oc]
                    or list(segment.completes) != done or (hi != features and segment.post)):
                raise ValueError(f"Layer {segment.layer!r}: icp segment channels "
                                 f"{segment.in_channels} -> {segment.out_channels}, completes "
                                 f"{segment.completes}, post {list(segment.post)} do not match "
                                 f"its slice {[lo, hi]}")
            if layer.kind == "fc":
                # an fc layer is cut by features at channel boundaries of its input map (the
                # engines take whole pixels of channel lanes): features [lo, hi) are channels
                # [lo / HW, hi / HW)
                if lo % (h * w) or hi % (h * w):
                    raise ValueError(f"Layer {segment.layer!r}: icp features {[lo, hi]} are "
                                     f"not at channel boundaries of its {c} x {h} x {w} input "
                                     f"(multiples of {h * w}: split fc segments are built at "
                                     f"channel boundaries)")
                lo, hi = lo // (h * w), hi // (h * w)
            in_lo, c = lo, hi - lo
        else:
            if (list(segment.in_channels) != [0, features] or list(segment.out_channels) != [lo, hi]
                    or list(segment.completes) != [lo, hi]):
                raise ValueError(f"Layer {segment.layer!r}: ocp segment channels "
                                 f"{segment.in_channels} -> {segment.out_channels}, completes "
                                 f"{segment.completes} do not match its slice {[lo, hi]}")
            out_lo, oc = lo, hi - lo
    if layer.kind == "conv":
        g = Geometry(h, w, k, stride=st, pad=pad)
        ch, cw = g.out_height, g.out_width
        if (layer_oc, ch, cw) != tuple(layer.out_shape):
            raise ValueError(f"Layer {segment.layer!r}: output shape {layer.out_shape} differs "
                             f"from the line buffer's {(layer_oc, ch, cw)}")
    else:
        ch, cw = 1, 1
    relu, pool = False, None
    oh, ow = ch, cw
    for name in segment.post:
        post = network.layer(name)
        if post.kind == "relu":
            if pool is not None:
                raise ValueError(f"Layer {segment.layer!r}: ReLU after max-pool is not built")
            relu = True
        elif post.kind == "maxpool":
            if post.padding != 0 or not post.ceil_mode or pool is not None:
                raise ValueError(f"Layer {segment.layer!r}: max-pool {name!r} must be unpadded "
                                 f"ceil mode")
            pool = (post.kernel, post.stride)
            oh, ow = pooled_size(ch, *pool), pooled_size(cw, *pool)
        else:
            raise ValueError(f"Layer {segment.layer!r}: post layer {name!r} of kind "
                             f"{post.kind!r} is not built")
    if layer.kind == "fc" and pool is not None:
        raise ValueError(f"Layer {segment.layer!r}: max-pool after FC is not built")
    has_eb = eb is not None and layer.needs_error
    return LayerGeometry(name=segment.layer, kind=layer.kind, in_channels=c, height=h, width=w,
                         kernel=k, stride=st, pad=pad, out_channels=oc, conv_height=ch,
                         conv_width=cw, out_height=oh, out_width=ow, p=fp.p, s=fp.s, relu=relu,
                         pool=pool, has_eb=has_eb, split=segment.split, in_lo=in_lo,
                         out_lo=out_lo, layer_in_channels=layer_c, layer_out_channels=layer_oc)


def _check_args(owner, segment, network, numerics):
    if not isinstance(segment, SegmentPlan):
        raise TypeError(f"{owner} segment must be a SegmentPlan, not {segment!r}")
    if not isinstance(network, Network):
        raise TypeError(f"{owner} network must be a Network, not {network!r}")
    if not isinstance(numerics, NumericsConfig):
        raise TypeError(f"{owner} numerics must be a NumericsConfig, not {numerics!r}")
    return layer_geometry(segment, network)


def _pack_init(geom, weights, fmt, owner):
    if weights is None:
        return None
    sets = geom.pack_weights(weights)
    if sets.size and (sets.min() < fmt.min_int or sets.max() > fmt.max_int):
        raise ValueError(f"{owner} weights must fit in {fmt.width} signed bits")
    return sets


def _own_lpram(owner, geom, numerics, init, shared):
    """The module's own LPRAM, or ``None`` with ``shared_weights`` (the node's LPRAM shared by
    the layer's FP and EB modules, ``LPRAM(readers=2)``)."""
    if not isinstance(shared, bool):
        raise TypeError(f"{owner} shared_weights must be a bool, not {shared!r}")
    if shared:
        if init is not None:
            raise ValueError(f"{owner}: with shared_weights the initial weights belong to the "
                             f"shared LPRAM, not to the module")
        return None
    return LPRAM(fmt=numerics.weight, kernel=geom.kernel, lanes=geom.p * geom.s,
                 depth=geom.weight_sets, init=init)


def _weight_members(geom, numerics, lp):
    """``wr`` (the own LPRAM's write port), or with a shared LPRAM its read port: ``w_addr``
    (weight-set addresses out) and ``w_data`` (the sets in, ``LPRAM.LATENCY`` later)."""
    if lp is not None:
        return {"wr": In(stream.Signature(lp.write_layout))}
    return {
        "w_addr": Out(stream.Signature(range(max(geom.weight_sets, 2)))),
        "w_data": In(stream.Signature(weight_set_layout(numerics.weight, geom.kernel,
                                                        geom.p * geom.s))),
    }


def _lpram_reader(m, module):
    """What the module's weight sequencer reads: its own LPRAM (added to ``m``, ``wr`` connected)
    or the shared LPRAM's port (``w_addr`` / ``w_data``) under the same names."""
    lp = module._lp
    if lp is None:
        return SimpleNamespace(rd_addr=module.w_addr, rd_data=module.w_data)
    m.submodules.lpram = lp
    wiring.connect(m, wiring.flipped(module.wr), lp.wr)
    return lp


def _vec(width, lanes):
    return data.ArrayLayout(signed(width), lanes)


def _win(width, k, lanes):
    return data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(signed(width), k), k), lanes)


# ---- shared building blocks (functions adding logic to a module) -------------------------------

class _Loops:
    """Nested modulo counters (outermost first) stepping together; constants for count 1."""

    def __init__(self, m, counts, name):
        self.counts = counts
        self.idx = [Signal(range(n), name=f"{name}_i{j}") if n > 1 else Const(0, 1)
                    for j, n in enumerate(counts)]
        self.at_max = [(i == n - 1) if n > 1 else Const(1, 1) for i, n in zip(self.idx, counts)]
        self._m = m

    def all_max(self, start=0):
        v = Const(1, 1)
        for a in self.at_max[start:]:
            v = v & a
        return v

    def step(self, en):
        m = self._m
        for j in range(len(self.counts)):
            if self.counts[j] == 1:
                continue
            with m.If(en & self.all_max(j + 1)):
                m.d.sync += self.idx[j].eq(Mux(self.at_max[j], 0, self.idx[j] + 1))

    def linear(self, strides):
        v = Const(0, 1)
        for i, n, st in zip(self.idx, self.counts, strides):
            if n > 1 and st:
                v = v + i * st
        return v


class _ImageGate:
    """Image gate of an input stream: image ``j``'s first word waits until ``go`` allows it.

    ``start`` pulses (combinationally from ``go``) in the cycle permission for the next image is
    taken; ``ahead`` counts images the input side began and the weight side did not yet claim.
    """

    def __init__(self, m, *, go, start, words, name):
        self.open = Signal(name=f"{name}_open")
        self.count = Signal(range(max(words, 2)), name=f"{name}_count")
        self.ahead = Signal(range(4), name=f"{name}_ahead")
        self.claim = Signal(name=f"{name}_claim")
        room = self.ahead != 3
        self.ok = Signal(name=f"{name}_ok")
        self.transfer = Signal(name=f"{name}_transfer")
        m.d.comb += [
            self.ok.eq(self.open | (go & room)),
            start.eq(go & ~self.open & room),
        ]
        last = (self.count == words - 1) if words > 1 else Const(1, 1)
        with m.If(self.transfer):
            if words > 1:
                m.d.sync += self.count.eq(Mux(last, 0, self.count + 1))
        m.d.sync += self.open.eq(self.ok & ~(self.transfer & last))
        m.d.sync += self.ahead.eq(self.ahead + start - self.claim)


class _WeightSequencer:
    """LPRAM addresses of an image's CE words (nested loops ``counts``, address ``sum idx*stride``),
    each image claimed from the gate; ``last`` (end of accumulation: loops ``acc_from..`` at
    their maximum) and the image end travel beside the read through the LPRAM's output stage."""

    def __init__(self, m, *, lp, gate, counts, strides, acc_from, name):
        loops = _Loops(m, counts, name)
        busy = Signal(name=f"{name}_busy")
        xfer = Signal(name=f"{name}_xfer")
        m.d.comb += [
            lp.rd_addr.valid.eq(busy | (gate.ahead != 0)),
            lp.rd_addr.payload.eq(loops.linear(strides)),
            xfer.eq(lp.rd_addr.valid & lp.rd_addr.ready),
            gate.claim.eq(xfer & ~busy),
        ]
        loops.step(xfer)
        img_last = loops.all_max(0)
        with m.If(xfer):
            m.d.sync += busy.eq(~img_last)
        self.last = Signal(name=f"{name}_last")
        self.img_last = Signal(name=f"{name}_img_last")
        # mirror the LPRAM's output stage: it loads when its output is empty or taken
        with m.If(~lp.rd_data.valid | lp.rd_data.ready):
            m.d.sync += [self.last.eq(loops.all_max(acc_from)), self.img_last.eq(img_last)]


def _replay(m, *, src_valid, src_ready, src_payload, dst, k, lanes_in, group_lanes, counts, sel,
            name):
    """Hold each source window and offer it ``prod(counts)`` times on ``dst``, lane group
    ``idx[sel]`` (``group_lanes`` lanes; lanes past ``lanes_in`` read 0). Full rate: the next
    window is taken in the cycle the last word of the current one leaves. ``src_payload`` is
    one array view of windows or a :class:`~fpdeep_hw.wide.Lanes` of several (a window wider
    than one value), held in as many registers."""
    width = len(src_payload[0][0][0])
    parts = src_payload.parts if isinstance(src_payload, Lanes) else [(0, src_payload)]
    regs = [Signal(_win(width, k, len(view)), name=f"{name}_cur" if len(parts) == 1
                   else f"{name}_cur{j}", reset_less=True) for j, (_, view) in enumerate(parts)]
    cur = Lanes((lo, reg) for (lo, _), reg in zip(parts, regs))
    full = Signal(name=f"{name}_full")
    loops = _Loops(m, counts, name)
    at_last = loops.all_max(0)
    out = dst.valid & dst.ready
    take = Signal(name=f"{name}_take")
    m.d.comb += [
        dst.valid.eq(full),
        take.eq(~full | (dst.ready & at_last)),
        src_ready.eq(take),
    ]
    loops.step(out)
    with m.If(take):
        m.d.sync += full.eq(src_valid)
        with m.If(src_valid):
            m.d.sync += [reg.eq(view) for reg, (_, view) in zip(regs, parts)]
    n_groups = counts[sel]
    gidx = loops.idx[sel]

    def lane(g, t):
        c = g * group_lanes + t
        return cur[c] if c < lanes_in else 0

    if n_groups == 1:
        for t in range(group_lanes):
            m.d.comb += dst.payload[t].eq(lane(0, t))
    else:
        with m.Switch(gidx):
            for g in range(n_groups):
                with m.Case(g) if g < n_groups - 1 else m.Default():
                    for t in range(group_lanes):
                        m.d.comb += dst.payload[t].eq(lane(g, t))


def _gather(m, *, src, dst, words, lanes_in, lanes_out, name):
    """``words`` words of ``lanes_in`` lanes -> one word of the first ``lanes_out`` lanes."""
    width = len(src.payload[0])
    buf = [Signal(_vec(width, lanes_in), name=f"{name}_buf{i}", reset_less=True)
           for i in range(words - 1)]
    cnt = Signal(range(max(words, 2)), name=f"{name}_count")
    at_last = (cnt == words - 1) if words > 1 else Const(1, 1)
    m.d.comb += src.ready.eq(~at_last | ~dst.valid | dst.ready)
    xfer = src.valid & src.ready
    with m.If(dst.ready):
        m.d.sync += dst.valid.eq(0)
    with m.If(xfer):
        if words > 1:
            m.d.sync += cnt.eq(Mux(at_last, 0, cnt + 1))
            with m.If(~at_last):
                for i in range(words - 2):
                    m.d.sync += buf[i].eq(buf[i + 1])
                m.d.sync += buf[words - 2].eq(src.payload)
        with m.If(at_last):
            m.d.sync += dst.valid.eq(1)
            words_ = buf + [src.payload]
            for o in range(lanes_out):
                m.d.sync += dst.payload[o].eq(words_[o // lanes_in][o % lanes_in])


def _fork(m, *, src_valid, src_ready, branches):
    """Registered fork: ``branches`` = [(dst stream, value)], each with its own output register;
    the source is taken when every register is empty or being emptied."""
    ready = Const(1, 1)
    for dst, _ in branches:
        ready = ready & (~dst.valid | dst.ready)
    m.d.comb += src_ready.eq(ready)
    xfer = src_valid & ready
    for dst, value in branches:
        with m.If(dst.ready):
            m.d.sync += dst.valid.eq(0)
        with m.If(xfer):
            m.d.sync += [dst.valid.eq(1), dst.payload.eq(value)]


class FPLayer(wiring.Component):
    """Forward propagation of one layer segment (conv or FC, with its ReLU and max-pool).

    Streams carry no framing: images follow each other back to back and every block counts
    (``H x W`` input pixels, ``out_height x out_width`` output pixels per image; FC: one output
    word per image).

    Parameters
    ----------
    segment : SegmentPlan
        A segment of the plan (``engines.fp`` gives ``P``, ``S``, ``kernel``): ``whole``, or a
        conv ``icp`` / ``ocp`` slice (``docs/hw-node.md``, "Split layers").
    network : Network
        The network (layer shapes; the segment's ``post`` layers).
    numerics : NumericsConfig
        The plan's numerics.
    weights : array, optional
        Initial working weights in the weight format, ``(OC, C, K, K)`` (conv) or
        ``(OC, C*H*W)`` (fc), of the segment's slice (ICP ``w[:, c0:c1]``, OCP ``w[o0:o1]``);
        default zero.
    shared_weights : bool
        ``True``: no LPRAM inside; the weight sets come from a shared ``LPRAM(readers=2)``
        through ``w_addr`` / ``w_data`` (``NodeTop``: FP on its first read port, EB on the
        second; ``weights`` must then be ``None``, the LPRAM holds them). Default ``False``.

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(activation.width), C)))``
        Input pixels (raster order, ``C`` channel lanes: ICP the slice's channels).
    o : ``Out(stream.Signature(ArrayLayout(signed(width), OC)))``
        Output pixels (after ReLU / pool; FC: one word per image); ``width`` is
        ``activation.width``, except on an ICP segment that does not complete the layer:
        ``partial.width``, the partial sums of every conv output pixel (no ReLU / pool).
    up : ``In(stream.Signature(ArrayLayout(signed(partial.width), OC)))``
        ICP segments but the first of the span: the upstream node's partial sums (its ``o``),
        one word per conv output pixel, raster order.
    add_overflows : ``Out(32)``
        ICP segments: the partial adder's clamps (partial format on middle nodes, activation
        format on the completing node).
    act : ``Out(stream.Signature(ArrayLayout(signed(activation.width), C)))``
        Tap of the input pixels, in order, for the Act-RAM (PG replays them).
    mask : ``Out(stream.Signature(ArrayLayout(1, OC)))``
        ReLU masks of the conv output pixels (only with a ReLU).
    arg : ``Out(stream.Signature(ArrayLayout(arg_bits(pool_k), OC)))``
        Argmax of every pooled pixel (only with a max-pool).
    wr : ``In(stream.Signature(StructLayout({"addr", "data"})))``
        LPRAM write port (whole weight sets, ``docs/hw-node.md``); always ready. Not with
        ``shared_weights``.
    w_addr, w_data : ``Out(stream.Signature(range(max(weight_sets, 2))))``, ``In(stream.Signature(set layout))``
        With ``shared_weights`` only: the shared LPRAM's read port (``rd_addr`` / ``rd_data``).
    go : ``In(1)``
        The version gate allows the next image.
    start : ``Out(1)``
        Pulse: the next image's permission is taken (``go`` seen at an image boundary).
    done : ``Out(1)``
        Pulse: the last weight read of an image entered the CE array (FP of that image no
        longer reads the LPRAM).
    busy : ``Out(1)``
        The CE array accepts a word this cycle (utilisation).
    acc_overflows, out_overflows : ``Out(32)``
        The CE array's counters (accumulator saturations, activation requantisation clamps;
        ICP: clamps to the partial format).
    clear_overflows : ``In(1)``
        Clears the CE array's counters (not the partial adder's).
    """

    def __init__(self, segment, network, numerics=NumericsConfig(), *, weights=None,
                 shared_weights=False):
        self._geom = geom = _check_args("FPLayer", segment, network, numerics)
        self._numerics = numerics
        self._init = _pack_init(geom, weights, numerics.weight, "FPLayer")
        # before any sub-block exists (a refused argument leaves no unused elaboratable)
        self._lp = _own_lpram("FPLayer", geom, numerics, self._init, shared_weights)
        aw = numerics.activation.width
        pw = numerics.partial.width
        icp = geom.split == "icp"
        self._ce = CEArray.fp(k=geom.kernel, s=geom.s, p=geom.p, numerics=numerics,
                              out_fmt="partial" if icp else "activation")
        ow = aw if geom.completes else pw
        members = {
            "i": In(stream.Signature(_vec(aw, geom.in_channels))),
            "o": Out(stream.Signature(_vec(ow, geom.out_channels))),
            "act": Out(stream.Signature(_vec(aw, geom.in_channels))),
            "go": In(1),
            "start": Out(1),
            "done": Out(1),
            "busy": Out(1),
            "acc_overflows": Out(32),
            "out_overflows": Out(32),
            "clear_overflows": In(1),
        }
        if icp:
            members["add_overflows"] = Out(32)
            if not geom.icp_first:
                members["up"] = In(stream.Signature(_vec(pw, geom.out_channels)))
        if geom.relu:
            members["mask"] = Out(stream.Signature(data.ArrayLayout(1, geom.out_channels)))
        if geom.pool is not None:
            members["arg"] = Out(stream.Signature(
                data.ArrayLayout(arg_bits(geom.pool[0]), geom.out_channels)))
        members.update(_weight_members(geom, numerics, self._lp))
        super().__init__(members)

    geometry = property(lambda self: self._geom)
    numerics = property(lambda self: self._numerics)

    @property
    def latency(self):
        """Cycles from the transfer of an image's first input pixel to its first output word
        (no stalls, ``go`` high, the module idle before; conv layers with ``R * G >= 4``; ICP:
        upstream partial sums waiting, one ``PartialAdder.LATENCY`` more)."""
        g = self._geom
        ce = self._ce.latency
        rg = g.out_groups * g.groups
        if g.kind == "fc":
            return g.pixels + g.weight_sets + ce + 1 + (2 if g.relu else 0)
        lg = Geometry(g.height, g.width, g.kernel, stride=g.stride, pad=g.pad)
        pt, pl = lg.pad[0], lg.pad[1]
        d = (g.kernel - 1) * lg.vwidth + (g.kernel - 1) - (pt * lg.vwidth + pl)
        post = 3 if g.relu else 1          # gather, ReLU, fork
        if g.split == "icp":
            post += PartialAdder.LATENCY
        if g.pool is None:
            return d + LineBuffer.latency + rg + ce + post
        pk = g.pool[0]
        n1 = (min(pk, g.conv_height) - 1) * g.conv_width + min(pk, g.conv_width) - 1
        return d + LineBuffer.latency + (n1 + 1) * rg + ce + post + MaxPool.LATENCY + 1

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        nm = self._numerics
        aw = nm.activation.width
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

        # ---- input: image gate, Act-RAM tap ----------------------------------------------------
        gate = _ImageGate(m, go=self.go, start=self.start, words=g.pixels, name="gate")
        m.submodules.tap = tap = SyncFIFOBuffered(width=aw * C, depth=3)
        m.d.comb += [
            self.act.valid.eq(tap.r_rdy),
            self.act.payload.eq(tap.r_data),
            tap.r_en.eq(self.act.ready),
            tap.w_data.eq(self.i.payload),
        ]
        inner_ready = Signal()
        inner_valid = Signal()
        m.d.comb += [
            inner_valid.eq(self.i.valid & gate.ok & tap.w_rdy),
            self.i.ready.eq(gate.ok & tap.w_rdy & inner_ready),
            gate.transfer.eq(self.i.valid & self.i.ready),
            tap.w_en.eq(gate.transfer),
        ]

        # ---- windows into the CE array ---------------------------------------------------------
        if g.kind == "conv":
            lb = LineBufferRuns(m, "lb", channels=C, k=K, width=aw, make=lambda c: LineBuffer(
                height=g.height, width=g.width, channels=c, k=K, stride=g.stride, pad=g.pad,
                shape=signed(aw)))
            lb.connect_input(m, inner_valid, self.i.payload)
            m.d.comb += inner_ready.eq(lb.i_ready)
            _replay(m, src_valid=lb.o_valid, src_ready=lb.o_ready, src_payload=lb.window,
                    dst=ce.win, k=K, lanes_in=C, group_lanes=S, counts=[R, G], sel=1,
                    name="replay")
            n_pos = g.conv_height * g.conv_width
            counts, strides, acc_from = [n_pos, R, G], [0, G, 1], 2
        else:
            self._pixel_store(m, inner_valid, inner_ready, ce.win)
            HW = g.pixels
            counts, strides, acc_from = [R, HW, G], [HW * G, G, 1], 1

        # ---- weights ---------------------------------------------------------------------------
        seq = _WeightSequencer(m, lp=lp, gate=gate, counts=counts, strides=strides,
                               acc_from=acc_from, name="wseq")
        m.d.comb += [
            ce.wt.valid.eq(lp.rd_data.valid),
            lp.rd_data.ready.eq(ce.wt.ready),
            ce.wt.payload.last.eq(seq.last),
            self.done.eq(ce.wt.valid & ce.wt.ready & seq.img_last),
        ]
        for e in range(P):
            for s in range(S):
                m.d.comb += ce.wt.payload.weights[e][s].eq(lp.rd_data.payload[e * S + s])

        # ---- output: gather, (ICP: partial adder), ReLU, max-pool --------------------------------
        cw = len(ce.o.payload[0])
        gathered = stream.Signature(_vec(cw, OC)).create(path=("gathered",))
        _gather(m, src=ce.o, dst=gathered, words=R, lanes_in=P, lanes_out=OC, name="gather")
        cur = gathered
        if g.split == "icp":
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

    def _pixel_store(self, m, inner_valid, inner_ready, win):
        """FC: two banks of ``H*W`` pixels; bank ``b`` is replayed ``R`` times (pixel by pixel,
        ``G`` lane groups of ``S`` each) while the other one fills."""
        g = self._geom
        aw = self._numerics.activation.width
        C, S, R, G, HW = g.in_channels, g.s, g.out_groups, g.groups, g.pixels
        depth = 2 * HW
        mems = []
        for c in range(C):
            mem = Memory(shape=signed(aw), depth=depth, init=[])
            m.submodules[f"store{c}"] = mem
            mems.append((mem.write_port(), mem.read_port()))
        full = [Signal(name=f"bank_full{b}") for b in range(2)]
        wbank = Signal()
        wpix = Signal(range(max(HW, 2)))
        m.d.comb += inner_ready.eq(Mux(wbank, full[1], full[0]) == 0)
        write = inner_valid & inner_ready
        wlast = (wpix == HW - 1) if HW > 1 else Const(1, 1)
        for c, (wp, _) in enumerate(mems):
            m.d.comb += [
                wp.addr.eq(wbank * HW + wpix),
                wp.data.eq(self.i.payload[c]),
                wp.en.eq(write),
            ]
        with m.If(write):
            if HW > 1:
                m.d.sync += wpix.eq(Mux(wlast, 0, wpix + 1))
            with m.If(wlast):
                m.d.sync += wbank.eq(~wbank)
        # reader: output register = the read ports' data registers
        rbank = Signal()
        loops = _Loops(m, [R, HW, G], "store_rd")
        o_valid = Signal()
        g_q = Signal(range(max(G, 2)))
        advance = ~o_valid | win.ready
        issue = advance & Mux(rbank, full[1], full[0])
        loops.step(issue)
        rlast = loops.all_max(0)
        with m.If(issue & rlast):
            m.d.sync += rbank.eq(~rbank)
        for b in range(2):
            with m.If(write & wlast & (wbank == b)):
                m.d.sync += full[b].eq(1)
            with m.If(issue & rlast & (rbank == b)):
                m.d.sync += full[b].eq(0)
        with m.If(advance):
            m.d.sync += o_valid.eq(issue)
            if G > 1:
                m.d.sync += g_q.eq(loops.idx[2])
        for c, (_, rp) in enumerate(mems):
            m.d.comb += [rp.addr.eq(rbank * HW + loops.idx[1]), rp.en.eq(advance)]
        m.d.comb += win.valid.eq(o_valid)
        if G == 1:
            for t in range(S):
                m.d.comb += win.payload[t][0][0].eq(mems[t][1].data if t < C else 0)
        else:
            with m.Switch(g_q):
                for gi in range(G):
                    with m.Case(gi) if gi < G - 1 else m.Default():
                        for t in range(S):
                            c = gi * S + t
                            m.d.comb += win.payload[t][0][0].eq(mems[c][1].data if c < C else 0)


def _post_ops(m, comp, cur, g, nm):
    """The output tail of an FP layer: ReLU (mask out), max-pool (argmax out), then ``comp.o``.

    ``cur`` is the stream of finished activations (``g.out_channels`` lanes); ``comp`` has the
    ports ``o``, ``mask`` and ``arg`` (shared by FPLayer and the weight-stationary WSFPLayer).
    """
    aw, OC = nm.activation.width, g.out_channels
    if g.relu:
        m.submodules.relu = relu = ReLU(fmt=nm.activation, lanes=OC)
        wiring.connect(m, cur, relu.i)
        dst = comp.o if g.pool is None else \
            stream.Signature(_vec(aw, OC)).create(path=("relu_out",))
        _fork(m, src_valid=relu.o.valid, src_ready=relu.o.ready,
              branches=[(dst, relu.o.payload.data), (comp.mask, relu.o.payload.mask)])
        cur = dst
    if g.pool is not None:
        pk, ps = g.pool
        m.submodules.pool = pool = MaxPool(fmt=nm.activation, lanes=OC, k=pk, stride=ps,
                                           height=g.conv_height, width=g.conv_width)
        wiring.connect(m, cur, pool.i)
        _fork(m, src_valid=pool.o.valid, src_ready=pool.o.ready,
              branches=[(comp.o, pool.o.payload.max), (comp.arg, pool.o.payload.arg)])
    elif not g.relu:
        wiring.connect(m, cur, wiring.flipped(comp.o))
