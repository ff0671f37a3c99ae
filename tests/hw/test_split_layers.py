# amaranth: UnusedElaboratable=no
"""Split layers: the FP/EB/PG modules of every node of an ICP / OCP span in one simulation.

The nodes' modules are connected directly (no links): ICP FP ``o`` of node ``k`` -> ``up`` of node
``k + 1``; OCP EB ``o`` of node ``k + 1`` -> ``up`` of node ``k``; every connection goes through a
random stall gate, and every input/output stream has random valid/ready stalls. Outputs (and the
partial sums on every connection) must equal the golden split arithmetic of
:mod:`sim.golden.layers` (``icp_conv_fp``, ``ocp_conv_eb``) bit for bit, overflow counters
included. Blocks: ``fpdeep_hw/node/fp_layer.py``, ``eb_layer.py``, ``pg_layer.py`` (split
segments), ``fpdeep_hw/compute/partial_adder.py``. Rules: ``docs/training-spec.md`` ("Split
layers"); ports and wiring: ``docs/hw-node.md`` ("Split layers").
"""

from __future__ import annotations

import dataclasses
import functools
import random

import numpy as np
import pytest
from amaranth.hdl import Fragment, Module, Signal
from amaranth.sim import Simulator

from fpdeep_hw.node.eb_layer import EBLayer
from fpdeep_hw.node.fp_layer import FPLayer, layer_geometry
from fpdeep_hw.node.pg_layer import PGLayer
from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from sim.golden import layers as golden
from sim.lint import verilator_lint
from sim.streams import payload_to_python, stream_sink, stream_source
from sim.waves import run_simulation

#: name -> (network, nodes, mapper options); the split layer is conv2 in all of them
CONFIGS = {
    "tiny-ocp2": ("tiny", 2, dict(max_row_lanes=1)),
    "tiny-ocp3": ("tiny", 3, dict(max_row_lanes=1)),
    "tiny-icp2": ("tiny", 2, dict(ocp_threshold=1)),
    "digits-icp2": ("digits", 2, dict(ocp_threshold=1)),
    "digits-icp3": ("digits", 3, dict(ocp_threshold=1)),
}
DEFAULT = ["tiny-ocp2", "tiny-icp2", "digits-icp3"]
SLOW = ["tiny-ocp3", "digits-icp2"]


def _params(names, slow=False):
    return [pytest.param(n, marks=pytest.mark.slow) if slow else n for n in names]


ALL = _params(DEFAULT) + _params(SLOW, slow=True)


@functools.cache
def _span(name):
    """``(network, numerics, segments of conv2 in node order)``."""
    net_name, nodes, kw = CONFIGS[name]
    network = load_network(net_name)
    plan = map_network(network, load_board("sim-node"), nodes, **kw)
    segs = [s for node in sorted(plan.node_plans, key=lambda n: n.node) for s in node.segments
            if s.layer == "conv2"]
    assert len(segs) >= 2 and all(s.split == segs[0].split for s in segs)
    return network, plan.numerics, tuple(segs)


def _pixels(a):
    c, h, w = a.shape
    return [[int(v) for v in a[:, y, x]] for y in range(h) for x in range(w)]


def _slices(segs):
    return [tuple(s.channels) for s in segs]


def _node_weights(split, w, lo, hi):
    return w[:, lo:hi] if split == "icp" else w[lo:hi]


def _gate(m, src, dst, en):
    """``src`` -> ``dst`` through a stall gate: a word passes only while ``en`` is high."""
    m.d.comb += [
        dst.valid.eq(src.valid & en),
        src.ready.eq(dst.ready & en),
        dst.payload.eq(src.payload),
    ]


