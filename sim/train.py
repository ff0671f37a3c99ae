"""Train a network on a simulated node and compare it bit for bit with the golden model.

::

    python -m sim.train --net tiny --board sim-node --nodes 1 --images 4 --batch 2 --seed 0 \\
        --out build/train-tiny --json [--waves] [--lr 0.125] [--stall 0.2] \\
        [--offchip-act-ram all|LAYER,...] [--offchip-stores all|LAYER,...]
        [--offchip-lgb all|LAYER,...] [--dram-latency 20]
        [--dram-words-per-cycle 2] [--fifo-rows 2 [--fifo-whole-bits 65536] [--fifo-fold 64]]
        [--master-burst 4] [--master-prefetch 2] [--master-fold 16] [--grad-fold 16]
        [--bpram-fold 16] [--ws-pg all|smaller]

Steps: map the network (``fpdeep_map.mapper.map_network(net, board, nodes, batch=B,
max_row_lanes=1)``), build :class:`fpdeep_hw.node.top.NodeTop` for node 0 with
``init_weights(net, seed)``, make the data (the 8x8 digits for ``digits`` when scikit-learn is
installed, else :func:`sim.data.synthetic`), train the golden model
(:class:`sim.golden.train.GoldenTrainer`, same init, lags, batch and learning rate) and simulate
the node (Amaranth's simulator, async testbenches: a host feeding pixels and labels, optionally
with random stalls, and a passive monitor recording every transfer of the internal streams with
its cycle). Then every activation, mask, argmax, loss error, layer error, averaged gradient,
weight version written to the LPRAMs, final master copy and overflow count of the RTL is
compared with the golden model's.

**External memory.** Every off-chip Act-RAM, ReLU-mask or argmax store of a node (its burst
port ``mem_*``, :attr:`fpdeep_hw.node.top.NodeTop.memory_map`) is served by its own
:class:`sim.dram_model.DRAMModel` (an async background testbench driving the node's port
directly, in the single-node and the ``--nodes N`` runs alike: :class:`Cluster` leaves the ports
on its nodes), with ``--dram-latency`` cycles (default 20), ``--dram-words-per-cycle`` (default
2: one word written and one read per cycle, what an Act-RAM needs at full rate) and
``--dram-stall`` (probability of a memory stall per stream and cycle, default 0). The mapper keeps
small networks' Act-RAMs on chip; ``--offchip-act-ram all`` (or a comma-separated list of
layers) is a **test / debug option** that rewrites the mapped plan's ``act_ram`` entries of
those layers to off chip before building, as the mapper writes a layer that does not fit
(:func:`force_offchip_act_ram`; the nodes' BRAM and off-chip traffic figures are not
recomputed). The golden model does not change: the Act-RAM's capacity and the lags stay.
``--offchip-stores all|LAYER,...`` does the same for those layers' ReLU-mask and argmax stores
(``mask_store``, ``arg_store``; :func:`force_offchip_stores`); the words read back from an
off-chip store (into ``BPFront``) are compared too. ``--offchip-lgb all|LAYER,...`` keeps the
gradient accumulators (LGB) of those convolution layers off chip
(:func:`force_offchip_lgb`; an ``OffchipGradBuffer`` behind a burst port ``mem_<layer>_lgb``),
whose averages are compared as every LGB's.

Writes ``DIR/result.npz`` (inputs, quantized inputs, labels, every layer's weights before and
after as floats, the golden model's weights after) and, with ``--waves``, ``DIR/waves.vcd`` and
``DIR/waves.gtkw`` grouped by module. ``--json`` prints the figures (see :func:`run`).

Bad arguments: a one-line error on stderr, exit status 2, nothing written.

Members
-------
run, main, TrainError, force_offchip_act_ram, force_offchip_stores, force_offchip_lgb
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["run", "main", "TrainError", "force_offchip_act_ram", "force_offchip_stores",
           "force_offchip_lgb"]


class TrainError(ValueError):
    """Bad arguments of a training simulation (reported as a one-line error)."""


# ---- payload decoding ---------------------------------------------------------------------------

def _lanes(raw, width, n, signed_=True):
    """Split the integer ``raw`` into ``n`` lanes of ``width`` bits (lane 0 at the LSB)."""
    mask = (1 << width) - 1
    half = 1 << (width - 1)
    out = []
    for k in range(n):
        v = (raw >> (k * width)) & mask
        if signed_ and v >= half:
            v -= 1 << width
        out.append(v)
    return out


def _pixels(a):
    a = np.asarray(a)
    if a.ndim == 1:
        return [[int(v) for v in a]]
    c, h, w = a.shape
    return [[int(v) for v in a[:, y, x]] for y in range(h) for x in range(w)]


# ---- data -------------------------------------------------------------------------------------

def _data(network, images, seed):
    from sim import data
    if network.name == "digits":
        try:
            tx, ty, _, _ = data.digits(seed=seed)
        except ImportError:
            tx = None
        if tx is not None:
            if images > len(ty):
                raise TrainError(f"--images {images}: the digits training set has only "
                                 f"{len(ty)} images")
            return tx[:images], ty[:images], "digits"
    x, y = data.synthetic(network, images, seed)
    return x, y, "synthetic"


# ---- the run ------------------------------------------------------------------------------------

def _check_args(net, board, nodes, images, batch, seed, lr, stall, link_gbps=None,
                link_latency=54, split="channels"):
    from fpdeep_map.board import load_board
    from fpdeep_map.network import load_network
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise TrainError(f"--nodes must be a positive integer, not {nodes!r}")
    if link_gbps is not None and not (isinstance(link_gbps, (int, float)) and
                                      math.isfinite(link_gbps) and link_gbps > 0):
        raise TrainError(f"--link-gbps must be a positive number, not {link_gbps!r}")
    if isinstance(link_latency, bool) or not isinstance(link_latency, int) or link_latency < 1:
        raise TrainError(f"--link-latency must be a positive integer, not {link_latency!r}")
    if split not in ("channels", "layers"):
        raise TrainError(f"--split must be channels or layers, not {split!r}")
    for name, v in (("--images", images), ("--batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TrainError(f"{name} must be a positive integer, not {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TrainError(f"--seed must be a non-negative integer, not {seed!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and
            1 <= round(lr * 65536) < 65536):
        raise TrainError(f"--lr must be in [2**-16, 1) (16 fractional bits), not {lr!r}")
    if not (0 <= stall < 1):
        raise TrainError(f"--stall must be in [0, 1), not {stall!r}")
    try:
        network = load_network(net)
    except Exception as e:   # noqa: BLE001 - reported as one line
        raise TrainError(f"--net {net}: {e}") from None
    try:
        brd = load_board(board)
    except Exception as e:   # noqa: BLE001
        raise TrainError(f"--board {board}: {e}") from None
    if link_gbps is not None:
        brd = brd.with_overrides(link_gbps=link_gbps)
    return network, brd


def force_offchip_act_ram(plan, layers):
    """Test / debug: keep the Act-RAMs of ``layers`` off chip in ``plan`` (changed in place).

    ``layers`` is ``"all"`` or an iterable of compute layer names (every segment of a split
    layer). Each segment's ``act_ram`` becomes what the mapper writes for an Act-RAM that does
    not fit (``fpdeep_map.mapper``, ``place_act_ram``): ``MemoryPlan(words, width, banks=1,
    depth=words, bram18=0, offchip_words=words)``; capacity and ``act_ram_images`` (the lags)
    stay, the nodes' BRAM and off-chip traffic figures are not recomputed. Returns the
    ``(node, layer)`` of the segments changed. Unknown layer: :class:`TrainError`.
    """
    from fpdeep_map.plan import MemoryPlan
    segs, want = _forced_segments(plan, layers, "--offchip-act-ram")
    changed = []
    for node, s in segs:
        if s.layer in want:
            a = s.act_ram
            s.act_ram = MemoryPlan(words=a.words, width=a.width, banks=1, depth=a.words,
                                   bram18=0, offchip_words=a.words)
            changed.append((node, s.layer))
    return changed


def force_offchip_stores(plan, layers):
    """Test / debug: keep the ReLU-mask and argmax stores of ``layers`` off chip in ``plan``
    (changed in place), as :func:`force_offchip_act_ram` does for the Act-RAMs.

    Each ``mask_store`` / ``arg_store`` with words (a segment with a ReLU / pool) becomes what
    the mapper writes for a store that does not fit (``fpdeep_map.mapper``, ``place_stores``):
    ``MemoryPlan(words, width, banks=1, depth=words, bram18=0, offchip_words=words)``; the
    nodes' BRAM and off-chip traffic figures are not recomputed. Returns the ``(node, layer,
    store)`` changed (``store`` ``"mask"`` or ``"arg"``). Unknown layer: :class:`TrainError`.
    """
    from fpdeep_map.plan import MemoryPlan
    segs, want = _forced_segments(plan, layers, "--offchip-stores")
    changed = []
    for node, s in segs:
        if s.layer not in want:
            continue
        for store in ("mask", "arg"):
            a = getattr(s, f"{store}_store")
            if a is None or a.words == 0:
                continue
            setattr(s, f"{store}_store", MemoryPlan(words=a.words, width=a.width, banks=1,
                                                    depth=a.words, bram18=0,
                                                    offchip_words=a.words))
            changed.append((node, s.layer, store))
    return changed


def force_offchip_lgb(plan, layers):
    """Test / debug: keep the gradient accumulators (LGB) of the convolution layers among
    ``layers`` off chip in ``plan`` (changed in place), as the mapper writes an LGB it spills
    (``lgb.offchip_words`` all of its words); segments with borrowed weights have none. The
    nodes' BRAM and off-chip traffic figures are not recomputed. Returns the ``(node, layer)``
    changed. Unknown layer: :class:`TrainError`."""
    from fpdeep_map.plan import MemoryPlan
    segs, want = _forced_segments(plan, layers, "--offchip-lgb")
    changed = []
    for node, s in segs:
        if s.layer in want and s.kind == "conv" and not s.weights_borrowed and s.lgb.words:
            a = s.lgb
            s.lgb = MemoryPlan(words=a.words, width=a.width, banks=1, depth=a.words, bram18=0,
                               offchip_words=a.words)
            changed.append((node, s.layer))
    return changed


def _forced_segments(plan, layers, option):
    """``([(node, segment)], layers wanted)`` for ``layers`` (``"all"`` or names) of
    ``option``."""
    segs = [(np_.node, s) for np_ in plan.node_plans for s in np_.segments]
    held = list(dict.fromkeys(s.layer for _, s in segs))
    if layers == "all":
        return segs, set(held)
    want = set(layers)
    unknown = sorted(want - set(held))
    if unknown or not want:
        raise TrainError(f"{option}: no layer {', '.join(map(repr, unknown))} in "
                         f"the plan (layers: {', '.join(held)}, or all)")
    return segs, want


def _offchip_arg(value):
    """``--offchip-act-ram`` / ``--offchip-stores`` as given: ``None``, ``"all"`` or a list of
    layer names."""
    if value is None or value == "all":
        return value
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def prepare(net, board, *, nodes=1, images, batch, seed=0, lr=0.125, stall=0.0, fifo_images=1,
            fifo_rows=None, fifo_whole_bits=0, fifo_fold=1,
            link_gbps=None, link_latency=54, split="channels", ocp_threshold=None, flips=None,
            offchip_act_ram=None, offchip_stores=None, mem_burst=16, mem_prefetch=4,
            master_burst=None, master_prefetch=None, master_fold=1, grad_fold=1,
            bpram_fold=1, ws_pg=False, offchip_lgb=None):
    """Map, build the node (or the cluster), make the data and train the golden model.

    ``nodes > 1`` builds a :class:`fpdeep_hw.node.cluster.Cluster` of the plan's nodes, joined
    by link models of ``link_latency`` cycles at the plan's link rate (the board's, or
    ``link_gbps``). ``offchip_act_ram`` (``"all"``, a list of layers or a comma-separated
    string): :func:`force_offchip_act_ram` on the mapped plan before building;
    ``offchip_stores`` (the same forms): :func:`force_offchip_stores`; ``mem_burst``,
    ``mem_prefetch``: the off-chip stores' burst (words) and prefetch (bursts);
    ``master_burst``, ``master_prefetch``, ``master_fold``: the off-chip master copies' (as
    :class:`~fpdeep_hw.node.top.NodeTop` takes them; the build: 4, 2, 16); ``grad_fold``: the
    gradient buffers' most rows per set (``NodeTop(grad_fold=)``); ``bpram_fold``: the
    BPRAMs' (``NodeTop(bpram_fold=)``); ``ws_pg``: the PG order of the layers of a node's own
    weights (``NodeTop(ws_pg=)``: ``True`` weight-stationary wherever built, ``"smaller"`` as
    the build chooses); ``offchip_lgb`` (the forms of ``offchip_act_ram``):
    :func:`force_offchip_lgb`. Returns a dict
    with ``network``, ``plan``, ``top``, ``x``, ``y``, ``data``, ``init``, ``golden`` and
    ``idle_nodes`` (nodes at the end of the chain the plan leaves empty, not built).
    """
    from fpdeep_hw.node.cluster import Cluster, active_nodes
    from fpdeep_hw.node.top import NodeTop
    from fpdeep_map.mapper import map_network
    from sim.golden.train import GoldenTrainer, init_weights, lags_from_plan
    network, brd = _check_args(net, board, nodes, images, batch, seed, lr, stall, link_gbps,
                               link_latency, split)
    try:
        kw = {} if ocp_threshold is None else {"ocp_threshold": ocp_threshold}
        plan = map_network(network, brd, nodes, batch=batch, max_row_lanes=1, split=split, **kw)
    except Exception as e:   # noqa: BLE001
        raise TrainError(f"mapping {net} on {board}: {e}") from None
    offchip = _offchip_arg(offchip_act_ram)
    if offchip is not None:
        force_offchip_act_ram(plan, offchip)
    offchip = _offchip_arg(offchip_stores)
    if offchip is not None:
        force_offchip_stores(plan, offchip)
    offchip = _offchip_arg(offchip_lgb)
    if offchip is not None:
        force_offchip_lgb(plan, offchip)
    x, y, source = _data(network, images, seed)
    init = init_weights(network, seed, plan.numerics)
    try:
        active = active_nodes(plan)
        if active == 1:
            top = NodeTop(plan, 0, network, lr=lr, init_master=init, batch=batch,
                          fifo_images=fifo_images, fifo_rows=fifo_rows,
                          fifo_whole_bits=fifo_whole_bits, fifo_fold=fifo_fold,
                          mem_burst=mem_burst, mem_prefetch=mem_prefetch,
                          master_burst=master_burst, master_prefetch=master_prefetch,
                          master_fold=master_fold, grad_fold=grad_fold,
                          bpram_fold=bpram_fold, ws_pg=ws_pg)
        else:
            top = Cluster(plan, network, lr=lr, init_master=init, batch=batch,
                          fifo_images=fifo_images, fifo_rows=fifo_rows,
                          fifo_whole_bits=fifo_whole_bits, fifo_fold=fifo_fold,
                          link_latency=link_latency, flips=flips,
                          mem_burst=mem_burst, mem_prefetch=mem_prefetch,
                          master_burst=master_burst, master_prefetch=master_prefetch,
                          master_fold=master_fold, grad_fold=grad_fold,
                          bpram_fold=bpram_fold, ws_pg=ws_pg)
    except ValueError as e:
        raise TrainError(str(e)) from None
    gold = GoldenTrainer(network, plan.numerics, batch, lr, lags_from_plan(plan), init,
                         plan=plan)
    gold.run(x, y)
    return {"network": network, "plan": plan, "top": top, "x": x, "y": y, "data": source,
            "init": init, "golden": gold, "idle_nodes": list(range(active, nodes))}


def update_parts(nl):
    """``[(suffix, WeightUpdate, lo, hi)]``: the weight updates of a layer segment and the weight
    sets each writes. A borrowed segment (``Cluster`` sets ``nl.parts``) has its keepers'
    (suffix ``@<lo>`` when there are several; monitor keys ``wr@<lo>``, ``update_done@<lo>``),
    any other its own."""
    parts = getattr(nl, "parts", None)
    if not parts:
        return [("", nl.update, 0, nl.geometry.weight_sets)]
    many = len(parts) > 1
    return [(f"@{lo}" if many else "", lender.update, lo, hi) for lender, (lo, hi) in parts]


def _probes(top):
    """(key, xfer expression, payload value, decode) for every monitored stream and strobe."""
    from amaranth.hdl import Const, Value
    num = top.numerics
    ew, gw, ww = num.error.width, num.gradient.width, num.weight.width
    probes = []

    def stream_probe(key, port, decode):
        probes.append((key, port.valid & port.ready, Value.cast(port.payload), decode))

    def vec(width, n, signed_=True):
        return lambda raw: _lanes(raw, width, n, signed_)

    def arr(port):
        """Decoder of an ``ArrayLayout`` stream port from its own layout."""
        lay = port.payload.shape()
        return vec(lay.elem_shape.width, lay.length, lay.elem_shape.signed)

    top_img = top.images
    stream_probe(("in", "images"), top_img, None)
    for nl in top.layers:
        g, n = nl.geometry, nl.key
        stream_probe((n, "fp_i"), nl.fp.i, arr(nl.fp.i))
        stream_probe((n, "fp_o"), nl.fp.o, arr(nl.fp.o))
        stream_probe((n, "act"), nl.act_ram.o, arr(nl.act_ram.o))
        if nl.mask_fifo is not None:
            stream_probe((n, "mask"), nl.fp.mask, vec(1, g.out_channels, False))
        if nl.arg_fifo is not None:
            bits = len(nl.fp.arg.payload.as_value()) // g.out_channels
            stream_probe((n, "arg"), nl.fp.arg, vec(bits, g.out_channels, False))
        # an off-chip store: the words read back from the memory, into BPFront
        if nl.mem_mask is not None:
            stream_probe((n, "mask_mem"), nl.bp.mask, vec(1, g.out_channels, False))
        if nl.mem_arg is not None:
            stream_probe((n, "arg_mem"), nl.bp.arg, vec(bits, g.out_channels, False))
        stream_probe((n, "e_out"), nl.pg.e, arr(nl.pg.e))
        if nl.eb is not None:
            stream_probe((n, "e_in"), nl.eb.o, arr(nl.eb.o))
        lanes, k = g.p * g.s, g.kernel

        def set_decode(width, abits, base=0, lanes=lanes, k=k):
            def dec(raw):
                return ((raw & ((1 << abits) - 1)) + base,
                        _lanes(raw >> abits, width, lanes * k * k))
            return dec
        stream_probe((n, "grad"), nl.pg.grad, set_decode(gw, len(nl.pg.grad.payload.addr)))
        for suffix, upd, lo, _ in update_parts(nl):
            # a borrowed segment: the update of each keeper (addresses of its range)
            stream_probe((n, "wr" + suffix), upd.wr,
                         set_decode(ww, len(upd.wr.payload.addr), lo))
            probes.append(((n, "update_done" + suffix), upd.done, Const(0, 1), None))
        probes.append(((n, "fp_busy"), nl.fp.busy, Const(0, 1), None))
        if nl.eb is not None:
            probes.append(((n, "eb_busy"), nl.eb.busy, Const(0, 1), None))
        probes.append(((n, "pg_done"), nl.pg.pg_done, Value.cast(nl.pg.busy_cycles), None))
    stream_probe(("loss", "o"), top.loss.o, vec(ew, top.loss.classes))
    for lk in getattr(top, "links", ()):
        # payload words sent (transmitter inputs) and taken out of the receive buffers (a
        # lender may run ahead of its borrower by the lag: sets sent for images past the end
        # of the run stay in the borrower's receive buffer)
        for j, port in enumerate(lk.tx.inputs):
            probes.append((("link", lk.name, j), port.valid & port.ready,
                           Value.cast(port.payload), None))
        for j, port in enumerate(lk.rx.outputs):
            probes.append((("link_rx", lk.name, j), port.valid & port.ready,
                           Value.cast(port.payload), None))
        for j, (_, dst) in enumerate(lk.ports):
            probes.append((("link_dst", lk.name, j), dst.valid & dst.ready, Const(0, 1), None))
        # the words on the wire (frames: header, payload, trailer; credit frames), for the
        # wire words per image of the steady images (wire_images)
        probes.append((("wire", lk.name), lk.model.i.valid & lk.model.i.ready,
                       Value.cast(lk.model.i.payload), None))
    return probes


def memory_ports(top):
    """``[(NodeTop, key, store, module, port)]``: every off-chip store's burst port of ``top``
    (a :class:`NodeTop`, or each node of a :class:`Cluster`; :meth:`NodeTop.memories`):
    ``store`` ``"act"`` (the Act-RAM), ``"mask"``, ``"arg"`` or ``"master"`` (the master copy
    of a segment's weights, or of the weight sets a lender keeps: ``key``
    ``lend_<chain>@<node>``)."""
    return [(node, key, store, module, getattr(node, member))
            for node in getattr(top, "nodes", [top])
            for key, store, member, module in node.memories()]


def memory_key(key, store):
    """The key of an off-chip store in :func:`dram_models` and the run's figures: the segment
    key (``NodeLayer.key``) for its Act-RAM, ``<key>/mask``, ``<key>/arg`` and
    ``<key>/master`` for the others."""
    return key if store == "act" else f"{key}/{store}"


def dram_models(top, *, latency=20, words_per_cycle=2, p_stall=0.0, seed=0):
    """``{key: DRAMModel}`` (:func:`memory_key`), one :class:`sim.dram_model.DRAMModel` per
    off-chip store's port of ``top`` (:func:`memory_ports`), holding the ring's address range
    (``base + ext_words`` words); a master copy's ring is loaded with the initial master
    weights (``OffchipWeightUpdate.init_words``, what the host writes before training). Add
    each ``run`` as a background testbench."""
    from sim.dram_model import DRAMModel
    models = {}
    for j, (_, key, store, ram, port) in enumerate(memory_ports(top)):
        model = DRAMModel(
            port, burst=ram.burst, words=ram.base + ram.ext_words, latency=latency,
            words_per_cycle=words_per_cycle, p_stall=p_stall, seed=seed + 101 * (j + 1))
        if store == "master":
            model.load(ram.init_words())
        models[memory_key(key, store)] = model
    return models


def simulate(prep, *, stall=0.0, stall_seed=1, waves=None, max_cycles=None, dram_latency=20,
             dram_words_per_cycle=2, dram_stall=0.0):
    """Run the node on ``prep``'s data; returns the monitor records and the final state.

    Every off-chip store's port gets a :class:`sim.dram_model.DRAMModel` of ``dram_latency``
    cycles, ``dram_words_per_cycle`` and ``dram_stall`` (:func:`dram_models`); ``final["dram"]``
    holds each model's counters."""
    from amaranth.sim import Simulator

    from sim.golden.layers import quantize_input
    from sim.streams import TransferRecorder, stream_source
    top, network, num = prep["top"], prep["network"], prep["plan"].numerics
    x, y = prep["x"], prep["y"]
    n_img = len(y)
    words = []
    for xi in x:
        a, _ = quantize_input(np.asarray(xi, dtype=np.float64).reshape(network.input_shape), num)
        words += _pixels(a)
    probes = _probes(top)
    keys = [p[0] for p in probes]
    xfers = [p[1] for p in probes]
    payloads = [p[2] for p in probes]
    rec = {k: [] for k in keys}
    final = {}
    budget = max_cycles or (20_000 + 40 * n_img * math.ceil(predicted_cycles_per_image(
        prep["plan"])))
    updates_expected = n_img // prep["top"].batch
    rng = random.Random(stall_seed)
    state = {"sent": False}

    img_src = stream_source(top.images, words, rng=random.Random(rng.random()), p_stall=stall)
    lbl_src = stream_source(top.labels, [int(v) for v in y], rng=random.Random(rng.random()),
                            p_stall=stall)

    async def host(ctx):
        await img_src(ctx)
        state["sent"] = True
        ctx.set(top.flush, 1)

    last_layer_e = {nl.key: (nl.geometry.pixels * n_img if nl.eb is not None else 0)
                    for nl in top.layers}

    def finished():
        if not state["sent"] or len(rec[("loss", "o")]) < n_img:
            return False
        for nl in top.layers:
            n = nl.key
            if len(rec[(n, "pg_done")]) < n_img or any(
                    len(rec[(n, "update_done" + sfx)]) < updates_expected
                    for sfx, *_ in update_parts(nl)):
                return False
            if len(rec.get((n, "e_in"), ())) < last_layer_e[n]:
                return False
        return True

    recorder = TransferRecorder(top, xfers, payloads)

    async def monitor(ctx):
        cycle = 0
        flags, regs = recorder.flags, recorder.payloads
        while True:
            await ctx.tick()
            # the transfers of the edge just taken, and their payloads (registered by the
            # recorder at that edge: one read per cycle when nothing moves)
            f = ctx.get(flags)
            if f:
                while f:
                    low = f & -f
                    j = low.bit_length() - 1
                    f ^= low
                    rec[keys[j]].append((cycle, ctx.get(regs[j]) if regs[j] is not None
                                         else 0))
                cycle += 1
                if finished():
                    break
            else:
                cycle += 1
            if cycle > budget:
                final["timeout"] = cycle
                break
        for _ in range(8):
            await ctx.tick()
        final["cycles"] = cycle
        ov = {}
        for nl in top.layers:
            # per layer: the segments of a split layer add up (as the golden model counts)
            n = nl.name

            def add(what, value, n=n):
                ov[(n, what)] = ov.get((n, what), 0) + value
            add("fp_acc", ctx.get(nl.fp.acc_overflows))
            add("fp_out", ctx.get(nl.fp.out_overflows) + (
                ctx.get(nl.fp.add_overflows) if hasattr(nl.fp, "add_overflows") else 0))
            if nl.eb is not None:
                add("eb_acc", ctx.get(nl.eb.acc_overflows))
                add("eb", ctx.get(nl.eb.out_overflows) + (
                    ctx.get(nl.eb.add_overflows) if hasattr(nl.eb, "add_overflows") else 0))
            add("maxpool_eb", ctx.get(nl.bp.overflows) if nl.bp is not None else 0)
            add("pg_acc", ctx.get(nl.pg.acc_overflow))
            add("pg", ctx.get(nl.pg.out_overflow))
            parts = getattr(nl, "parts", None)    # a borrowed segment: its keepers' BGBs
            if parts:
                for lender, _ in parts:
                    add("grad_acc", ctx.get(lender.bgb_acc_overflow))
                    add("grad_avg", ctx.get(lender.bgb_out_overflow))
                    add("update", ctx.get(lender.update_overflow))
            else:
                add("grad_acc", ctx.get(nl.pg.lgb_acc_overflow))
                add("grad_avg", ctx.get(nl.pg.lgb_out_overflow))
                add("update", ctx.get(nl.update.overflow))
        ov[("loss", "loss")] = ctx.get(top.loss.overflow)
        final["overflow"] = ov
        final["links"] = {lk.name: {k_: ctx.get(getattr(port, k_)) for port, k_ in (
            (lk.model, "sent"), (lk.model, "corrupted"), (lk.rx, "crc_errors"),
            (lk.rx, "seq_errors"), (lk.rx, "frames"))}
            for lk in getattr(top, "links", ())}
        masters = {}
        for nl in top.layers:
            g = nl.geometry
            lanes, k = g.p * g.s, g.kernel
            sets = np.zeros((g.weight_sets, lanes, k, k), dtype=np.int64)
            index = [(s, ky, kx) for s in range(lanes) for ky in range(k) for kx in range(k)]
            for _, upd, lo, hi in update_parts(nl):
                if id(upd) in master_drams:     # the master copy in its external memory
                    sets[lo:hi] = upd.master_sets(master_drams[id(upd)].storage)
                    continue
                for b, (s, ky, kx) in enumerate(index):
                    for a in range(hi - lo):
                        sets[lo + a, s, ky, kx] = upd.master_of(ctx, b, a)
            masters[nl.key] = g.unpack_weights(sets)
        final["masters"] = masters

    sim = Simulator(recorder)
    sim.add_clock(1e-8)
    drams = dram_models(top, latency=dram_latency, words_per_cycle=dram_words_per_cycle,
                        p_stall=dram_stall, seed=stall_seed)
    master_drams = {id(ram): drams[memory_key(key, store)]
                    for _, key, store, ram, _ in memory_ports(top) if store == "master"}
    for model in drams.values():
        sim.add_testbench(model.run, background=True)
    sim.add_testbench(host, background=True)
    sim.add_testbench(lbl_src, background=True)
    sim.add_testbench(monitor)
    t0 = time.perf_counter()
    if waves is not None:
        _run_with_waves(sim, top, waves)
    else:
        sim.run()
    final["wall"] = time.perf_counter() - t0
    final["dram"] = {key: {a: getattr(model, a) for a in (
        "words_written", "words_read", "bursts_written", "bursts_read",
        "max_outstanding_reads")} for key, model in drams.items()}
    # decode payloads
    dec = {p[0]: p[3] for p in probes}
    out = {}
    for k, lst in rec.items():
        d = dec[k]
        out[k] = [(c, d(v) if d is not None else v) for c, v in lst]
    return out, final


