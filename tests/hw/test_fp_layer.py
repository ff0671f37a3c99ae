# amaranth: UnusedElaboratable=no
"""Tests of :mod:`fpdeep_hw.node.fp_layer` (``FPLayer``) against :mod:`sim.golden.layers`.

Each module is built from a segment of the ``tiny`` / ``digits`` plan (board ``sim-node``, one
node, ``max_row_lanes = 1``), fed random images with random stalls on every stream and a version
gate that lets images in at random times, and compared word for word (activations, input tap,
ReLU masks, argmax, overflow counters) with the golden model. Latency to the first output is
checked to the cycle; steady-state CE utilisation is measured without stalls.
"""

import dataclasses
import functools
import zlib
import random

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from fpdeep_hw import wide
from fpdeep_hw.node.fp_layer import FPLayer, layer_geometry
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


def _weights(geom, rng, scale=1 << 11):
    if geom.kind == "fc":
        shape = (geom.out_channels, geom.in_channels * geom.pixels)
    else:
        shape = (geom.out_channels, geom.in_channels, geom.kernel, geom.kernel)
    return rng.integers(-scale, scale, size=shape)


def _images(geom, rng, n, scale=1 << 9):
    return [rng.integers(-scale, scale, size=(geom.in_channels, geom.height, geom.width))
            for _ in range(n)]


def _pixels(a):
    """``[C, H, W]`` -> raster list of pixel words (lists of C lanes)."""
    c, h, w = a.shape
    return [[int(v) for v in a[:, y, x]] for y in range(h) for x in range(w)]


def expected_fp(geom, numerics, w, images):
    """Golden outputs of ``images``: dict of word lists (o, act, mask, arg) and overflow counts."""
    out = {"o": [], "act": [], "mask": [], "arg": []}
    acc_ovf = out_ovf = 0
    for a in images:
        out["act"] += _pixels(a)
        if geom.kind == "fc":
            acc, n1 = golden.fc_fp(a.reshape(-1), w, numerics)
            y, n2 = golden.fp_output(acc, numerics)
            acc_ovf += n1
            out_ovf += n2
            if geom.relu:
                y, mask = golden.relu(y)
                out["mask"].append([int(v) for v in mask])
            out["o"].append([int(v) for v in y])
            continue
        acc, n1 = golden.conv_fp(a, w, geom.stride, geom.pad, 1, numerics)
        y, n2 = golden.fp_output(acc, numerics)
        acc_ovf += n1
        out_ovf += n2
        if geom.relu:
            y, mask = golden.relu(y)
            out["mask"] += _pixels(mask)
        if geom.pool is not None:
            y, arg = golden.maxpool(y, *geom.pool)
            out["arg"] += _pixels(arg)
        out["o"] += _pixels(y)
    return out, acc_ovf, out_ovf


def run_fp(dut, images, *, seed=0, p_stall=0.0, gate="open", waves=None, writes=(),
           max_cycles=200_000):
    """Simulate ``dut`` on ``images``; returns (outputs, trace) where ``trace`` records the cycles
    of input transfers, first valid outputs, CE transfers, ``start``/``done`` pulses."""
    geom = dut.geometry
    rng = random.Random(seed)
    words = [p for a in images for p in _pixels(a)]
    n = len(images)
    n_o = n if geom.kind == "fc" else n * geom.out_height * geom.out_width
    n_conv = n if geom.kind == "fc" else n * geom.conv_height * geom.conv_width
    got = {"o": [], "act": [], "mask": [], "arg": []}
    trace = {"in": [], "o": [], "busy": [], "start": [], "done": [], "acc": 0, "out": 0}

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    writes_done = [not writes]

    async def feeder(ctx):
        for wr in writes:                           # LPRAM writes (random gaps) before any image
            while rng.random() < p_stall:
                ctx.set(dut.wr.valid, 0)
                await ctx.tick()
            ctx.set(dut.wr.valid, 1)
            ctx.set(dut.wr.payload, wr)
            await ctx.tick()
        ctx.set(dut.wr.valid, 0)
        writes_done[0] = True
        await stream_source(dut.i, words, rng=random.Random(seed + 1), p_stall=p_stall)(ctx)

    sim.add_testbench(feeder, background=True)
    sinks = [("o", n_o), ("act", len(words))]
    if geom.relu:
        sinks.append(("mask", n_conv))
    if geom.pool is not None:
        sinks.append(("arg", n_o))
    for k, (name, count) in enumerate(sinks):
        sim.add_testbench(stream_sink(getattr(dut, name), got[name], count=count,
                                      rng=random.Random(seed + 10 + k), p_stall=p_stall,
                                      max_cycles=max_cycles))

    async def monitor(ctx):
        # version gate model: image j may start once allowed (random delay with gate="random");
        # checks that no pixel of image j is taken before its start pulse
        allowed, starts, taken, cycle = 0, 0, 0, 0
        delay = 0
        while True:
            if not writes_done[0]:
                trace["writes_end"] = cycle + 1     # closed while the weights are written
            elif gate == "open":
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
                assert taken < starts * geom.pixels, \
                    f"pixel {taken} taken before its image was allowed (cycle {cycle})"
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


