"""fpdeep_hw/wide.py: ``fit`` takes a value to a width as ``.eq`` does, and ``join`` drives a
wide signal element by element in one statement with the same bits as one statement per
element (checked in simulation on every input of small widths)."""

import itertools

from amaranth.hdl import Const, Module, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.sim import Simulator

from fpdeep_hw.wide import fit, join


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