def _node_traces(node):
    traces = {}
    for nl in node.layers:
        group = {"fp": nl.fp, "act_ram": nl.act_ram, "pg": nl.pg}
        if nl.lender is None:
            group["update"], group["gate"] = nl.update, nl.gate
        if nl.bp is not None:
            group["bp"] = nl.bp
        if nl.eb is not None:
            group["eb"] = nl.eb
        traces[nl.key.replace("@", "_at")] = group
    for n, lender in getattr(node, "lenders", {}).items():
        traces[f"lender_{n}"] = lender
    if node.loss is not None:
        traces["loss"] = node.loss
    return traces


def _run_with_waves(sim, top, directory):
    from sim import waves as W
    traces = {"top": [top.images, top.labels, top.flush]}
    if hasattr(top, "links"):
        # one group per node: its layers and the link ends it holds (transmitters it feeds,
        # receivers it reads), the link models between nodes in their own group
        for k, node in enumerate(top.nodes):
            group = _node_traces(node)
            for lk in top.links:
                if lk.src == k:
                    group[f"{lk.name}_tx"] = lk.tx
                if lk.dst == k:
                    group[f"{lk.name}_rx"] = lk.rx
            traces[f"node{k}"] = group
        traces["wires"] = {lk.name: lk.model for lk in top.links}
    else:
        traces.update(_node_traces(top))
    old = os.environ.get(W.ENV_VAR)
    os.environ[W.ENV_VAR] = str(directory)
    try:
        W.run_simulation(sim, "waves", traces=traces)
    finally:
        if old is None:
            del os.environ[W.ENV_VAR]
        else:
            os.environ[W.ENV_VAR] = old