def _check(dut, images, w, got, trace):
    geom = dut.geometry
    exp, acc_ovf, out_ovf = expected_fp(geom, dut.numerics, w, images)
    for name in got:
        assert got[name] == exp[name], f"{name} stream differs from the golden model"
    assert trace["acc"] == acc_ovf
    assert trace["out"] == out_ovf
    assert len(trace["start"]) == len(images)
    assert len(trace["done"]) == len(images)
    assert len(trace["busy"]) == len(images) * geom.fp_words_per_image


CASES = [("tiny", "conv1"), ("tiny", "conv2"), ("tiny", "conv3"), ("tiny", "fc4")]
SLOW_CASES = [("digits", "conv1"), ("digits", "conv2"), ("digits", "fc3")]


@pytest.mark.parametrize("net,layer", CASES + [pytest.param(*c, marks=pytest.mark.slow)
                                               for c in SLOW_CASES])
def test_random_stalls(net, layer, waves):
    seg, network, numerics = _segment(net, layer)
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(zlib.crc32(f"{net}/{layer}".encode()))
    w = _weights(geom, rng)
    images = _images(geom, rng, 2)
    dut = FPLayer(seg, network, numerics, weights=w)
    got, trace = run_fp(dut, images, seed=3, p_stall=0.3, gate="random", waves=waves)
    _check(dut, images, w, got, trace)


@pytest.mark.parametrize("layer", ["conv3", "fc4"])
def test_saturation_counted(layer):
    """Full-range activations and weights: activation clamps counted as the golden counts them."""
    seg, network, numerics = _segment("tiny", layer)
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(21)
    w = _weights(geom, rng, scale=1 << 15)
    images = _images(geom, rng, 1, scale=1 << 15)
    dut = FPLayer(seg, network, numerics, weights=w)
    got, trace = run_fp(dut, images, seed=8, p_stall=0.2)
    _check(dut, images, w, got, trace)
    assert trace["out"] > 0


def _latency_and_utilisation(net, layer, n_images):
    seg, network, numerics = _segment(net, layer)
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(7)
    w = _weights(geom, rng)
    images = _images(geom, rng, n_images)
    dut = FPLayer(seg, network, numerics, weights=w)
    got, trace = run_fp(dut, images)
    _check(dut, images, w, got, trace)
    assert trace["o"][0] - trace["in"][0] == dut.latency
    words = geom.fp_words_per_image
    busy = trace["busy"]
    period = busy[2 * words] - busy[words] if n_images > 2 else None
    return dut, period, words


@pytest.mark.parametrize("net,layer", [("tiny", "conv2"), ("tiny", "conv3"), ("tiny", "fc4")])
def test_latency_and_utilisation(net, layer):
    dut, period, words = _latency_and_utilisation(net, layer, 3)
    util = words / period
    print(f"FP {net}/{layer}: latency {dut.latency}, steady state {period} cycles per image "
          f"for {words} CE words: utilisation {util:.4f}")
    assert util >= 0.90


@pytest.mark.slow
@pytest.mark.parametrize("net,layer", [("tiny", "conv1"), ("digits", "conv1"),
                                       ("digits", "conv2"), ("digits", "fc3")])
def test_latency_and_utilisation_slow(net, layer):
    test_latency_and_utilisation(net, layer)


