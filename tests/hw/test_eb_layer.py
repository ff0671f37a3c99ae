# amaranth: UnusedElaboratable=no
"""Tests of :mod:`fpdeep_hw.node.eb_layer` (``EBLayer``, ``BPFront``) against
:mod:`sim.golden.layers`.

Modules built from the ``tiny`` / ``digits`` plan segments (board ``sim-node``, one node,
``max_row_lanes = 1``), random errors and weights, random stalls on every stream, a version gate
letting images in at random times; outputs and overflow counters compared word for word with the
golden model; latency checked to the cycle and steady-state CE utilisation measured.
"""

import dataclasses
import functools
import random
import zlib

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from fpdeep_hw import wide
from fpdeep_hw.node.eb_layer import BPFront, EBLayer
from fpdeep_hw.node.fp_layer import layer_geometry
from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from sim.golden import layers as golden
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source
from sim.waves import run_simulation


@functools.cache
def _plan(net):
    network = load_network(net)
    plan = map_network(network, load_board("sim-node"), 1, max_row_lanes=1)
    return network, plan


def _segment(net, layer):
    network, plan = _plan(net)
    seg = next(s for s in plan.node_plans[0].segments if s.layer == layer)
    return seg, network, plan.numerics


def _seed(*parts):
    return zlib.crc32("/".join(map(str, parts)).encode())


def _weights(geom, rng, scale=1 << 11):
    if geom.kind == "fc":
        shape = (geom.out_channels, geom.in_channels * geom.pixels)
    else:
        shape = (geom.out_channels, geom.in_channels, geom.kernel, geom.kernel)
    return rng.integers(-scale, scale, size=shape)


def _pixels(a):
    c, h, w = a.shape
    return [[int(v) for v in a[:, y, x]] for y in range(h) for x in range(w)]


def _errors(geom, rng, n, scale=1 << 12):
    return [rng.integers(-scale, scale, size=(geom.out_channels, geom.conv_height,
                                              geom.conv_width)) for _ in range(n)]


def expected_eb(geom, numerics, w, errors):
    out, acc_ovf, total_ovf = [], 0, 0
    for e in errors:
        if geom.kind == "fc":
            e_in, n = golden.fc_eb(e.reshape(-1), w, numerics,
                                   in_shape=(geom.in_channels, geom.height, geom.width))
            acc_ovf += 0
        else:
            shape = (geom.in_channels, geom.height, geom.width)
            _, n1 = golden.conv_eb_acc(e, w, geom.stride, geom.pad, 1, shape, numerics)
            e_in, n = golden.conv_eb(e, w, geom.stride, geom.pad, 1, shape, numerics)
            acc_ovf += n1
        total_ovf += n
        out += _pixels(e_in)
    return out, acc_ovf, total_ovf


def run_eb(dut, errors, *, seed=0, p_stall=0.0, gate="open", waves=None, max_cycles=200_000):
    geom = dut.geometry
    rng = random.Random(seed)
    words = [p for e in errors for p in _pixels(e)]
    n = len(errors)
    got = []
    trace = {"in": [], "o": [], "busy": [], "start": [], "done": [], "acc": 0, "out": 0}
    per_image = len(words) // n

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.i, words, rng=random.Random(seed + 1), p_stall=p_stall),
                      background=True)
    sim.add_testbench(stream_sink(dut.o, got, count=n * geom.pixels,
                                  rng=random.Random(seed + 2), p_stall=p_stall,
                                  max_cycles=max_cycles))

    async def monitor(ctx):
        allowed, starts, taken, cycle, delay = 0, 0, 0, 0, 0
        while True:
            if gate == "open":
                allowed = n
            elif allowed == starts and allowed < n:
                if delay == 0:
                    delay = rng.randrange(1, 40)
                delay -= 1
                if delay == 0:
                    allowed += 1
            ctx.set(dut.go, int(allowed > starts))
            _, _, iv, ir, ov, busy, st, dn, acc, out = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.busy, dut.start, dut.done,
                dut.acc_overflows, dut.out_overflows)
            if st:
                assert allowed > starts
                starts += 1
                trace["start"].append(cycle)
            if iv and ir:
                assert taken < starts * per_image, \
                    f"error word {taken} taken before its image was allowed (cycle {cycle})"
                trace["in"].append(cycle)
                taken += 1
            if ov:
                trace["o"].append(cycle)
            if busy:
                trace["busy"].append(cycle)
            if dn:
                trace["done"].append(cycle)
            trace["acc"], trace["out"] = acc, out
            cycle += 1

    sim.add_testbench(monitor, background=True)
    run_simulation(sim, waves, traces=[dut])
    return got, trace