# ---- comparison ---------------------------------------------------------------------------------

def expected_streams(prep):
    """The words every monitored stream must carry, from the golden model's records.

    A slice of a split layer (``NodeLayer.key`` ``layer@node``) carries its part: ICP the input
    channels of its slice and, before the span's last node, the partial sums it passes on
    (``fp_split[layer]["sent"]``); OCP the output channels of its slice and, after the span's
    first node, the partial errors it passes back (``eb_split[layer]["sent"]``).
    """
    from fpdeep_hw.node.top import slice_weights
    from sim.golden.train import splits_from_plan
    top, gold, network = prep["top"], prep["golden"], prep["network"]
    spans = splits_from_plan(prep["plan"])
    exp = {}
    for nl in top.layers:
        n, key, g = nl.name, nl.key, nl.geometry
        post = list(nl.segment.post)
        ci = slice(g.in_lo, g.in_lo + g.in_channels)
        co = slice(g.out_lo, g.out_lo + g.out_channels)
        idx = (spans[n][1].index(tuple(nl.segment.channels)) if n in spans else 0)
        OC = g.layer_out_channels or g.out_channels
        C = g.layer_in_channels or g.in_channels
        fi, fo, mask, arg, eout, ein = [], [], [], [], [], []
        for r in gold.images:
            fi += _pixels(np.asarray(r["act_in"][n])[ci])
            if g.split == "icp" and not g.completes:
                fo += _pixels(np.asarray(r["fp_split"][n]["sent"][idx]).reshape(
                    (OC, g.conv_height, g.conv_width)))
            else:
                last = post[-1] if post else n
                fo += _pixels(np.asarray(r["act"][last]).reshape(
                    (OC, g.out_height, g.out_width))[co])
            for p in post:
                kind = network.layer(p).kind
                if kind == "relu":
                    mask += _pixels(np.asarray(r["mask"][p]).astype(np.int64).reshape(
                        (OC, g.conv_height, g.conv_width))[co])
                else:
                    arg += _pixels(np.asarray(r["argmax"][p])[co])
            eout += _pixels(np.asarray(r["err"][n]).reshape(
                (OC, g.conv_height, g.conv_width))[co])
            if nl.eb is not None:
                if g.split == "ocp" and g.out_lo > 0:
                    ein += _pixels(np.asarray(r["eb_split"][n]["sent"][idx]).reshape(
                        (C, g.height, g.width)))
                else:
                    ein += _pixels(np.asarray(r["err_in"][n]).reshape(
                        (C, g.height, g.width))[ci])
        exp[(key, "fp_i")], exp[(key, "fp_o")], exp[(key, "act")] = fi, fo, fi
        if nl.mask_fifo is not None:
            exp[(key, "mask")] = mask
        if nl.arg_fifo is not None:
            exp[(key, "arg")] = arg
        if nl.mem_mask is not None:
            exp[(key, "mask_mem")] = mask
        if nl.mem_arg is not None:
            exp[(key, "arg_mem")] = arg
        exp[(key, "e_out")] = eout
        if nl.eb is not None:
            exp[(key, "e_in")] = ein
        grads, wrs = [], []
        # a borrowed segment's PG sends every image's gradients to the lender's BGB; the
        # others send their LGB's mini-batch averages to the local update
        per_image = [r["grad"][n] for r in gold.images] if nl.lender is not None else None
        for avg in (per_image if per_image is not None else gold.avg_grads[n]):
            sets = g.pack_weights(slice_weights(np.asarray(avg), g))
            grads += [(a, [int(v) for v in sets[a].reshape(-1)]) for a in range(len(sets))]
        exp[(key, "grad")] = grads
        for suffix, _, lo, hi in update_parts(nl):
            wrs = []
            for v in range(1, len(gold.versions[n])):
                sets = g.pack_weights(slice_weights(np.asarray(gold.versions[n][v][1]), g))
                wrs += [(a, [int(v_) for v_ in sets[a].reshape(-1)]) for a in range(lo, hi)]
            exp[(key, "wr" + suffix)] = wrs
    exp[("loss", "o")] = [[int(v) for v in r["loss_error"]] for r in gold.images]
    return exp


