"""fpdeep_hw/wide.py: ``fit`` takes a value to a width as ``.eq`` does, and ``join`` drives a
wide signal element by element in one statement with the same bits as one statement per
element (checked in simulation on every input of small widths)."""

import itertools

import pytest
from amaranth.hdl import Const, Module, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.sim import Simulator

from fpdeep_hw.wide import MAX_VALUE_BITS, Lanes, fit, join, lane_runs


def test_fit_is_eq_for_every_width_and_value():
    m = Module()
    cases = []
    for src_shape, width in itertools.product(
            [unsigned(3), signed(3), unsigned(1), signed(1)], [1, 2, 3, 5]):
        a = Signal(src_shape)
        ref, got = Signal(width), Signal(width)
        m.d.comb += [ref.eq(a), got.eq(fit(a, width))]
        assert len(fit(a, width)) == width
        cases.append((a, ref, got, src_shape))
    sim = Simulator(m)

    async def bench(ctx):
        for a, ref, got, shape in cases:
            lo, hi = (-(1 << (shape.width - 1)), 1 << (shape.width - 1)) if shape.signed \
                else (0, 1 << shape.width)
            for v in range(lo, hi):
                ctx.set(a, v)
                assert ctx.get(got) == ctx.get(ref), (shape, len(ref), v)
    sim.add_testbench(bench)
    sim.run()
    assert fit(Const(0, 0), 4).shape() == unsigned(4)


def test_join_drives_the_same_bits_as_element_statements():
    layout = data.ArrayLayout(data.ArrayLayout(signed(5), 3), 2)
    parts = [Signal(signed(3), name=f"p{i}") for i in range(6)]
    m = Module()
    one, each = Signal(layout), Signal(layout)
    m.d.comb += one.eq(join(parts, 5))
    for i, p in enumerate(parts):
        m.d.comb += each[i // 3][i % 3].eq(p)
    sim = Simulator(m)

    async def bench(ctx):
        for vals in [(-4, 3, 0, -1, 2, 1), (3, -4, -4, 3, 0, 0), (1, 2, 3, -1, -2, -3)]:
            for p, v in zip(parts, vals):
                ctx.set(p, v)
            assert ctx.get(one.as_value()) == ctx.get(each.as_value())
    sim.add_testbench(bench)
    sim.run()


def test_lane_runs():
    # VGG-16 conv4 / conv5: 512 lanes of 3 x 3 x 16 bits = 73,728 bits -> two runs of 256
    assert lane_runs(512, 144) == [(0, 256), (256, 512)]
    assert lane_runs(455, 144) == [(0, 455)]            # 65,520 bits: one value
    assert lane_runs(456, 144) == [(0, 228), (228, 456)]
    assert lane_runs(8, 9, limit=27) == [(0, 3), (3, 6), (6, 8)]
    assert lane_runs(10, 1, limit=4) == [(0, 4), (4, 7), (7, 10)]
    for lanes, bits in itertools.product([1, 7, 100, 4096], [1, 16, 144, 300]):
        runs = lane_runs(lanes, bits)
        assert runs[0][0] == 0 and runs[-1][1] == lanes
        assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
        assert all((hi - lo) * bits <= MAX_VALUE_BITS for lo, hi in runs)
        assert len(runs) == -(-lanes // (MAX_VALUE_BITS // bits))
    with pytest.raises(ValueError, match="one lane of 70,000 bits is wider than 65,535"):
        lane_runs(1, 70_000)


def test_lanes_reads_across_runs():
    a = Signal(data.ArrayLayout(unsigned(4), 3))
    b = Signal(data.ArrayLayout(unsigned(4), 2))
    lanes = Lanes([(0, a), (3, b)])
    assert len(lanes) == 5
    assert [repr(lanes[c]) for c in range(5)] == \
        [repr(a[0]), repr(a[1]), repr(a[2]), repr(b[0]), repr(b[1])]
    for bad in (5, -1, "0"):
        with pytest.raises(IndexError):
            lanes[bad]