def _run(top, duts, *, sources, sinks, links, p_stall, seed, waves=None):
    """Simulate ``top`` until every sink has its words.

    ``sources`` [(port, words)], ``sinks`` [(port, list, count)], ``links`` [(dst stream,
    enable signal, list recording the words that cross)]. Returns ``(first, counters)``:
    the cycle of the first valid word of every sink, and per dut ``(acc_overflows,
    out_overflows, add_overflows or 0)`` read after the run; and the cycle of the first
    transfer on the first source.
    """
    sim = Simulator(top)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    for k, (port, words) in enumerate(sources):
        sim.add_testbench(stream_source(port, words, rng=random.Random(seed + 1 + k),
                                        p_stall=p_stall), background=True)
    done = [False] * len(sinks)
    first = [None] * len(sinks)
    counters = []
    for k, (port, out, count) in enumerate(sinks):
        tb = stream_sink(port, out, count=count, rng=random.Random(seed + 50 + k),
                         p_stall=p_stall, max_cycles=400_000)

        async def sink(ctx, tb=tb, k=k):
            await tb(ctx)
            done[k] = True
        sim.add_testbench(sink, background=True)

        async def watch(ctx, port=port, k=k):
            cycle = 0
            while first[k] is None:
                _, _, v = await ctx.tick().sample(port.valid)
                if v:
                    first[k] = cycle
                cycle += 1
        sim.add_testbench(watch, background=True)

    async def control(ctx):
        for dut in duts:
            ctx.set(dut.go, 1)
        while not all(done):
            for _, en, _ in links:
                ctx.set(en, int(rng.random() >= p_stall))
            sampled = await ctx.tick().sample(*[x for d, _, _ in links
                                               for x in (d.valid, d.ready, d.payload)])
            vals = sampled[2:]
            for j, (_, _, rec) in enumerate(links):
                v, r, p = vals[3 * j:3 * j + 3]
                if v and r:
                    rec.append(payload_to_python(p))
        for _ in range(8):          # the last words reach the counters
            await ctx.tick()
        for dut in duts:
            add = ctx.get(dut.add_overflows) if hasattr(dut, "add_overflows") else 0
            counters.append((ctx.get(dut.acc_overflows), ctx.get(dut.out_overflows), add))

    sim.add_testbench(control)
    in_first = [None]

    async def watch_in(ctx):
        cycle = 0
        port = sources[0][0]
        while in_first[0] is None:
            _, _, v, r = await ctx.tick().sample(port.valid, port.ready)
            if v and r:
                in_first[0] = cycle
            cycle += 1
    sim.add_testbench(watch_in, background=True)
    run_simulation(sim, waves, traces=list(duts))
    return first, counters, in_first[0]


# ---- FP ---------------------------------------------------------------------------------------

def fp_expected(network, numerics, segs, w, images):
    """Golden words: per node ``o`` (and ``mask``/``arg`` where it has them), the words on every
    connection, and per node overflow counts ``(acc, out, add)``."""
    layer = network.layer("conv2")
    split = segs[0].split
    n = len(segs)
    out = {"o": [[] for _ in range(n)], "mask": [[] for _ in range(n)],
           "arg": [[] for _ in range(n)], "link": [[] for _ in range(n - 1)]}
    ovf = [[0, 0, 0] for _ in range(n)]
    for a in images:
        if split == "icp":
            y, info = golden.icp_conv_fp(a, w, layer.stride, layer.padding, _slices(segs),
                                         numerics)
            for k in range(n):
                ovf[k][0] += info["acc_overflow"][k]
                ovf[k][1] += info["partial_overflow"][k]
                ovf[k][2] += info["add_overflow"][k]
            for k in range(n - 1):
                out["link"][k] += _pixels(info["sent"][k])
                out["o"][k] += _pixels(info["sent"][k])
            ys = {n - 1: y}
        else:
            ys = {}
            for k, (lo, hi) in enumerate(_slices(segs)):
                acc, c1 = golden.conv_fp(a, w[lo:hi], layer.stride, layer.padding, 1, numerics)
                ys[k], c2 = golden.fp_output(acc, numerics)
                ovf[k][0] += c1
                ovf[k][1] += c2
        for k, y in ys.items():
            geom = layer_geometry(segs[k], network)
            if geom.relu:
                y, mask = golden.relu(y)
                out["mask"][k] += _pixels(mask)
            if geom.pool is not None:
                y, arg = golden.maxpool(y, *geom.pool)
                out["arg"][k] += _pixels(arg)
            out["o"][k] += _pixels(y)
    return out, ovf