def compare(prep, rec, final):
    """List of mismatch descriptions (empty: bit-exact)."""
    gold, top = prep["golden"], prep["top"]
    bad = []
    if "timeout" in final:
        bad.append(f"simulation did not finish within {final['timeout']} cycles")
    exp = expected_streams(prep)
    for key, words in exp.items():
        got = [w for _, w in rec[key]]
        if got != words:
            where = next((j for j, (a, b) in enumerate(zip(got, words)) if a != b),
                         min(len(got), len(words)))
            bad.append(f"{key[0]}.{key[1]}: {len(got)} words, expected {len(words)}; first "
                       f"difference at word {where}")
    from fpdeep_hw.node.top import slice_weights
    for nl in top.layers:
        want = slice_weights(gold.versions[nl.name][-1][0], nl.geometry)
        if not np.array_equal(final["masters"][nl.key], want):
            bad.append(f"{nl.key}: master weights after the run differ from the golden model's")
    ov = final["overflow"]
    gov = gold.overflow
    for n in dict.fromkeys(nl.name for nl in top.layers):
        segment_posts = [nl.segment.post for nl in top.layers if nl.name == n]
        for what in ("fp_out", "eb", "pg", "grad_acc", "grad_avg", "update"):
            if (n, what) in ov and ov[(n, what)] != gov.get((n, what), 0):
                bad.append(f"{n}: overflow count {what} {ov[(n, what)]} != golden "
                           f"{gov.get((n, what), 0)}")
        for what in ("fp_acc", "eb_acc", "pg_acc"):
            if ov.get((n, what), 0) != 0 or gov.get((n, what), 0) != 0:
                bad.append(f"{n}: accumulator saturated ({what})")
        pools = {p for post in segment_posts for p in post
                 if prep["network"].layer(p).kind == "maxpool"}
        want = sum(gov.get((p, "maxpool_eb"), 0) for p in pools)
        if ov[(n, "maxpool_eb")] != want:
            bad.append(f"{n}: pool backward overflow count {ov[(n, 'maxpool_eb')]} != {want}")
    if ov[("loss", "loss")] != gov.get(("loss", "loss"), 0):
        bad.append(f"loss: overflow count {ov[('loss', 'loss')]} != golden "
                   f"{gov.get(('loss', 'loss'), 0)}")
    for name, c in final.get("links", {}).items():
        if c["crc_errors"] or c["seq_errors"]:
            bad.append(f"{name}: {c['crc_errors']} CRC errors, {c['seq_errors']} sequence errors")
    return bad