def _check(dut, errors, w, got, trace):
    geom = dut.geometry
    exp, acc_ovf, total_ovf = expected_eb(geom, dut.numerics, w, errors)
    assert got == exp
    assert trace["acc"] == acc_ovf
    assert trace["acc"] + trace["out"] == total_ovf
    assert len(trace["start"]) == len(errors)
    assert len(trace["done"]) == len(errors)
    assert len(trace["busy"]) == len(errors) * geom.eb_words_per_image


CASES = [("tiny", "conv2"), ("tiny", "conv3"), ("tiny", "fc4")]
SLOW_CASES = [("digits", "conv2"), ("digits", "fc3")]


@pytest.mark.parametrize("net,layer", CASES + [pytest.param(*c, marks=pytest.mark.slow)
                                               for c in SLOW_CASES])
def test_random_stalls(net, layer, waves):
    seg, network, numerics = _segment(net, layer)
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(_seed(net, layer))
    w = _weights(geom, rng)
    errors = _errors(geom, rng, 2)
    dut = EBLayer(seg, network, numerics, weights=w)
    got, trace = run_eb(dut, errors, seed=4, p_stall=0.3, gate="random", waves=waves)
    _check(dut, errors, w, got, trace)


def test_saturation_counted():
    """Large errors and weights: the error-format clamps are counted as the golden counts them."""
    seg, network, numerics = _segment("tiny", "conv3")
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(5)
    w = _weights(geom, rng, scale=1 << 15)
    errors = _errors(geom, rng, 1, scale=1 << 15)
    dut = EBLayer(seg, network, numerics, weights=w)
    got, trace = run_eb(dut, errors, seed=6, p_stall=0.2)
    _check(dut, errors, w, got, trace)
    assert trace["out"] > 0


@pytest.mark.parametrize("net,layer", [("tiny", "conv2"), ("tiny", "fc4"),
                                       pytest.param("tiny", "conv3", marks=pytest.mark.slow),
                                       pytest.param("digits", "conv2", marks=pytest.mark.slow),
                                       pytest.param("digits", "fc3", marks=pytest.mark.slow)])
def test_latency_and_utilisation(net, layer):
    seg, network, numerics = _segment(net, layer)
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(9)
    w = _weights(geom, rng)
    errors = _errors(geom, rng, 3)
    dut = EBLayer(seg, network, numerics, weights=w)
    got, trace = run_eb(dut, errors)
    _check(dut, errors, w, got, trace)
    assert trace["o"][0] - trace["in"][0] == dut.latency
    words = geom.eb_words_per_image
    period = trace["busy"][2 * words] - trace["busy"][words]
    util = words / period
    print(f"EB {net}/{layer}: latency {dut.latency}, steady state {period} cycles per image "
          f"for {words} CE words: utilisation {util:.4f}")
    assert util >= 0.90


def test_constructor_errors():
    seg, network, numerics = _segment("tiny", "conv1")
    with pytest.raises(ValueError, match=r"^EBLayer: layer 'conv1' has no EB engines$"):
        EBLayer(seg, network, numerics)
    seg2, _, _ = _segment("tiny", "conv2")
    with pytest.raises(TypeError, match=r"^EBLayer segment must be a SegmentPlan, not 1$"):
        EBLayer(1, network, numerics)
    with pytest.raises(TypeError, match=r"^BPFront numerics must be a NumericsConfig, not 2$"):
        BPFront(seg2, network, 2)
    odd = dataclasses.replace(seg2, engines={**seg2.engines,
                                             "eb": dataclasses.replace(seg2.engines["eb"], p=1)})
    with pytest.raises(ValueError, match=r"^Layer 'conv2': EB engines 1x1 differ from FP "
                                         r"engines 2x1 \(the weight address map is shared\)$"):
        EBLayer(odd, network, numerics)


