# amaranth: UnusedElaboratable=no
"""Tests of the loss unit (:mod:`fpdeep_hw.compute.loss`) against
:func:`sim.golden.layers.loss_error` (both losses, bit-exact, overflow counts)."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpdeep_hw.compute.loss import EXP2_TABLE, LOG2E_Q14, LossUnit
from fpdeep_map.network import load_network
from fpdeep_map.numerics import NumericsConfig
from sim.golden import layers as golden
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source
from sim.waves import run_simulation

NUM = NumericsConfig()


def scores(rng, classes, count):
    """Score vectors covering the interesting cases: random, ties at the maximum, all equal,
    huge spreads (``u`` clamped, ``e_i = 0``), the range ends."""
    a = NUM.activation
    out = []
    for n in range(count):
        kind = n % 5
        if kind == 0:
            z = [rng.randint(-4 << 8, 4 << 8) for _ in range(classes)]
        elif kind == 1:
            top = rng.randint(-1000, 1000)
            z = [top if rng.random() < 0.4 else top - rng.randint(0, 3000) for _ in range(classes)]
        elif kind == 2:
            z = [rng.randint(a.min_int, a.max_int)] * classes
        elif kind == 3:     # the range ends: d = -65535, u clamped
            z = [a.max_int] + [rng.choice([a.min_int, rng.randint(a.min_int, a.max_int)])
                               for _ in range(classes - 1)]
            rng.shuffle(z)
        else:
            z = [rng.randint(a.min_int, a.max_int) for _ in range(classes)]
        out.append(z)
    return out


def run(dut, zs, labels, *, p=0.3, seed=0, waves="loss"):
    out, timing = [], {}
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.z, zs, rng=random.Random(seed), p_stall=p),
                      background=True)
    sim.add_testbench(stream_source(dut.label, labels, rng=random.Random(seed + 1), p_stall=p),
                      background=True)

    async def monitor(ctx):
        cycle = 0
        async for _, _, zv, zr, ov in ctx.tick().sample(dut.z.valid, dut.z.ready, dut.o.valid):
            if zv and zr and "take" not in timing:
                timing["take"] = cycle
            if ov and "out" not in timing:
                timing["out"] = cycle
            cycle += 1

    async def sink(ctx):
        await stream_sink(dut.o, out, count=len(zs), rng=random.Random(seed + 2), p_stall=p,
                          max_cycles=1000 * len(zs) + 100)(ctx)
        await ctx.tick()
        timing["overflow"] = ctx.get(dut.overflow)

    sim.add_testbench(monitor, background=True)
    sim.add_testbench(sink)
    run_simulation(sim, waves, traces=[dut])
    return out, timing


def expected(zs, labels, kind):
    errs, overflow = [], 0
    for z, lab in zip(zs, labels):
        e, o = golden.loss_error(np.array(z), lab, kind, NUM)
        errs.append(e.tolist())
        overflow += o
    return errs, overflow


def test_constants_match_golden():
    assert LOG2E_Q14 == golden.LOG2E_Q14
    assert list(EXP2_TABLE) == golden.EXP2_TABLE.tolist()


def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"^LossUnit numerics must be a NumericsConfig, not 1$"):
        LossUnit(numerics=1, classes=10)
    with pytest.raises(ValueError, match=r"^LossUnit classes must be an integer >= 2, not 1$"):
        LossUnit(numerics=NUM, classes=1)
    with pytest.raises(ValueError, match=r"^LossUnit kind must be one of \('softmax_cross_entropy', "
                                         r"'squared_error'\), not 'hinge'$"):
        LossUnit(numerics=NUM, classes=10, kind="hinge")


@pytest.mark.parametrize("classes,count", [(10, 10), (2, 8), (3, 6)])
def test_softmax_random(classes, count, waves):
    rng = random.Random(classes)
    zs = scores(rng, classes, count)
    labels = [rng.randrange(classes) for _ in zs]
    dut = LossUnit(numerics=NUM, classes=classes)
    out, timing = run(dut, zs, labels, seed=classes, waves=waves)
    errs, overflow = expected(zs, labels, "softmax_cross_entropy")
    assert out == errs
    assert timing["overflow"] == overflow
    assert overflow > 0          # the huge spreads clamp u


def test_softmax_many(waves):
    """Many moderate score vectors (probabilities spread over the classes, every divider
    quotient bit exercised), no stalls."""
    rng = random.Random(77)
    zs = [[rng.randint(-3 << 8, 3 << 8) for _ in range(10)] for _ in range(60)]
    labels = [rng.randrange(10) for _ in zs]
    dut = LossUnit(numerics=NUM, classes=10)
    out, _ = run(dut, zs, labels, p=0, waves=waves)
    assert out == expected(zs, labels, "softmax_cross_entropy")[0]


@pytest.mark.parametrize("classes", [10, 3])
def test_squared_error(classes, waves):
    rng = random.Random(100 + classes)
    zs = scores(rng, classes, 10)
    labels = [rng.randrange(classes) for _ in zs]
    dut = LossUnit(numerics=NUM, classes=classes, kind="squared_error")
    out, timing = run(dut, zs, labels, seed=classes, waves=waves)
    errs, overflow = expected(zs, labels, "squared_error")
    assert out == errs
    assert timing["overflow"] == overflow > 0


@pytest.mark.parametrize("kind,lat", [("softmax_cross_entropy", 202), ("squared_error", 1)])
def test_latency(kind, lat, waves):
    """The loss of the zoo networks (10 classes): first error word ``latency`` cycles after the
    scores and label are taken (no stalls)."""
    net = load_network("digits")
    classes = net.classes
    assert net.layers[-1].loss == "softmax_cross_entropy"
    dut = LossUnit(numerics=NUM, classes=classes, kind=kind)
    rng = random.Random(5)
    zs = scores(rng, classes, 2)
    labels = [1, 7]
    out, timing = run(dut, zs, labels, p=0, waves=waves)
    assert out == expected(zs, labels, kind)[0]
    assert timing["out"] - timing["take"] == dut.latency == lat


@pytest.mark.parametrize("kind", ["softmax_cross_entropy", "squared_error"])
def test_lint(kind, tmp_path):
    verilator_lint(LossUnit(numerics=NUM, classes=10, kind=kind), f"loss_{kind[:7]}", tmp_path)
