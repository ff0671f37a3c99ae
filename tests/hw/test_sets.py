# amaranth: UnusedElaboratable=no
"""SetConcat / SetRoute (:mod:`fpdeep_hw.node.sets`) against their golden models
(:mod:`sim.golden.sets`), random stalls on every stream: no item lost, duplicated, reordered or
corrupted; latency 0; ``set_ranges`` (the keepers' set ranges)."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import data
from amaranth.sim import Simulator

from fpdeep_hw.node.sets import SetConcat, SetRoute, set_ranges
from sim.golden.sets import set_concat, set_route
from sim.streams import stream_sink, stream_source

GRAD = data.StructLayout({"addr": range(16), "data": 20})


def _sim(dut, sources, sinks, p_stall, seed):
    m = Module()
    m.submodules.dut = dut
    tick = Signal()
    m.d.sync += tick.eq(~tick)
    sim = Simulator(m)
    sim.add_clock(1e-8)
    for k, (port, words) in enumerate(sources):
        sim.add_testbench(stream_source(port, words, rng=random.Random(seed + k), p_stall=p_stall),
                          background=True)
    for k, (port, out, count) in enumerate(sinks):
        sim.add_testbench(stream_sink(port, out, count=count, rng=random.Random(seed + 99 + k),
                                      p_stall=p_stall, max_cycles=20_000))
    sim.run()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("counts", [[1], [3, 1], [2, 5, 3], [1, 1, 1]])
def test_concat(seed, counts):
    rng = random.Random(seed)
    images = 7
    inputs = [[rng.getrandbits(24) for _ in range(images * c)] for c in counts]
    dut = SetConcat(24, counts)
    out = []
    _sim(dut, list(zip(dut.i, inputs)), [(dut.o, out, images * sum(counts))], 0.4, seed)
    assert out == set_concat(inputs, counts)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ranges", [[(0, 16)], [(0, 5), (5, 16)], [(9, 16), (0, 3), (3, 9)]])
def test_route(seed, ranges):
    rng = random.Random(seed)
    items = [{"addr": rng.randrange(16), "data": rng.getrandbits(20)} for _ in range(200)]
    dut = SetRoute(GRAD, ranges)
    want = set_route(items, ranges)
    outs = [[] for _ in ranges]
    _sim(dut, [(dut.i, items)], [(o, out, len(w)) for o, out, w in zip(dut.o, outs, want)],
         0.4, seed)
    assert outs == want


def test_latency_zero():
    """An item offered leaves in the same cycle (both blocks)."""
    cat = SetConcat(8, [1, 2])
    route = SetRoute(GRAD, [(0, 4), (4, 16)])
    m = Module()
    m.submodules.cat, m.submodules.route = cat, route
    seen = []

    async def tb(ctx):
        ctx.set(cat.o.ready, 1)
        ctx.set(cat.i[0].valid, 1)
        ctx.set(cat.i[0].payload, 5)
        ctx.set(route.o[1].ready, 1)
        ctx.set(route.i.valid, 1)
        ctx.set(route.i.payload, {"addr": 7, "data": 3})
        seen.append((ctx.get(cat.o.valid), ctx.get(cat.o.payload), ctx.get(cat.i[0].ready),
                     ctx.get(route.o[1].valid), ctx.get(route.o[0].valid),
                     ctx.get(route.i.ready)))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen == [(1, 5, 1, 1, 0, 1)]


def test_set_ranges():
    assert set_ranges(4, [108]) == [(0, 4)]
    assert set_ranges(4, [28, 40, 40]) == [(0, 1), (1, 3), (3, 4)]
    assert set_ranges(10, [1, 99]) == [None, (0, 10)]
    assert set_ranges(8, [3, 3, 2]) == [(0, 3), (3, 6), (6, 8)]
    r = set_ranges(1000, [17, 400, 5, 578])
    assert [x for x in r if x] and r[0][0] == 0 and r[-1][1] == 1000


def test_errors():
    with pytest.raises(ValueError, match=r"^SetConcat count must be an integer >= 1, not 0$"):
        SetConcat(8, [2, 0])
    with pytest.raises(ValueError, match=r"^SetConcat needs at least one input$"):
        SetConcat(8, [])
    with pytest.raises(ValueError, match=r"^SetRoute ranges \(0, 5\) and \(4, 9\) overlap$"):
        SetRoute(GRAD, [(4, 9), (0, 5)])
    with pytest.raises(ValueError, match=r"^SetRoute ranges must be"):
        SetRoute(GRAD, [(3, 3)])
