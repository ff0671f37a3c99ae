# amaranth: UnusedElaboratable=no
"""LaneFork / LaneConcat (:mod:`fpdeep_hw.node.lanes`) against their golden models, random stalls
on every stream: no word lost, duplicated, reordered or corrupted; latency 0."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from fpdeep_hw.node.lanes import LaneConcat, LaneFork
from sim.streams import stream_sink, stream_source


def _golden_fork(words, ranges):
    return [[w[lo:hi] for w in words] for lo, hi in ranges]


def _golden_concat(inputs):
    return [sum(ws, []) for ws in zip(*inputs)]


def _words(rng, n, lanes, width):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return [[rng.randint(lo, hi) for _ in range(lanes)] for _ in range(n)]


def _with_clock(dut):
    """The blocks are combinational: a top with a ``sync`` domain for the testbenches' clock."""
    m = Module()
    m.submodules.dut = dut
    tick = Signal()
    m.d.sync += tick.eq(~tick)
    return m


def _sim(dut, sources, sinks, p_stall, seed):
    sim = Simulator(_with_clock(dut))
    sim.add_clock(1e-8)
    for k, (port, words) in enumerate(sources):
        sim.add_testbench(stream_source(port, words, rng=random.Random(seed + k), p_stall=p_stall),
                          background=True)
    for k, (port, out, count) in enumerate(sinks):
        sim.add_testbench(stream_sink(port, out, count=count, rng=random.Random(seed + 99 + k),
                                      p_stall=p_stall, max_cycles=20_000))
    sim.run()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ranges", [[(0, 6), (0, 6)], [(0, 2), (2, 6)], [(3, 6), (0, 6), (1, 2)]])
def test_fork(seed, ranges):
    rng = random.Random(seed)
    words = _words(rng, 200, 6, 16)
    dut = LaneFork(width=16, lanes=6, ranges=ranges)
    outs = [[] for _ in ranges]
    _sim(dut, [(dut.i, words)], [(o, out, len(words)) for o, out in zip(dut.o, outs)], 0.4,
         seed)
    assert outs == _golden_fork(words, ranges)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("parts", [[2, 3], [1, 4, 2]])
def test_concat(seed, parts):
    rng = random.Random(seed)
    inputs = [_words(rng, 150, p, 32) for p in parts]
    dut = LaneConcat(width=32, parts=parts)
    out = []
    _sim(dut, list(zip(dut.i, inputs)), [(dut.o, out, 150)], 0.4, seed)
    assert out == _golden_concat(inputs)


def test_latency_zero():
    """A word offered on the input leaves on every output in the same cycle."""
    dut = LaneFork(width=8, lanes=4, ranges=[(0, 4), (1, 3)])
    seen = []

    async def tb(ctx):
        ctx.set(dut.o[0].ready, 1)
        ctx.set(dut.o[1].ready, 1)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, [1, -2, 3, -4])
        assert ctx.get(dut.o[0].valid) and ctx.get(dut.o[1].valid)
        seen.append(list(ctx.get(dut.o[1].payload)))
        ctx.set(dut.o[1].ready, 0)
        assert not ctx.get(dut.o[0].valid) and not ctx.get(dut.i.ready)
    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    assert seen == [[-2, 3]]
    assert LaneFork.LATENCY == LaneConcat.LATENCY == 0


def test_rejects():
    with pytest.raises(ValueError, match=r"^LaneFork range \[2, 7\] is not inside \[0, 6\]$"):
        LaneFork(width=16, lanes=6, ranges=[(2, 7)])
    with pytest.raises(ValueError, match=r"^LaneConcat needs at least two inputs, not \[3\]$"):
        LaneConcat(width=16, parts=[3])
    with pytest.raises(ValueError, match=r"^LaneFork width must be a positive integer, not 0$"):
        LaneFork(width=0, lanes=6, ranges=[(0, 1)])