def check_fp_span(name, *, n_images=2, p_stall=0.3, seed=0, scale=(1 << 9, 1 << 11),
                  waves=None, images=None, w=None):
    network, numerics, segs = _span(name)
    layer = network.layer("conv2")
    rng = np.random.default_rng(seed)
    c, h, wd = layer.in_shape
    if images is None:
        images = [rng.integers(-scale[0], scale[0], (c, h, wd)) for _ in range(n_images)]
    if w is None:
        w = rng.integers(-scale[1], scale[1], (layer.out_channels, c, 3, 3))
    want, ovf = fp_expected(network, numerics, segs, w, images)
    split = segs[0].split
    m = Module()
    duts = []
    for k, seg in enumerate(segs):
        lo, hi = seg.channels
        dut = FPLayer(seg, network, numerics, weights=_node_weights(split, w, lo, hi))
        m.submodules[f"node{k}"] = dut
        duts.append(dut)
    links = []
    if split == "icp":
        for k in range(len(segs) - 1):
            en = Signal(name=f"link{k}_en")
            _gate(m, duts[k].o, duts[k + 1].up, en)
            links.append((duts[k + 1].up, en, []))
    sources, sinks = [], []
    got = {"o": {}, "mask": {}, "arg": {}, "act": {}}
    acts = {}
    for k, (dut, seg) in enumerate(zip(duts, segs)):
        geom = dut.geometry
        lo, hi = seg.in_channels
        words = [p for a in images for p in _pixels(a[lo:hi])]
        acts[k] = words
        sources.append((dut.i, words))
        got["act"][k] = []
        sinks.append((dut.act, got["act"][k], len(words)))
        n_out = len(images) * geom.out_height * geom.out_width
        if split == "ocp" or k == len(segs) - 1:
            got["o"][k] = []
            sinks.append((dut.o, got["o"][k], n_out))
        if geom.relu:
            got["mask"][k] = []
            sinks.append((dut.mask, got["mask"][k],
                          len(images) * geom.conv_height * geom.conv_width))
        if geom.pool is not None:
            got["arg"][k] = []
            sinks.append((dut.arg, got["arg"][k], n_out))
    first, counts, _ = _run(m, duts, sources=sources, sinks=sinks, links=links, p_stall=p_stall,
                         seed=seed, waves=waves)
    for k in range(len(segs)):
        assert got["act"][k] == acts[k]
        if k in got["o"]:
            assert got["o"][k] == want["o"][k], f"node {k} output"
        for what in ("mask", "arg"):
            if k in got[what]:
                assert got[what][k] == want[what][k], f"node {k} {what}"
    for k, (_, _, rec) in enumerate(links):
        assert rec == want["link"][k], f"partial sums node {k} -> {k + 1}"
    assert counts == [tuple(x) for x in ovf]
    return duts, first, ovf




@pytest.mark.parametrize("name", ALL)
def test_fp_span(name, waves):
    check_fp_span(name, waves=waves)


