# amaranth: UnusedElaboratable=no
"""Tests of :mod:`sim.lint`: clean Amaranth output passes, a real design smell fails."""

import pytest
from amaranth.hdl import Cat, Module, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from fpdeep_hw.numerics import OverflowCounter, requantize, saturating_add
from fpdeep_map.numerics import FixedFormat
from sim.lint import WAIVERS, verilator_lint, verilog_of


class _Requant(wiring.Component):
    """Registered stream stage using every numerics helper (the waivers must cover them)."""

    i: In(stream.Signature(signed(40)))
    o: Out(stream.Signature(signed(16)))
    overflows: Out(32)

    def __init__(self, *, drop_bits=False):
        self._drop_bits = drop_bits
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.count = count = OverflowCounter(inputs=2)
        x = self.i.payload[:20] if self._drop_bits else self.i.payload
        q, f = requantize(x, 16, FixedFormat(16, 8))
        s, g = saturating_add(q, 1, 16)
        with m.If(self.o.ready | ~self.o.valid):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(s)]
        m.d.comb += self.i.ready.eq(self.o.ready | ~self.o.valid)
        take = self.i.valid & self.i.ready
        m.d.comb += count.inc.eq(Cat(f & take, g & take))
        m.d.comb += self.overflows.eq(count.count)
        return m


def test_waiver_file_is_commented():
    lines = [line for line in WAIVERS.read_text().splitlines() if line.strip()]
    assert lines[0] == "`verilator_config"
    for k, line in enumerate(lines):
        if line.startswith("lint_off"):
            assert lines[k - 1].startswith("//"), f"waiver without explanation: {line}"


def test_verilog_has_no_source_paths():
    text = verilog_of(_Requant(), "requant")
    assert "module requant" in text and "src =" not in text


def test_numerics_helpers_lint_clean(tmp_path):
    verilator_lint(_Requant(), "requant", tmp_path)


def test_unused_input_bits_fail(tmp_path):
    # The upper 20 input bits are never read: a real design smell that must not be waived.
    with pytest.raises(pytest.fail.Exception, match=r"UNUSEDSIGNAL.*i__payload"):
        verilator_lint(_Requant(drop_bits=True), "requant_bad", tmp_path)
