"""The training node: every module of every layer (or layer slice) a node holds, wired into one
closed loop with its neighbours.

Generated from one node entry of a plan (``fpdeep_map.plan.Plan``). For each segment -- a whole
compute layer with its ReLU / max-pool, or the node's slice of a layer the plan splits over
several nodes (ICP: input channels, OCP: output channels) -- an
:class:`~fpdeep_hw.node.fp_layer.FPLayer`, its :class:`~fpdeep_hw.memory.act_ram.ActRAM` (an
:class:`~fpdeep_hw.memory.offchip_act_ram.OffchipActRAM` with a burst port ``mem_*`` where the
plan keeps it off chip), the mask and argmax stores (``SyncFIFOBuffered``, or an
:class:`~fpdeep_hw.memory.offchip_act_ram.OffchipFIFO` with a burst port ``mem_*_mask`` /
``mem_*_arg`` where the plan keeps them off chip), a
:class:`~fpdeep_hw.node.eb_layer.BPFront` (not on an ICP slice that does not complete the
layer), an :class:`~fpdeep_hw.node.eb_layer.EBLayer` (not for the first layer), a
:class:`~fpdeep_hw.node.pg_layer.PGLayer`, a :class:`~fpdeep_hw.node.update.WeightUpdate` and a
:class:`~fpdeep_hw.node.version_gate.VersionGate`; after the last layer the
:class:`~fpdeep_hw.compute.loss.LossUnit`. On one node holding every layer:

``images -> FP 1 -> FP 2 -> ... -> FP L -> loss (+ labels) -> BPFront L -> EB L -> BPFront L-1 ->
... -> BPFront 1``; each ``BPFront l`` also feeds ``PG l``, which reads ``l``'s input back from its
Act-RAM; at the end of each mini-batch ``PG l``'s averaged gradients update the master copy in
``WeightUpdate l``, which writes the working weights into the LPRAM that ``FP l`` and ``EB l`` read
when the gate says the weight version may change (``docs/training-spec.md``).

Every module runs concurrently (the fine-grained pipeline): a layer starts an image as soon as its
line buffer has the rows it needs, FP of later images overlaps BP of earlier ones, and the gates
hold FP / EB at a mini-batch boundary exactly as the version rule says. The lags ``D_l`` come
from :func:`sim.golden.train.lags_from_plan`, so the RTL and the golden model agree by
construction.

**Neighbours.** A node of a multi-node plan holds a contiguous run of layers; only its first and
last segment may be slices of a split layer (a split layer spans node boundaries). What crosses
to the previous / next node are the plan's link streams, one port each (``docs/hw-node.md``,
"Node top", table of ports): ``a_in`` / ``a_out`` (activations), ``a_part`` (the earlier OCP
slices of the first layer's output), ``a_fwd`` (the input of a split last layer passed on to the
later slices), ``p_in`` / ``p_out`` (ICP partial sums), ``e_in`` / ``e_out`` (errors), ``e_part``
(the later ICP slices' input errors), ``e_fwd`` (errors passed back to the earlier slices of the
first layer), ``pe_in`` / ``pe_out`` (OCP partial errors). :attr:`NodeTop.link_ports` names the
plan stream (path, layer) of each. Inside, :class:`~fpdeep_hw.node.lanes.LaneFork` and
:class:`~fpdeep_hw.node.lanes.LaneConcat` cut and join channel slices; every consumer has a FIFO
of ``fifo_images`` images. :class:`fpdeep_hw.node.cluster.Cluster` chains such nodes through
link framers and link models.

**Parameter lending** (paper 3.4.2). A segment whose weights the plan keeps on other nodes
(``weights_borrowed``; ``bpram`` entries of its lenders, near or far, the borrower possibly
keeping a share) has weight-stationary engines fed with its ``R * G`` weight sets once per image
for FP and once for EB. Each keeper holds a contiguous range of set addresses
(:func:`~fpdeep_hw.node.sets.keepers_of`: in node order, by weight share, whole sets) in a
:class:`~fpdeep_hw.node.lend.Lender` (BPRAM, BGB, update, version rule); a keeper joins its
range to the sets arriving from keepers further away, a node with no range passes them on, the
borrower joins both sides and its own share into address order
(:class:`~fpdeep_hw.node.sets.SetConcat`); the borrower's per-image gradient sets travel back
and each keeper takes the addresses of its range (:class:`~fpdeep_hw.node.sets.SetRoute`).

Golden model: :class:`sim.golden.train.GoldenTrainer` (``plan=``: the split arithmetic). Test /
harness: ``tests/sim/test_train_node.py``, ``tests/sim/test_cluster.py``,
``tests/sim/test_cluster_split.py``, ``python -m sim.train`` (``sim/train.py``). Ports, sizing
and measured figures: ``docs/hw-node.md``, "Node top".
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
from sim.golden.line_buffer import Geometry

from ..compute.loss import LossUnit
from ..compute.sfu import arg_bits
from ..memory.act_ram import ActRAM
from ..memory.folded_fifo import FoldedFIFO, row_fifo_fold
from ..memory.grad_buffer import grad_buffer_bram18, grad_buffer_fold
from ..memory.offchip_act_ram import OffchipActRAM, OffchipFIFO, act_ram_for, store_for
from ..memory.param_ram import LPRAM, weight_set_layout
from .eb_layer import BPFront, EBLayer
from .fp_layer import FPLayer, LayerGeometry, layer_geometry
from .lanes import LaneConcat, LaneFork
from .lend import Lender, WSEBLayer, WSFPLayer, WSPGLayer
from .sets import SetConcat, SetRoute, keepers_of
from .pg_layer import PGLayer
from .update import OffchipWeightUpdate, WeightUpdate, master_set_fold
from .version_gate import VersionGate

#: A folded row FIFO may cost a layer at most ``1 / FOLD_COST`` of its cycles per image
#: (:attr:`NodeTop.fold_limit`).
FOLD_COST = 200

__all__ = ["NodeTop", "NodeLayer", "slice_weights", "mem_port_name", "STORES"]


#: The stores of a segment that the plan may keep off chip: the Act-RAM
#: (``SegmentPlan.act_ram``), the ReLU masks (``mask_store``), the pool argmaxes
#: (``arg_store``), the master copy of the weights (``master_store``) and the gradient
#: accumulators (``lgb``).
STORES = ("act", "mask", "arg", "master", "lgb")


def mem_port_name(key, store="act"):
    """The :class:`NodeTop` member of the burst port of segment ``key``'s (a
    :attr:`NodeLayer.key`) off-chip ``store``: the Act-RAM (``"act"``) ``mem_<layer>`` for a
    whole layer, ``mem_<layer>_at<node>`` for a slice (``@`` is not an identifier character;
    the same form as the segment's submodules); the ReLU-mask (``"mask"``), argmax
    (``"arg"``), master-copy (``"master"``) and gradient (``"lgb"``) stores the same with
    ``_mask`` / ``_arg`` / ``_master`` / ``_lgb`` appended (a lender's master copy: ``key``
    ``lend_<chain>@<node>``)."""
    if store not in STORES:
        raise ValueError(f"mem_port_name store must be one of {STORES}, not {store!r}")
    return "mem_" + key.replace("@", "_at") + ("" if store == "act" else f"_{store}")


def slice_weights(w, geometry):
    """The part of a layer's weights ``w`` (master or working) a segment holds: ICP
    ``w[:, c0:c1]`` (fc: the features of channels ``c0 .. c1-1``, ``w[:, c0*HW:c1*HW]``), OCP
    ``w[o0:o1]``, whole: ``w``."""
    g = geometry
    if g.split == "icp":
        hw = g.pixels if g.kind == "fc" else 1
        return w[:, g.in_lo * hw:(g.in_lo + g.in_channels) * hw]
    if g.split == "ocp":
        return w[g.out_lo:g.out_lo + g.out_channels]
    return w


@dataclass
class NodeLayer:
    """The modules of one layer segment of a :class:`NodeTop` (for simulation monitors).

    Members
    -------
    name : str
        The layer.
    key : str
        ``name`` for a whole layer, ``name@node`` for a slice of a split one (unique in a
        cluster).
    node : int
    segment : SegmentPlan
    geometry : LayerGeometry
    lag : int
        ``D_l``.
    fp, act_ram, bp, eb, pg, update, gate
        The modules (``eb`` is ``None`` for the first layer; ``bp`` is ``None`` on an ICP slice
        that does not complete the layer; ``act_ram`` an
        :class:`~fpdeep_hw.memory.offchip_act_ram.OffchipActRAM` where the plan keeps it off
        chip).
    mask_fifo, arg_fifo : SyncFIFOBuffered, OffchipFIFO or None
        The stores of the ReLU masks and pool argmaxes between FP and BPFront (payloads as
        bits; an :class:`~fpdeep_hw.memory.offchip_act_ram.OffchipFIFO` where the plan keeps
        the store off chip, ``mask_store`` / ``arg_store.offchip_words > 0``).
    act_images : float
        Act-RAM capacity in images of the layer's input.
    lender : Keepers or None
        Where a borrowed segment's weight sets are kept (:class:`~fpdeep_hw.node.sets.Keepers`:
        node -> set range, the borrower's own share among them); ``fp`` / ``eb`` are then
        :class:`~fpdeep_hw.node.lend.WSFPLayer` / :class:`~fpdeep_hw.node.lend.WSEBLayer`,
        ``pg`` has no LGB, ``update`` and ``gate`` are ``None`` (:class:`Cluster` sets ``parts``,
        ``[(Lender, (lo, hi))]``, for monitors).
    mem : str or None
        The :class:`NodeTop` member of the off-chip Act-RAM's burst port
        (:func:`mem_port_name`), ``None`` for an on-chip Act-RAM.
    mem_mask, mem_arg, mem_master, mem_lgb : str or None
        The same for the mask and argmax stores, the master copy and the gradient
        accumulators (``None``: on chip, or no such store; ``mem_master``: ``update`` is then
        an :class:`~fpdeep_hw.node.update.OffchipWeightUpdate`; ``mem_lgb``: ``pg.lgb`` is an
        :class:`~fpdeep_hw.memory.offchip_grad_buffer.OffchipGradBuffer`).
    lpram : LPRAM or None
        The layer's working weights, read by ``fp`` (``rd_addr`` / ``rd_data``) and ``eb``
        (``rd2_addr`` / ``rd2_data``) and written by ``update`` (``LPRAM(readers=2)``; the two
        modules built with ``shared_weights=True``); ``None`` where FP has its own (the first
        layer, without EB) or the segment is borrowed.
    """

    name: str
    key: str
    node: int
    segment: object
    geometry: LayerGeometry
    lag: int
    fp: FPLayer
    act_ram: ActRAM | OffchipActRAM
    mask_fifo: SyncFIFOBuffered | OffchipFIFO | None
    arg_fifo: SyncFIFOBuffered | OffchipFIFO | None
    bp: BPFront | None
    eb: EBLayer | None
    pg: PGLayer | WSPGLayer
    update: WeightUpdate | None
    gate: VersionGate | None
    act_images: float
    lender: int | None = None
    mem: str | None = None
    mem_mask: str | None = None
    mem_arg: str | None = None
    lpram: LPRAM | None = None
    mem_master: str | None = None
    mem_lgb: str | None = None

    def memories(self):
        """``[(store, member, module)]``: the segment's off-chip stores (``store`` in
        :data:`STORES`), their :class:`NodeTop` burst-port members and the
        :class:`~fpdeep_hw.memory.offchip_act_ram.OffchipFIFO` (or ``OffchipActRAM``) of each."""
        out = []
        for store, member, module in (("act", self.mem, self.act_ram),
                                      ("mask", self.mem_mask, self.mask_fifo),
                                      ("arg", self.mem_arg, self.arg_fifo),
                                      ("master", self.mem_master, self.update),
                                      ("lgb", self.mem_lgb, self.pg.lgb)):
            if member is not None:
                out.append((store, member, module))
        return out


class NodeTop(wiring.Component):
    """A whole training node built from one node entry of a plan.

    Parameters
    ----------
    plan : fpdeep_map.plan.Plan
    node : int
        Index of the node entry. Its segments must be a contiguous run of compute layers in
        order; only the first and the last may be slices of a split layer, and only where the
        layer continues on the previous / next node. A node holding every compute layer closes
        the training loop itself; otherwise the node exchanges the plan's link streams with its
        neighbours through the ports listed below. Only the node holding the first layer has
        ``images``, only the one holding the last layer the loss unit and ``labels``.
        Weights kept on other nodes (``weights_borrowed``, the plan's ``bpram`` entries) are
        streamed in (see "Parameter lending" below), whole layers and ICP / OCP slices alike.
    network : fpdeep_map.network.Network
        The plan's network (the last compute layer an FC followed by the loss).
    lr : float
        Learning rate (``lr_q = sim.golden.layers.lr_to_q(lr)``).
    init_master : dict
        ``{compute layer: int array}`` initial master weights of whole layers (master format,
        the golden model's ``weight_shape``), e.g. :func:`sim.golden.train.init_weights`; a
        slice takes its part (:func:`slice_weights`).
    batch : int, optional
        Mini-batch size; default ``plan.batch``.
    fifo_images : int, optional
        Depth, in images, of the decoupling FIFOs in front of every consumer of a stream
        between modules (default 1; 0 connects the modules directly where a stream has one
        consumer, which costs throughput: ``docs/hw-node.md``, "Node top").
    fifo_rows : int, optional
        Instead of ``fifo_images``: every decoupling FIFO holds this many rows of its map (the
        whole map where it has fewer rows). At ImageNet scale one image of a map is tens of
        Mbit (VGG-16 conv2_2's partial sums: 51 Mbit), far more than a device's block RAM;
        :mod:`fpdeep_hw.build` builds boards with rows (``docs/hw-node.md``, "Node top").
    fifo_whole_bits : int, optional
        With ``fifo_rows``: a decoupling FIFO whose image is at most this many bits keeps the
        image (default 0: every one in rows).
    fifo_fold : int, optional
        With ``fifo_rows``: the most rows per word a FIFO kept in rows may store each word as
        (:class:`~fpdeep_hw.memory.folded_fifo.FoldedFIFO`, default 1: none). Each such FIFO
        takes the fold :func:`~fpdeep_hw.memory.folded_fifo.row_fifo_fold` gives for its words,
        its rows and :attr:`fold_limit` (the node's rates: a fold costs at most
        ``1 / FOLD_COST`` of a layer's cycles); ``python -m fpdeep_hw.build`` folds
        (``BUILD_FIFO_FOLD``).
    mem_burst, mem_prefetch : int, optional
        ``burst`` (words, a power of two from 2 to 256; default 16) and ``prefetch`` (bursts, at
        least 2; default 4) of every off-chip Act-RAM
        (:class:`~fpdeep_hw.memory.offchip_act_ram.OffchipActRAM`).
    master_burst, master_prefetch : int, optional
        Weight sets per burst (a divisor of ``mem_burst``, at least 2; default ``mem_burst``)
        and ``prefetch`` (at least 1; default ``mem_prefetch``) of every off-chip master copy
        (:class:`~fpdeep_hw.node.update.OffchipWeightUpdate`: a burst of ``master_burst`` sets
        is ``master_burst x fold`` memory words).
    master_fold : int, optional
        The most memory words (rows) per weight set of the off-chip master copies (default 1:
        a word per set). Each update takes the fold :func:`~fpdeep_hw.node.update.
        master_set_fold` gives for its set width and FIFO depths (:attr:`master_folds`);
        ``python -m fpdeep_hw.build`` folds (``BUILD_MASTER_FOLD``).
    grad_fold : int, optional
        The most rows per set of the gradient buffers (default 1: none): each conv layer's
        LGB and each BGB of sets kept for a neighbour takes the fold
        :func:`~fpdeep_hw.memory.grad_buffer.grad_buffer_fold` gives for its accumulators,
        where its slower drain (a set every ``fold`` cycles) costs at most ``1 / FOLD_COST``
        of the layer's cycles per image (an LGB) or per mini-batch (a BGB)
        (:attr:`grad_folds`); ``python -m fpdeep_hw.build`` folds (``BUILD_GRAD_FOLD``).
    bpram_fold : int, optional
        The most rows per set of the BPRAMs (default 1: none): each BPRAM of sets kept for a
        neighbour takes the fold :func:`~fpdeep_hw.memory.grad_buffer.grad_buffer_fold` gives
        for its weights (the same block RAM count), at most ``Ho * Wo // 4`` of the borrowed
        layer: its two weight streams then take at most half the read port's sets
        (:attr:`bpram_folds`); ``python -m fpdeep_hw.build`` folds (``BUILD_BPRAM_FOLD``).
    ws_pg : bool or str, optional
        The PG of each layer of the node's own weights (:func:`pg_order`, :attr:`pg_orders`):
        ``False`` (default) position-outer (:class:`~fpdeep_hw.node.pg_layer.PGLayer`, an
        exact accumulator of every weight of the segment); ``True`` weight-stationary
        (:class:`~fpdeep_hw.node.lend.WSPGLayer` with its LGB, two frame stores of the image's
        activations and errors) for every conv layer of at least 2 positions; ``"smaller"``
        weight-stationary where that takes fewer block RAM units and its sweeps fit the plan's
        cycles per image; ``python -m fpdeep_hw.build`` chooses so (``BUILD_WS_PG``). Both
        give the same gradient words in the same order; a weight-stationary PG finishes an
        image's gradients about one sweep of its sets later (its sweeps need the whole image),
        so the layer's update at a mini-batch boundary comes later by that.
    memory_word_bits : int, optional
        With ``master_fold``: the bits the external memory gives per cycle at its peak. An
        update's fold is then at most ``set bits // memory_word_bits`` (at least 1), so folding
        never makes an update slower than the memory could feed it (default ``None``: no such
        limit).

    Members
    -------
    images : ``In(stream.Signature(ArrayLayout(signed(activation.width), C)))``
        First node only: input pixels (``C`` channel lanes of the network input, quantized to
        the activation format), raster order, images back to back.
    a_in : ``In(...)``
        Other nodes (instead of ``images``): the first layer's input (the lanes it and the
        later slices need) from the previous node. Plan stream ``activations`` of that layer.
    a_part : ``In(...)``
        First segment an OCP slice ``[o0, o1)`` with ``o0 > 0``: output lanes ``[0, o0)`` of the
        earlier slices (``activations`` of the next layer), joined with this slice's.
    a_out : ``Out(...)``
        The output of the last layer (after ReLU / pool) or, for an unfinished OCP span, lanes
        ``[0, o1)`` of it, for the next node (``activations`` of the next layer).
    a_fwd : ``Out(...)``
        Last segment a split slice whose layer continues on the next node: its input for the
        later slices (OCP: all lanes; ICP: lanes ``[c1, C)``).
    p_in, p_out : ``In`` / ``Out``
        ICP partial sums of the first / last layer (32-bit lanes of the partial format).
    e_in : ``In(...)``
        The errors of the last layer's output from the next node (OCP slice: lanes ``[0, o1)``;
        ICP slice that does not complete the layer: ``E_out`` of the convolution).
    e_part : ``In(...)``
        Last segment an ICP slice ``[c0, c1)`` with ``c1 < C``: the input errors ``[c1, C)`` of
        the later slices (``errors`` of the layer below), joined with this slice's.
    e_out : ``Out(...)``
        Errors of the first layer's input for the previous node (ICP slice: lanes ``[c0, C)``).
    e_fwd : ``Out(...)``
        First segment a slice whose layer starts on an earlier node: OCP the output errors
        ``[0, o0)``, ICP ``E_out``, for the earlier slices.
    pe_in, pe_out : ``In`` / ``Out``
        OCP partial errors of the layer below the last / first segment (32-bit lanes).
    labels : ``In(stream.Signature(range(classes)))``
        Last node only: one word per image, in image order.
    flush : ``In(1)``
        Level, raised by the host after the last image's last pixel was taken: the run has
        ended, so each layer's gate waives the FP condition of the update (once that layer's FP
        has finished every image that entered) and the last mini-batch's update is written.
    updates : ``Out(32)``
        Updates written by the first segment's weight update (for observation).
    images_in : ``Out(32)``
        Images whose last pixel entered the node's first FP module.
    mem_<layer>, mem_<layer>_at<node> : ``Out(memory_port_signature(C * activation.width, A))``
        Per segment whose Act-RAM the plan keeps off chip (``act_ram.offchip_words > 0``): the
        burst port of its :class:`~fpdeep_hw.memory.offchip_act_ram.OffchipActRAM` (named by
        :func:`mem_port_name`; ``C`` the segment's input lanes), one port per Act-RAM, for a
        memory controller (``MemoryControllerBlackBox`` on a board, ``sim.dram_model.DRAMModel``
        in simulation). Bursts of ``mem_burst`` words; each ring has its own address range,
        see :attr:`memory_map`.
    mem_<layer>_mask, mem_<layer>_arg : ``Out(memory_port_signature(W, A))``
        The same (``mem_<layer>_at<node>_mask``, ... for a slice) for a segment whose ReLU-mask
        store (``mask_store.offchip_words > 0``; ``W`` its output channels, one bit each) or
        argmax store (``arg_store``; ``W`` the argmax bits of its output channels) the plan
        keeps off chip: the burst port of that store's
        :class:`~fpdeep_hw.memory.offchip_act_ram.OffchipFIFO`.
    memory_map : dict
        ``{member: {"layer", "store", "base", "words", "word_bits", "word_bytes", "bytes"}}``
        for each ``mem_*`` port (plain attribute; ``store`` ``"act"``, ``"mask"`` or
        ``"arg"``, see :data:`STORES`): the ring's first word address ``base`` and size
        ``words`` on the port, the word width, and its byte range ``bytes = [lo, hi)`` when the
        word address ``a`` is byte address ``a * word_bytes`` (``word_bytes`` the word's bytes
        rounded up to a power of two). The rings lie one after the other in that byte
        space, in segment order (per segment: Act-RAM, masks, argmaxes), each starting on a
        boundary of ``mem_burst * word_bytes`` bytes: disjoint, so the ports may share one
        memory (or use one each). ``A``, the port's address width, just covers ``base +
        words``.
    w_fp_<layer>_<side>, w_eb_<layer>_<side> : ``In(stream.Signature(weight set))``
        Borrower: the weight sets of a borrowed segment kept on the ``prev`` / ``next`` side,
        per image for FP and for EB (EB only for a layer with EB), lowest addresses first.
    g_<layer>_<side> : ``Out(stream.Signature(StructLayout({"addr", "data"})))``
        Borrower: the per-image gradient sets whose addresses are kept on that side.
    ws_images_<layer> : ``Out(32)``
        Borrower: images the weight-stationary FP has finished (the end-of-run side band).
    lend_fp_<layer>, lend_eb_<layer> : ``Out(...)``; lend_g_<layer> : ``In(...)``
        A node between a keeper and the borrower, or a keeper: the sets towards the borrower
        (its own range joined with those from further keepers, in address order) and the
        gradients coming back.
    far_fp_<layer>, far_eb_<layer> : ``In(...)``; far_g_<layer> : ``Out(...)``
        The same streams with the keepers further away from the borrower.
    lend_flush_<layer> : ``In(1)``
        A keeper other than the borrower: end of run (the borrower's FP has finished every
        image), see :class:`~fpdeep_hw.node.lend.Lender`.
    keepers : dict
        ``{chain: Keepers}`` of every lending chain through this node (plain attribute); a
        chain is named by its layer, or ``<layer>_for<borrower>`` where two chains of one layer
        (two borrowing slices of a split layer) pass the node; the ``<layer>`` of the port
        names above is the chain's name.
    chain_names : dict
        ``{(layer, borrower): chain}``.
    lenders : dict
        ``{chain: Lender}`` for the set ranges this node keeps (plain attribute).
    link_tags : dict
        ``{member: (borrower, "fp" | "eb" | "g")}`` of the lending ports: the order in which both
        ends of a link pair the ports of one plan stream (``fpdeep_hw/link/streams.py``).
    x_in : property
        ``images`` or ``a_in``.
    first, last : bool
        Whether the node holds the network's first / last compute layer.
    layers : list of :class:`NodeLayer`
        The modules of each segment (plain attribute, not a port).
    link_ports : dict
        ``{member name: (peer, path, layer)}``: the plan stream each neighbour port carries,
        ``peer`` ``"prev"`` or ``"next"``.
    link_items : dict
        ``{member name: items per image}`` (pixels of the map, or weight sets): the framing a
        link's :class:`~fpdeep_hw.link.packer.Packer` needs.
    loss : LossUnit or None
        The loss unit (last node only).
    lags : dict
        ``{layer: D_l}``.
    """

    def __init__(self, plan, node, network, *, lr, init_master, batch=None, fifo_images=1,
                 fifo_rows=None, fifo_whole_bits=0, fifo_fold=1, mem_burst=16,
                 mem_prefetch=4, master_burst=None, master_prefetch=None, master_fold=1,
                 memory_word_bits=None, grad_fold=1, bpram_fold=1, ws_pg=False):
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
        if fifo_rows is not None and (isinstance(fifo_rows, bool) or not isinstance(
                fifo_rows, int) or fifo_rows < 0):
            raise ValueError(f"NodeTop fifo_rows must be None or a non-negative integer, not "
                             f"{fifo_rows!r}")
        self.fifo_rows = fifo_rows
        if isinstance(fifo_whole_bits, bool) or not isinstance(fifo_whole_bits, int) or \
                fifo_whole_bits < 0:
            raise ValueError(f"NodeTop fifo_whole_bits must be a non-negative integer, not "
                             f"{fifo_whole_bits!r}")
        self.fifo_whole_bits = fifo_whole_bits
        if isinstance(fifo_fold, bool) or not isinstance(fifo_fold, int) or fifo_fold < 1:
            raise ValueError(f"NodeTop fifo_fold must be a positive integer, not "
                             f"{fifo_fold!r}")
        self.fifo_fold = fifo_fold
        if isinstance(mem_burst, bool) or not isinstance(mem_burst, int) or \
                not 2 <= mem_burst <= 256 or mem_burst & (mem_burst - 1):
            raise ValueError(f"NodeTop mem_burst must be a power of two from 2 to 256, not "
                             f"{mem_burst!r}")
        if isinstance(mem_prefetch, bool) or not isinstance(mem_prefetch, int) or \
                mem_prefetch < 2:
            raise ValueError(f"NodeTop mem_prefetch must be an integer of at least 2, not "
                             f"{mem_prefetch!r}")
        master_burst = mem_burst if master_burst is None else master_burst
        master_prefetch = mem_prefetch if master_prefetch is None else master_prefetch
        if isinstance(master_burst, bool) or not isinstance(master_burst, int) or \
                not 2 <= master_burst <= mem_burst or mem_burst % master_burst:
            raise ValueError(f"NodeTop master_burst must be a divisor of mem_burst "
                             f"({mem_burst}) of at least 2, not {master_burst!r}")
        if isinstance(master_prefetch, bool) or not isinstance(master_prefetch, int) or \
                master_prefetch < 1:
            raise ValueError(f"NodeTop master_prefetch must be a positive integer, not "
                             f"{master_prefetch!r}")
        self.master_burst, self.master_prefetch = master_burst, master_prefetch
        if isinstance(master_fold, bool) or not isinstance(master_fold, int) or master_fold < 1:
            raise ValueError(f"NodeTop master_fold must be a positive integer, not "
                             f"{master_fold!r}")
        if memory_word_bits is not None and (isinstance(memory_word_bits, bool) or not
                                             isinstance(memory_word_bits, int) or
                                             memory_word_bits < 1):
            raise ValueError(f"NodeTop memory_word_bits must be None or a positive integer, "
                             f"not {memory_word_bits!r}")
        self.master_fold, self.memory_word_bits = master_fold, memory_word_bits
        #: ``{mem port: fold}`` of every off-chip update (``OffchipWeightUpdate.fold``).
        self.master_folds = {}
        if isinstance(grad_fold, bool) or not isinstance(grad_fold, int) or grad_fold < 1:
            raise ValueError(f"NodeTop grad_fold must be a positive integer, not {grad_fold!r}")
        self.grad_fold = grad_fold
        #: ``{"<layer>/lgb" or "lend_<chain>/bgb": fold}`` of every gradient buffer.
        self.grad_folds = {}
        if isinstance(bpram_fold, bool) or not isinstance(bpram_fold, int) or bpram_fold < 1:
            raise ValueError(f"NodeTop bpram_fold must be a positive integer, not "
                             f"{bpram_fold!r}")
        self.bpram_fold = bpram_fold
        #: ``{"lend_<chain>/bpram": fold}`` of every BPRAM.
        self.bpram_folds = {}
        if not (ws_pg is False or ws_pg is True or ws_pg == "smaller"):
            raise ValueError(f"NodeTop ws_pg must be False, True or 'smaller', not {ws_pg!r}")
        self.ws_pg = ws_pg
        #: ``{layer key: "weight" or "position"}``: the PG of each layer of this node's own
        #: weights (a borrowed layer's is weight-stationary always, and not listed).
        self.pg_orders = {}

        def buffer_fold(geo, depth, images):
            """The fold of a gradient buffer of ``depth`` sets of ``geo``'s conv layer whose
            drain may cost ``(fold - 1) * depth`` cycles per ``images`` images: at most
            ``1 / FOLD_COST`` of the layer's ``depth * Ho * Wo`` cycles per image (FC: 1)."""
            if grad_fold == 1 or geo.kind != "conv":
                return 1
            limit = min(grad_fold, 1 + images * geo.conv_height * geo.conv_width // FOLD_COST)
            return grad_buffer_fold(self._numerics.grad_acc_width,
                                    geo.p * geo.s * geo.kernel ** 2, depth, limit)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"NodeTop batch must be a positive integer, not {batch!r}")
        np_ = plan.node_plans[node]
        segs = list(np_.segments)
        compute = network.compute_layers()
        names = [l.name for l in compute]
        held = [s.layer for s in segs]
        i0 = names.index(held[0]) if held and held[0] in names else -1
        if i0 < 0 or names[i0:i0 + len(held)] != held:
            raise ValueError(f"NodeTop: node {node} holds layers {held}, but a node needs a "
                             f"contiguous run of compute layers of {network.name!r} in "
                             f"order: {names}")
        # parameter lending: the segments whose weight sets this node keeps, uses or passes on
        try:
            chains = keepers_of(plan, network)
        except ValueError as e:
            raise ValueError(f"NodeTop: {e}") from None
        # a chain's name: its layer, or layer_for<borrower> where two chains of one layer (two
        # borrowing slices of a split layer) pass this node
        mine = [(key, kp) for key, kp in chains.items() if kp.involves(node)]
        count = {}
        for (layer, _), _ in mine:
            count[layer] = count.get(layer, 0) + 1
        self.keepers, self.chain_names = {}, {}
        for (layer, b), kp in mine:
            name = layer if count[layer] == 1 else f"{layer}_for{b}"
            self.keepers[name] = kp
            self.chain_names[(layer, b)] = name
        for s in segs:
            if s.weights_borrowed and (s.layer, node) not in self.chain_names:
                raise ValueError(f"NodeTop: no node keeps the weights of {s.layer!r} for "
                                 f"node {node}")
        self._first = i0 == 0
        self._last = i0 + len(held) == len(names) and not _span_after(segs[-1], network)
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
        self.memory_map = {}
        mem_end = 0            # bytes of the node's external memory used by the rings so far
        # the plan's mask and argmax stores, checked before anything is built (a segment whose
        # geometry is refused is reported by the loop below, in order)
        store_words = {}
        for k, seg in enumerate(segs):
            try:
                geo = layer_geometry(seg, network)
            except ValueError:
                continue
            store_words[k] = _stores_of(seg, geo, lags[seg.layer])

        def ring(key, store, bits, depth, burst=mem_burst, prefetch=mem_prefetch):
            """The next ring of the node's external memory (:attr:`memory_map`) for an off-chip
            store of ``depth`` words of ``bits`` (a master copy: ``depth`` sets of ``bits``,
            each kept as its update's ``fold`` words, in bursts of ``burst`` sets): its member
            and the store's keywords (rings start at a multiple of ``mem_burst`` words and of
            their own burst)."""
            nonlocal mem_end
            kw = {}
            if store == "master":
                mem = mem_port_name(key, store)
                kw["fold"] = self.master_folds[mem] = master_set_fold(
                    bits, burst, prefetch, master_fold, memory_word_bits)
                bits, depth, burst = -(-bits // kw["fold"]), depth * kw["fold"], burst * kw["fold"]
            elif store == "lgb":
                # ``bits``: (elements, accumulator width) of a set; a row of accumulators per
                # memory word, about the memory's bits per cycle
                elements, accw = bits
                fold = 1 if memory_word_bits is None else min(
                    elements, max(1, -(-elements * accw // memory_word_bits)))
                kw["fold"] = self.grad_folds[f"{key}/lgb"] = fold
                bits, depth, burst = -(-elements // fold) * accw, depth * fold, burst * fold
            wbytes = 1 << (math.ceil(bits / 8) - 1).bit_length()
            ext = math.ceil(depth / burst) * burst
            align = math.lcm(mem_burst, burst)
            base = math.ceil(mem_end / (wbytes * align)) * align
            mem_end = (base + ext) * wbytes
            mem = mem_port_name(key, store)
            if mem in self.memory_map:
                raise ValueError(f"NodeTop: two off-chip stores of node {node} would have the "
                                 f"burst port {mem!r}")
            self.memory_map[mem] = {"layer": key, "store": store, "base": base, "words": ext,
                                    "word_bits": bits, "word_bytes": wbytes,
                                    "bytes": [base * wbytes, mem_end]}
            kw.update({"burst": burst, "base": base, "prefetch": prefetch,
                       "addr_width": max(1, (base + ext - 1).bit_length())})
            return mem, kw
        for k, seg in enumerate(segs):
            layer = network.layer(seg.layer)
            geo = layer_geometry(seg, network)
            before, after = _span_before(seg, geo), _span_after(seg, network, geo)
            if before and k != 0 or after and k != len(segs) - 1:
                raise ValueError(f"NodeTop: the {seg.split} slice {list(seg.channels)} of "
                                 f"{seg.layer!r} on node {node} must be the node's "
                                 f"{'first' if before else 'last'} segment (its layer continues "
                                 f"on the {'previous' if before else 'next'} node)")
            if seg.layer not in init_master:
                raise ValueError(f"NodeTop: no initial weights for layer {seg.layer!r}")
            master = np.asarray(init_master[seg.layer])
            if master.shape != weight_shape(layer):
                raise ValueError(f"NodeTop: initial weights of {seg.layer!r} have shape "
                                 f"{master.shape}, expected {weight_shape(layer)}")
            master = slice_weights(master.astype(np.int64), geo)
            working, _ = golden.working_weight(master, num)
            lag = lags[seg.layer]
            C, HW = geo.in_channels, geo.pixels
            depth = math.ceil(seg.act_ram.words / C)
            if depth < max(lag, 1) * HW:
                raise ValueError(f"NodeTop: the Act-RAM of {seg.layer!r} ({seg.act_ram.words} "
                                 f"words = {depth} pixels of {C} lanes) cannot hold the lag of "
                                 f"{lag} images of {HW} pixels")
            borrowed = seg.weights_borrowed > 0
            lpram = None
            if borrowed:
                fp = WSFPLayer(seg, network, num)
            elif geo.has_eb:
                # one LPRAM that FP and EB both read: a true dual-port block RAM (the update
                # writes through FP's port while neither reads)
                lpram = LPRAM(fmt=num.weight, kernel=geo.kernel, lanes=geo.p * geo.s,
                              depth=geo.weight_sets, init=geo.pack_weights(working), readers=2)
                fp = FPLayer(seg, network, num, shared_weights=True)
            else:
                fp = FPLayer(seg, network, num, weights=working)
            key = seg.layer if seg.split == "whole" else f"{seg.layer}@{node}"
            mem_kw, mem = {}, None
            if seg.act_ram.offchip_words > 0:
                # the ring after the previous rings (memory_map)
                mem, mem_kw = ring(key, "act", C * num.activation.width, depth)
            act = act_ram_for(seg, num.activation, C, depth, **mem_kw)
            # the stores on chip, or in rings of their own after the Act-RAM's
            stores = {"mask": None, "arg": None}
            mems = {"mask": None, "arg": None}
            for store, (bits, words) in store_words[k].items():
                assert bits == len(getattr(fp, store).payload.as_value())
                entry = getattr(seg, f"{store}_store")
                kw = {}
                if entry is not None and entry.offchip_words > 0:
                    mems[store], kw = ring(key, store, bits, words)
                stores[store] = store_for(entry, bits, words, **kw)
            mask_fifo, arg_fifo = stores["mask"], stores["arg"]
            bp = BPFront(seg, network, num) if geo.completes else None
            eb = None
            if geo.has_eb:
                eb = (WSEBLayer(seg, network, num) if borrowed
                      else EBLayer(seg, network, num, shared_weights=True))
            if k > 0 and eb is None:
                raise ValueError(f"NodeTop: layer {seg.layer!r} has no EB engines")
            # a borrowed segment's PG is weight-stationary too: one gradient set per sweep,
            # no accumulator of every borrowed weight
            if borrowed:
                pg = WSPGLayer(seg, network, num, batch=batch)
            else:
                self.pg_orders[key] = order = pg_order(ws_pg, geo, num, plan)
                lgb_kw = {}
                if seg.lgb.offchip_words > 0 and geo.kind == "conv":
                    # the gradient accumulators in a ring of the external memory (an FC
                    # layer's PG drains in another order: its LGB stays on chip)
                    mem_lgb, lgb_kw = ring(key, "lgb",
                                           (geo.p * geo.s * geo.kernel ** 2, num.grad_acc_width),
                                           geo.weight_sets, burst=master_burst,
                                           prefetch=master_prefetch)
                    lgb_kw = {"lgb_mem": lgb_kw}
                else:
                    mem_lgb = None
                    self.grad_folds[f"{key}/lgb"] = buffer_fold(geo, geo.weight_sets, 1)
                fold = self.grad_folds[f"{key}/lgb"]
                pg = (WSPGLayer(seg, network, num, batch=batch, lgb=True, lgb_fold=fold,
                                **lgb_kw)
                      if order == "weight" else
                      PGLayer(seg, network, num, batch=batch, lgb_fold=fold, **lgb_kw))
            upd = gate = mem_master = None
            lender = self.keepers[self.chain_names[(seg.layer, node)]] if borrowed else None
            if not borrowed:
                upd_kw = dict(numerics=num, kernel=geo.kernel, lanes=geo.p * geo.s,
                              depth=geo.weight_sets, lr_q=lr_q, init=geo.pack_weights(master))
                if seg.master_store is not None and seg.master_store.offchip_words > 0:
                    # the master copy in its ring of the external memory
                    mem_master, kw = ring(key, "master", upd_kw["lanes"] * geo.kernel ** 2
                                          * num.master.width, geo.weight_sets,
                                          burst=master_burst, prefetch=master_prefetch)
                    upd = OffchipWeightUpdate(**upd_kw, **kw)
                else:
                    upd = WeightUpdate(**upd_kw)
                gate = VersionGate(batch=batch, lag=lag, eb=eb is not None)
            self.layers.append(NodeLayer(
                name=seg.layer, key=key, node=node, segment=seg, geometry=geo, lag=lag, fp=fp,
                act_ram=act, mask_fifo=mask_fifo, arg_fifo=arg_fifo, bp=bp, eb=eb, pg=pg,
                update=upd, gate=gate, act_images=depth / HW, lender=lender, mem=mem,
                mem_mask=mems["mask"], mem_arg=mems["arg"], lpram=lpram,
                mem_master=mem_master, mem_lgb=None if borrowed else mem_lgb))
        # the weight sets this node keeps (for a borrower, or its own share of a borrowed
        # segment): BPRAM, BGB, update, version rule
        self.lenders = {}
        self.lender_mems = {}
        for name, kp in self.keepers.items():
            layer = kp.layer
            if node not in kp.ranges:
                continue
            if layer not in init_master:
                raise ValueError(f"NodeTop: no initial weights for layer {layer!r}")
            master = slice_weights(np.asarray(init_master[layer]).astype(np.int64),
                                   layer_geometry(kp.segment, network))
            lo, hi = kp.ranges[node]
            ms = kp.segment.master_store
            kw = None
            if ms is not None and ms.offchip_words > 0:
                g_ = layer_geometry(kp.segment, network)
                self.lender_mems[name], kw = ring(
                    f"lend_{name}@{node}", "master", g_.p * g_.s * g_.kernel ** 2 * num.master.width,
                    hi - lo, burst=master_burst, prefetch=master_prefetch)
            # the BGB's drain feeds the update once per mini-batch
            self.grad_folds[f"lend_{name}/bgb"] = fold = buffer_fold(
                layer_geometry(kp.segment, network), hi - lo, batch)
            # the BPRAM: its FP and EB streams share its read port, and the borrower takes a
            # set per stream every Ho * Wo cycles at most (a weight-stationary layer holds a set
            # for the whole map): a set every Ho * Wo // 4 cycles leaves it twice the room
            g_ = layer_geometry(kp.segment, network)
            self.bpram_folds[f"lend_{name}/bpram"] = bfold = 1 if bpram_fold == 1 else \
                grad_buffer_fold(num.weight.width, g_.p * g_.s * g_.kernel ** 2, hi - lo,
                                 min(bpram_fold, max(1, g_.conv_height * g_.conv_width // 4)))
            lender = Lender(kp.segment, network, num, batch=batch, lr_q=lr_q, lag=lags[layer],
                            master=master, sets=kp.ranges[node], master_mem=kw, bgb_fold=fold,
                            bpram_fold=bfold)
            lender.borrower = kp.borrower
            self.lenders[name] = lender
        self._members(network, compute, loss_layer)

    # ---- neighbour ports ------------------------------------------------------------------------

    def _members(self, network, compute, loss_layer):
        num = self._numerics
        aw, ew, pw = num.activation.width, num.error.width, num.partial.width
        sig = lambda w, n: stream.Signature(data.ArrayLayout(signed(w), n))
        L = self.layers
        f, z = L[0], L[-1]
        fg, zg = f.geometry, z.geometry
        names = [l.name for l in compute]
        prev_name = names[names.index(f.name) - 1] if not self._first else None
        next_name = (names[names.index(z.name) + 1] if names.index(z.name) + 1 < len(names)
                     else None)
        members, ports = {}, {}

        self._lanes = {}

        items = {}

        def port(name, direction, width, lanes, peer, path, layer, per_image):
            members[name] = direction(sig(width, lanes))
            ports[name] = (peer, path, layer)
            self._lanes[name] = lanes
            items[name] = per_image

        f_out = fg.out_height * fg.out_width
        f_conv = fg.conv_height * fg.conv_width
        z_out = zg.out_height * zg.out_width
        z_conv = zg.conv_height * zg.conv_width

        # lanes of the first layer's input that arrive: [in_lo, C) (ICP) or all
        C0 = fg.layer_in_channels or fg.in_channels
        if self._first:
            members["images"] = In(sig(aw, fg.in_channels))
        else:
            lo = fg.in_lo if fg.split == "icp" else 0
            port("a_in", In, aw, C0 - lo, "prev", "activations", f.name, fg.pixels)
        before = _span_before(f.segment, fg)
        if before and fg.split == "ocp":
            port("a_part", In, aw, fg.out_lo, "prev", "activations", _next_of(names, f.name),
                 f_out)
            port("e_fwd", Out, ew, fg.out_lo, "prev", "errors", f.name, f_out)
            port("pe_out", Out, pw, C0, "prev", "partial_errors", prev_name, fg.pixels)
        if before and fg.split == "icp":
            port("p_in", In, pw, fg.layer_out_channels, "prev", "partial_sums", f.name, f_conv)
            port("e_fwd", Out, ew, fg.layer_out_channels, "prev", "errors", f.name, f_conv)
        if not self._first and not (before and fg.split == "ocp"):
            lo = fg.in_lo if fg.split == "icp" else 0
            port("e_out", Out, ew, C0 - lo, "prev", "errors", prev_name, fg.pixels)
        after = _span_after(z.segment, network, zg)
        OCz = zg.layer_out_channels or zg.out_channels
        Cz = zg.layer_in_channels or zg.in_channels
        if after:
            if zg.split == "ocp":
                port("a_fwd", Out, aw, Cz, "next", "activations", z.name, zg.pixels)
                port("a_out", Out, aw, zg.out_lo + zg.out_channels, "next", "activations",
                     next_name, z_out)
                port("e_in", In, ew, zg.out_lo + zg.out_channels, "next", "errors", z.name, z_out)
                port("pe_in", In, pw, Cz, "next", "partial_errors", _prev_of(names, z.name),
                     zg.pixels)
            else:
                hi = zg.in_lo + zg.in_channels
                port("a_fwd", Out, aw, Cz - hi, "next", "activations", z.name, zg.pixels)
                port("p_out", Out, pw, OCz, "next", "partial_sums", z.name, z_conv)
                port("e_in", In, ew, OCz, "next", "errors", z.name, z_conv)
                if zg.has_eb:
                    port("e_part", In, ew, Cz - hi, "next", "errors", _prev_of(names, z.name),
                         zg.pixels)
        elif next_name is not None:
            port("a_out", Out, aw, OCz, "next", "activations", next_name, z_out)
            port("e_in", In, ew, OCz, "next", "errors", z.name, z_out)
        # parameter lending (fpdeep_hw/node/sets.py): per segment whose weight sets this node
        # uses (borrower), keeps for another node or passes on, the set and gradient streams
        tags = {}
        for n, kp in self.keepers.items():
            g = layer_geometry(kp.segment, network)
            set_sig = stream.Signature(weight_set_layout(num.weight, g.kernel, g.p * g.s))
            grad_sig = stream.Signature(data.StructLayout({
                "addr": range(max(kp.total, 2)),
                "data": weight_set_layout(num.gradient, g.kernel, g.p * g.s)}))

            def chain(fp, eb, grad, flow, peer, count, n=n, g=g):
                """FP / EB set streams of direction ``flow`` and the gradients opposite."""
                back = Out if flow is In else In
                for name, f, sg in ((fp, flow, set_sig), (eb, flow, set_sig),
                                    (grad, back, grad_sig)):
                    if name == eb and not g.has_eb:
                        continue
                    members[name] = f(sg)
                    ports[name] = (peer, "gradients" if name == grad else "parameters",
                                   kp.layer)
                    items[name] = count
                    # both ends of a link order the ports of one plan stream by this tag
                    tags[name] = (kp.borrower, "fp" if name == fp else "eb" if name == eb
                                  else "g")
            if kp.borrower == self._node:
                for side in ("prev", "next"):
                    if kp.side(side):
                        chain(f"w_fp_{n}_{side}", f"w_eb_{n}_{side}", f"g_{n}_{side}", In,
                              side, kp.side(side))
                members[f"ws_images_{n}"] = Out(32)
                continue
            toward = kp.toward(self._node)
            away = "prev" if toward == "next" else "next"
            chain(f"lend_fp_{n}", f"lend_eb_{n}", f"lend_g_{n}", Out, toward,
                  kp.beyond(self._node, inclusive=True))
            if kp.beyond(self._node, inclusive=False):
                chain(f"far_fp_{n}", f"far_eb_{n}", f"far_g_{n}", In, away,
                      kp.beyond(self._node, inclusive=False))
            if n in self.lenders:
                members[f"lend_flush_{n}"] = In(1)
        self.loss = None
        if next_name is None and not after:
            self.loss = LossUnit(numerics=num, classes=compute[-1].out_channels,
                                 kind=loss_layer.loss)
            members["labels"] = In(stream.Signature(range(self.loss.classes)))
        members["flush"] = In(1)
        members["updates"] = Out(32)
        members["images_in"] = Out(32)
        for _, _, mem, store in self.memories():     # an off-chip store's burst port
            members[mem] = store.signature.members["mem"]
        super().__init__(members)
        self.link_ports = ports
        self.link_items = items
        self.link_tags = tags

    def memories(self):
        """``[(key, store, member, module)]``: every off-chip store of the node, each with its
        burst port: the segments' (:meth:`NodeLayer.memories`, ``key`` the segment's) and the
        master copies of the weight sets the node keeps for a borrower (``key``
        ``lend_<chain>@<node>``, ``store`` ``"master"``, ``module`` the lender's
        :class:`~fpdeep_hw.node.update.OffchipWeightUpdate`)."""
        out = [(nl.key, store, member, module) for nl in self.layers
               for store, member, module in nl.memories()]
        out += [(f"lend_{n}@{self._node}", "master", member, self.lenders[n].update)
                for n, member in self.lender_mems.items()]
        return out

    plan = property(lambda self: self._plan)
    node = property(lambda self: self._node)
    network = property(lambda self: self._network)
    numerics = property(lambda self: self._numerics)
    batch = property(lambda self: self._batch)
    lr_q = property(lambda self: self._lr_q)
    first = property(lambda self: self._first)
    last = property(lambda self: self.loss is not None)

    @property
    def x_in(self):
        """The first layer's input port: ``images`` (first node) or ``a_in``."""
        return self.images if self._first else self.a_in

    @property
    def mac_units(self):
        """Multipliers of the node's CE arrays (FP, EB, PG of every segment)."""
        total = 0
        for nl in self.layers:
            k2 = nl.geometry.kernel ** 2
            arrays = 3 if nl.eb is not None else 2
            total += arrays * nl.geometry.p * nl.geometry.s * k2
        return total

    @property
    def fold_limit(self):
        """Most rows per word of a folded row FIFO (``fifo_fold``) for this node's rates, the
        least over its conv layers of ``R * G // 2`` (a folded FIFO gives a word in at most
        half the cycles an engine takes per pixel) and ``1 + R * G * H // FOLD_COST``: a line
        buffer fills about a row of its map at each image's start at the FIFO's rate, so a fold
        costs about ``fold - 1`` cycles per pixel of a row per image (measured on ``tiny``:
        8 cycles per image per fold step, conv2's 8-pixel rows; ``docs/hw-node.md``), at most
        ``1 / FOLD_COST`` of the layer's ``R * G * H * W`` cycles per image. At least 1 (no
        fold); FC layers, whose FIFOs keep whole images, do not count."""
        limits = [min(g.out_groups * g.groups // 2,
                      1 + g.out_groups * g.groups * min(g.height, g.conv_height) // FOLD_COST)
                  for g in (nl.geometry for nl in self.layers) if g.kind == "conv"]
        return max(1, min(limits, default=1))

    def _fifo(self, m, name, src, dst, depth):
        """``src -> SyncFIFOBuffered(depth) -> dst`` (payloads as bits; 0: a direct connection).

        ``depth`` ``(image, rows)`` (a decoupling FIFO with ``fifo_rows``): one image where that
        is at most ``fifo_whole_bits``, else the rows, stored folded where ``fifo_fold`` allows
        and it saves block RAM (a :class:`~fpdeep_hw.memory.folded_fifo.FoldedFIFO`)."""
        width = len(src.payload.as_value())
        fold = 1
        if isinstance(depth, tuple):
            image, rows = depth
            whole = image * width <= self.fifo_whole_bits
            depth = image if whole else rows
            if not whole and self.fifo_fold > 1:
                fold = row_fifo_fold(width, depth, min(self.fifo_fold, self.fold_limit))
        if depth == 0:
            wiring.connect(m, src, dst)
            return
        fifo = (FoldedFIFO(width=width, depth=depth, fold=fold) if fold > 1
                else SyncFIFOBuffered(width=width, depth=depth))
        m.submodules[name] = fifo
        NodeTop._through(m, fifo, src, dst)

    @staticmethod
    def _through(m, fifo, src, dst):
        """``src -> fifo -> dst`` (a ``SyncFIFOBuffered``, or an
        :class:`~fpdeep_hw.memory.offchip_act_ram.OffchipFIFO` of ``unsigned`` words, holding
        the payloads as bits)."""
        w, r = ((fifo.i, fifo.o) if isinstance(fifo, OffchipFIFO)
                else (fifo.w_stream, fifo.r_stream))
        m.d.comb += [
            w.valid.eq(src.valid),
            w.payload.eq(src.payload.as_value()),
            src.ready.eq(w.ready),
            dst.valid.eq(r.valid),
            dst.payload.eq(r.payload),
            r.ready.eq(dst.ready),
        ]

    # ---- parameter lending ----------------------------------------------------------------------

    def _lending(self, m):
        """Weight-set and gradient streams of every lending chain through this node.

        Keeper ranges are contiguous in node order (:func:`~fpdeep_hw.node.sets.keepers_of`),
        so the borrower joins, per image, the sets from the previous side, its own and those
        from the next side (:class:`~fpdeep_hw.node.sets.SetConcat`) into address order and
        sends each gradient set where its address is kept
        (:class:`~fpdeep_hw.node.sets.SetRoute`); a keeper between the borrower and further
        keepers joins its own range to the passing sets on the side away from the borrower,
        and takes its addresses out of the passing gradients; a node without a range passes
        both streams on through a FIFO.
        """
        node = self._node
        for n, kp in self.keepers.items():
            lender = self.lenders.get(n)
            if lender is not None:
                m.submodules[f"lend_{n}"] = lender
                if n in self.lender_mems:
                    wiring.connect(m, lender.mem,
                                   wiring.flipped(getattr(self, self.lender_mems[n])))
            port = lambda name: wiring.flipped(getattr(self, name))  # noqa: E731
            has_eb = layer_geometry(kp.segment, self._network).has_eb
            if kp.borrower == node:
                nl = next(x for x in self.layers if x.name == kp.layer)
                # (set source per phase, count) and (gradient sink, address range), address order
                srcs, sinks, lo = [], [], 0
                for side in ("prev", "next"):
                    if side == "next" and lender is not None:
                        srcs.append(({"fp": lender.fp_w, "eb": lender.eb_w if has_eb else None},
                                     lender.weight_sets))
                        sinks.append((lender.grad, lender.sets))
                        lo = lender.sets[1]
                    c = kp.side(side)
                    if c:
                        srcs.append(({"fp": port(f"w_fp_{n}_{side}"),
                                      "eb": port(f"w_eb_{n}_{side}") if has_eb else None}, c))
                        sinks.append((port(f"g_{n}_{side}"), (lo, lo + c)))
                        lo += c
                targets = {"fp": nl.fp.w, "eb": nl.eb.w if nl.eb is not None else None}
                self._join(m, f"{n}_ws", srcs, targets)
                self._route(m, f"{n}_ws", nl.pg.grad, sinks)
                if lender is not None:
                    done = getattr(self, f"ws_images_{n}")
                    m.d.comb += lender.flush.eq(self.flush & (done == self.images_in))
                continue
            near = kp.toward(node) == "prev"          # the borrower is on the previous side
            srcs, sinks = [], []
            far_c = kp.beyond(node, inclusive=False)
            own = ([({"fp": lender.fp_w, "eb": lender.eb_w if has_eb else None},
                     lender.weight_sets)] if lender is not None else [])
            own_g = [(lender.grad, lender.sets)] if lender is not None else []
            far, far_g = [], []
            if far_c:
                far = [({"fp": port(f"far_fp_{n}"),
                         "eb": port(f"far_eb_{n}") if has_eb else None}, far_c)]
                lo = lender.sets[1] if near and lender is not None else (
                    kp.total - kp.beyond(node, inclusive=True) if near else
                    min(r[0] for j, r in kp.ranges.items() if j < node))
                far_g = [(port(f"far_g_{n}"), (lo, lo + far_c))]
            # address order: keepers on the previous side hold the lower addresses
            srcs = own + far if near else far + own
            sinks = own_g + far_g if near else far_g + own_g
            targets = {"fp": port(f"lend_fp_{n}"),
                       "eb": port(f"lend_eb_{n}") if has_eb else None}
            self._join(m, f"{n}_lend", srcs, targets)
            g_in = port(f"lend_g_{n}")
            self._route(m, f"{n}_lend", g_in, sinks)
            if lender is not None:
                m.d.comb += lender.flush.eq(getattr(self, f"lend_flush_{n}"))

    def _join(self, m, tag, srcs, targets):
        """Per phase (``fp``, ``eb``): the sources' set streams, ``[({phase: stream}, count)]``
        in address order, joined into ``targets[phase]`` (one source: connected directly; every
        source already has a buffer, a lender's FIFO or a link's receive buffer)."""
        for phase, dst in targets.items():
            if dst is None:
                continue
            streams = [(s[phase], c) for s, c in srcs]
            if len(streams) == 1:
                wiring.connect(m, streams[0][0], dst)
                continue
            cat = SetConcat(dst.payload.shape(), [c for _, c in streams])
            m.submodules[f"{tag}_{phase}_cat"] = cat
            for j, (src, _) in enumerate(streams):
                wiring.connect(m, src, cat.i[j])
            wiring.connect(m, cat.o, dst)

    @staticmethod
    def _route(m, tag, src, sinks):
        """Gradient sets of ``src`` to ``sinks`` ``[(stream, (lo, hi))]`` by address (one sink:
        connected directly); payloads field by field (address widths may differ)."""
        def copy(a, b):
            m.d.comb += [b.valid.eq(a.valid), a.ready.eq(b.ready),
                         b.payload.addr.eq(a.payload.addr), b.payload.data.eq(a.payload.data)]
        if len(sinks) == 1:
            copy(src, sinks[0][0])
            return
        route = SetRoute(sinks[0][0].payload.shape(), [r for _, r in sinks])
        m.submodules[f"{tag}_route"] = route
        copy(src, route.i)
        for (dst, _), o in zip(sinks, route.o):
            copy(o, dst)

    # ---- wiring ---------------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        L = self.layers
        net = self._network
        names = [l.name for l in net.compute_layers()]
        num = self._numerics
        aw, ew = num.activation.width, num.error.width
        # stream registry: key -> producer (port, lo, hi, width); consumers (port, lo, hi, depth)
        producers, consumers = {}, {}

        def produce(key, port, lo, hi, width):
            assert key not in producers, key
            producers[key] = (port, lo, hi, width)

        def consume(key, port, lo, hi, depth):
            consumers.setdefault(key, []).append((port, lo, hi, depth))

        def member(name):
            return getattr(self, name)

        fi, rows = self.fifo_images, self.fifo_rows

        def dq(h, w, whole=False):
            """Depth of a decoupling FIFO in front of a consumer of an ``h x w`` map:
            ``fifo_images`` images of it; with ``fifo_rows``, ``(one image, fifo_rows rows)``
            (:meth:`_fifo` picks by ``fifo_whole_bits``), but one image where ``whole`` (an
            FC's input: small, and at a mini-batch boundary it holds the image the FC's version
            gate keeps back, so that the layers below run on)."""
            if rows is None:
                return fi * h * w
            image = max(fi, 1) * h * w
            return image if whole else (image, min(h, rows) * w)
        # image counter at the first FP input (for the per-layer flush)
        fp0 = L[0].fp
        px = L[0].geometry.pixels
        in_count = Signal(range(max(px, 2)))
        in_last = Signal()
        in_xfer = fp0.i.valid & fp0.i.ready
        m.d.comb += in_last.eq(in_xfer & (in_count == px - 1))
        if px > 1:
            with m.If(in_xfer):
                m.d.sync += in_count.eq(Mux(in_count == px - 1, 0, in_count + 1))
        with m.If(in_last):
            m.d.sync += self.images_in.eq(self.images_in + 1)

        # the first layer's input
        g0 = L[0].geometry
        C0 = g0.layer_in_channels or g0.in_channels
        if self._first:
            produce(("act", L[0].name), wiring.flipped(self.images), 0, C0, aw)
        else:
            lo = g0.in_lo if g0.split == "icp" else 0
            produce(("act", L[0].name), wiring.flipped(self.a_in), lo, C0, aw)
        # the errors the last layer's output gets from the next node
        z = L[-1]
        zg = z.geometry
        if "e_in" in self.link_ports:
            if zg.split == "icp" and not zg.completes:
                produce(("eout", z.name), wiring.flipped(self.e_in), 0, zg.layer_out_channels,
                        ew)
            else:
                produce(("err", z.name), wiring.flipped(self.e_in), 0, self._lanes["e_in"],
                        ew)
        if "a_out" in self.link_ports:
            nxt = self.link_ports["a_out"][2]
            consume(("act", nxt), wiring.flipped(self.a_out), 0, self._lanes["a_out"], 0)
        if "a_fwd" in self.link_ports:
            Cz = zg.layer_in_channels or zg.in_channels
            lo = 0 if zg.split == "ocp" else zg.in_lo + zg.in_channels
            consume(("act", z.name), wiring.flipped(self.a_fwd), lo, Cz, 0)
        if "e_out" in self.link_ports:
            prv = self.link_ports["e_out"][2]
            consume(("err", prv), wiring.flipped(self.e_out), C0 - self._lanes["e_out"], C0,
                    0)
        if "e_fwd" in self.link_ports:
            if g0.split == "ocp":
                consume(("err", L[0].name), wiring.flipped(self.e_fwd), 0, g0.out_lo, 0)
            else:
                consume(("eout", L[0].name), wiring.flipped(self.e_fwd), 0,
                        g0.layer_out_channels, 0)

        for k, nl in enumerate(L):
            n, key = nl.name, nl.key.replace("@", "_at")
            g = nl.geometry
            fp, act, bp, eb, pg, upd, gate = (nl.fp, nl.act_ram, nl.bp, nl.eb, nl.pg, nl.update,
                                               nl.gate)
            m.submodules[f"{key}_fp"] = fp
            m.submodules[f"{key}_act"] = act
            if bp is not None:
                m.submodules[f"{key}_bp"] = bp
            m.submodules[f"{key}_pg"] = pg
            borrowed = nl.lender is not None
            if not borrowed:
                m.submodules[f"{key}_upd"] = upd
                m.submodules[f"{key}_gate"] = gate
            if eb is not None:
                m.submodules[f"{key}_eb"] = eb
            if nl.lpram is not None:
                m.submodules[f"{key}_lpram"] = lp = nl.lpram
                wiring.connect(m, fp.w_addr, lp.rd_addr)
                wiring.connect(m, lp.rd_data, fp.w_data)
                wiring.connect(m, eb.w_addr, lp.rd2_addr)
                wiring.connect(m, lp.rd2_data, eb.w_data)
            conv_px, out_px = g.conv_height * g.conv_width, g.out_height * g.out_width
            # depths of the decoupling FIFOs in front of this layer's blocks (``dq``)
            whole = g.kind == "fc"
            q_in = dq(g.height, g.width, whole)
            q_conv = dq(g.conv_height, g.conv_width, whole)
            q_out = dq(g.out_height, g.out_width, whole)
            C = g.layer_in_channels or g.in_channels
            OC = g.layer_out_channels or g.out_channels
            nxt = names[names.index(n) + 1] if names.index(n) + 1 < len(names) else None
            prv = names[names.index(n) - 1] if names.index(n) > 0 else None
            # ---- forward
            lo_in = g.in_lo if g.split == "icp" else 0
            consume(("act", n), fp.i, lo_in, lo_in + g.in_channels, q_in if k > 0 else 0)
            wiring.connect(m, fp.act, act.i)
            wiring.connect(m, act.o, pg.a)
            for _, mem, store in nl.memories():
                wiring.connect(m, store.mem, wiring.flipped(getattr(self, mem)))
            if g.split == "icp" and not g.icp_first:
                self._fifo(m, f"{key}_up", wiring.flipped(self.p_in), fp.up, q_conv)
            if g.split == "icp" and not g.completes:
                wiring.connect(m, fp.o, wiring.flipped(self.p_out))
            elif g.split == "ocp" and g.out_lo > 0:
                cat = LaneConcat(width=aw, parts=[g.out_lo, g.out_channels])
                m.submodules[f"{key}_cat"] = cat
                self._fifo(m, f"{key}_part", wiring.flipped(self.a_part), cat.i[0], q_out)
                self._fifo(m, f"{key}_own", fp.o, cat.i[1], q_out)
                produce(("act", nxt), cat.o, 0, g.out_lo + g.out_channels, aw)
            elif nxt is None:
                wiring.connect(m, fp.o, self.loss.z)
            else:
                produce(("act", nxt), fp.o, 0, g.out_lo + g.out_channels, aw)
            for name, fifo in (("mask", nl.mask_fifo), ("arg", nl.arg_fifo)):
                if fifo is None:
                    continue
                m.submodules[f"{key}_{name}"] = fifo
                self._through(m, fifo, getattr(fp, name), getattr(bp, name))
            # ---- backward: errors of the output -> BPFront -> E_out -> EB, PG
            if bp is not None:
                lo = g.out_lo if g.split == "ocp" else 0
                consume(("err", n), bp.i, lo, lo + g.out_channels,
                        q_out if k + 1 < len(L) else 0)
                if g.split == "icp":
                    produce(("eout", n), bp.o, 0, OC, ew)
                    self._fifo(m, f"{key}_eout_pg", bp.pg, pg.e, q_conv)
                elif eb is not None:
                    self._fifo(m, f"{key}_eout_eb", bp.o, eb.i, q_conv)
                    self._fifo(m, f"{key}_eout_pg", bp.pg, pg.e, q_conv)
                else:
                    m.d.comb += bp.o.ready.eq(1)       # the first layer's E_out feeds PG only
                    wiring.connect(m, bp.pg, pg.e)
            if g.split == "icp":
                if eb is not None:
                    consume(("eout", n), eb.i, 0, OC, q_conv)
                if bp is None:
                    consume(("eout", n), pg.e, 0, OC, q_conv)
            # ---- EB output: errors of the layer below's output
            if eb is not None:
                if g.split == "ocp":
                    if not g.ocp_eb_first:
                        self._fifo(m, f"{key}_pe", wiring.flipped(self.pe_in), eb.up,
                                   q_in)
                    if g.out_lo > 0:
                        wiring.connect(m, eb.o, wiring.flipped(self.pe_out))
                    else:
                        produce(("err", prv), eb.o, 0, C, ew)
                elif g.split == "icp" and g.in_lo + g.in_channels < C:
                    hi = g.in_lo + g.in_channels
                    cat = LaneConcat(width=ew, parts=[g.in_channels, C - hi])
                    m.submodules[f"{key}_ecat"] = cat
                    self._fifo(m, f"{key}_eown", eb.o, cat.i[0], q_in)
                    self._fifo(m, f"{key}_epart", wiring.flipped(self.e_part), cat.i[1],
                               q_in)
                    produce(("err", prv), cat.o, g.in_lo, C, ew)
                else:
                    produce(("err", prv), eb.o, lo_in, C, ew)
            if borrowed:
                # weight sets from their keepers, gradients back to them: _lending
                n_ = self.chain_names[(nl.name, self._node)]
                ws_images = getattr(self, f"ws_images_{n_}")
                with m.If(fp.done):
                    m.d.sync += ws_images.eq(ws_images + 1)
                continue
            wiring.connect(m, pg.grad, upd.grad)
            # the update's write stream goes to the shared LPRAM, or FP's own (always ready)
            targets = [nl.lpram.wr if nl.lpram is not None else fp.wr]
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
            outstanding = Signal(signed(24), name=f"{key}_outstanding")
            m.d.sync += outstanding.eq(outstanding + in_last - fp.done)
            m.d.comb += gate.flush.eq(self.flush & (outstanding == 0) & ~in_last)
        self._lending(m)
        if self.loss is not None:
            m.submodules.loss = self.loss
            wiring.connect(m, wiring.flipped(self.labels), self.loss.label)
            produce(("err", L[-1].name), self.loss.o, 0, self.loss.classes, ew)

        # ---- connect every producer to its consumers
        for key in sorted(set(producers) | set(consumers), key=str):
            if key not in producers or key not in consumers:
                raise ValueError(f"NodeTop node {self._node}: stream {key} has "
                                 f"{'no producer' if key not in producers else 'no consumer'}")
            src, plo, phi, width = producers[key]
            cons = consumers[key]
            tag = f"{key[0]}_{key[1]}"
            for port, lo, hi, _ in cons:
                if not plo <= lo < hi <= phi:
                    raise ValueError(f"NodeTop node {self._node}: stream {key} carries lanes "
                                     f"[{plo}, {phi}), a consumer needs [{lo}, {hi})")
            if len(cons) == 1 and (cons[0][1], cons[0][2]) == (plo, phi):
                self._fifo(m, f"{tag}_q", src, cons[0][0], cons[0][3])
                continue
            fork = LaneFork(width=width, lanes=phi - plo,
                            ranges=[(lo - plo, hi - plo) for _, lo, hi, _ in cons])
            m.submodules[f"{tag}_fork"] = fork
            wiring.connect(m, src, fork.i)
            for j, ((port, lo, hi, depth), o) in enumerate(zip(cons, fork.o)):
                # a fork's outputs move in lock step: a FIFO before each consumer
                self._fifo(m, f"{tag}_q{j}", o, port, tuple(max(d, 4) for d in depth)
                           if isinstance(depth, tuple) else max(depth, 4))
        gates = [nl.gate for nl in L if nl.gate is not None]
        if gates:
            m.d.comb += self.updates.eq(gates[0].updates)
        return m


def pg_order(ws_pg, geo, numerics, plan):
    """The PG order of a layer of the node's own weights (``NodeTop(ws_pg=)``):
    ``"position"`` (:class:`~fpdeep_hw.node.pg_layer.PGLayer`: every weight set at every
    position, an exact accumulator of every weight of the segment) or ``"weight"``
    (:class:`~fpdeep_hw.node.lend.WSPGLayer` with its LGB: one weight set per sweep of two
    frame stores of the image's activations and errors).

    ``ws_pg``: ``False`` position everywhere; ``True`` weight-stationary wherever it is built
    (conv, at least 2 positions); ``"smaller"`` (the build) weight-stationary where its frame
    stores take fewer block RAM units than the accumulators (:func:`pg_bram18`) and its sweeps
    (``R * G`` replays of the padded map) fit in the plan's cycles per image, so the layer
    keeps the plan's pace."""
    if ws_pg is False or geo.kind != "conv" or geo.conv_height * geo.conv_width < 2:
        return "position"
    if ws_pg is True:
        return "weight"
    lg = Geometry(geo.height, geo.width, geo.kernel, stride=geo.stride, pad=geo.pad)
    sweeps = geo.weight_sets * lg.vheight * lg.vwidth
    ws, pos = pg_bram18(geo, numerics, "weight"), pg_bram18(geo, numerics, "position")
    return "weight" if ws < pos and sweeps <= plan.summary["cycles_per_image"] else "position"


def pg_bram18(geo, numerics, order):
    """RAMB18 units of a PG module's large memories by the build's estimate
    (:func:`fpdeep_map.costs.bram18_tiles`): ``"position"`` the accumulator memory (``R * G``
    rows of ``P*S*K*K`` lanes of ``acc_width``, in packed banks); ``"weight"`` the two frame
    stores (``2 x H*W`` words of ``C`` activations, ``2 x Ho*Wo`` of ``OC`` errors)."""
    from fpdeep_map.costs import bram18_tiles
    if order == "position":
        return grad_buffer_bram18(numerics.acc_width, geo.p * geo.s * geo.kernel ** 2,
                                  geo.weight_sets, 1)
    return (bram18_tiles(geo.in_channels * numerics.activation.width, 2 * geo.pixels)
            + bram18_tiles(geo.out_channels * numerics.error.width,
                           2 * geo.conv_height * geo.conv_width))


def _stores_of(seg, geo, lag):
    """``{store: (bits, words)}`` of segment ``seg``'s ReLU masks (``"mask"``: the conv's
    output pixels, one bit per output channel) and pool argmaxes (``"arg"``: the pooled pixels,
    ``arg_bits(pool_k)`` per output channel) of ``lag + 1`` images (FP runs up to ``lag``
    images ahead of BP), from the plan's ``mask_store`` / ``arg_store`` (:func:`_store_words`)."""
    out = {}
    if geo.relu:
        out["mask"] = (geo.out_channels, _store_words(
            seg, "mask", seg.mask_store, geo.out_channels, lag,
            geo.conv_height * geo.conv_width))
    if geo.pool is not None:
        bits = geo.out_channels * arg_bits(geo.pool[0])
        out["arg"] = (bits, _store_words(seg, "arg", seg.arg_store, bits, lag,
                                         geo.out_height * geo.out_width))
    return out


def _store_words(seg, store, entry, bits, lag, pixels):
    """Words of segment ``seg``'s ``store`` (``"mask"`` / ``"arg"``) from its plan entry
    ``entry`` (``SegmentPlan.mask_store`` / ``arg_store``), checked against what the hardware
    needs: words of ``bits`` (the FP layer's mask / argmax payload), at least ``(lag + 1) *
    pixels`` of them (FP runs up to ``lag`` images ahead of BP). A plan of before these entries
    (``entry`` ``None``): an on-chip store of exactly that size."""
    need = (lag + 1) * pixels
    if entry is None:
        return need
    what = {"mask": "ReLU-mask", "arg": "argmax"}[store]
    if entry.words < need:
        raise ValueError(f"NodeTop: the {what} store of {seg.layer!r} ({entry.words} words) "
                         f"cannot hold the lag of {lag} images plus one, of {pixels} pixels")
    if entry.width != bits:
        raise ValueError(f"NodeTop: the {what} store of {seg.layer!r} in the plan holds words of "
                         f"{entry.width} bits; its FP layer's are {bits} bits wide")
    return entry.words


def _span_before(seg, geo=None):
    """The split layer of ``seg`` has slices on earlier nodes."""
    if seg.split == "whole":
        return False
    return int(seg.channels[0]) > 0


def _span_after(seg, network, geo=None):
    """The split layer of ``seg`` has slices on later nodes."""
    if seg.split == "whole":
        return False
    layer = network.layer(seg.layer)
    total = layer.in_shape[0] if seg.split == "icp" else layer.out_channels
    return int(seg.channels[1]) < total


def _next_of(names, name):
    return names[names.index(name) + 1]


def _prev_of(names, name):
    return names[names.index(name) - 1]
