"""From a network and a cluster to a plan: partition, allocation, storage, balancing, traffic.

``map_network(net, board, nodes, ...)`` runs the whole flow and returns a :class:`Plan`:

1. **Work line** (:func:`build_works`): every conv/fc layer with its FP, EB and PG MACs, cut by
   input channels (ICP) or, where a layer has fewer than ``ocp_threshold`` input channels per
   group, by output channels (OCP).
2. **Partition and engines** (:mod:`fpdeep_map.partition`): coarse equal-work cut, fine cut at
   channel granularity, engines as P x S x X arrays of K x K tiles.
3. **Storage** per node: LPRAM (master weights) and LGB (gradient accumulators), line buffers,
   link FIFOs, Act-RAM sized from the pipeline timing model (:func:`residency`), FC weights in
   off-chip memory with an FC micro-batch that keeps that traffic within the memory's bandwidth;
   ReLU-mask and argmax stores of lag + 1 images (:meth:`_Context.place_stores`), on chip where
   BRAM is left after the Act-RAMs, else off chip.
4. **Parameter balancing**: parameters of a node whose BRAM cannot hold them are kept in the
   nearest nodes with room (their BPRAM/BGB); the weights then stream to the user once per use
   (FP and EB) per image, and gradients stream back once per image.
5. **Traffic** on every link and direction, per data path.
6. **Performance**: the pipeline period is the slowest engine; links and off-chip memory may
   lower the rate; GOPS, DSP use, idle share and epoch time follow.
"""

from __future__ import annotations

import math

from . import costs
from .board import Board
from .errors import FpdeepError
from .framing import StreamTiming, link_frames
from .network import Network
from .numerics import NumericsConfig
from .partition import PartitionError, Work, partition
from .plan import (EnginePlan, LendPlan, LinkPlan, MemoryPlan, NodePlan, Plan, SegmentPlan,
                   StreamPlan, set_ranges)

IMAGENET_TRAIN_IMAGES = 1_281_167
TOPOLOGIES = ("chain", "ring", "mesh")
#: Link streams whose producers wait for the last layer's update at a mini-batch boundary
#: (the backward pass): their frames restart from an idle link (fpdeep_map/framing.py).
BACKWARD_PATHS = ("errors", "partial_errors", "gradients")


# ---- 1. the work line ---------------------------------------------------------------------------

def build_works(net: Network, ocp_threshold: int = 16, max_row_lanes: int = 8,
                whole_layers: bool = False):
    works = []
    for i, layer in enumerate(net.compute_layers()):
        if layer.kind == "conv":
            cin, h, w = layer.in_shape
            cout, ho, wo = layer.out_shape
            k, stride, groups = layer.kernel, layer.stride, layer.groups
        else:
            cin, cout = layer.in_channels, layer.out_channels
            h = w = ho = wo = 1
            k, stride, groups = 1, 1, 1
            idx = net.index(layer.name)
            below = net.layers[idx - 1].out_shape if idx > 0 else layer.in_shape
            fc_pixels = below[1] * below[2] if len(below) == 3 else 1
        split = "ocp" if layer.kind == "conv" and cin // groups < ocp_threshold else "icp"
        macs = {"fp": layer.fp_macs, "eb": net.eb_macs(layer), "pg": layer.pg_macs}
        works.append(Work(index=i, name=layer.name, kind=layer.kind, split=split, cin=cin,
                          cout=cout, groups=groups, k=k, stride=stride, in_hw=(h, w),
                          out_hw=(ho, wo), macs=macs, max_x=max_row_lanes,
                          whole=whole_layers,
                          fc_pixels=fc_pixels if layer.kind == "fc" else 1))
    return works


def post_layers(net: Network):
    """Compute layer name -> the relu/maxpool layers that follow it."""
    post, current = {}, None
    for layer in net.layers:
        if layer.is_compute:
            current = layer.name
            post[current] = []
        elif layer.kind in ("relu", "maxpool") and current is not None:
            post[current].append(layer)
    return post


# ---- 3. timing model of the fine-grained pipeline -------------------------------------------------

def residency(net: Network, works, fc_microbatch: int, whole_image=(), link_delay=None,
              fc_timing=None):
    """How long (in pipeline periods, i.e. images) each layer's input stays in Act-RAM.

    A layer streams one image per period T, row by row. Layer l+1 starts on an image once layer l
    has produced the rows its first output row needs: a fraction ``f_l`` of layer l's input
    (conv: ``(K - P)`` rows, plus ``(kp - 1) * stride`` more when a pool of kernel kp follows,
    over ``H_in``; fc: the whole input, for a micro-batch of ``fc_microbatch`` images). Backward,
    layer l starts once layer l+1 has produced the first rows of its input errors (a fraction
    ``g_{l+1}`` of a period, K rows over H_out; fc: a micro-batch). Row r of layer l's input is
    written in FP at ``s_l + r/H*T`` and read by PG at ``b_l + r/H*T``, so the Act-RAM of layer l
    holds ``(b_l - s_l) / T = sum_{j>=l} f_j + sum_{j>l} g_j`` images' worth (plus K rows).

    Layers named in ``whole_image`` (those with parameters lent by a neighbour: their engines
    work weight-stationary, sweeping the whole map once per streamed weight set) need their whole
    input before FP and their whole output error before EB: ``f = g = 1``.

    ``link_delay``: ``(fwd, bwd[, own])``, lists of periods per layer added to ``f`` and ``g``:
    the link transit of data that cross FPGAs on the way (:meth:`_Context.link_transit`);
    ``own`` is added to the layer's own residency: a split layer's output errors (OCP) or
    ``E_out`` (ICP) travel back along its span to the earlier slices, whose PG waits for them.
    Without it (one FPGA) nothing is added.

    ``fc_timing``: ``{index: (f_extra, g)}`` in periods for FC layers of micro-batch 1, as built
    (:meth:`_Context.fc_timing`): an FC replays its whole stored input after the last pixel
    came, and the last one feeds the loss unit, so ``f = 1 + f_extra``; its EB emits the
    first input pixel's errors after one pixel's replay (``g``, a small fraction), but ``f + g``
    is kept at least 2 (the whole-image figure, enough where the replay ends within a period:
    measured on one FPGA), i.e. ``g = max(g, 1 - f_extra)``. Without it: ``f = g =
    fc_microbatch``.
    """
    post = post_layers(net)
    layers = {l.name: l for l in net.compute_layers()}
    f, g = [], []
    for w in works:
        if w.kind == "fc":
            if fc_timing and w.index in fc_timing and fc_microbatch == 1:
                extra, back = fc_timing[w.index]
                f.append(1.0 + extra)
                # never below the whole-image figure f + g = 2 of the layers below: it holds
                # where the FC's replay ends within a period (measured on one FPGA)
                g.append(max(back, 1.0 - extra))
            else:
                f.append(float(fc_microbatch))
                g.append(float(fc_microbatch))
            continue
        if w.name in whole_image:
            f.append(1.0)
            g.append(1.0)
            continue
        layer = layers[w.name]
        rows = max(1, w.k - layer.padding)
        for p in post[w.name]:
            if p.kind == "maxpool":
                rows += (p.kernel - 1) * w.stride
        f.append(min(1.0, rows / w.in_hw[0]))
        g.append(min(1.0, w.k / w.out_hw[0]))
    own = [0.0] * len(works)
    if link_delay is not None:
        fwd, bwd = link_delay[:2]
        f = [a + b for a, b in zip(f, fwd)]
        g = [a + b for a, b in zip(g, bwd)]
        if len(link_delay) > 2:
            own = list(link_delay[2])
    res = []
    for i in range(len(works)):
        res.append(sum(f[i:]) + sum(g[i + 1:]) + own[i])
    return res


# ---- helpers --------------------------------------------------------------------------------------