# ---- BPFront ----------------------------------------------------------------------------------

def _bp_data(geom, rng, n):
    """Forward-consistent masks/argmax and random output errors for ``n`` images."""
    out = []
    for _ in range(n):
        y = rng.integers(-300, 300, size=(geom.out_channels, geom.conv_height, geom.conv_width))
        r, mask = golden.relu(y) if geom.relu else (y, np.ones_like(y))
        if geom.pool is not None:
            _, arg = golden.maxpool(r, *geom.pool)
        else:
            arg = None
        e = rng.integers(-(1 << 15), 1 << 15,
                         size=(geom.out_channels, geom.out_height, geom.out_width))
        out.append((e, mask, arg))
    return out


def expected_bp(geom, numerics, items):
    words, ovf = [], 0
    for e, mask, arg in items:
        if geom.pool is not None:
            e, n = golden.maxpool_backward(e, arg, *geom.pool,
                                           (geom.out_channels, geom.conv_height, geom.conv_width),
                                           numerics)
            ovf += n
        if geom.relu:
            e = golden.relu_backward(e, mask)
        words += _pixels(e)
    return words, ovf


@pytest.mark.parametrize("net,layer", [("tiny", "conv1"), ("tiny", "conv2"), ("tiny", "fc4"),
                                       ("digits", "conv2")])
def test_bp_front(net, layer, waves):
    seg, network, numerics = _segment(net, layer)
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(_seed("bp", net, layer))
    items = _bp_data(geom, rng, 2)
    exp, ovf = expected_bp(geom, numerics, items)
    dut = BPFront(seg, network, numerics)
    prng = random.Random(_seed(net, layer))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.i, [p for e, _, _ in items for p in _pixels(e)],
                                    rng=random.Random(prng.random()), p_stall=0.3),
                      background=True)
    if geom.relu:
        sim.add_testbench(stream_source(dut.mask, [p for _, m, _ in items for p in _pixels(m)],
                                        rng=random.Random(prng.random()), p_stall=0.3),
                          background=True)
    if geom.pool is not None:
        sim.add_testbench(stream_source(dut.arg, [p for _, _, a in items for p in _pixels(a)],
                                        rng=random.Random(prng.random()), p_stall=0.3),
                          background=True)
    got_o, got_pg = [], []
    for port, got in ((dut.o, got_o), (dut.pg, got_pg)):
        sim.add_testbench(stream_sink(port, got, count=len(exp), rng=random.Random(prng.random()),
                                      p_stall=0.3, max_cycles=50_000))
    count = []

    async def overflow(ctx):
        while True:
            _, _, v = await ctx.tick().sample(dut.overflows)
            count[:] = [v]

    sim.add_testbench(overflow, background=True)
    run_simulation(sim, waves, traces=[dut])
    assert got_o == exp
    assert got_pg == exp
    assert count == [ovf]


@pytest.mark.parametrize("net,layer", [("tiny", "conv2"), ("tiny", "conv3")])
def test_bp_front_latency(net, layer):
    seg, network, numerics = _segment(net, layer)
    geom = layer_geometry(seg, network)
    items = _bp_data(geom, np.random.default_rng(3), 1)
    dut = BPFront(seg, network, numerics)
    e, mask, arg = items[0]
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.i, _pixels(e)), background=True)
    sim.add_testbench(stream_source(dut.mask, _pixels(mask)), background=True)
    if geom.pool is not None:
        sim.add_testbench(stream_source(dut.arg, _pixels(arg)), background=True)
    got = []
    sim.add_testbench(stream_sink(dut.pg, got, count=geom.conv_height * geom.conv_width),
                      background=True)
    times = {"in": [], "o": []}

    async def monitor(ctx):
        cycle = 0
        while not times["o"]:
            ctx.set(dut.o.ready, 1)
            _, _, iv, ir, ov = await ctx.tick().sample(dut.i.valid, dut.i.ready, dut.o.valid)
            if iv and ir:
                times["in"].append(cycle)
            if ov:
                times["o"].append(cycle)
            cycle += 1

    sim.add_testbench(monitor)
    sim.run()
    ref = geom.out_width - 1 if geom.pool is not None else 0   # last word of pooled row 0
    assert times["o"][0] - times["in"][ref] == dut.latency