def test_fp_icp_saturation():
    """digits conv2 ICP over 3 nodes, every activation and weight at the top of its format:
    each node's partial sums are +27648 (27 products of ~128 x ~8), the middle node's sum
    saturates the partial format and the last node clamps to the activation format."""
    network, numerics, segs = _span("digits-icp3")
    layer = network.layer("conv2")
    a = np.full(layer.in_shape, numerics.activation.max_int)
    w = np.full((layer.out_channels, layer.in_channels, 3, 3), numerics.weight.max_int)
    w[: layer.out_channels // 2] *= -1        # half the channels negative: ReLU zeroes them
    _, _, ovf = check_fp_span("digits-icp3", images=[a], w=w, p_stall=0.2, seed=3)
    assert ovf[1][2] > 0 and ovf[2][2] > 0 and ovf[0][1] == 0


# ---- EB ---------------------------------------------------------------------------------------

def eb_expected(network, numerics, segs, w, errors):
    """Golden words: per node ``o`` (ICP: every node; OCP: the span's first node), the words on
    every backward connection ``k + 1 -> k``, per node ``(acc, out, add)`` counts."""
    layer = network.layer("conv2")
    split = segs[0].split
    c, h, wd = layer.in_shape
    n = len(segs)
    out = {"o": [[] for _ in range(n)], "link": [[] for _ in range(n - 1)]}
    ovf = [[0, 0, 0] for _ in range(n)]
    for e in errors:
        if split == "icp":
            for k, (lo, hi) in enumerate(_slices(segs)):
                acc, c1 = golden.conv_eb_acc(e, w[:, lo:hi], layer.stride, layer.padding, 1,
                                             (hi - lo, h, wd), numerics)
                r, c2 = golden.requantize64(acc, numerics.error.frac + numerics.weight.frac,
                                            numerics.error)
                out["o"][k] += _pixels(r)
                ovf[k][0] += c1
                ovf[k][1] += c2
        else:
            r, info = golden.ocp_conv_eb(e, w, layer.stride, layer.padding, (c, h, wd),
                                         _slices(segs), numerics)
            out["o"][0] += _pixels(r)
            for k in range(n):
                ovf[k][0] += info["acc_overflow"][k]
                ovf[k][1] += info["partial_overflow"][k]
                ovf[k][2] += info["add_overflow"][k]
            for k in range(n - 1):
                out["link"][k] += _pixels(info["sent"][k + 1])
    return out, ovf


def check_eb_span(name, *, n_images=2, p_stall=0.3, seed=0, scale=(1 << 11, 1 << 11),
                  waves=None, errors=None, w=None):
    network, numerics, segs = _span(name)
    layer = network.layer("conv2")
    rng = np.random.default_rng(seed + 100)
    c = layer.in_channels
    if errors is None:
        errors = [rng.integers(-scale[0], scale[0], layer.out_shape) for _ in range(n_images)]
    if w is None:
        w = rng.integers(-scale[1], scale[1], (layer.out_channels, c, 3, 3))
    want, ovf = eb_expected(network, numerics, segs, w, errors)
    split = segs[0].split
    m = Module()
    duts = []
    for k, seg in enumerate(segs):
        lo, hi = seg.channels
        dut = EBLayer(seg, network, numerics, weights=_node_weights(split, w, lo, hi))
        m.submodules[f"node{k}"] = dut
        duts.append(dut)
    links = []
    if split == "ocp":
        for k in range(len(segs) - 1):
            en = Signal(name=f"link{k + 1}_{k}_en")
            _gate(m, duts[k + 1].o, duts[k].up, en)
            links.append((duts[k].up, en, []))
    sources, sinks, got = [], [], {}
    for k, (dut, seg) in enumerate(zip(duts, segs)):
        lo, hi = seg.out_channels
        sources.append((dut.i, [p for e in errors for p in _pixels(e[lo:hi])]))
        if split == "icp" or k == 0:
            got[k] = []
            sinks.append((dut.o, got[k], len(errors) * layer.in_shape[1] * layer.in_shape[2]))
    first, counts, _ = _run(m, duts, sources=sources, sinks=sinks, links=links, p_stall=p_stall,
                         seed=seed, waves=waves)
    for k, words in got.items():
        assert words == want["o"][k], f"node {k} input errors"
    for k, (_, _, rec) in enumerate(links):
        assert rec == want["link"][k], f"partial errors node {k + 1} -> {k}"
    assert counts == [tuple(x) for x in ovf]
    return duts, first, ovf


@pytest.mark.parametrize("name", ALL)
def test_eb_span(name, waves):
    check_eb_span(name, waves=waves)


def test_eb_ocp_saturation():
    """tiny conv2 OCP over 2 nodes with errors and weights at the top of their formats: the
    summed partial errors clamp on the span's first node (error format Q4.12)."""
    network, numerics, segs = _span("tiny-ocp2")
    layer = network.layer("conv2")
    e = np.full(layer.out_shape, numerics.error.max_int)
    w = np.full((layer.out_channels, layer.in_channels, 3, 3), numerics.weight.max_int)
    _, _, ovf = check_eb_span("tiny-ocp2", errors=[e], w=w, p_stall=0.2, seed=4)
    assert ovf[0][2] > 0


# ---- PG: each node's slice of the whole layer's gradients ----------------------------------

@pytest.mark.parametrize("name", ["tiny-ocp2", pytest.param("tiny-icp2",
                                                             marks=pytest.mark.slow)])
def test_pg_slices(name, waves):
    from tests.hw.test_pg_layer import simulate
    from sim.golden.grad_buffer import GradBufferModel
    network, numerics, segs = _span(name)
    layer = network.layer("conv2")
    rng = np.random.default_rng(7)
    batch, n_images = 2, 2
    acts = [rng.integers(-1 << 10, 1 << 10, layer.in_shape) for _ in range(n_images)]
    errs = [rng.integers(-1 << 10, 1 << 10, layer.out_shape) for _ in range(n_images)]
    whole = [golden.conv_pg(e, a, 3, layer.stride, layer.padding, 1, numerics)[0]
             for a, e in zip(acts, errs)]
    for k, seg in enumerate(segs):
        dut = PGLayer(seg, network, numerics, batch=batch)
        geo = dut.geometry
        (ilo, ihi), (olo, ohi) = seg.in_channels, seg.out_channels
        a_words = [p for a in acts for p in _pixels(a[ilo:ihi])]
        e_words = [p for e in errs for p in _pixels(e[olo:ohi])]
        model = GradBufferModel(depth=dut.weight_sets, lanes=geo.p * geo.s, kernel=geo.kernel,
                                in_fmt=numerics.gradient, out_fmt=numerics.gradient,
                                acc_width=numerics.grad_acc_width, batch=batch)
        words, avgs = [], []
        for i, g in enumerate(whole):
            sets = geo.pack_weights(g[olo:ohi, ilo:ihi])
            for addr in range(dut.weight_sets):
                last = addr == dut.weight_sets - 1 and i % batch == batch - 1
                words.append({"addr": addr, "data": sets[addr].tolist(),
                              "batch_done": int(last)})
                avgs += model.push(addr, sets[addr], last)
        rec = simulate(dut, a_words, e_words, len(avgs), seed=k,
                       waves=f"{waves}_node{k}" if waves else None)
        assert rec["lgb_in"] == words and rec["grad"] == avgs
        ovf = sum(golden.conv_pg(e[olo:ohi], a[ilo:ihi], 3, layer.stride, layer.padding, 1,
                                 numerics)[1] for a, e in zip(acts, errs))
        assert rec["acc_overflow"] == 0 and rec["out_overflow"] == ovf
        assert rec["lgb_acc_overflow"] == model.acc_overflow
        assert rec["lgb_out_overflow"] == model.out_overflow


# ---- latency, utilisation, constructor, lint ------------------------------------------------

def _latency_fp(name, k):
    """Node ``k`` of the span alone, no stalls, upstream partial sums always there."""
    network, numerics, segs = _span(name)
    seg = segs[k]
    layer = network.layer("conv2")
    rng = np.random.default_rng(11)
    w = rng.integers(-1 << 11, 1 << 11, (layer.out_channels, layer.in_channels, 3, 3))
    lo, hi = seg.channels
    dut = FPLayer(seg, network, numerics, weights=_node_weights(seg.split, w, lo, hi))
    geom = dut.geometry
    n_images = 3
    images = [rng.integers(-1 << 9, 1 << 9, (geom.in_channels, geom.height, geom.width))
              for _ in range(n_images)]
    sources = [(dut.i, [p for a in images for p in _pixels(a)])]
    if hasattr(dut, "up"):
        n_conv = n_images * geom.conv_height * geom.conv_width
        sources.append((dut.up, [[0] * geom.out_channels] * n_conv))
    sinks = [(dut.act, [], len(sources[0][1])),
             (dut.o, [], n_images * geom.out_height * geom.out_width)]
    if geom.relu:
        sinks.append((dut.mask, [], n_images * geom.conv_height * geom.conv_width))
    if geom.pool is not None:
        sinks.append((dut.arg, [], n_images * geom.out_height * geom.out_width))
    m = Module()
    m.submodules.dut = dut
    first, _, t0 = _run(m, [dut], sources=sources, sinks=sinks, links=[], p_stall=0.0, seed=0)
    return dut, first[1] - t0


@pytest.mark.parametrize("name,k", [("tiny-icp2", 1), ("digits-icp3", 1),
                                    pytest.param("tiny-icp2", 0, marks=pytest.mark.slow),
                                    pytest.param("tiny-ocp2", 0, marks=pytest.mark.slow)])
def test_fp_latency(name, k):
    dut, latency = _latency_fp(name, k)
    assert latency == dut.latency


def _latency_eb(name, k):
    """EB of node ``k`` alone, no stalls, upstream partial errors always there."""
    network, numerics, segs = _span(name)
    seg = segs[k]
    layer = network.layer("conv2")
    rng = np.random.default_rng(12)
    w = rng.integers(-1 << 11, 1 << 11, (layer.out_channels, layer.in_channels, 3, 3))
    lo, hi = seg.channels
    dut = EBLayer(seg, network, numerics, weights=_node_weights(seg.split, w, lo, hi))
    geom = dut.geometry
    n_images = 3
    errs = [rng.integers(-1 << 11, 1 << 11, (geom.out_channels, geom.conv_height,
                                             geom.conv_width)) for _ in range(n_images)]
    sources = [(dut.i, [p for e in errs for p in _pixels(e)])]
    n_in = n_images * geom.height * geom.width
    if hasattr(dut, "up"):
        sources.append((dut.up, [[0] * geom.in_channels] * n_in))
    m = Module()
    m.submodules.dut = dut
    first, _, t0 = _run(m, [dut], sources=sources, sinks=[(dut.o, [], n_in)], links=[],
                        p_stall=0.0, seed=0)
    return dut, first[0] - t0


@pytest.mark.parametrize("name,k", [("tiny-ocp2", 0),
                                    pytest.param("tiny-ocp2", 1, marks=pytest.mark.slow),
                                    pytest.param("tiny-icp2", 0, marks=pytest.mark.slow)])
def test_eb_latency(name, k):
    dut, latency = _latency_eb(name, k)
    assert latency == dut.latency


def test_constructor_errors():
    network, numerics, segs = _span("tiny-icp2")
    seg = segs[0]
    with pytest.raises(ValueError, match=r"^Layer 'conv2': unknown split 'irp'$"):
        FPLayer(dataclasses.replace(seg, split="irp"), network, numerics)
    with pytest.raises(ValueError, match=r"^Layer 'conv2': icp channels \[0, 4\] must be part "
                                         r"of \[0, 4\]$"):
        FPLayer(dataclasses.replace(seg, channels=[0, 4], in_channels=[0, 4]), network,
                numerics)
    with pytest.raises(ValueError, match=r"^Layer 'conv2': icp segment channels \[0, 3\] -> "
                                         r"\[0, 8\], completes \[0, 8\], post \[\] do not match "
                                         r"its slice \[0, 3\]$"):
        FPLayer(dataclasses.replace(seg, completes=[0, 8]), network, numerics)
    network, numerics, segs = _span("tiny-ocp2")
    with pytest.raises(ValueError, match=r"^Layer 'conv2': ocp segment channels \[0, 4\] -> "
                                         r"\[0, 5\], completes \[0, 7\] do not match its slice "
                                         r"\[0, 7\]$"):
        EBLayer(dataclasses.replace(segs[0], out_channels=[0, 5]), network, numerics)
    plan = map_network(network, load_board("sim-node"), 3, ocp_threshold=1)
    fc = next(s for n in plan.node_plans for s in n.segments if s.layer == "fc4")
    assert fc.split == "icp" and fc.channels == [0, 96]
    # an fc layer is cut by features at channel boundaries of its 8 x 4 x 4 input
    assert layer_geometry(fc, network).in_channels == 6
    with pytest.raises(ValueError, match=r"^Layer 'fc4': icp features \[0, 100\] are not at "
                                         r"channel boundaries of its 8 x 4 x 4 input \(multiples "
                                         r"of 16: split fc segments are built at channel "
                                         r"boundaries\)$"):
        layer_geometry(dataclasses.replace(fc, channels=[0, 100], in_channels=[0, 100]),
                       network)


def test_ports():
    network, numerics, segs = _span("digits-icp3")
    pw, aw = numerics.partial.width, numerics.activation.width
    f = [FPLayer(s, network, numerics) for s in segs]
    assert not hasattr(f[0], "up") and hasattr(f[1], "up") and hasattr(f[2], "up")
    assert len(f[0].o.payload[0]) == pw and len(f[1].o.payload[0]) == pw
    assert len(f[2].o.payload[0]) == aw and hasattr(f[2], "arg") and not hasattr(f[1], "mask")
    assert [x.geometry.in_channels for x in f] == [3, 3, 2]
    network, numerics, segs = _span("tiny-ocp2")
    e = [EBLayer(s, network, numerics) for s in segs]
    assert hasattr(e[0], "up") and not hasattr(e[1], "up")
    assert len(e[0].o.payload[0]) == numerics.error.width and len(e[1].o.payload[0]) == pw
    assert [x.geometry.out_channels for x in e] == [7, 1]
    for x in f + e:                 # elaborate (the modules build; nothing left unused)
        Fragment.get(x, None)


@pytest.mark.parametrize("name", ["tiny-icp2", pytest.param("tiny-ocp2", marks=pytest.mark.slow),
                                  pytest.param("digits-icp3", marks=pytest.mark.slow)])
def test_lint(name, tmp_path):
    network, numerics, segs = _span(name)
    for k, seg in enumerate(segs):
        verilator_lint(FPLayer(seg, network, numerics), f"split_fp_{name}_{k}".replace("-", "_"),
                       tmp_path)
        verilator_lint(EBLayer(seg, network, numerics), f"split_eb_{name}_{k}".replace("-", "_"),
                       tmp_path)