def _bram18_for(words, width, banks):
    """RAMB18 count of a memory of ``banks`` lanes of ``width`` bits read at one address.

    ``words`` words in all, so ``depth = ceil(words / banks)``. The lanes side by side form one
    row of ``banks * width`` bits, built from RAMB18 columns of 1K x 18 or 512 x 36, whichever
    needs fewer. Returns (bram18, depth).
    """
    if words <= 0:
        return 0, 0
    banks = max(1, min(banks, words))
    depth = -(-words // banks)
    row = banks * width
    return min(-(-row // 18) * -(-depth // 1024), -(-row // 36) * -(-depth // 512)), depth


def _segment_weights(w: Work, lo, hi):
    if w.kind == "fc":
        return (hi - lo) * w.cout
    if w.split == "icp":
        return (hi - lo) * (w.cout // w.groups) * w.kk
    return (hi - lo) * (w.cin // w.groups) * w.kk


def _in_out_ranges(w: Work, lo, hi):
    """(input channels read, output channels produced) of units [lo, hi)."""
    if w.split == "icp":
        per_in, per_out = w.cin // w.groups, w.cout // w.groups
        g0, g1 = lo // per_in, (hi - 1) // per_in
        return [lo, hi], [g0 * per_out, (g1 + 1) * per_out]
    per_in, per_out = w.cin // w.groups, w.cout // w.groups
    g0, g1 = lo // per_out, (hi - 1) // per_out
    return [g0 * per_in, (g1 + 1) * per_in], [lo, hi]


# ---- the whole flow -------------------------------------------------------------------------------

def map_network(net: Network, board: Board, nodes: int, *, topology: str = "chain",
                batch: int = 128, numerics: NumericsConfig | None = None, ocp_threshold: int = 16,
                dsp_budget: float = costs.DSP_BUDGET, bram_budget: float = costs.BRAM_BUDGET,
                lut_budget: float = costs.LUT_BUDGET, ff_budget: float = costs.FF_BUDGET,
                fc_microbatch: int | None = None, max_row_lanes: int = 8,
                split: str = "channels", ws_scans_padding: bool = costs.WS_SCANS_PADDING,
                lending=None, _over_budget=None, _where="lending") -> Plan:
    """Map the training of ``net`` onto ``nodes`` boards of kind ``board``.

    ``max_row_lanes``: the most output rows an engine may compute side by side (its ``X``), an
    upper bound. With the mapper's own parameter balancing the network is also mapped with the
    smaller caps of :func:`row_lane_caps` and the plan with the most images per second is kept,
    the requested cap's on a tie (:func:`_best_row_lanes`): the partition cannot foresee which
    layers will run on lent parameters, whose weight-stationary engines sweep the padded map
    at a cost that depends on ``X`` (VGG-19 on 15 VC709: 94.6 images/s with cap 8, 122.9 with
    cap 4). The plan's ``budgets["max_row_lanes"]`` is the cap its cut was made with: mapping
    again with it gives the same plan.

    ``lending``: ``[(layer, lender, borrower, weights)]`` to use instead of the mapper's own
    parameter balancing (:meth:`_Context.impose_lending`; :func:`evaluate_plan`): mapped with
    ``max_row_lanes`` alone.

    Raises :class:`FpdeepError` for bad arguments and for a network that does not fit with the
    requested ``max_row_lanes`` (a smaller cap that does not fit is only no candidate).
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise FpdeepError("--nodes", "nodes", nodes, "must be an integer >= 1")
    if topology not in TOPOLOGIES:
        raise FpdeepError("--topology", "topology", topology, f"must be one of {TOPOLOGIES}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise FpdeepError("--batch", "batch", batch, "must be an integer >= 1")
    if net.unsupported():
        bad = net.unsupported()[0]
        raise FpdeepError(net.source, f"layers[{net.index(bad.name)}].kind", bad.kind,
                          f"layer {bad.name!r} is of a kind fpdeep cannot map yet "
                          f"(run 'check' for the full list)")
    numerics = numerics or NumericsConfig()
    if isinstance(max_row_lanes, bool) or not isinstance(max_row_lanes, int) or max_row_lanes < 1:
        raise FpdeepError("--max-row-lanes", "max_row_lanes", max_row_lanes, "must be an integer >= 1")
    if split not in ("channels", "layers"):
        raise FpdeepError("--split", "split", split, "must be 'channels' (FPDeep: cut inside "
                          "layers) or 'layers' (whole layers per FPGA, the layer-granular baseline)")
    if not net.compute_layers():
        raise FpdeepError(net.source, "layers", len(net.layers), "the network has no conv or fc layer")
    args = dict(numerics=numerics, topology=topology, batch=batch, ocp_threshold=ocp_threshold,
                dsp_budget=dsp_budget, bram_budget=bram_budget, lut_budget=lut_budget,
                ff_budget=ff_budget, fc_microbatch=fc_microbatch, split=split,
                ws_scans_padding=ws_scans_padding, lending=lending, over_budget=_over_budget,
                where=_where)
    ctx, period = _map_with_cap(net, board, nodes, max_row_lanes, **args)
    plan = ctx.finish(period)
    if lending is not None:
        return plan
    return _best_row_lanes(plan, net, board, nodes, max_row_lanes, args)


def row_lane_caps(max_row_lanes):
    """The smaller caps on the engines' ``X`` that :func:`map_network` tries besides the
    requested one, in the order tried: the powers of two below it (8: 4, 2, 1)."""
    caps, c = [], 1
    while c < max_row_lanes:
        caps.append(c)
        c *= 2
    return caps[::-1]


def _best_row_lanes(plan, net, board, nodes, max_row_lanes, args):
    """``plan`` (mapped with ``max_row_lanes``) or the plan of a smaller cap of
    :func:`row_lane_caps` with more ``summary["images_per_second"]`` (strictly more: on a tie
    the larger cap's plan is kept, so a plan changes only where something is gained).

    Only the winners are finished (:meth:`_Context.finish`, whose link framing is most of a
    mapping's time): a cap whose partition period alone (an upper bound on the rate) does not
    beat the best so far is not mapped further, and one whose rate before the framing
    (:func:`_images_per_second`, the same figure) does not beat it is not finished."""
    best = plan.summary["images_per_second"]
    clock_hz = board.clock_mhz * 1e6
    for cap in row_lane_caps(max_row_lanes):
        try:
            got = _map_with_cap(net, board, nodes, cap, beat=best, **args)
            if got is None:
                continue
            ctx, period = got
            if round(_images_per_second(ctx, period, clock_hz), 4) <= best:
                continue
            other = ctx.finish(period)
        except FpdeepError:
            continue                # does not fit with this cap: no candidate
        if other.summary["images_per_second"] > best:
            plan, best = other, other.summary["images_per_second"]
    return plan


def _images_per_second(ctx, period, clock_hz):
    """The ``images_per_second`` :meth:`_Context.finish` reports for ``ctx`` at ``period``,
    unrounded, without its link framing (:meth:`_Context.periods`, as there)."""
    return clock_hz / ctx.periods(period)[3]


def _master_offchip(seg):
    """Whether the plan keeps segment ``seg``'s master copy off chip (``master_store``)."""
    return seg.master_store is not None and seg.master_store.offchip_words > 0


def _map_with_cap(net, board, nodes, max_row_lanes, *, numerics, topology, batch, ocp_threshold,
                  dsp_budget, bram_budget, lut_budget, ff_budget, fc_microbatch, split,
                  ws_scans_padding, lending, over_budget, where, beat=None):
    """Partition, storage, balancing and traffic with engines of at most ``max_row_lanes``
    rows: ``(context, period)`` ready for :meth:`_Context.finish`. ``None`` if ``beat`` is
    given and the partition's period alone cannot give more images per second than it (the
    rate, rounded as in the summary, is never above ``clock / period``)."""
    works = build_works(net, ocp_threshold, max_row_lanes, whole_layers=split == "layers")
    dsp_per_node = int(board.dsp * dsp_budget)
    # FC weights stream from off-chip memory: at most a mini-batch of images share one read
    m, ga = numerics.master.width, numerics.grad_acc_width
    fc_bits = (2 * m + 2 * ga) / batch + (2 * m + ga) / batch
    mem_rate = board.offchip_gbps * 1e9 * costs.OFFCHIP_EFFICIENCY / (board.clock_mhz * 1e6)
    offchip = (lambda w: fc_bits * w.cout if w.kind == "fc" else 0, mem_rate)
    try:
        by_node, _ = partition(works, nodes, dsp_per_node, offchip)
    except PartitionError as e:
        raise FpdeepError(board.source, "dsp", board.dsp, f"network does not fit: {e}") from None

    period = max(seg.cycles for segs in by_node for seg in segs)
    clock_hz = board.clock_mhz * 1e6
    compute_ips = clock_hz / period
    if beat is not None and round(compute_ips, 4) <= beat:
        return None

    ctx = _Context(net, board, nodes, works, by_node, numerics, batch, topology,
                   dict(dsp=dsp_budget, bram=bram_budget, lut=lut_budget, ff=ff_budget,
                        max_row_lanes=max_row_lanes, ocp_threshold=ocp_threshold, split=split))
    ctx.ws_scans_padding = ws_scans_padding
    ctx.choose_fc_microbatch(compute_ips, fc_microbatch)
    usable = board.offchip_gbps * 1e9 * costs.OFFCHIP_EFFICIENCY

    def storage():
        while True:
            ctx.size_memories()
            if lending is None:
                ctx.balance_parameters()
            else:
                ctx.impose_lending(lending, where=where, strict=over_budget is None)
                if over_budget is not None:
                    over_budget[:] = ctx.over_budget
            ctx.resize_act_ram_for_lending()
            ctx.place_act_ram()
            ctx.place_stores()
            # a larger FC micro-batch when a node's off-chip traffic (FC weights, spilled
            # Act-RAM and gradient accumulators, master weights) would hold back the
            # compute-bound rate
            if fc_microbatch is not None or ctx.fc_microbatch >= batch:
                break
            if all(bits * compute_ips <= usable for bits in ctx.offchip_bits):
                break
            ctx.fc_microbatch = min(batch, ctx.fc_microbatch * 2)
        ctx.traffic()

    storage()
    # the residency in periods of the pipeline as built, at the period of this first pass
    # (engines with their line-buffer start-up, links, memory): the FC layers' replay and the
    # loss unit, and on several FPGAs the link transit of data crossing them; then the storage
    # again with those Act-RAMs (and so lags)
    t0 = ctx.bound_period(ctx.timing(max(period, ctx.weight_stationary_cycles()))["engine_cycles"])
    ctx.fc_times = ctx.fc_timing(t0)
    if nodes > 1:
        ctx.link_delay = ctx.link_transit(t0)
        ctx.transit_period = t0
    storage()
    return ctx, max(period, ctx.weight_stationary_cycles())


class _Context:
    """State of one mapping run (kept out of the public API)."""

    def __init__(self, net, board, nodes, works, by_node, numerics, batch, topology, budgets):
        self.net, self.board, self.nodes, self.works = net, board, nodes, works
        self.by_node, self.num, self.batch, self.topology = by_node, numerics, batch, topology
        self.budgets = budgets
        self.bram18_budget = int(board.bram36 * budgets["bram"] * 2)
        # on chip per parameter: the working weight (LPRAM) and its gradient accumulator (LGB);
        # the master copy lives in off-chip memory and is touched once per mini-batch
        self.param_bits = numerics.weight.width + numerics.grad_acc_width
        self.segplans = [[] for _ in range(nodes)]
        self.lends = []                     # LendPlan
        self.offchip_bits = [0.0] * nodes   # per image
        self.offchip_bytes = [0.0] * nodes  # capacity used
        self.post = post_layers(net)
        self.link_delay = None              # (fwd, bwd, own) periods per layer, see link_transit
        self.fc_times = None                # {index: (f_extra, g)} periods, see fc_timing

    # -- FC micro-batch --------------------------------------------------------------------------
    def _fc_bits_per_image(self, weights, b):
        m, ga = self.num.master.width, self.num.grad_acc_width
        return weights * ((2 * m + 2 * ga) / b + (2 * m + ga) / self.batch)

    def choose_fc_microbatch(self, compute_ips, forced):
        """Smallest power of two (<= batch) keeping every FC node's off-chip traffic within
        the memory's usable bandwidth at the compute-bound rate."""
        fc_weights = [0] * self.nodes
        for k, segs in enumerate(self.by_node):
            for seg in segs:
                if seg.work.kind == "fc":
                    fc_weights[k] += _segment_weights(seg.work, seg.lo, seg.hi)
        if forced is not None:
            if isinstance(forced, bool) or not isinstance(forced, int) or forced < 1:
                raise FpdeepError("--fc-microbatch", "fc_microbatch", forced, "must be an integer >= 1")
            self.fc_microbatch = forced
            return
        usable = self.board.offchip_gbps * 1e9 * costs.OFFCHIP_EFFICIENCY
        b = 1
        while b < self.batch and any(
                self._fc_bits_per_image(w, b) * compute_ips > usable for w in fc_weights if w):
            b *= 2
        self.fc_microbatch = min(b, self.batch)

    # -- storage ---------------------------------------------------------------------------------
    def size_memories(self):
        num = self.num
        self.segplans = [[] for _ in range(self.nodes)]
        self.lends = []
        self.offchip_bits = [0.0] * self.nodes
        self.offchip_bytes = [0.0] * self.nodes
        self.res = residency(self.net, self.works, self.fc_microbatch,
                             link_delay=self.link_delay, fc_timing=self.fc_times)
        for k, segs in enumerate(self.by_node):
            for seg in segs:
                w = seg.work
                weights = _segment_weights(w, seg.lo, seg.hi)
                ins, outs = _in_out_ranges(w, seg.lo, seg.hi)
                h, wd = w.in_hw
                nin = (ins[1] - ins[0]) if w.split == "icp" else w.cin
                act_words_img = nin * h * wd
                images = self.res[w.index]
                act_words = math.ceil(act_words_img * images) + nin * w.k * wd
                fp = seg.engines["fp"]
                pg = seg.engines["pg"]
                if w.kind == "fc":
                    lp = MemoryPlan(words=weights, width=num.master.width, offchip_words=weights)
                    lg = MemoryPlan(words=weights, width=num.grad_acc_width, offchip_words=weights)
                    lb = MemoryPlan(words=0, width=num.activation.width)
                    self.offchip_bits[k] += self._fc_bits_per_image(weights, self.fc_microbatch)
                    self.offchip_bytes[k] += weights * self.param_bits / 8
                else:
                    b18, depth = _bram18_for(weights, num.weight.width, fp.s * w.kk)
                    lp = MemoryPlan(words=weights, width=num.weight.width, banks=fp.s * w.kk,
                                    depth=depth, bram18=b18)
                    # master copies: read, updated and written back once per mini-batch
                    self.offchip_bits[k] += weights * 2 * num.master.width / self.batch
                    self.offchip_bytes[k] += weights * num.master.width / 8
                    b18, depth = _bram18_for(weights, num.grad_acc_width, pg.s * w.kk)
                    lg = MemoryPlan(words=weights, width=num.grad_acc_width, banks=pg.s * w.kk,
                                    depth=depth, bram18=b18)
                    # FP and PG read K+X-1 activation rows of the segment's input channels; EB
                    # keeps K+X-1 rows of the output errors of its output channels
                    rows = w.k + fp.x - 1
                    nout = outs[1] - outs[0]
                    lb_words = 2 * rows * wd * nin + rows * w.out_hw[1] * nout
                    lb_b18 = -(-lb_words * num.activation.width // costs.BRAM18_BITS)
                    lb = MemoryPlan(words=lb_words, width=num.activation.width, banks=3,
                                    depth=-(-lb_words // 3), bram18=lb_b18)
                completes = _completed_outputs(w, seg.lo, seg.hi)
                engines = {p: EnginePlan(phase=p, kernel=e.k, p=e.p, s=e.s, x=e.x, dsp=e.dsp,
                                         cycles_per_image=e.cycles, macs_per_image=e.macs)
                           for p, e in seg.engines.items()}
                sp = SegmentPlan(
                    layer=w.name, index=w.index, kind=w.kind, split=seg.split,
                    channels=[0, w.cin] if seg.whole and w.split == "ocp" else [seg.lo, seg.hi],
                    in_channels=ins, out_channels=outs, completes=completes,
                    post=[p.name for p in self.post[w.name]] if completes else [],
                    weights=weights, weights_borrowed=0, engines=engines,
                    act_ram=MemoryPlan(words=act_words, width=num.activation.width),
                    act_ram_images=round(images, 4), lpram=lp, lgb=lg, line_buffers=lb,
                    master_store=MemoryPlan(words=weights, width=num.master.width,
                                            offchip_words=weights))
                self.segplans[k].append(sp)

    def _mandatory_bram18(self, k):
        segs = self.segplans[k]
        own = sum(s.lpram.bram18 + s.lgb.bram18 + s.line_buffers.bram18 for s in segs)
        lent = sum(l.bram18 for l in self.lends if l.lender == k)
        return own + lent + 2 * 2 * costs.LINK_FIFO_BRAM36

    def _distance(self, a, b):
        d = abs(a - b)
        if self.topology == "ring":
            d = min(d, self.nodes - d)
        return d

    def balance_parameters(self):
        """Fit every node's parameters, gradients and buffers into its BRAM budget.

        In this order, each step only for what the previous ones left short:

        1. lend parameters to nodes at most ``NEAR`` hops away with BRAM to spare (the paper's
           parameter balancing: the weights stream to the user for FP and EB of every image,
           the gradients stream back into the lender's BGB);
        2. move this node's gradient accumulators (LGB) to its off-chip memory: PG accumulates
           each image in its DSPs and updates each accumulator once per image;
        3. lend to nodes further away;
        4. otherwise the network does not fit: an error names the node and the shortfall.
        """
        budget = self.bram18_budget
        order = sorted(range(self.nodes), key=lambda j: -self._mandatory_bram18(j))
        for k in order:
            self._lend_from(k, max_distance=self.NEAR)
        for k in order:
            self._spill_lgb(k)
        for k in order:
            self._lend_from(k, max_distance=self.nodes)
            if self._mandatory_bram18(k) > budget:
                need = self._mandatory_bram18(k)
                raise FpdeepError(
                    self.board.source, "bram36", self.board.bram36,
                    f"network does not fit: node {k} needs {need / 2:.1f} BRAM36 for parameters, "
                    f"gradients and buffers but may use {budget / 2:.1f} "
                    f"({self.budgets['bram']:.0%} of {self.board.bram36}) and no node has room "
                    f"left for the {(need - budget) / 2:.1f} BRAM36 more it needs (try more nodes)")

    NEAR = 2

    def impose_lending(self, lending, where="lending", strict=True):
        """Lend as ``lending`` says (``[(layer, lender, borrower, weights)]``, e.g. a hand-edited
        plan's ``bpram`` entries, each optionally with a fifth item: its field name in the
        errors, which name the file ``where``) instead of :meth:`balance_parameters`; then
        move gradient accumulators off chip where a node is still over its BRAM budget, as
        balancing does.
        Raises :class:`FpdeepError` for a lend the plan cannot hold, and, if ``strict``, when a
        node does not fit its BRAM budget (else ``over_budget`` lists ``(node, BRAM36)``)."""
        for i, (layer, lender, borrower, weights, *label) in enumerate(lending):
            field = label[0] if label else f"lending[{i}]"
            for name, v in (("lender", lender), ("borrower", borrower)):
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.nodes:
                    raise FpdeepError(where, f"{field}.{name}", v,
                                      f"must be a node of the plan (0-{self.nodes - 1})")
            if isinstance(weights, bool) or not isinstance(weights, int) or weights < 1:
                raise FpdeepError(where, f"{field}.weights", weights, "must be an integer >= 1")
            if lender == borrower:
                raise FpdeepError(where, f"{field}.lender", lender,
                                  f"lends {layer!r} to itself (its own share is the segment's "
                                  f"weights less weights_borrowed)")
            segs = [s for s in self.segplans[borrower] if s.layer == layer and s.kind == "conv"]
            if not segs:
                raise FpdeepError(where, f"{field}.layer", layer,
                                  f"node {borrower} holds no conv segment of {layer!r} to borrow "
                                  f"its weights for")
            seg = segs[0]
            if seg.weights_borrowed + weights > seg.weights:
                raise FpdeepError(where, f"{field}.weights", weights,
                                  f"node {borrower}'s segment of {layer!r} has "
                                  f"{seg.weights} weights, {seg.weights_borrowed} of them "
                                  f"borrowed already")
            self._shrink(seg, seg.weights_borrowed + weights)
            self._lend(layer, lender, borrower, weights)
        self.over_budget = []
        for k in range(self.nodes):
            self._spill_lgb(k)
            if self._mandatory_bram18(k) > self.bram18_budget and not strict:
                self.over_budget.append((k, self._mandatory_bram18(k) / 2))
            elif self._mandatory_bram18(k) > self.bram18_budget:
                raise FpdeepError(
                    self.board.source, "bram36", self.board.bram36,
                    f"with this lending node {k} needs {self._mandatory_bram18(k) / 2:.1f} "
                    f"BRAM36 for parameters, gradients and buffers but may use "
                    f"{self.bram18_budget / 2:.1f}")

    def _lend_from(self, k, max_distance):
        budget = self.bram18_budget
        bits = self.param_bits
        order = sorted((j for j in range(self.nodes)
                        if j != k and self._distance(j, k) <= max_distance),
                       key=lambda j: (self._distance(j, k), -self._spare(j)))
        progress = True
        while self._mandatory_bram18(k) > budget and progress:
            progress = False
            for lender in order:
                deficit = self._mandatory_bram18(k) - budget
                if deficit <= 0:
                    break
                spare = self._spare(lender)
                if spare <= 0:
                    continue
                # the conv segment with the most parameters still on chip here
                segs = [s for s in self.segplans[k]
                        if s.kind == "conv" and s.weights > s.weights_borrowed]
                if not segs:
                    return
                seg = max(segs, key=lambda s: s.weights - s.weights_borrowed)
                want = min(seg.weights - seg.weights_borrowed,
                           -(-(deficit + 1) * costs.BRAM18_BITS // bits),
                           spare * costs.BRAM18_BITS // bits)
                if want <= 0:
                    continue
                self._shrink(seg, seg.weights_borrowed + want)
                self._lend(seg.layer, lender, k, want)
                progress = True

    def _spill_lgb(self, k):
        for seg in sorted((s for s in self.segplans[k] if s.kind == "conv"),
                          key=lambda s: -s.lgb.bram18):
            if self._mandatory_bram18(k) <= self.bram18_budget:
                return
            local = seg.weights - seg.weights_borrowed
            if local <= 0 or seg.lgb.bram18 == 0:
                continue
            seg.lgb = MemoryPlan(words=local, width=seg.lgb.width, banks=seg.lgb.banks,
                                 depth=seg.lgb.depth, bram18=0, offchip_words=local)
            self.offchip_bits[k] += 2 * local * seg.lgb.width
            self.offchip_bytes[k] += local * seg.lgb.width / 8

    def _lend(self, layer, lender, borrower, weights):
        for l in self.lends:
            if (l.layer, l.lender, l.borrower) == (layer, lender, borrower):
                l.weights += weights
                l.bram18 = -(-l.weights * self.param_bits // costs.BRAM18_BITS)
                return
        self.lends.append(LendPlan(layer=layer, lender=lender, borrower=borrower, weights=weights,
                                   bram18=-(-weights * self.param_bits // costs.BRAM18_BITS)))

    def _spare(self, j):
        return self.bram18_budget - self._mandatory_bram18(j)

    def _shrink(self, seg, borrowed):
        gone = borrowed - seg.weights_borrowed
        seg.weights_borrowed = borrowed
        local = seg.weights - borrowed
        if seg.lgb.offchip_words and gone:
            # accumulators spilled before these weights were lent: their off-chip traffic
            # goes with them (``_spill_lgb`` counted it)
            k = next(j for j, segs in enumerate(self.segplans) if any(x is seg for x in segs))
            self.offchip_bits[k] -= 2 * gone * seg.lgb.width
            self.offchip_bytes[k] -= gone * seg.lgb.width / 8
        b18, depth = _bram18_for(local, self.num.weight.width, seg.lpram.banks)
        seg.lpram = MemoryPlan(words=local, width=seg.lpram.width, banks=seg.lpram.banks,
                               depth=depth, bram18=b18)
        b18, depth = _bram18_for(local, self.num.grad_acc_width, seg.lgb.banks)
        if seg.lgb.offchip_words:
            b18 = 0
        seg.lgb = MemoryPlan(words=local, width=seg.lgb.width, banks=seg.lgb.banks,
                             depth=depth, bram18=b18, offchip_words=local if b18 == 0 else 0)

    def lending_trips(self):
        """``{layer index: periods}``: the update round trip of each borrowed layer beyond its
        image's last error, at the period of :meth:`link_transit` -- the weight-stationary PG's
        later sweeps (its first follows the errors as they arrive, the ``N - 1`` others come
        after: ``(1 - 1/N)`` of its cycles per image, ``WSPGLayer``), its gradient sets to the
        farthest keeper, the keeper's update (``3 N`` cycles for ``N`` sets, as
        :meth:`boundary_cycles`, plus ``UPDATE_FIXED_CYCLES``) and the new weight sets back,
        ``2 d`` hops for a keeper ``d`` links away. Empty on the first pass (no link transit
        yet)."""
        if self.link_delay is None or not self.lends:
            return {}
        hop = self.hop_transit_cycles()
        trips = {}
        for l in self.lends:
            i = next(w.index for w in self.works if w.name == l.layer)
            total, _ = self._lent_sets(l.borrower, l.layer)
            d = self._distance(l.lender, l.borrower)
            seg = next(s for s in self.segplans[l.borrower] if s.layer == l.layer)
            pg = seg.engines["pg"]
            sweeps = self._ws_sweeps(seg, pg)
            pg_cycles = self._ws_cycles(seg, pg) if self.ws_scans_padding else pg.cycles_per_image
            cycles = (pg_cycles * (1 - 1 / sweeps) + 2 * d * hop + 3 * total
                      + costs.UPDATE_FIXED_CYCLES
                      + (costs.offchip_update_cycles(total) if _master_offchip(seg) else 0))
            trips[i] = max(trips.get(i, 0.0), cycles / self.transit_period)
        return trips

    def resize_act_ram_for_lending(self):
        """Layers using lent parameters wait for whole maps: their timing, and so the Act-RAM
        residency of every layer below them, grows (see :func:`residency`). A borrowed layer's
        own residency also covers its lending round trip (:meth:`lending_trips`): its lag
        ``D = floor(act_ram_images)`` is how far its FP runs ahead of the update, and that update
        comes back from the keeper only after the trip (``far``: conv1's weights two links away,
        12.41 + 1.00 images, lag 13 instead of 12; with 12 every mini-batch waited for it,
        ``docs/mapping.md`` section 6)."""
        borrowed = {l.layer for l in self.lends}
        if not borrowed:
            return
        delay = self.link_delay
        trips = self.lending_trips()
        if trips:
            own = list(delay[2]) if len(delay) > 2 else [0.0] * len(self.works)
            for i, t in trips.items():
                own[i] += t
            delay = (delay[0], delay[1], own)
        self.res = residency(self.net, self.works, self.fc_microbatch, whole_image=borrowed,
                             link_delay=delay, fc_timing=self.fc_times)
        for segs in self.segplans:
            for seg in segs:
                w = self.works[seg.index]
                nin = (seg.in_channels[1] - seg.in_channels[0]) if w.split == "icp" else w.cin
                h, wd = w.in_hw
                images = self.res[w.index]
                words = math.ceil(nin * h * wd * images) + nin * w.k * wd
                seg.act_ram = MemoryPlan(words=words, width=seg.act_ram.width)
                seg.act_ram_images = round(images, 4)

    def _lent_sets(self, borrower, layer):
        """``(total, {keeper: sets})`` of ``borrower``'s segment of ``layer``: its weight sets
        and how many each keeper holds, as the hardware cuts them (whole sets in proportion to
        the weights, :func:`~fpdeep_map.plan.set_ranges`; the borrower keeps its own share)."""
        seg = next(s for s in self.segplans[borrower] if s.layer == layer)
        w = self.works[seg.index]
        e = seg.engines["fp"]
        lo, hi = (0, w.units) if seg.split == "whole" else seg.channels
        total = sum(-(-o // e.p) * -(-c // e.s) for c, o in w.group_dims(lo, hi))
        keep = {}
        for l in self.lends:
            if (l.borrower, l.layer) == (borrower, layer):
                keep[l.lender] = keep.get(l.lender, 0) + l.weights
        own = seg.weights - seg.weights_borrowed
        if own > 0:
            keep[borrower] = own
        nodes = sorted(keep)
        ranges = set_ranges(total, [keep[j] for j in nodes])
        return total, {j: (r[1] - r[0] if r else 0) for j, r in zip(nodes, ranges)}

    def weight_stationary_cycles(self):
        """Engines of segments whose parameters are lent sweep the whole (padded) map once per
        streamed weight set (FP, EB) or per gradient set (PG): ``passes * (H + 2P) * (W + 2P)``
        cycles per image instead of ``passes * Ho * Wo`` (fpdeep_hw/node/lend.py: ``WSFPLayer``,
        ``WSEBLayer``, ``WSPGLayer``), for all the segment's sets, the ones the
        borrower keeps itself included (they stream from a lender on the borrower). Updates
        those engines in the plan and returns the slowest (0 without lending)."""
        borrowed = {(l.borrower, l.layer) for l in self.lends}
        slowest = 0
        for k, segs in enumerate(self.segplans):
            for seg in segs:
                if (k, seg.layer) not in borrowed:
                    continue
                if not self.ws_scans_padding:
                    continue            # weight-stationary at the normal rate: nothing changes
                for phase in ("fp", "eb", "pg"):
                    e = seg.engines.get(phase)
                    if e is None:
                        continue
                    ws = self._ws_cycles(seg, e)
                    # as built, a borrowed segment is weight-stationary as a whole: the
                    # borrower keeps its own share of the sets (if any) in a lender of its own
                    # and streams them to the same engines (fpdeep_hw/node/lend.py)
                    e.cycles_per_image = max(e.cycles_per_image, ws)
                    slowest = max(slowest, e.cycles_per_image)
        return slowest

    def _ws_cycles(self, seg, e):
        """Cycles per image of a weight-stationary engine: its sweeps of the padded map."""
        w = self.works[seg.index]
        pad = self.net.layer(w.name).padding if w.kind == "conv" else 0
        rows = -(-(w.in_hw[0] + 2 * pad) // e.x)
        return self._ws_sweeps(seg, e) * rows * (w.in_hw[1] + 2 * pad)

    def _ws_sweeps(self, seg, e):
        """Sweeps of the map per image of a weight-stationary engine: one per weight set
        (``R * G`` over the segment's channel groups)."""
        w = self.works[seg.index]
        lo, hi = (0, w.units) if seg.split == "whole" else seg.channels
        return sum(-(-o // e.p) * -(-c // e.s) for c, o in w.group_dims(lo, hi))

    def place_act_ram(self):
        """Act-RAM on chip where BRAM is left, the rest in off-chip memory."""
        for k in range(self.nodes):
            room = max(0, self.bram18_budget - self._mandatory_bram18(k))
            # smaller FIFOs first: they fit whole
            for seg in sorted(self.segplans[k], key=lambda s: s.act_ram.words):
                a = seg.act_ram
                need = -(-a.words * a.width // (costs.FIFO_BITS_PER_BRAM36 // 2))
                w = self.works[seg.index]
                if need <= room:
                    seg.act_ram = MemoryPlan(words=a.words, width=a.width, banks=1,
                                             depth=a.words, bram18=need)
                    room -= need
                else:
                    seg.act_ram = MemoryPlan(words=a.words, width=a.width, banks=1,
                                             depth=a.words, bram18=0, offchip_words=a.words)
                    nin = seg.in_channels[1] - seg.in_channels[0] if w.split == "icp" else w.cin
                    per_image = nin * w.in_hw[0] * w.in_hw[1]
                    self.offchip_bits[k] += 2 * per_image * a.width
                    self.offchip_bytes[k] += a.words * a.width / 8

    def _placed_bram18(self, k):
        """RAMB18 of node ``k``'s Act-RAMs, mask and argmax stores kept on chip."""
        return sum(m.bram18 for s in self.segplans[k]
                   for m in (s.act_ram, s.mask_store, s.arg_store) if m is not None)

    def layer_lags(self):
        """``{layer index: D_l}``: the lag the hardware builds, ``floor(act_ram_images)``, the
        smallest over a split layer's segments (as ``sim.golden.train.lags_from_plan``)."""
        lags = {}
        for segs in self.segplans:
            for s in segs:
                d = math.floor(s.act_ram_images)
                lags[s.index] = min(d, lags.get(s.index, d))
        return lags

    def _stores(self, seg, lag):
        """The ``(mask_store, arg_store)`` of a segment, unplaced, and their words per image.

        As the node builds them (``fpdeep_hw/node/top.py``): the ReLU masks of the convolution's
        output pixels (``H_conv x W_conv``, 1 for an FC) of the segment's output channels, one
        bit each; the max-pool argmaxes of the pooled pixels, ``arg_bits(kernel)`` bits per
        output channel (``fpdeep_hw.compute.sfu.arg_bits``); ``lag + 1`` images of each (FP
        runs up to ``lag`` images ahead of BP). ``words = width = 0`` without a ReLU / pool."""
        w = self.works[seg.index]
        nout = seg.out_channels[1] - seg.out_channels[0]
        conv_px = w.out_hw[0] * w.out_hw[1] if w.kind == "conv" else 1
        posts = [self.net.layer(n) for n in seg.post]
        relu = any(p.kind == "relu" for p in posts)
        pool = next((p for p in posts if p.kind == "maxpool"), None)
        pool_px = pool.out_shape[1] * pool.out_shape[2] if pool is not None else 0
        arg_bits = max((pool.kernel ** 2 - 1).bit_length(), 1) if pool is not None else 0
        mask = (MemoryPlan(words=(lag + 1) * conv_px, width=nout) if relu
                else MemoryPlan(words=0, width=0))
        arg = (MemoryPlan(words=(lag + 1) * pool_px, width=nout * arg_bits) if pool is not None
               else MemoryPlan(words=0, width=0))
        return (mask, conv_px if relu else 0), (arg, pool_px)

    def place_stores(self):
        """The ReLU-mask and argmax stores, after the Act-RAMs: on chip where BRAM is left,
        the others in off-chip memory (written once and read once per image)."""
        lags = self.layer_lags()
        for k in range(self.nodes):
            room = max(0, self.bram18_budget - self._mandatory_bram18(k)
                       - sum(s.act_ram.bram18 for s in self.segplans[k]))
            stores = []
            for seg in self.segplans[k]:
                (mask, mpx), (arg, apx) = self._stores(seg, lags[seg.index])
                stores += [(seg, "mask_store", mask, mpx), (seg, "arg_store", arg, apx)]
            # smaller stores first: they fit whole
            for seg, attr, a, per_image in sorted(stores, key=lambda t: t[2].words * t[2].width):
                need = -(-a.words * a.width // (costs.FIFO_BITS_PER_BRAM36 // 2))
                if need <= room:
                    setattr(seg, attr, MemoryPlan(words=a.words, width=a.width, banks=1,
                                                  depth=a.words, bram18=need))
                    room -= need
                else:
                    setattr(seg, attr, MemoryPlan(words=a.words, width=a.width, banks=1,
                                                  depth=a.words, bram18=0,
                                                  offchip_words=a.words))
                    self.offchip_bits[k] += 2 * per_image * a.width
                    self.offchip_bytes[k] += a.words * a.width / 8

    # -- traffic ---------------------------------------------------------------------------------
    def traffic(self):
        """Words per image on every link direction, per data path."""
        num = self.num
        flows = {}          # (src, dst) -> {(path, layer, width): words}
        items = {}          # (src, dst) -> {(path, layer, width): items per image and port}
        bursts = {}         # (src, dst) -> {(path, layer, width): items emitted together}
        makers = {}         # (src, dst) -> {(path, layer, width): (node, layer index, phase)}
        spacings = {}       # (src, dst) -> {(path, layer, width): cycles between burst items}

        def add(a, b, path, layer, width, words, n_items, burst=1, made_by=None, spacing=1,
                senders=None):
            """`words` per image from node a to node b, hop by hop, in `n_items` items per
            image (pixels of the map, weight sets), emitted `burst` at a time (a row of
            pixels), by the engines of phase `made_by` = (layer index, phase) of node a (of
            each hop's sending node for partial sums, which every slice adds to and passes
            on): how the link packer and framer see them, items of a burst `spacing` cycles
            apart. A hop whose sending node is a key of `senders` emits as
            `senders[node] = (burst, spacing, drained)` says (``StreamTiming``'s fields: the
            slices of an OCP span, each adding its own and passing the sum on)."""
            if a == b or words <= 0:
                return
            key = (path, layer, width)
            for hop in self._hops(a, b):
                hop_burst, hop_spacing, drained = (senders or {}).get(hop[0],
                                                                      (burst, spacing, False))
                if made_by is not None:
                    node = hop[0] if path == "partial_sums" else a
                    makers.setdefault(hop, {}).setdefault(key, (node, *made_by))
                d = flows.setdefault(hop, {})
                d[key] = d.get(key, 0) + words
                # one port per stream and hop carries every producer's lanes of a map; lent
                # weight sets of several keepers add up
                i = items.setdefault(hop, {})
                i[key] = (i.get(key, 0) + n_items if path in ("parameters", "gradients")
                          else max(i.get(key, 0), n_items))
                bs = bursts.setdefault(hop, {})
                bs[key] = (bs.get(key, 0) + hop_burst if path == "parameters" else hop_burst)
                spacings.setdefault(hop, {})[key] = (hop_spacing, drained)

        segs_of = {w.index: [] for w in self.works}
        for k, segs in enumerate(self.segplans):
            for s in segs:
                segs_of[s.index].append((k, s))

        # producers of each compute layer's input tensor: list of (flat_lo, flat_hi, node)
        producers = [(0, self._tensor_size(0), 0)]
        producers = [producers]
        for w in self.works[:-1]:
            producers.append(self._producers_of_output(w, segs_of[w.index]))

        for w in self.works:
            segs = segs_of[w.index]
            size = self._tensor_size(w.index)
            per_ch = size // w.cin
            prod = producers[w.index]
            first, last = segs[0][0], segs[-1][0]
            name = w.name
            # pixels of the layer's input map: items of its activations and errors
            pix_in = w.fc_pixels if w.kind == "fc" else w.in_hw[0] * w.in_hw[1]
            # errors this layer's EB computes are the errors of the previous layer's output
            below = self.works[w.index - 1].name if w.index else None
            if w.split == "icp":
                consumers = [(s.channels[0] * per_ch, s.channels[1] * per_ch, k) for k, s in segs]
                borrowers = {l.borrower for l in self.lends if l.layer == name}
                for a, b, p in prod:
                    for c0, c1, k in consumers:
                        n = min(b, c1) - max(a, c0)
                        if n > 0:
                            add(p, k, "activations", name, num.activation.width, n, pix_in,
                                made_by=(w.index - 1, "fp") if w.index else None)
                            if w.macs["eb"]:
                                # a borrowed slice's weight-stationary EB drains its input
                                # errors a row of the map at a time, a pixel every G cycles
                                ws = k in borrowers and w.kind == "conv"
                                add(k, p, "errors", below, num.error.width, n, pix_in,
                                    w.in_hw[1] if ws else 1,
                                    spacing=self._eb_groups(dict(segs)[k]) if ws else 1)
                # partial sums forward and output errors backward, per group
                per_in, per_out = w.cin // w.groups, w.cout // w.groups
                hw_out = w.out_hw[0] * w.out_hw[1]
                for g in range(w.groups):
                    holders = [k for k, s in segs
                               if s.channels[0] < (g + 1) * per_in and s.channels[1] > g * per_in]
                    lo_k, hi_k = min(holders), max(holders)
                    # the slice's FP emits a pixel of partial sums every R x G cycles; the
                    # output errors come back a row of the pooled map at a time (the pool's
                    # backward expands it to `pool` rows of the map)
                    row = 1 if w.kind == "fc" else w.out_hw[1]
                    add(lo_k, hi_k, "partial_sums", name, num.partial.width, per_out * hw_out,
                        hw_out, made_by=(w.index, "fp"))
                    add(hi_k, lo_k, "errors", name, num.error.width, per_out * hw_out, hw_out,
                        row * self._pool_rows_after(w))
            else:
                # every node of the span needs the whole input: it streams on to the last one
                for a, b, p in prod:
                    add(p, last, "activations", name, num.activation.width, b - a, pix_in,
                        made_by=(w.index - 1, "fp") if w.index else None)
                if w.macs["eb"]:
                    # how each slice sends on its partial errors (its own added to what came
                    # in; the span's first node: the finished errors): a borrowed slice's
                    # weight-stationary EB sums them over every weight set of the image and
                    # drains them at the end, the whole map in one burst, a pixel every G
                    # cycles; the other slices' EBs a row of the map at a time, a pixel every
                    # R x G cycles
                    senders = {}
                    for k, s in segs:
                        if any(l.layer == name and l.borrower == k for l in self.lends):
                            senders[k] = (pix_in, self._eb_groups(s), True)
                        elif w.kind == "conv":
                            senders[k] = (w.in_hw[1], max(1, round(
                                s.engines["eb"].cycles_per_image / pix_in)), False)
                    add(last, first, "partial_errors", below, num.partial.width, size, pix_in,
                        senders=senders)
                    for a, b, p in prod:
                        add(first, p, "errors", below, num.error.width, b - a, pix_in,
                            senders=senders)

        # balanced parameters: weights to the user for FP and for EB (FP only for a layer
        # without EB, the network's first), gradients back
        # as built (fpdeep_hw/node/lend.py): whole weight sets of P x S x K x K weights (padding
        # lanes included), each gradient set with its address
        uses = {w.name: 2 if w.macs["eb"] else 1 for w in self.works}
        for l in self.lends:
            seg = next(s for s in self.segplans[l.borrower] if s.layer == l.layer)
            e = seg.engines["fp"]
            total, kept = self._lent_sets(l.borrower, l.layer)
            per_set = e.p * e.s * e.kernel * e.kernel
            sets = kept[l.lender]           # whole sets, as the hardware lends them
            if not sets:
                continue
            abits = max(1, (max(total, 2) - 1).bit_length())
            # the lender streams an image's sets as far ahead as the credits allow (in bursts
            # of every set); the weight-stationary PG finishes one gradient set per sweep of
            # the map (WSPGLayer), evenly over its cycles, each at the end of its sweep
            n_sets = math.ceil(sets - 1e-9)
            add(l.lender, l.borrower, "parameters", l.layer, num.weight.width,
                uses[l.layer] * sets * per_set, n_sets, n_sets)
            add(l.borrower, l.lender, "gradients", l.layer, num.gradient.width,
                sets * (per_set + abits / num.gradient.width), n_sets,
                made_by=(seg.index, "pg"), senders={l.borrower: (1, 1, True)})
        # the framing model (fpdeep_map/framing.py): per stream and hop, its ports (a lent
        # layer's parameters: FP and EB), items per image and port, bits per item
        self.flow_items = {}
        for hop, d in flows.items():
            for (path, layer, width), words in d.items():
                n = uses[layer] if path == "parameters" else 1
                k = items[hop][(path, layer, width)]
                self.flow_items.setdefault(hop, {})[(path, layer, width)] = (
                    n, k, math.ceil(words / n * width / k - 1e-9),
                    bursts[hop][(path, layer, width)],
                    makers.get(hop, {}).get((path, layer, width)),
                    spacings[hop][(path, layer, width)])
        # the link packer pads each stream to whole 64-bit words per image (a lent layer's
        # parameters are two streams, FP and EB)
        for d in flows.values():
            for (path, layer, width), words in list(d.items()):
                n = uses[layer] if path == "parameters" else 1
                d[(path, layer, width)] = n * math.ceil(words / n * width / 64 - 1e-9) \
                    * 64 / width
        self.flows = flows

    @staticmethod
    def _eb_groups(seg):
        """``G``: the input-channel groups of a segment's EB engines (a weight-stationary EB
        drains a pixel of its input errors every ``G`` cycles, one group of ``S`` lanes per
        cycle)."""
        return max(1, -(-(seg.in_channels[1] - seg.in_channels[0]) // seg.engines["eb"].s))

    def _pool_rows_after(self, w):
        """Rows of ``w``'s output map behind one row of the pooled map (max-pools between it
        and the next compute layer)."""
        rows = 1
        for l in self.net.layers[self.net.index(w.name) + 1:]:
            if l.kind in ("conv", "fc", "loss"):
                break
            if l.kind == "maxpool":
                rows *= l.stride
        return rows

    def _hops(self, a, b):
        """Links walked from node a to node b. The training data path is the chain 0..N-1 (in a
        mesh, a snake through the grid); a ring adds the link N-1 <-> 0, taken when shorter."""
        n = self.nodes
        if self.topology == "ring" and n > 2:
            fwd = (b - a) % n
            step = 1 if fwd <= n - fwd else -1
        else:
            step = 1 if b > a else -1
            return [(j, j + step) for j in range(a, b, step)]
        hops, j = [], a
        while j != b:
            nxt = (j + step) % n
            hops.append((j, nxt))
            j = nxt
        return hops

    def _tensor_size(self, index):
        w = self.works[index]
        return w.cin * w.in_hw[0] * w.in_hw[1]

    def _producers_of_output(self, w, segs):
        """Where each part of the next layer's input tensor is finished: (flat_lo, flat_hi, node)."""
        nxt = self.works[w.index + 1]
        size = self._tensor_size(nxt.index)
        per_ch = size // w.cout
        out = []
        for k, s in segs:
            if s.completes:
                out.append((s.completes[0] * per_ch, s.completes[1] * per_ch, k))
        return sorted(out)

    # -- link transit ----------------------------------------------------------------------------
    def _rates(self):
        """Payload and wire bits per image of every link direction, and the images per second
        the links and the off-chip memories allow."""
        board = self.board
        cap = self.link_capacity_gbps()
        link_bits = {key: sum(words * width for (_, _, width), words in d.items())
                     for key, d in self.flows.items()}
        # on the wire every frame of up to LINK_FRAME_PAYLOAD_WORDS payload words carries a
        # header and a CRC trailer
        frame = 1 + costs.LINK_FRAME_OVERHEAD_WORDS / costs.LINK_FRAME_PAYLOAD_WORDS
        wire_bits = {key: bits * frame for key, bits in link_bits.items()}
        # credit frames a busy stream triggers (half a receive buffer freed) on the opposite
        # direction, bits per image: as many as the busiest stream of the reverse needs
        half = costs.LINK_RECEIVE_BUFFER_WORDS / 2
        urgent_bits = {}
        for key in wire_bits:
            rev = self.flows.get((key[1], key[0]), {})
            frames = max((words * width / costs.LINK_WORD_BITS / half
                          for (_, _, width), words in rev.items()), default=0.0)
            urgent_bits[key] = frames * costs.LINK_CREDIT_FRAME_WORDS * costs.LINK_WORD_BITS
        self.urgent_credit_bits = urgent_bits
        # credit frames (bits per second) on every direction whose reverse carries data
        credit_bps = {key: (costs.LINK_CREDIT_FRAME_WORDS * costs.LINK_WORD_BITS
                            * board.clock_mhz * 1e6 / costs.LINK_CREDIT_INTERVAL_CYCLES
                            if link_bits.get((key[1], key[0])) else 0.0) for key in link_bits}
        self.credit_bps = credit_bps
        # credit frames per second: max(one per interval, the urgent ones at the image rate);
        # the link bound must leave room for either
        link_ips = min((min((cap * 1e9 - credit_bps[key]) / bits,
                            cap * 1e9 / (bits + urgent_bits[key]))
                        for key, bits in wire_bits.items() if bits), default=math.inf)
        usable_mem = board.offchip_gbps * 1e9 * costs.OFFCHIP_EFFICIENCY
        mem_ips = min((usable_mem / b for b in self.offchip_bits if b), default=math.inf)
        return cap, link_bits, wire_bits, link_ips, mem_ips

    def link_frames(self, steady, engines):
        """Frames per image of every link direction as ``LinkTx`` cuts them, ``{(src, dst):
        fpdeep_map.framing.LinkFrames}`` (:func:`fpdeep_map.framing.link_frames`).

        Every stream's producer emits an image's items (pixels, weight sets; bits per item as
        the link packer sees them) evenly over the engines' cycles per image ``engines``, one
        image per ``steady`` cycles; the backward streams (errors, partial errors, gradients)
        start a mini-batch's first image :meth:`boundary_cycles` late (the last layer's update
        round trip, at the steady period) and catch up at the engines' pace. The forward
        streams of a layer's engines (activations: the FP of the layer before; ICP partial
        sums: the slice's FP) are emitted over those engines' CE cycles on the sending node (a
        pixel every ``R x G`` cycles), an image every time the sending node's engines are done
        with one (:meth:`node_cycles`, at most ``steady``): a node that is not the bottleneck
        runs ahead within a mini-batch until the boundary holds it."""
        rate = min(1.0, self.link_capacity_gbps() * 1e9
                   / (self.board.clock_mhz * 1e6 * costs.LINK_WORD_BITS))
        late = self.boundary_cycles(steady)
        ce = self.engine_phase_cycles(gaps=False)
        own = self.node_cycles()
        out = {}
        for key, d in self.flow_items.items():
            streams = []
            for (path, _, _), (ports, n, bits, burst, made_by, spacing) in d.items():
                active, pace = min(engines, steady), None
                if made_by is not None:     # the sending node holds (a slice of) that layer
                    active = min(ce[made_by], steady)
                    pace = max(active, min(own[made_by[0]], steady))
                streams += [StreamTiming(items=n, item_bits=bits, active=active, pace=pace,
                                         boundary=path in BACKWARD_PATHS,
                                         burst=min(burst, n), spacing=spacing[0],
                                         drained=spacing[1])] * ports
            out[key] = link_frames(streams, rate=rate, period=steady, batch=self.batch,
                                   boundary=late, engine_period=engines,
                                   max_payload=costs.LINK_FRAME_PAYLOAD_WORDS,
                                   overhead=costs.LINK_FRAME_OVERHEAD_WORDS,
                                   banks=costs.LINK_TX_BANKS)
        return out

    def bound_period(self, period):
        """Cycles per image: the engines' ``period`` or what the links or memories allow."""
        _, _, _, link_ips, mem_ips = self._rates()
        clock_hz = self.board.clock_mhz * 1e6
        return max(period, clock_hz / link_ips, clock_hz / mem_ips)

    def hop_transit_cycles(self):
        """Cycles from a word entering a link's transmitter to its delivery at the next FPGA,
        when the producer runs ahead of the link (full frames): one frame of
        ``LINK_FRAME_PAYLOAD_WORDS + LINK_FRAME_OVERHEAD_WORDS`` words serialised at the link
        rate (the receiver delivers a frame's words only after its CRC trailer), the framers'
        latency and the hop's latency."""
        words_per_cycle = min(1.0, self.link_capacity_gbps() * 1e9
                              / (self.board.clock_mhz * 1e6 * costs.LINK_WORD_BITS))
        frame = costs.LINK_FRAME_PAYLOAD_WORDS + costs.LINK_FRAME_OVERHEAD_WORDS
        return (frame / words_per_cycle + costs.LINK_FRAMER_LATENCY_CYCLES
                + costs.LINK_HOP_LATENCY_CYCLES)

    def link_transit(self, period):
        """Link transit per layer in pipeline periods, ``(fwd, bwd, own)`` for :func:`residency`.

        Forward, layer ``i``'s output reaches layer ``i+1`` after as many hops as lie between
        the node finishing layer ``i`` and the first node of layer ``i+1``, plus the hops along
        layer ``i``'s own span (partial sums, or its input passed on to every node of an OCP
        span); backward the errors take the same hops (``g`` of layer ``i+1`` and of ``i``)."""
        nodes_of = {w.index: [] for w in self.works}
        for k, segs in enumerate(self.segplans):
            for seg in segs:
                nodes_of[seg.index].append(k)
        hop = self.hop_transit_cycles() / period
        n = len(self.works)
        fwd, bwd, own = [0.0] * n, [0.0] * n, [0.0] * n
        for i in range(n):
            ks = sorted(nodes_of[i])
            span = self._distance(ks[0], ks[-1])
            fwd[i] += span * hop
            bwd[i] += span * hop
            own[i] += span * hop
            if i + 1 < n:
                between = self._distance(ks[-1], min(nodes_of[i + 1]))
                fwd[i] += between * hop
                bwd[i + 1] += between * hop
        return fwd, bwd, own

    # -- timing as built -------------------------------------------------------------------------
    def _loss_cycles(self):
        loss = next((l for l in self.net.layers if l.kind == "loss"), None)
        return costs.loss_latency(loss.loss, loss.in_shape[0]) if loss is not None else 0

    def _fc_input_rows_pixels(self, w):
        """(rows, pixels) of the map an FC layer reads (its input streams pixel by pixel)."""
        shape = (1, 1, 1)
        for l in self.net.layers[:self.net.index(w.name)]:
            if len(l.out_shape) == 3:
                shape = l.out_shape
        return shape[1], shape[1] * shape[2]

    def fc_timing(self, period):
        """``{index: (f_extra, g)}`` in periods of ``period`` for the FC layers (see
        :func:`residency`): ``f_extra`` = the replay of the stored image (its FP engine's
        cycles), ``FC_OUTPUT_CYCLES`` and, for the last layer, the loss unit; ``g`` = one
        input pixel's EB replay plus ``FC_EB_FIRST_OUTPUT_CYCLES``."""
        out = {}
        last = self.works[-1].index
        for w in self.works:
            if w.kind != "fc":
                continue
            segs = [s for ss in self.by_node for s in ss if s.work.index == w.index]
            fp = max(s.engines["fp"].cycles for s in segs)
            eb = max((s.engines["eb"].cycles for s in segs if "eb" in s.engines), default=0)
            _, pixels = self._fc_input_rows_pixels(w)
            extra = fp + costs.FC_OUTPUT_CYCLES + (self._loss_cycles() if w.index == last else 0)
            back = (eb / pixels + costs.FC_EB_FIRST_OUTPUT_CYCLES) if eb else 0.0
            out[w.index] = (extra / period, back / period)
        return out

    def _passes(self, seg, e):
        """Replay cycles per output position (``R * G``) of an engine."""
        w = self.works[seg.index]
        ho, wo = w.out_hw
        return e.cycles_per_image / (-(-ho // e.x) * wo)

    def timing(self, period):
        """Cycles per image of the engines as built: the CE words (``period``) plus, for conv FP
        and EB engines, the line buffer's start-up at every image, ``max(0, 2*Wv +
        LINE_BUFFER_IMAGE_GAP - R*G)`` (``costs.py``; ``Wv`` the padded map's width: FP's input
        plus its padding, EB's output error plus ``K - 1 - P``, zeros inserted for a stride).
        PG (its window FIFO hides the gap), FC engines and weight-stationary engines of lent
        layers (their sweeps are in ``period`` already) add nothing."""
        slowest = max([period] + list(self.layer_cycles().values()))
        return {"engine_cycles": slowest}

    def layer_cycles(self):
        """``{layer index: cycles per image}``: the slowest engine of each layer's segments as
        built (its CE words, plus the line-buffer start-up of conv FP and EB engines, see
        :meth:`timing`)."""
        out = {}
        for (_, index, _), v in self.engine_phase_cycles().items():
            out[index] = max(out.get(index, 0.0), v)
        return out

    def node_cycles(self):
        """``{node: cycles per image}``: the slowest engine of each node as built (0 for an
        empty node)."""
        out = dict.fromkeys(range(len(self.segplans)), 0.0)
        for (k, _, _), v in self.engine_phase_cycles().items():
            out[k] = max(out[k], v)
        return out

    def engine_phase_cycles(self, gaps=True):
        """``{(node, layer index, phase): cycles per image}`` of every segment's engines as
        built: the CE words plus (``gaps``) the line-buffer start-up of :meth:`timing`."""
        borrowed = {(l.borrower, l.layer) for l in self.lends}
        out = {}
        for k, segs in enumerate(self.segplans):
            for seg in segs:
                w = self.works[seg.index]
                pad = self.net.layer(w.name).padding
                for phase, e in seg.engines.items():
                    gap = 0.0
                    if seg.kind == "conv" and (k, seg.layer) not in borrowed and phase != "pg":
                        if phase == "fp":
                            wv = w.in_hw[1] + 2 * pad
                        else:
                            wv = (w.out_hw[1] - 1) * w.stride + 1 + 2 * (w.k - 1 - pad)
                        gap = max(0.0, 2 * wv + costs.LINE_BUFFER_IMAGE_GAP
                                  - self._passes(seg, e))
                    out[(k, seg.index, phase)] = e.cycles_per_image + (gap if gaps else 0.0)
        return out

    def boundary_cycles(self, period):
        """Cycles a mini-batch boundary adds to the ``B`` periods of its images.

        The last layer ``L`` (the FC before the loss) holds FP of image ``(M+1)B + D_L`` until
        its update ``M`` is written (the version gate), and that update follows the batch's last
        image ``j = (M+1)B - 1`` all the way: from ``j``'s loss error, PG of the image
        (``N_pg`` cycles: the error is one word, the activations wait in the Act-RAM), the
        per-image accumulators drained into the LGB, the LGB drained through the master update
        (pass 1) and the working weights written (pass 2), ``N`` sets at one per cycle each,
        plus the fixed latencies: ``A = N_pg + 3 N + UPDATE_FIXED_CYCLES`` after ``j``'s loss
        error (plus :func:`fpdeep_map.costs.offchip_update_cycles` with the master copy off
        chip). The held image's loss error comes ``F`` after the gate's release (its ``H*W``
        pixels into the FC's store, one per cycle, the ``R*H*W*G = N_fp`` replay cycles,
        ``FC_OUTPUT_CYCLES``, the loss unit), ``A + F - (D_L + 1) T`` later than without the
        update. The next image catches up a little: the layer below has one output row of it
        ready (``1/H`` of an image), but the FC replays every image for ``N_fp`` cycles, so it
        follows after ``max((1 - 1/H) T, N_fp)``; from then on every image is
        ``A + F - (D_L + 1) T - min(T/H, T - N_fp)`` later. The other layers' updates
        (``3 N_l`` cycles, ``N_l`` small) complete inside their lags. ``period``: the engines' period
        (links and memories are decoupled from it, see :meth:`finish`). Derivation and
        measurements: ``docs/mapping.md`` section 6."""
        works = self.works
        last = works[-1]
        segs = [s for ss in self.segplans for s in ss if s.index == last.index]
        if not segs:
            return 0.0
        sets = max(s.engines["fp"].cycles_per_image if s.kind == "fc"
                   else self._passes(s, s.engines["fp"]) for s in segs)
        n_pg = max(s.engines["pg"].cycles_per_image for s in segs)
        fill = max(s.engines["fp"].cycles_per_image for s in segs) if last.kind == "fc" else 0
        lag = min(math.floor(s.act_ram_images) for s in segs)
        lam = self._loss_cycles()
        rows, pixels = (self._fc_input_rows_pixels(last) if last.kind == "fc"
                        else (last.out_hw[0], 0))
        a = n_pg + 3 * sets + costs.UPDATE_FIXED_CYCLES
        # the master copy off chip (master_store): the update's last burst written back and
        # acknowledged, then pass 2's first burst read (costs.offchip_update_cycles)
        a += max((costs.offchip_update_cycles(sets) for s in segs if _master_offchip(s)),
                 default=0)
        # the last layer split over several nodes (ICP of an FC: partial sums forward to the
        # node with the loss): the loss error of image j crosses back to every slice's node
        # before its PG and update, and the held image's partial sums cross forward again, a
        # short message each way per hop
        span = self._nodes_of(last.index)
        hops = span[-1] - span[0]
        a += 2 * hops * (costs.LINK_HOP_LATENCY_CYCLES + costs.LINK_FRAMER_LATENCY_CYCLES)
        # the held image enters the FC's store from the FIFO one pixel per cycle, then its
        # replay and the loss
        f = pixels + fill + costs.FC_OUTPUT_CYCLES + lam
        stall = a + f - (lag + 1) * period
        # the image after the held one: the layer below has one output row of it ready, but the
        # FC replays every image for N_fp cycles, so it follows after max((1 - 1/H) T, N_fp)
        catch_up = min(period / rows, max(0.0, period - fill))
        return max(0.0, stall - max(catch_up, self._stall_catch_up(period, stall, last)))

    def _nodes_of(self, index):
        """The nodes holding segments of layer ``index``, in order."""
        return sorted({k for k, ss in enumerate(self.segplans) for s in ss if s.index == index})

    def _stall_catch_up(self, period, stall, last):
        """Cycles of the last layer's boundary stall that the rest of the mini-batch makes up
        when the slowest layer (period ``T``) is upstream of it.

        During the stall the slowest layer works on while there is room for its output between
        it and the last layer (:meth:`_run_ahead_room`). It gets ``b = min(stall / T, room)``
        images ahead; after the release the layers after it, faster (``T_down``), bring each of
        the batch's other ``B - 1`` images up to ``T - T_down`` early, until the backlog is used
        up: ``min(b T, (B - 1)(T - T_down))``. Measured: tiny on 3 ``tiny-test-b24d90``
        (conv2's lent slice at 800 on node 1, conv3 / fc4 at 512 on node 2): a 1,197-cycle
        stall, then three images 288 early, 333 net; digits on 3 ``tiny-test`` (conv2 at 2,000,
        weight-stationary on nodes 0 and 2, fc3 at 1,280 on node 2): a 2,693-cycle stall, then
        three images 720 early, 533 net."""
        cycles = self.layer_cycles()
        slow = max((i for i, c in cycles.items() if c >= period - 1e-9), default=last.index)
        if slow >= last.index:
            return 0.0
        down = max((c for i, c in cycles.items() if i > slow), default=period)
        room = self._run_ahead_room(slow, last)
        backlog = min(max(0.0, stall) / period, room)
        return min(backlog * period, (self.batch - 1) * max(0.0, period - down))

    def _run_ahead_room(self, slow, last):
        """Images the slowest layer ``slow`` can finish past the one the last layer ``L`` holds
        at a mini-batch boundary: the least room for the output of any of its segments (the
        next layer needs every slice of an image, so one slice that cannot get ahead holds the
        others' backlog back), and no more than its version gate allows.

        * A segment on a node before ``L``'s: the receive buffer of the link stream
          (``LINK_RECEIVE_BUFFER_WORDS``) holds ``floor(buffer / words per image)`` images of
          the next layer's input.
        * A weight-stationary segment (borrowed weights) on ``L``'s node: its two accumulator
          halves (``fpdeep_hw.node.lend.WSFPLayer``) each hold one finished image while the
          FIFO before ``L`` is full, 2 images.
        * Any other segment on ``L``'s node: none (the FIFO before ``L`` holds the held image).
        * The version gate: ``slow``'s FP waits at image ``(M+1) B + D_slow`` for its own update
          ``M``, which needs the errors of images the held one precedes, so it runs at most
          ``D_slow - D_L - 1`` images past the held image (``D = floor(act_ram_images)``)."""
        lags = self.layer_lags()
        gate = max(0, lags[slow] - lags[last.index] - 1)
        first = self._nodes_of(last.index)[0]
        borrowed = {(l.borrower, l.layer) for l in self.lends}
        nxt = self.works[slow + 1]
        words = (nxt.cin * nxt.in_hw[0] * nxt.in_hw[1] * self.num.activation.width
                 / costs.LINK_WORD_BITS)
        link_room = math.floor(costs.LINK_RECEIVE_BUFFER_WORDS / words) if words else 0
        room = gate
        for k, segs in enumerate(self.segplans):
            for seg in segs:
                if seg.index != slow:
                    continue
                if k < first:
                    room = min(room, link_room)
                elif (k, seg.layer) in borrowed:
                    room = min(room, costs.WS_ACCUMULATOR_HALVES)
                else:
                    room = 0
        return room

    # -- results ---------------------------------------------------------------------------------
    def periods(self, period):
        """``(rates, timing, steady, with_updates)``: :meth:`_rates`, :meth:`timing` at
        ``period``, the steady cycles per image within a mini-batch and over whole ones (what
        :meth:`finish` reports; the link framing only sizes the wire words)."""
        rates = self._rates()
        _, _, _, link_ips, mem_ips = rates
        clock_hz = self.board.clock_mhz * 1e6
        # the period of the engines as built (line-buffer start-up of every image), the
        # steady-state period within a mini-batch and the update round trip at its end
        timing = self.timing(period)
        engines = timing["engine_cycles"]
        steady = max(engines, clock_hz / link_ips, clock_hz / mem_ips)
        # over a mini-batch the engines do B images plus the boundary's stall, the links and
        # memories B images' traffic; they are decoupled by the receive buffers and by lags
        # sized for the link transit, so the slowest of them sets the mini-batch's period
        with_updates = max(steady, engines + self.boundary_cycles(engines) / self.batch)
        return rates, timing, steady, with_updates

    def finish(self, period):
        board, num = self.board, self.num
        clock_hz = board.clock_mhz * 1e6
        rates, timing, steady, with_updates = self.periods(period)
        cap, link_bits, wire_bits, link_ips, mem_ips = rates
        compute_ips = clock_hz / timing["engine_cycles"]
        engines = timing["engine_cycles"]
        boundary = (with_updates - steady) * self.batch
        ips = clock_hz / with_updates
        steady_ips = clock_hz / steady
        # on the wire, per image at the steady rate: the payload in frames as LinkTx cuts them
        # (short frames unless the link is backlogged, fpdeep_map/framing.py) and the credit
        # frames; the link bound above counts full frames (a saturated link sends them)
        credit = {key: max(self.credit_bps[key] / steady_ips,
                           self.urgent_credit_bits.get(key, 0.0)) for key in wire_bits}
        full_wire_bits = {key: bits + credit[key] for key, bits in wire_bits.items()}
        frames = self.link_frames(steady, engines)
        wire_bits = {key: link_bits[key] + credit[key]
                     + (frames[key].frames * costs.LINK_FRAME_OVERHEAD_WORDS
                        * costs.LINK_WORD_BITS if key in frames else bits - link_bits[key])
                     for key, bits in wire_bits.items()}
        if steady == timing["engine_cycles"]:
            bottleneck = "compute"
        elif steady == clock_hz / link_ips:
            bottleneck = "link"
        else:
            bottleneck = "memory"

        total_macs = sum(w.total_macs for w in self.works)
        links = []
        for (a, b), d in sorted(self.flows.items()):
            streams = [StreamPlan(path=p, layer=l, words_per_image=float(words), width=width)
                       for (p, l, width), words in d.items()]
            bits = link_bits[(a, b)]
            links.append(LinkPlan(src=a, dst=b, streams=streams, bits_per_image=float(bits),
                                  wire_bits_per_image=float(wire_bits[(a, b)]),
                                  gbps=round(wire_bits[(a, b)] * steady_ips / 1e9, 4)))
        node_plans = []
        dsp_total = 0
        for k in range(self.nodes):
            segs = self.segplans[k]
            dsp = sum(e.dsp for s in segs for e in s.engines.values())
            dsp_total += dsp
            bram18 = self._mandatory_bram18(k) + self._placed_bram18(k)
            lut, ff = self._logic(k, segs)
            macs = sum(e.macs_per_image for s in segs for e in s.engines.values())
            gin = sum(l.gbps for l in links if l.dst == k)
            gout = sum(l.gbps for l in links if l.src == k)
            node_plans.append(NodePlan(
                node=k, segments=segs, dsp=dsp, bram36=bram18 / 2, lut=lut, ff=ff,
                cycles_per_image=max((e.cycles_per_image for s in segs
                                      for e in s.engines.values()), default=0),
                macs_per_image=macs, gops=round(2 * macs * ips / 1e9, 3),
                link_gbps_in=round(gin, 4), link_gbps_out=round(gout, 4),
                offchip_gbps=round(self.offchip_bits[k] * steady_ips / 1e9, 4),
                offchip_mbytes=round(self.offchip_bytes[k] / 1e6, 3),
                bpram=[l for l in self.lends if l.lender == k]))
            self._check_logic(k, lut, ff)
        idle = 1 - total_macs / (dsp_total * period) if dsp_total else 0.0
        gops_fpga = 2 * total_macs * ips / self.nodes / 1e9
        summary = {
            "images_per_second": round(ips, 4),
            "steady_images_per_second": round(steady_ips, 4),
            "compute_images_per_second": round(compute_ips, 4),
            "link_images_per_second": round(link_ips, 4) if link_ips != math.inf else None,
            "memory_images_per_second": round(mem_ips, 4) if mem_ips != math.inf else None,
            "cycles_per_image": int(period),
            "engine_cycles_per_image": round(float(timing["engine_cycles"]), 2),
            "cycles_per_image_steady": round(float(steady), 2),
            "boundary_cycles_per_batch": round(float(boundary), 2),
            "cycles_per_image_with_updates": round(float(with_updates), 2),
            "throughput_gops_per_fpga": round(gops_fpga, 3),
            "epoch_hours": round(IMAGENET_TRAIN_IMAGES / ips / 3600, 4),
            "dsp_utilization": round(dsp_total / (self.nodes * board.dsp), 4),
            "idle_fraction": round(idle, 5),
            "max_link_gbps": round(max((l.gbps for l in links), default=0.0), 4),
            # the same if every frame were full (as on a saturated link)
            "max_link_gbps_full_frames": round(max(
                (full_wire_bits[key] * steady_ips / 1e9 for key in full_wire_bits),
                default=0.0), 4),
            "link_capacity_gbps": round(cap, 4),
            "bottleneck": bottleneck,
            "train_macs_per_image": total_macs,
            "lent_weights": sum(l.weights for l in self.lends),
        }
        return Plan(network=self.net.name, network_source=self.net.source, board=board.name,
                    board_source=board.source, nodes=self.nodes, clock_mhz=board.clock_mhz,
                    link_gbps=board.link_gbps, topology=self.topology, batch=self.batch,
                    fc_microbatch=self.fc_microbatch, numerics=num,
                    budgets=dict(self.budgets),
                    available=dict(dsp=board.dsp, bram36=board.bram36, lut=board.lut, ff=board.ff),
                    node_plans=node_plans, links=links, summary=summary)

    def link_capacity_gbps(self):
        """Usable bandwidth of one link direction. Every FPGA has the same transceivers; a 2-D
        mesh shares them among up to four neighbours instead of two."""
        if self.topology == "mesh":
            rows, cols = mesh_shape(self.nodes)
            degree = min(4, (2 if rows > 1 else 1) + (2 if cols > 1 else 1)) if self.nodes > 1 else 2
            degree = max(2, degree)
            return self.board.link_gbps * 2 / degree
        return self.board.link_gbps

    def _logic(self, k, segs):
        lut = costs.NODE_BASE_LUT
        ff = costs.NODE_BASE_FF
        for s in segs:
            lut += costs.LUT_PER_SEGMENT
            ff += costs.FF_PER_SEGMENT
            for e in s.engines.values():
                tiles = e.p * e.s * e.x
                lut += e.dsp * costs.LUT_PER_DSP + tiles * costs.LUT_PER_TILE
                ff += e.dsp * costs.FF_PER_DSP + tiles * costs.FF_PER_TILE
            if s.completes:
                lanes = s.engines["fp"].p * s.engines["fp"].x
                lut += lanes * costs.LUT_PER_SFU_LANE
                ff += lanes * costs.FF_PER_SFU_LANE
        if self.offchip_bits[k]:
            lut += costs.MEMCTRL_LUT
            ff += costs.MEMCTRL_FF
        return int(lut), int(ff)

    def _check_logic(self, k, lut, ff):
        for what, used, avail, frac in (("lut", lut, self.board.lut, self.budgets["lut"]),
                                        ("ff", ff, self.board.ff, self.budgets["ff"])):
            if used > avail * frac:
                raise FpdeepError(self.board.source, what, avail,
                                  f"network does not fit: node {k} needs {used} {what.upper()}, "
                                  f"{frac:.0%} of the device is {int(avail * frac)}")


def _completed_outputs(w: Work, lo, hi):
    """Output channels finished by the segment ending at unit ``hi`` (ICP) or held (OCP)."""
    if w.split == "ocp":
        return [lo, hi]
    per_in, per_out = w.cin // w.groups, w.cout // w.groups
    # the groups whose last input channel lies in [lo, hi)
    done = [g for g in range(w.groups) if lo < (g + 1) * per_in <= hi]
    if not done:
        return []
    return [done[0] * per_out, (done[-1] + 1) * per_out]


def mesh_shape(n):
    """The most square rows x cols grid with rows * cols == n (a snake path is the chain)."""
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def evaluate_plan(plan: Plan, net: Network, board: Board, where: str = "plan",
                  over_budget: list | None = None) -> Plan:
    """The figures of ``plan`` as it stands, e.g. after its parameter lending was edited by
    hand: the mapper is run again with the plan's own settings (board with its link rate and
    clock, topology, batch, numerics, budgets, FC micro-batch) and the plan's ``bpram``
    entries as the lending (:meth:`_Context.impose_lending`), and the new plan is returned
    with its own summary and link figures. Everything else must be what the mapper makes of
    those settings: a plan whose segments differ is refused (:class:`FpdeepError` naming
    ``where``). A node the lending leaves above its BRAM budget is refused too, unless a list
    ``over_budget`` is given: it then receives ``(node, BRAM36 needed)`` for each such node."""
    lending = [(lp.layer, lp.lender, lp.borrower, lp.weights, f"node_plans[{k}].bpram[{i}]")
               for k, q in enumerate(plan.node_plans) for i, lp in enumerate(q.bpram)]
    b = plan.budgets
    board = board.with_overrides(link_gbps=plan.link_gbps, clock_mhz=plan.clock_mhz)
    new = map_network(net, board, plan.nodes, topology=plan.topology, batch=plan.batch,
                      numerics=plan.numerics, ocp_threshold=b["ocp_threshold"],
                      dsp_budget=b["dsp"], bram_budget=b["bram"], lut_budget=b["lut"],
                      ff_budget=b["ff"], fc_microbatch=plan.fc_microbatch,
                      max_row_lanes=b["max_row_lanes"], split=b.get("split", "channels"),
                      lending=lending, _over_budget=over_budget, _where=where)

    def cut(p):
        return [[(s.layer, s.split, list(s.channels)) for s in q.segments] for q in p.node_plans]
    if cut(new) != cut(plan):
        k = next(i for i, (x, y) in enumerate(zip(cut(new), cut(plan))) if x != y)
        raise FpdeepError(where, f"node_plans[{k}].segments", cut(plan)[k],
                          f"differ from the mapper's cut for the plan's settings "
                          f"({cut(new)[k]}): only the parameter lending of a plan can be "
                          f"edited and evaluated")
    for k, (q, r) in enumerate(zip(plan.node_plans, new.node_plans)):
        for i, (s, t) in enumerate(zip(q.segments, r.segments)):
            if s.weights_borrowed != t.weights_borrowed:
                raise FpdeepError(where, f"node_plans[{k}].segments[{i}].weights_borrowed",
                                  s.weights_borrowed,
                                  f"the plan's bpram entries lend {t.weights_borrowed} of "
                                  f"{s.layer!r}'s weights to node {k}")
    return new