def test_weight_writes_and_gate():
    """Weights written through ``wr`` (address map of ``pack_weights``) while ``go`` is low;
    nothing is taken before the gate opens; then the images use the written weights."""
    seg, network, numerics = _segment("tiny", "fc4")
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(11)
    w = _weights(geom, rng)
    sets = geom.pack_weights(w)
    assert (geom.unpack_weights(sets) == w).all()
    writes = [{"addr": a, "data": sets[a].tolist()} for a in range(len(sets))]
    images = _images(geom, rng, 2)
    dut = FPLayer(seg, network, numerics)      # LPRAM starts at zero
    got, trace = run_fp(dut, images, seed=5, p_stall=0.2, gate="random", writes=writes)
    _check(dut, images, w, got, trace)
    assert trace["start"][0] >= trace["writes_end"] >= len(writes)


def test_pack_weights_conv():
    seg, network, numerics = _segment("tiny", "conv1")
    geom = layer_geometry(seg, network)
    w = _weights(geom, np.random.default_rng(1))
    sets = geom.pack_weights(w)
    assert sets.shape == (geom.weight_sets, geom.p * geom.s, 3, 3)
    R, G, P, S = geom.out_groups, geom.groups, geom.p, geom.s
    for r in range(R):
        for g in range(G):
            for e in range(P):
                for s in range(S):
                    oc, c = r * P + e, g * S + s
                    want = w[oc, c] if oc < geom.out_channels and c < geom.in_channels else 0
                    assert (sets[r * G + g, e * S + s] == want).all()
    assert (geom.unpack_weights(sets) == w).all()


def test_constructor_errors():
    seg, network, numerics = _segment("tiny", "conv2")
    with pytest.raises(TypeError, match=r"^FPLayer segment must be a SegmentPlan, not 3$"):
        FPLayer(3, network, numerics)
    with pytest.raises(TypeError, match=r"^FPLayer network must be a Network, not None$"):
        FPLayer(seg, None, numerics)
    with pytest.raises(TypeError, match=r"^FPLayer numerics must be a NumericsConfig, not 'x'$"):
        FPLayer(seg, network, "x")
    icp = dataclasses.replace(seg, split="icp")
    with pytest.raises(ValueError, match=r"^Layer 'conv2': icp channels \[0, 4\] must be part "
                                         r"of \[0, 4\]$"):
        FPLayer(icp, network, numerics)
    part = dataclasses.replace(seg, in_channels=[0, 2])
    with pytest.raises(ValueError, match=r"^Layer 'conv2': segment channels \[0, 2\] -> \[0, 8\] "
                                         r"are not the whole layer \(\[0, 4\] -> \[0, 8\]\)$"):
        FPLayer(part, network, numerics)
    geom = layer_geometry(seg, network)
    with pytest.raises(ValueError, match=r"^conv weights must have shape \(8, 4, 3, 3\), "
                                         r"not \(8, 4, 3\)$"):
        FPLayer(seg, network, numerics, weights=np.zeros((8, 4, 3), dtype=int))
    big = np.full((8, 4, 3, 3), 1 << 15)
    with pytest.raises(ValueError, match=r"^FPLayer weights must fit in 16 signed bits$"):
        FPLayer(seg, network, numerics, weights=big)
    assert geom.out_groups == 4 and geom.groups == 4


def test_shared_weights_ports():
    """``shared_weights=True`` (``NodeTop``: FP and EB on one ``LPRAM(readers=2)``): no LPRAM
    inside, the read port ``w_addr`` / ``w_data`` instead of ``wr``; the initial weights
    belong to the shared LPRAM. The node's bit-exact training runs go through this path."""
    from fpdeep_hw.memory.param_ram import weight_set_layout
    from fpdeep_hw.node.eb_layer import EBLayer
    seg, network, numerics = _segment("tiny", "conv2")
    geom = layer_geometry(seg, network)
    for cls in (FPLayer, EBLayer):
        dut = cls(seg, network, numerics, shared_weights=True)
        assert dut._lp is None and "wr" not in dut.signature.members
        assert dut.signature.members["w_addr"].flow.name == "Out"
        assert dut.signature.members["w_data"].flow.name == "In"
        assert dut.w_data.payload.shape() == weight_set_layout(numerics.weight, 3, geom.p * geom.s)
        names = [name for _, name, _ in Fragment.get(dut, None).subfragments]
        assert "lpram" not in names
        assert "lpram" in [n for _, n, _ in Fragment.get(cls(seg, network, numerics),
                                                          None).subfragments]
        with pytest.raises(TypeError, match=rf"^{cls.__name__} shared_weights must be a bool, "
                                            rf"not 1$"):
            cls(seg, network, numerics, shared_weights=1)
        with pytest.raises(ValueError, match=rf"^{cls.__name__}: with shared_weights the "
                                             rf"initial weights belong to the shared LPRAM, "
                                             rf"not to the module$"):
            cls(seg, network, numerics, shared_weights=True,
                weights=np.zeros((8, 4, 3, 3), dtype=int))