# ---- figures ------------------------------------------------------------------------------------

def predicted_cycles_per_image(plan):
    """The mapper's period over whole mini-batches (update round trips included)."""
    return plan.summary["cycles_per_image_with_updates"]


def wire_window(n_img, batch):
    """Images ``[lo, hi)`` whose wire words are the steady figure: without the first mini-batch
    (the links' and the pipeline's start-up) and, in runs of at least three mini-batches,
    without the last one (the drain: a producer that stops cuts its last frames short);
    every image of a shorter run."""
    nb = n_img // batch if batch else 0
    if nb >= 3:
        return batch, (nb - 1) * batch
    if nb == 2:
        return batch, n_img
    return 0, n_img


def wire_images(words, streams, words_per_image, lo, hi, max_payload, n_credit, images=None):
    """Wire words that carried images ``lo .. hi - 1`` of a link direction, per image.

    ``words``: the ``(cycle, word)`` the link model accepted; ``streams``: ``{sid: stream}``;
    ``words_per_image``: ``{sid: 64-bit words of one image}`` (the packer pads each image);
    ``n_credit``: streams of the opposite direction (the credit frames' totals); ``images``:
    the run's images (default ``hi``).
    Every data frame's header gives its stream and the position of its first word in the
    stream (``seq``, ``sim.golden.framer``); each payload word belonging to an image of the
    window counts ``(length + 2) / length`` wire words (its share of the frame's header and
    trailer), so frames spanning two images are shared. Credit frames are counted per image of
    the run. A lender that runs ahead sends sets of images past the run: they fall outside the
    window. The words are the transmitter's (the link model's input, before any bit flips);
    returns ``None`` if they do not parse as frames."""
    from sim.golden.framer import SEQ_BITS, parse_header
    sids = set(streams)
    pos = dict.fromkeys(sids, 0)     # words of each stream before the next frame
    total = credit = 0.0
    k = 0
    ws = [w for _, w in words]
    while k < len(ws):
        head = parse_header(ws[k], sids, max_payload, n_credit)
        if head is None:
            return None
        sid, length, seq = head
        if sid is None:
            credit += length + 2
        else:
            # seq counts the stream's words modulo 2**SEQ_BITS: extend it from the position
            start = pos[sid] + ((seq - pos[sid]) % (1 << SEQ_BITS))
            pos[sid] = start + length
            per = words_per_image[sid]
            inside = max(0, min(start + length, hi * per) - max(start, lo * per))
            total += inside * (length + 2) / length
        k += length + 2
    return total / (hi - lo) + credit / (images or hi)


