# amaranth: UnusedElaboratable=no
"""Tests of the PG module (:mod:`fpdeep_hw.node.pg_layer`) against the golden model
(:func:`sim.golden.layers.conv_pg` / ``fc_pg`` per image, :class:`sim.golden.grad_buffer.
GradBufferModel` over the mini-batch).

Every test drives random activations and errors (with garbage in the unused lanes) through the
module built from a real plan segment (``tiny``/``digits`` on one ``sim-node``), with random
stalls on every stream, and compares (1) every gradient word that enters the LGB, in order, with
the per-image golden gradients, (2) every averaged word leaving the LGB, (3) the overflow counts.
"""

import dataclasses
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpdeep_hw.node.pg_layer import PGLayer
from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from sim.golden.grad_buffer import GradBufferModel
from sim.golden.layers import conv_pg, fc_pg
from sim.lint import verilator_lint
from sim.streams import payload_to_python, stream_sink, stream_source
from sim.waves import run_simulation

_PLANS = {}


def plan_of(net, batch):
    key = (net, batch)
    if key not in _PLANS:
        network = load_network(net)
        _PLANS[key] = (map_network(network, load_board("sim-node"), 1, batch=batch,
                                   max_row_lanes=1), network)
    return _PLANS[key]


def build(net, layer, batch=2, **seg_changes):
    """PGLayer of ``layer`` from the plan; ``seg_changes`` alter the PG engines (``p``, ``s``)
    or the segment to reach edge shapes the small plans do not have."""
    plan, network = plan_of(net, batch)
    if not seg_changes:
        return PGLayer.from_plan(plan, network, layer), plan, network
    seg = next(s for s in plan.node_plans[0].segments if s.layer == layer)
    pg = dataclasses.replace(seg.engines["pg"], **{k: v for k, v in seg_changes.items()
                                                   if k in ("p", "s")})
    seg = dataclasses.replace(seg, engines={**seg.engines, "pg": pg})
    plan = dataclasses.replace(plan, node_plans=[dataclasses.replace(
        plan.node_plans[0], segments=[seg if s.layer == layer else s
                                      for s in plan.node_plans[0].segments])])
    return PGLayer.from_plan(plan, network, layer), plan, network


def layer_geometry(network, dut, layer):
    lay = next(x for x in network.layers if x.name == layer)
    return lay