@pytest.mark.parametrize("net,layer", [("tiny", "conv2"), ("tiny", "fc4"), ("digits", "conv1")])
def test_lint(net, layer, tmp_path):
    seg, network, numerics = _segment(net, layer)
    verilator_lint(FPLayer(seg, network, numerics), f"fp_{layer}", tmp_path)


# ---- edge shapes: a synthetic network and engine shapes that leave padding lanes --------------

EDGE_NET = """
name: edge
input: {channels: 5, height: 7, width: 7}
layers:
  - {name: conv0, kind: conv, out_channels: 5, kernel: 1}
  - {name: relu0, kind: relu}
  - {name: conv1, kind: conv, out_channels: 5, kernel: 3, stride: 2, padding: 1}
  - {name: relu1, kind: relu}
  - {name: pool1, kind: maxpool, kernel: 3, stride: 2}
  - {name: fc2, kind: fc, out_features: 3}
  - {name: loss, kind: loss}
"""


def edge_segment(layer, p=2, s=2):
    """A segment of the ``edge`` network with ``P x S`` engines forced to ``p x s`` (5 channels
    on 2 lanes and 5 / 3 outputs on 2 engines: padding lanes everywhere), K = 1 and a stride-2
    conv with an overlapping 3x3 stride-2 pool."""
    from fpdeep_map.network import parse_network
    network = parse_network(EDGE_NET)
    plan = map_network(network, load_board("sim-node"), 1, max_row_lanes=1)
    seg = next(x for x in plan.node_plans[0].segments if x.layer == layer)
    engines = {k: dataclasses.replace(v, p=p, s=s) for k, v in seg.engines.items()}
    return dataclasses.replace(seg, engines=engines), network, plan.numerics


@pytest.mark.parametrize("layer", ["conv0", "conv1", "fc2"])
def test_edge_shapes(layer, waves):
    seg, network, numerics = edge_segment(layer)
    geom = layer_geometry(seg, network)
    rng = np.random.default_rng(zlib.crc32(layer.encode()))
    w = _weights(geom, rng)
    images = _images(geom, rng, 2)
    dut = FPLayer(seg, network, numerics, weights=w)
    got, trace = run_fp(dut, images, seed=13, p_stall=0.3, gate="random", waves=waves)
    _check(dut, images, w, got, trace)


def _subfragments(dut):
    return [name for _, name, _ in Fragment.get(dut, None).subfragments]


@pytest.mark.parametrize("layer,runs", [("conv2", ["lb0", "lb1"]),
                                        ("conv3", ["lb0", "lb1", "lb2"])])
def test_window_in_runs(layer, runs, monkeypatch, waves):
    """A window wider than one value (VGG-16's conv4 / conv5: 512 lanes x 3 x 3 x 16 bits) is
    held by line buffers over runs of lanes, in lockstep: here the limit is lowered to three
    lanes' windows (tiny conv2: C = 4 -> runs of 2 + 2; conv3: C = 8 -> 3 + 3 + 2), and the
    layer stays bit-exact under random stalls."""
    seg, network, numerics = _segment("tiny", layer)
    geom = layer_geometry(seg, network)
    monkeypatch.setattr(wide, "MAX_VALUE_BITS",
                        3 * geom.kernel ** 2 * numerics.activation.width)
    rng = np.random.default_rng(zlib.crc32(f"runs/{layer}".encode()))
    w = _weights(geom, rng)
    images = _images(geom, rng, 2)
    dut = FPLayer(seg, network, numerics, weights=w)
    assert [n for n in _subfragments(dut) if n.startswith("lb")] == runs
    got, trace = run_fp(dut, images, seed=5, p_stall=0.3, gate="random", waves=waves)
    _check(dut, images, w, got, trace)