def _link_figures(prep, rec, final, n_img, cpi):
    """Per link direction: payload and wire words per image, measured and predicted."""
    out = []
    for lk in getattr(prep["top"], "links", ()):
        c = final["links"][lk.name]
        streams = []
        payload = sent_total = 0
        for i, sp in enumerate(lk.entry.streams):
            # the hardware streams of this plan stream (a lent layer's parameters: FP and EB)
            js = [j for j, pi in enumerate(lk.plan_index) if pi == i]
            words = sum(len(rec[("link_rx", lk.name, j)]) * lk.streams[j].words for j in js)
            sent = sum(len(rec[("link", lk.name, j)]) * lk.streams[j].words for j in js)
            # items the receiving node took beyond the run's images (a borrower prefetches
            # the next image's weight sets; a lender runs ahead by up to its lag)
            ahead = sum(len(rec[("link_dst", lk.name, j)]) - n_img * lk.items[j] for j in js)
            payload += words
            sent_total += sent
            streams.append({"sids": [lk.streams[j].sid for j in js], "path": sp.path,
                            "layer": sp.layer,
                            "payload_words_per_image": words / n_img,
                            "sent_words_per_image": sent / n_img,
                            "items_taken": [len(rec[("link_dst", lk.name, j)]) for j in js],
                            "items_per_image": [lk.items[j] for j in js],
                            "run_ahead_items": ahead,
                            "predicted_words_per_image": sp.words_per_image * sp.width / 64,
                            "plan_words_per_image": sp.words_per_image,
                            "plan_width": sp.width})
        wire = c["sent"] / n_img
        pw = payload / n_img
        lo, hi = wire_window(n_img, prep["top"].batch)
        steady = wire_images(rec[("wire", lk.name)],
                             {s.sid: s for s in lk.streams},
                             {s.sid: -(-n * b // 64) for s, n, b in
                              zip(lk.streams, lk.items, lk.bits)},
                             lo, hi, lk.tx.max_payload,
                             len(prep["top"].link(lk.dst, lk.src).streams), n_img)
        pred = lk.predicted_payload_words
        out.append({
            "src": lk.src, "dst": lk.dst, "direction": lk.direction,
            "words_per_cycle": float(lk.model.rate), "latency": lk.model.latency,
            "payload_words_per_image": pw,
            "sent_payload_words_per_image": sent_total / n_img,
            "predicted_payload_words_per_image": pred,
            "payload_error": round(pw / pred - 1, 4) if pred else None,
            "wire_words_per_image": wire,
            "overhead_words_per_image": wire - pw,
            "predicted_wire_words_per_image": lk.predicted_wire_words,
            "wire_error": (round(wire / lk.predicted_wire_words - 1, 4)
                           if lk.predicted_wire_words else None),
            # the same over the steady images only (wire_window: start-up, drain and a
            # lender's run-ahead left out): what the framing model predicts
            "wire_images": [lo, hi],
            "wire_words_per_image_steady": steady,
            "wire_error_steady": (round(steady / lk.predicted_wire_words - 1, 4)
                                  if steady is not None and lk.predicted_wire_words else None),
            "link_bound_cycles_per_image": (lk.predicted_wire_words / float(lk.model.rate)),
            "busy_fraction": round(wire / float(lk.model.rate) / cpi, 4) if cpi else None,
            "frames": c["frames"], "crc_errors": c["crc_errors"], "seq_errors": c["seq_errors"],
            "streams": streams})
    return out


def figures(prep, rec, final):
    top, plan = prep["top"], prep["plan"]
    n_img = len(prep["y"])
    nodes = getattr(top, "nodes", [top])
    node_plans = [plan.node_plans[n.node] for n in nodes]
    macs = sum(e.macs_per_image for np_ in node_plans for s in np_.segments
               for e in s.engines.values())
    units = top.mac_units
    ideal = max(sum(e.macs_per_image for s in np_.segments for e in s.engines.values()) /
                n.mac_units for n, np_ in zip(nodes, node_plans))
    loss_t = [c for c, _ in rec[("loss", "o")]]
    # steady state: the spacing of loss outputs in the middle of the run (images j1 .. j2);
    # the median skips the mini-batch boundaries, where FP and EB wait for the update
    j1, j2 = n_img // 4, n_img - 1 - n_img // 4
    if j2 <= j1:
        j1, j2 = 0, n_img - 1
    cpi = mean = None
    if j2 > j1 and len(loss_t) > j2:
        diffs = [loss_t[j + 1] - loss_t[j] for j in range(j1, j2)]
        cpi = float(np.median(diffs))
        mean = (loss_t[j2] - loss_t[j1]) / (j2 - j1)
    # before any update stall: the loss-output spacing over the first mini-batch; and over
    # whole mini-batches, update stalls included: from the first image of the second batch to
    # the first image of the last batch, per image
    B = top.batch
    first_batch = batch_period = None
    if B > 1 and len(loss_t) >= B:
        first_batch = (loss_t[B - 1] - loss_t[0]) / (B - 1)
    nb = len(loss_t) // B
    if nb >= 3:
        batch_period = (loss_t[(nb - 1) * B] - loss_t[B]) / ((nb - 2) * B)
    first_out, first_in, last_in, util = {}, {}, {}, {}
    for nl in top.layers:
        n, g = nl.key, nl.geometry
        o = rec[(n, "fp_o")]
        first_out[n] = o[0][0] if o else None
        i = rec[(n, "fp_i")]
        first_in[n] = i[0][0] if i else None
        last_in[n] = i[g.pixels - 1][0] if len(i) >= g.pixels else None
        if cpi is None:
            continue
        # CE words per image of each engine array (all its busy cycles over the run / images)
        # over the steady-state period: the utilisation while the node runs at that period
        busy = {"fp": len(rec[(n, "fp_busy")])}
        if nl.eb is not None:
            busy["eb"] = len(rec[(n, "eb_busy")])
        pgd = rec[(n, "pg_done")]
        busy["pg"] = pgd[-1][1] if pgd else 0
        u = {}
        for ph, b_ in busy.items():
            u[ph] = b_ / n_img / cpi
            # the share of the period the plan lets this array be busy (its cycles per image
            # over the node's); the utilisation relative to that bound
            bound = (nl.segment.engines[ph].cycles_per_image /
                     plan.node_plans[nl.node].cycles_per_image)
            u[f"{ph}_of_plan_bound"] = u[ph] / bound
        util[n] = {k_: round(v, 4) for k_, v in u.items()}
    cycles = final["cycles"]
    return {
        "cycles": cycles,
        "cycles_per_image": round(cpi, 2) if cpi is not None else None,
        "cycles_per_image_mean": round(mean, 2) if mean is not None else None,
        "steady_state_images": [j1, j2],
        "cycles_per_image_first_batch": (round(first_batch, 2) if first_batch is not None
                                         else None),
        "cycles_per_image_whole_batches": (round(batch_period, 2) if batch_period is not None
                                           else None),
        "ideal_cycles_per_image": round(ideal, 2),
        "ce_utilization": round(ideal / cpi, 4) if cpi else None,
        "plan_cycles_per_image": max(np_.cycles_per_image for np_ in node_plans),
        "predicted_cycles_per_image": round(predicted_cycles_per_image(plan), 2),
        # the mapper's timing model: within a mini-batch, and averaged over whole mini-batches
        # (update round trips included); compare with the first-batch / whole-batch figures
        "predicted_cycles_per_image_steady": plan.summary.get("cycles_per_image_steady"),
        "predicted_cycles_per_image_with_updates": plan.summary.get(
            "cycles_per_image_with_updates"),
        "steady_error": (round(first_batch / plan.summary["cycles_per_image_steady"] - 1, 4)
                         if first_batch and plan.summary.get("cycles_per_image_steady")
                         else None),
        "with_updates_error": (
            round(batch_period / plan.summary["cycles_per_image_with_updates"] - 1, 4)
            if batch_period and plan.summary.get("cycles_per_image_with_updates") else None),
        # whole mini-batches against the averaged period where the run has them, else the
        # first mini-batch against the steady period
        "cycles_per_image_error": (
            round(batch_period / predicted_cycles_per_image(plan) - 1, 4) if batch_period
            else round(first_batch / plan.summary["cycles_per_image_steady"] - 1, 4)
            if first_batch else None),
        "links": _link_figures(prep, rec, final, n_img, cpi),
        "mac_units": units,
        "macs_per_image": macs,
        "first_output_cycle": first_out,
        "first_input_cycle": first_in,
        "last_input_cycle": last_in,
        "layer_utilization": util,
        "loss_output_cycles": loss_t,
        "wall_seconds": round(final["wall"], 2),
        "cycles_per_second": round(cycles / final["wall"], 1) if final["wall"] else None,
    }


def _check_dram(latency, words_per_cycle, stall, burst=16, prefetch=4):
    if isinstance(burst, bool) or not isinstance(burst, int) or not 2 <= burst <= 256 or \
            burst & (burst - 1):
        raise TrainError(f"--offchip-burst must be a power of two from 2 to 256, not {burst!r}")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 2:
        raise TrainError(f"--offchip-prefetch must be an integer of at least 2, not "
                         f"{prefetch!r}")
    if isinstance(latency, bool) or not isinstance(latency, int) or latency < 1:
        raise TrainError(f"--dram-latency must be a positive integer, not {latency!r}")
    if not (isinstance(words_per_cycle, (int, float)) and 0 < words_per_cycle <= 2):
        raise TrainError(f"--dram-words-per-cycle must be in (0, 2], not {words_per_cycle!r}")
    if not (isinstance(stall, (int, float)) and 0 <= stall < 1):
        raise TrainError(f"--dram-stall must be in [0, 1), not {stall!r}")


def run(net, board, *, nodes=1, images, batch, seed=0, lr=0.125, out=None, waves=False,
        stall=0.0, perturb=None, fifo_images=1, fifo_rows=None, fifo_whole_bits=0,
        fifo_fold=1, link_gbps=None, link_latency=54,
        split="channels", ocp_threshold=None, offchip_act_ram=None, offchip_stores=None,
        dram_latency=20, dram_words_per_cycle=2, dram_stall=0.0, mem_burst=16, mem_prefetch=4,
        master_burst=None, master_prefetch=None, master_fold=1, grad_fold=1, bpram_fold=1,
        ws_pg=False, offchip_lgb=None):
    """The whole flow; returns the result dict (the ``--json`` figures).

    ``perturb``: a callable ``(golden_trainer) -> None`` applied to the golden model after it ran
    (tests use it to show that the comparison can fail). ``offchip_act_ram``,
    ``offchip_stores``: see :func:`prepare`; ``dram_*``: the memory models of the off-chip
    stores (:func:`simulate`).
    """
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise TrainError(f"--out {out}: exists and is not a directory")
    _check_dram(dram_latency, dram_words_per_cycle, dram_stall, mem_burst, mem_prefetch)
    for flag, v in (("--fifo-rows", fifo_rows), ("--fifo-whole-bits", fifo_whole_bits)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise TrainError(f"{flag} must be a non-negative integer, not {v!r}")
    if isinstance(fifo_fold, bool) or not isinstance(fifo_fold, int) or fifo_fold < 1:
        raise TrainError(f"--fifo-fold must be a positive integer, not {fifo_fold!r}")
    def _int(v, low):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low
    if not _int(master_fold, 1):
        raise TrainError(f"--master-fold must be a positive integer, not {master_fold!r}")
    if not _int(grad_fold, 1):
        raise TrainError(f"--grad-fold must be a positive integer, not {grad_fold!r}")
    if not _int(bpram_fold, 1):
        raise TrainError(f"--bpram-fold must be a positive integer, not {bpram_fold!r}")
    if not (ws_pg is False or ws_pg is True or ws_pg == "smaller"):
        raise TrainError(f"--ws-pg must be 'all' or 'smaller', not {ws_pg!r}")
    if master_prefetch is not None and not _int(master_prefetch, 1):
        raise TrainError(f"--master-prefetch must be a positive integer, not "
                         f"{master_prefetch!r}")
    if master_burst is not None and not (_int(master_burst, 2) and master_burst <= mem_burst
                                         and mem_burst % master_burst == 0):
        raise TrainError(f"--master-burst must be a divisor of --offchip-burst ({mem_burst}) of "
                         f"at least 2, not {master_burst!r}")
    prep = prepare(net, board, nodes=nodes, images=images, batch=batch, seed=seed, lr=lr,
                   stall=stall, fifo_images=fifo_images, fifo_rows=fifo_rows,
                   fifo_whole_bits=fifo_whole_bits, fifo_fold=fifo_fold, link_gbps=link_gbps,
                   link_latency=link_latency, split=split, ocp_threshold=ocp_threshold,
                   offchip_act_ram=offchip_act_ram, offchip_stores=offchip_stores,
                   mem_burst=mem_burst, mem_prefetch=mem_prefetch,
                   master_burst=master_burst, master_prefetch=master_prefetch,
                   master_fold=master_fold, grad_fold=grad_fold, bpram_fold=bpram_fold,
                   ws_pg=ws_pg, offchip_lgb=offchip_lgb)
    if perturb is not None:
        perturb(prep["golden"])
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainError(f"--out {out}: {e.strerror or e}") from None
    rec, final = simulate(prep, stall=stall, waves=out_dir if (waves and out_dir) else None,
                          dram_latency=dram_latency, dram_words_per_cycle=dram_words_per_cycle,
                          dram_stall=dram_stall)
    bad = compare(prep, rec, final)
    res = {"net": net, "board": board, "nodes": nodes, "split": split,
           "link_gbps": prep["plan"].link_gbps, "clock_mhz": prep["plan"].clock_mhz,
           "images": images, "batch": batch,
           "seed": seed, "lr": lr, "data": prep["data"], "bit_exact": not bad,
           "mismatches": bad[:20], "lags": prep["top"].lags,
           # nodes at the end of the chain the plan leaves without a layer (not simulated)
           "idle_nodes": prep["idle_nodes"],
           "updates": {nl.key: min(len(rec[(nl.key, "update_done" + sfx)])
                                   for sfx, *_ in update_parts(nl))
                       for nl in prep["top"].layers},
           # off-chip Act-RAMs: segment key -> burst port and its memory model's counters
           "offchip_act_ram": {key: member
                               for node in getattr(prep["top"], "nodes", [prep["top"]])
                               for key, store, member, _ in node.memories() if store == "act"},
           # off-chip ReLU-mask, argmax and master-copy stores: <key>/<store> -> burst port
           "offchip_stores": {memory_key(key, store): member
                              for node in getattr(prep["top"], "nodes", [prep["top"]])
                              for key, store, member, _ in node.memories()
                              if store != "act"},
           # the fold of every off-chip update's FIFOs: burst port -> rows per set
           "master_folds": {mem: f for node in getattr(prep["top"], "nodes", [prep["top"]])
                            for mem, f in node.master_folds.items()},
           # every gradient buffer's fold: "node<k>/<key>/lgb", "node<k>/lend_<chain>/bgb" -> rows
           "grad_folds": {f"node{j}/{k}": f for j, node in
                          enumerate(getattr(prep["top"], "nodes", [prep["top"]]))
                          for k, f in node.grad_folds.items()},
           # every BPRAM's fold: "node<k>/lend_<chain>/bpram" -> rows per set
           "bpram_folds": {f"node{j}/{k}": f for j, node in
                           enumerate(getattr(prep["top"], "nodes", [prep["top"]]))
                           for k, f in node.bpram_folds.items()},
           # the PG order of every layer of a node's own weights: "node<k>/<key>" -> "weight"
           # (weight-stationary, WSPGLayer) or "position" (PGLayer)
           "pg_orders": {f"node{j}/{k}": o for j, node in
                         enumerate(getattr(prep["top"], "nodes", [prep["top"]]))
                         for k, o in node.pg_orders.items()},
           "dram": dict(final["dram"], latency=dram_latency,
                        words_per_cycle=dram_words_per_cycle, stall=dram_stall,
                        burst=mem_burst, prefetch=mem_prefetch)}
    res.update(figures(prep, rec, final))
    if out_dir is not None:
        _save(out_dir / "result.npz", prep, final)
    res["_rec"], res["_final"], res["_prep"] = rec, final, prep
    return res


def _save(path, prep, final):
    from sim.golden.layers import quantize_input
    num = prep["plan"].numerics
    scale = float(2 ** num.master.frac)
    gold = prep["golden"]
    arrays = {"inputs": np.asarray(prep["x"], dtype=np.float64),
              "labels": np.asarray(prep["y"], dtype=np.int64),
              "inputs_quantized": np.stack([
                  quantize_input(np.asarray(x, dtype=np.float64).reshape(
                      prep["network"].input_shape), num)[0] for x in prep["x"]])}
    from fpdeep_hw.node.top import slice_weights
    for nl in prep["top"].layers:
        n, key, g = nl.name, nl.key, nl.geometry
        arrays[f"weights_before/{key}"] = slice_weights(
            np.asarray(prep["init"][n], dtype=np.float64), g) / scale
        arrays[f"weights_after/{key}"] = final["masters"][key].astype(np.float64) / scale
        arrays[f"golden_weights_after/{key}"] = slice_weights(
            gold.versions[n][-1][0], g).astype(np.float64) / scale
    np.savez(path, **arrays)


def _public(res):
    return {k: v for k, v in res.items() if not k.startswith("_")}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None):
    ap = _Parser(prog="python -m sim.train", description=__doc__.split("\n")[0])
    ap.add_argument("--net", required=True)
    ap.add_argument("--board", required=True)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--images", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.125)
    ap.add_argument("--stall", type=float, default=0.0,
                    help="probability of a host stall per word (images and labels)")
    ap.add_argument("--split", choices=("channels", "layers"), default="channels",
                    help="mapper split: channel segments (default) or whole layers per node")
    ap.add_argument("--ocp-threshold", type=int, default=None,
                    help="mapper: output-channel partition below this many input channels per "
                         "node (default: the mapper's; 1 forces input-channel partition)")
    ap.add_argument("--link-gbps", type=float, default=None,
                    help="link rate per direction (default: the board's)")
    ap.add_argument("--link-latency", type=int, default=54,
                    help="cycles per link hop (default 54, Aurora 64B/66B)")
    ap.add_argument("--offchip-act-ram", default=None, metavar="all|LAYER[,LAYER...]",
                    help="test/debug: keep these layers' Act-RAMs off chip (rewrites the mapped "
                         "plan as the mapper does for an Act-RAM that does not fit; default: "
                         "the mapper's placement)")
    ap.add_argument("--offchip-stores", default=None, metavar="all|LAYER[,LAYER...]",
                    help="test/debug: keep these layers' ReLU-mask and argmax stores off chip "
                         "(rewrites the mapped plan as the mapper does for a store that does "
                         "not fit; default: the mapper's placement)")
    ap.add_argument("--offchip-lgb", default=None, metavar="all|LAYER[,LAYER...]",
                    help="test/debug: keep these convolution layers' gradient accumulators "
                         "(LGB) off chip (rewrites the mapped plan as the mapper does for an "
                         "LGB it spills; default: the mapper's placement)")
    ap.add_argument("--dram-latency", type=int, default=20,
                    help="external memory model of each off-chip Act-RAM: cycles from a "
                         "request to its service (default 20)")
    ap.add_argument("--dram-words-per-cycle", type=float, default=2.0,
                    help="external memory bandwidth per off-chip Act-RAM, words (of the "
                         "Act-RAM's lanes) per cycle, reads and writes together, in (0, 2] "
                         "(default 2)")
    ap.add_argument("--dram-stall", type=float, default=0.0,
                    help="external memory model: probability of a stall per stream and cycle "
                         "(default 0)")
    ap.add_argument("--offchip-burst", type=int, default=16,
                    help="off-chip Act-RAM burst in words, a power of two from 2 to 256 "
                         "(default 16)")
    ap.add_argument("--offchip-prefetch", type=int, default=4,
                    help="off-chip Act-RAM prefetch FIFO in bursts, at least 2 (default 4)")
    ap.add_argument("--master-burst", type=int, default=None,
                    help="off-chip master copies' burst in words, a divisor of --offchip-burst "
                         "(the build: 4; default: --offchip-burst)")
    ap.add_argument("--master-prefetch", type=int, default=None,
                    help="off-chip master copies' read-ahead in bursts (the build: 2; default: "
                         "--offchip-prefetch)")
    ap.add_argument("--bpram-fold", type=int, default=1,
                    help="keep each BPRAM's weight sets as up to this many rows where its two "
                         "weight streams keep half its read port free (the build: 16; "
                         "default 1)")
    ap.add_argument("--ws-pg", choices=["all", "smaller"], default=None,
                    help="weight-stationary PG (one weight set per sweep of the image's stored "
                         "activations and errors) for the layers of a node's own weights: all "
                         "conv layers, or where it takes less block RAM than the position-outer "
                         "accumulators within the plan's cycles per image (as the build "
                         "chooses); default: none")
    ap.add_argument("--grad-fold", type=int, default=1,
                    help="keep each gradient buffer's sets as up to this many rows where its "
                         "drain costs at most 1/200 of the layer's cycles (the build: 16; "
                         "default 1)")
    ap.add_argument("--master-fold", type=int, default=1,
                    help="keep each weight set in the off-chip updates' FIFOs as up to this "
                         "many rows where that saves distributed RAM (the build: 16; default "
                         "1, none)")
    ap.add_argument("--fifo-rows", type=int, default=None,
                    help="decoupling FIFOs of this many rows of their map instead of one image "
                         "(as python -m fpdeep_hw.build builds them; default: one image)")
    ap.add_argument("--fifo-whole-bits", type=int, default=0,
                    help="with --fifo-rows: FIFOs whose image is at most this many bits keep "
                         "the image (the build: 65536; default 0)")
    ap.add_argument("--fifo-fold", type=int, default=1,
                    help="with --fifo-rows: keep a row FIFO's words as up to this many rows "
                         "where that saves block RAM (the build: 64; default 1, none)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--waves", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        res = run(args.net, args.board, nodes=args.nodes, images=args.images, batch=args.batch,
                  seed=args.seed, lr=args.lr, out=args.out, waves=args.waves, stall=args.stall,
                  link_gbps=args.link_gbps, link_latency=args.link_latency, split=args.split,
                  ocp_threshold=args.ocp_threshold, offchip_act_ram=args.offchip_act_ram,
                  offchip_stores=args.offchip_stores, offchip_lgb=args.offchip_lgb,
                  fifo_rows=args.fifo_rows,
                  fifo_whole_bits=args.fifo_whole_bits, fifo_fold=args.fifo_fold,
                  dram_latency=args.dram_latency,
                  dram_words_per_cycle=args.dram_words_per_cycle,
                  dram_stall=args.dram_stall, mem_burst=args.offchip_burst,
                  mem_prefetch=args.offchip_prefetch, master_burst=args.master_burst,
                  master_prefetch=args.master_prefetch, master_fold=args.master_fold,
                  grad_fold=args.grad_fold, bpram_fold=args.bpram_fold,
                  ws_pg={None: False, "all": True}.get(args.ws_pg, args.ws_pg))
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pub = _public(res)
    if args.json:
        print(json.dumps(pub, indent=1))
    else:
        print(f"{args.net} on {args.board}: {args.images} images, batch {args.batch}: "
              f"bit_exact={pub['bit_exact']}, {pub['cycles']} cycles, "
              f"{pub['cycles_per_image']} cycles/image (plan {pub['plan_cycles_per_image']}, "
              f"ideal {pub['ideal_cycles_per_image']}, model "
              f"{pub['predicted_cycles_per_image']}), CE utilisation {pub['ce_utilization']}")
        if pub.get("idle_nodes"):
            print(f"  nodes {', '.join(map(str, pub['idle_nodes']))}: no layer in the plan "
                  f"(idle, not simulated)")
        for lk in pub["links"]:
            print(f"  link {lk['src']}->{lk['dst']}: {lk['payload_words_per_image']:.2f} payload "
                  f"words/image (model {lk['predicted_payload_words_per_image']:.2f}), "
                  f"{lk['wire_words_per_image']:.2f} on the wire"
                  + (f", {lk['wire_words_per_image_steady']:.2f} over images "
                     f"{lk['wire_images'][0]}-{lk['wire_images'][1] - 1}"
                     if lk["wire_words_per_image_steady"] is not None else "")
                  + f" (model {lk['predicted_wire_words_per_image']:.2f})")
        for key, port in pub["offchip_act_ram"].items():
            d = pub["dram"][key]
            print(f"  off-chip Act-RAM {key} ({port}): {d['words_written']} words written, "
                  f"{d['words_read']} read back ({pub['dram']['latency']}-cycle memory)")
        for key, port in pub["offchip_stores"].items():
            d = pub["dram"][key]
            print(f"  off-chip store {key} ({port}): {d['words_written']} words written, "
                  f"{d['words_read']} read back ({pub['dram']['latency']}-cycle memory)")
        for b in pub["mismatches"]:
            print("  mismatch:", b)
    return 0 if pub["bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