@pytest.mark.parametrize("net,layer", [("tiny", "conv1"), ("tiny", "conv2"), ("tiny", "fc4")])
def test_lint(net, layer, tmp_path):
    seg, network, numerics = _segment(net, layer)
    if layer_geometry(seg, network).has_eb:
        verilator_lint(EBLayer(seg, network, numerics), f"eb_{layer}", tmp_path)
    verilator_lint(BPFront(seg, network, numerics), f"bp_{layer}", tmp_path)


def test_fp_bp_eb_chain():
    """FP's mask and argmax streams feed BPFront (through one-image stores), BPFront's ``o``
    feeds EB: the three
    modules of a layer compose (payload layouts, counts) and EB's errors equal the golden chain
    ``conv_eb(relu_backward(maxpool_backward(e, arg), mask))`` with FP's own masks and argmax."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.fifo import SyncFIFOBuffered

    from fpdeep_hw.node.fp_layer import FPLayer
    seg, network, numerics = _segment("tiny", "conv2")
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(77)
    w = _weights(geom, rng)
    image = rng.integers(-(1 << 9), 1 << 9, size=(geom.in_channels, geom.height, geom.width))
    err = rng.integers(-(1 << 12), 1 << 12, size=(geom.out_channels, geom.out_height,
                                                  geom.out_width))
    fp = FPLayer(seg, network, numerics, weights=w)
    bp = BPFront(seg, network, numerics)
    eb = EBLayer(seg, network, numerics, weights=w)
    top = Module()
    top.submodules.fp, top.submodules.bp, top.submodules.eb = fp, bp, eb
    # the mask and argmax stores (one image each: BP of an image follows its FP)
    for name, words in (("mask", geom.conv_height * geom.conv_width),
                        ("arg", geom.out_height * geom.out_width)):
        src, dst = getattr(fp, name), getattr(bp, name)
        store = SyncFIFOBuffered(width=len(src.payload.as_value()), depth=words)
        top.submodules[f"{name}_store"] = store
        top.d.comb += [
            store.w_stream.valid.eq(src.valid), store.w_stream.payload.eq(src.payload),
            src.ready.eq(store.w_stream.ready),
            dst.valid.eq(store.r_stream.valid), dst.payload.eq(store.r_stream.payload),
            store.r_stream.ready.eq(dst.ready),
        ]
    wiring.connect(top, bp.o, eb.i)
    top.d.comb += [fp.go.eq(1), eb.go.eq(1)]

    acc, _ = golden.conv_fp(image, w, geom.stride, geom.pad, 1, numerics)
    y, _ = golden.fp_output(acc, numerics)
    r, mask = golden.relu(y)
    pooled, arg = golden.maxpool(r, *geom.pool)
    e_conv, _ = golden.maxpool_backward(err, arg, *geom.pool, r.shape, numerics)
    e_out = golden.relu_backward(e_conv, mask)
    e_in, _ = golden.conv_eb(e_out, w, geom.stride, geom.pad, 1,
                             (geom.in_channels, geom.height, geom.width), numerics)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(fp.i, _pixels(image), rng=random.Random(1), p_stall=0.2),
                      background=True)
    sim.add_testbench(stream_source(bp.i, _pixels(err), rng=random.Random(2), p_stall=0.2),
                      background=True)
    got = {"o": [], "act": [], "pg": [], "eb": []}
    for k, (port, name, n) in enumerate([(fp.o, "o", geom.out_height * geom.out_width),
                                         (fp.act, "act", geom.pixels),
                                         (bp.pg, "pg", geom.conv_height * geom.conv_width),
                                         (eb.o, "eb", geom.pixels)]):
        sim.add_testbench(stream_sink(port, got[name], count=n, rng=random.Random(10 + k),
                                      p_stall=0.2, max_cycles=50_000))
    sim.run()
    assert got["o"] == _pixels(pooled)
    assert got["act"] == _pixels(image)
    assert got["pg"] == _pixels(e_out)
    assert got["eb"] == _pixels(e_in)


@pytest.mark.parametrize("layer", ["conv1", "fc2"])
def test_edge_shapes(layer, waves):
    """EB of the stride-2 conv (zero insertion) and the FC of the ``edge`` network with 2 x 2
    engines over 5 channels / 5 and 3 outputs (padding lanes)."""
    from test_fp_layer import edge_segment
    seg, network, numerics = edge_segment(layer)
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(_seed("edge", layer))
    w = _weights(geom, rng)
    errors = _errors(geom, rng, 2)
    dut = EBLayer(seg, network, numerics, weights=w)
    got, trace = run_eb(dut, errors, seed=14, p_stall=0.3, gate="random", waves=waves)
    _check(dut, errors, w, got, trace)


def test_edge_bp_front(waves):
    """Overlapping 3x3 stride-2 pool backward (sums saturated once) and ReLU backward."""
    from test_fp_layer import edge_segment
    seg, network, numerics = edge_segment("conv1")
    geom = layer_geometry(seg, network)
    items = _bp_data(geom, np.random.default_rng(15), 2)
    exp, ovf = expected_bp(geom, numerics, items)
    dut = BPFront(seg, network, numerics)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for k, (port, idx) in enumerate(((dut.i, 0), (dut.mask, 1), (dut.arg, 2))):
        sim.add_testbench(stream_source(port, [p for it in items for p in _pixels(it[idx])],
                                        rng=random.Random(k), p_stall=0.3), background=True)
    got_o, got_pg = [], []
    for k, (port, got) in enumerate(((dut.o, got_o), (dut.pg, got_pg))):
        sim.add_testbench(stream_sink(port, got, count=len(exp), rng=random.Random(5 + k),
                                      p_stall=0.3, max_cycles=50_000))
    count = []

    async def overflow(ctx):
        while True:
            _, _, v = await ctx.tick().sample(dut.overflows)
            count[:] = [v]

    sim.add_testbench(overflow, background=True)
    run_simulation(sim, waves, traces=[dut])
    assert got_o == exp and got_pg == exp
    assert count == [ovf] and ovf > 0


@pytest.mark.parametrize("layer,lanes,runs", [
    ("conv2", 3, ["lb0", "lb1", "lb2"]),            # OC = 8: 3 + 3 + 2 error lanes
    ("fc4", 4, None)])                              # OC = 10: the 1 x 1 window in 4 + 3 + 3
def test_window_in_runs(layer, lanes, runs, monkeypatch, waves):
    """The EB window (all ``OC`` error lanes) held in runs of lanes where it is wider than one
    value can be (VGG-16 conv4 / conv5: 512 x 3 x 3 x 16 bits): the limit lowered to ``lanes``
    lanes' windows, bit-exact under random stalls."""
    seg, network, numerics = _segment("tiny", layer)
    geom = layer_geometry(seg, network)
    k2 = geom.kernel ** 2 if geom.kind == "conv" else 1
    monkeypatch.setattr(wide, "MAX_VALUE_BITS", lanes * k2 * numerics.error.width)
    rng = np.random.default_rng(_seed("runs", layer))
    w = _weights(geom, rng)
    errors = _errors(geom, rng, 2)
    dut = EBLayer(seg, network, numerics, weights=w)
    if runs is not None:
        names = [name for _, name, _ in Fragment.get(dut, None).subfragments]
        assert [n for n in names if n.startswith("lb")] == runs
    else:   # the held error word in three registers
        text = rtlil.convert(EBLayer(seg, network, numerics, weights=w))
        assert all(f"replay_cur{j} " in text for j in range(3))
        assert "replay_cur3 " not in text
    got, trace = run_eb(dut, errors, seed=6, p_stall=0.3, gate="random", waves=waves)
    _check(dut, errors, w, got, trace)