def make_data(dut, images, rng, amp=1 << 10):
    """Random activations (C, H, W) and errors (OC, Ho, Wo) per image and their stream words."""
    c, h, w = dut._in_shape
    S, P, Gc, Go = dut.s, dut.p, dut.channel_groups, dut.error_groups
    if dut.kind == "conv":
        ho, wo = dut.out_height, dut.out_width
    else:
        ho = wo = 1
    acts, errs, a_words, e_words = [], [], [], []
    garbage = lambda: rng.randint(-(1 << 15), (1 << 15) - 1)  # noqa: E731
    for _ in range(images):
        a = np.array([[[rng.randint(-amp, amp) for _ in range(w)] for _ in range(h)]
                      for _ in range(c)], dtype=np.int64)
        e = np.array([[[rng.randint(-amp, amp) for _ in range(wo)] for _ in range(ho)]
                      for _ in range(dut.out_channels)], dtype=np.int64)
        acts.append(a)
        errs.append(e)
        gpix = -(-c // S)
        for y in range(h):
            for x in range(w):
                for g in range(gpix):
                    a_words.append([int(a[g * S + s, y, x]) if g * S + s < c else garbage()
                                    for s in range(S)])
        for y in range(ho):
            for x in range(wo):
                for g in range(Go):
                    e_words.append([int(e[g * P + p, y, x]) if g * P + p < dut.out_channels
                                    else garbage() for p in range(P)])
    return acts, errs, a_words, e_words


def golden(dut, lay, acts, errs, numerics):
    """Per-image LGB input words (drain order of the module) and the LGB's averaged words."""
    S, P, K, Gc, Go = dut.s, dut.p, dut.kernel, dut.channel_groups, dut.error_groups
    OC, B = dut.out_channels, dut.batch
    c, h, w = dut._in_shape
    gpix = -(-c // S)
    model = GradBufferModel(depth=OC * Gc, lanes=S, kernel=K, in_fmt=numerics.gradient,
                            out_fmt=numerics.gradient, acc_width=numerics.grad_acc_width,
                            batch=B)
    words, avgs, overflow = [], [], 0
    for i, (a, e) in enumerate(zip(acts, errs)):
        if dut.kind == "conv":
            g, ovf = conv_pg(e, a, K, lay.stride, lay.padding, 1, numerics)
            sets = np.zeros((OC, Gc, S, K, K), dtype=np.int64)
            for gc in range(Gc):
                n = min(S, c - gc * S)
                sets[:, gc, :n] = g[:, gc * S:gc * S + n]
        else:
            g, ovf = fc_pg(e.reshape(-1), a.reshape(-1), numerics)
            sets = np.zeros((OC, Gc, S, 1, 1), dtype=np.int64)
            for j in range(Gc):
                y, x = divmod(j // gpix, w)
                for s in range(S):
                    ch = (j % gpix) * S + s
                    if ch < c:
                        sets[:, j, s, 0, 0] = g[:, ch * h * w + y * w + x]
        overflow += ovf
        img = []
        for gc in range(Gc):
            for go in range(Go):
                for p in range(P):
                    oc = go * P + p
                    if oc < OC:
                        img.append((oc * Gc + gc, sets[oc, gc]))
        for j, (addr, data) in enumerate(img):
            done = j == len(img) - 1 and i % B == B - 1
            words.append({"addr": addr, "data": data.tolist(), "batch_done": int(done)})
            avgs += model.push(addr, data, done)
    return words, avgs, overflow, model


def simulate(dut, a_words, e_words, n_grad, *, p_a=0.2, p_e=0.2, p_o=0.2, seed=0, waves=None):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rec = {"lgb_in": [], "pg_done": [], "e_cycles": [], "lgb_valid": None, "grad": []}
    sim.add_testbench(stream_source(dut.a, a_words, rng=random.Random(seed), p_stall=p_a),
                      background=True)
    sim.add_testbench(stream_source(dut.e, e_words, rng=random.Random(seed + 1), p_stall=p_e),
                      background=True)
    lgb_i = dut.lgb.i

    async def monitor(ctx):
        cycle = 0
        async for ev, ev2, *vals in ctx.tick().sample(
                lgb_i.valid, lgb_i.ready, lgb_i.payload, dut.pg_done, dut.e.valid, dut.e.ready):
            v, r, pl, done, ev_, er = vals
            if v and rec["lgb_valid"] is None:
                rec["lgb_valid"] = cycle
            if v and r:
                rec["lgb_in"].append(payload_to_python(pl))
            if done:
                rec["pg_done"].append(cycle)
            if ev_ and er:
                rec["e_cycles"].append(cycle)
            cycle += 1

    async def consumer(ctx):
        await stream_sink(dut.grad, rec["grad"], count=n_grad, rng=random.Random(seed + 2),
                          p_stall=p_o, max_cycles=400000)(ctx)
        for _ in range(8):
            await ctx.tick()
        for name in ("acc_overflow", "out_overflow", "lgb_acc_overflow", "lgb_out_overflow",
                     "busy_cycles"):
            rec[name] = ctx.get(getattr(dut, name))

    sim.add_testbench(monitor, background=True)
    sim.add_testbench(consumer)
    run_simulation(sim, waves or "pg_layer", traces=[dut])
    return rec


def check(net, layer, images, seed, waves, **kw):
    dut, plan, network = build(net, layer, **kw)
    lay = layer_geometry(network, dut, layer)
    rng = random.Random(seed)
    acts, errs, a_words, e_words = make_data(dut, images, rng)
    words, avgs, overflow, model = golden(dut, lay, acts, errs, plan.numerics)
    rec = simulate(dut, a_words, e_words, len(avgs), seed=seed, waves=waves)
    assert rec["lgb_in"] == words
    assert rec["grad"] == avgs
    assert len(rec["pg_done"]) == images
    assert rec["acc_overflow"] == 0
    assert rec["out_overflow"] == overflow
    assert rec["lgb_acc_overflow"] == model.acc_overflow
    assert rec["lgb_out_overflow"] == model.out_overflow
    assert rec["busy_cycles"] == images * dut.steps_per_image
    return dut, rec


# -- constructor ---------------------------------------------------------------------------------

def test_rejects_bad_arguments():
    plan, network = plan_of("tiny", 2)
    seg = plan.node_plans[0].segments[0]
    with pytest.raises(TypeError, match=r"^PGLayer numerics must be a NumericsConfig, not 3$"):
        PGLayer(segment=seg, in_shape=(3, 8, 8), pad=1, numerics=3, batch=2)
    with pytest.raises(ValueError, match=r"^PGLayer input shape has 4 channels, the segment "
                                         r"reads 3$"):
        PGLayer(segment=seg, in_shape=(4, 8, 8), pad=1, numerics=plan.numerics, batch=2)
    with pytest.raises(ValueError, match=r"^PGLayer batch must be a positive integer, not 0$"):
        PGLayer(segment=seg, in_shape=(3, 8, 8), pad=1, numerics=plan.numerics, batch=0)
    with pytest.raises(ValueError, match=r"^PGLayer padding must be a non-negative integer, "
                                         r"not -1$"):
        PGLayer(segment=seg, in_shape=(3, 8, 8), pad=-1, numerics=plan.numerics, batch=2)
    fc = plan.node_plans[0].segments[3]
    with pytest.raises(ValueError, match=r"^PGLayer input shape \(8, 4, 5\) has 160 features, "
                                         r"the FC segment reads 128$"):
        PGLayer(segment=fc, in_shape=(8, 4, 5), numerics=plan.numerics, batch=2)


def test_shapes_from_plan():
    dut, plan, _ = build("digits", "conv2")
    assert (dut.p, dut.s, dut.kernel) == (4, 1, 3)
    assert (dut.channel_groups, dut.error_groups, dut.positions) == (8, 4, 64)
    assert dut.lgb_depth == plan.node_plans[0].segments[1].lgb.depth == 128
    assert dut.steps_per_image * dut.p * dut.s * 9 == plan.node_plans[0].segments[1].engines[
        "pg"].macs_per_image
    fc, _, _ = build("tiny", "fc4")
    assert (fc.channel_groups, fc.error_groups, fc.lgb_depth) == (128, 5, 1280)


# -- bit-exact against the golden model, random stalls everywhere --------------------------------

@pytest.mark.parametrize("net,layer", [("tiny", "conv1"), ("digits", "conv1")])
def test_conv_plan_segments(net, layer, waves):
    check(net, layer, 4, 1, waves)


def test_edge_lanes_stride(waves):
    """S = 2 lanes over 3 channels (one masked lane), P = 3 lanes over 8 outputs (one empty lane
    in the last group): tiny conv2 with a changed PG arrangement."""
    check("tiny", "conv2", 2, 3, waves, p=3, s=3)


def test_fc_segment(waves):
    check("digits", "fc3", 2, 4, waves, p=3, s=2)


@pytest.mark.slow
@pytest.mark.parametrize("net,layer", [("tiny", "conv2"), ("tiny", "conv3"), ("tiny", "fc4"),
                                       ("digits", "conv2")])
def test_plan_segments_slow(net, layer, waves):
    check(net, layer, 4, 5, waves)


# -- latency and steady-state utilisation (no stalls) --------------------------------------------

def test_latency(waves):
    """One image whose last position's errors come late: first LGB word ``latency`` cycles
    after the last error word."""
    dut, plan, network = build("tiny", "conv1")
    lay = layer_geometry(network, dut, "conv1")
    acts, errs, a_words, e_words = make_data(dut, 1, random.Random(8))
    words, _, _, _ = golden(dut, lay, acts, errs, plan.numerics)
    go = dut.error_groups
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rec = {}
    sim.add_testbench(stream_source(dut.a, a_words), background=True)

    async def errors(ctx):
        await stream_source(dut.e, e_words[:-go])(ctx)
        for _ in range(3 * dut.steps_per_image):
            await ctx.tick()
        await stream_source(dut.e, e_words[-go:])(ctx)

    async def monitor(ctx):
        cycle = 0
        async for _, _, ev, er, lv in ctx.tick().sample(dut.e.valid, dut.e.ready,
                                                        dut.lgb.i.valid):
            if ev and er:
                rec["last_e"] = cycle
            if lv:
                rec["lgb"] = cycle
                return
            cycle += 1

    sim.add_testbench(errors, background=True)
    sim.add_testbench(monitor)
    run_simulation(sim, waves, traces=[dut])
    assert rec["lgb"] - rec["last_e"] == dut.latency == 3 * 4 + 7


@pytest.mark.parametrize("net,layer", [("tiny", "conv1"),
                                       pytest.param("digits", "conv2", marks=pytest.mark.slow)])
def test_utilisation(net, layer, waves):
    """No stalls: the steady-state image period is within 5% of the multiply steps."""
    dut, plan, network = build(net, layer)
    lay = layer_geometry(network, dut, layer)
    images = 4
    acts, errs, a_words, e_words = make_data(dut, images, random.Random(9))
    words, avgs, _, _ = golden(dut, lay, acts, errs, plan.numerics)
    rec = simulate(dut, a_words, e_words, len(avgs), p_a=0, p_e=0, p_o=0, waves=waves)
    assert rec["lgb_in"] == words
    period = (rec["pg_done"][-1] - rec["pg_done"][0]) / (images - 1)
    util = dut.steps_per_image / period
    print(f"{net}/{layer}: steps/image {dut.steps_per_image}, period {period}, "
          f"utilisation {util:.4f}")
    assert util >= 0.95


def test_lint(tmp_path):
    dut, _, _ = build("tiny", "conv2", p=3, s=3)
    verilator_lint(dut, "pg_layer", tmp_path)
