# amaranth: UnusedElaboratable=no
"""fpdeep_hw/combcheck.py: the node build's combinational-cycle check gives Amaranth's verdict
and message, on designs with and without cycles, through every kind of cell it treats per cell
(arithmetic, comparison, part-select, case match, asynchronous read port) and per bit (bitwise,
``~``, multiplexer, assignment list)."""

import contextlib
import random

import pytest
from amaranth.hdl import Cat, Const, Fragment, Module, Mux, Signal
from amaranth.hdl import _ir, _nir
from amaranth.lib import memory

from fpdeep_hw.combcheck import check_comb_cycles, fast_comb_check
from fpdeep_hw.compute.conv_engine import CEArray


@contextlib.contextmanager
def _no_check():
    saved = _nir.Netlist.check_comb_cycles
    _nir.Netlist.check_comb_cycles = lambda self: None
    try:
        yield
    finally:
        _nir.Netlist.check_comb_cycles = saved


def _netlist(m, ports):
    """The netlist of ``m`` without the check that ``build_netlist`` ends with (the tests run
    both checks on it)."""
    with _no_check():
        return _ir.build_netlist(Fragment.get(m, None), ports=ports, name="top")


def _verdicts(netlist):
    """(Amaranth's message or None, ours or None)."""
    out = []
    for check in (_nir.Netlist.check_comb_cycles, check_comb_cycles):
        try:
            check(netlist)
            out.append(None)
        except _nir.CombinationalCycle as e:
            out.append(str(e))
    return out


def _design(kind, cyclic):
    m = Module()
    a = Signal(8)
    b = Signal(8)
    y = Signal(8)
    sel = Signal(3)
    fb = y if cyclic else Signal(8)
    if kind == "add":
        m.d.comb += y.eq(a + fb)
    elif kind == "mul":
        m.d.comb += y.eq((a * fb)[:8])
    elif kind == "lt":
        m.d.comb += y.eq(Cat(a < fb, Const(0, 7)))
    elif kind == "part":
        m.d.comb += y.eq(Cat(a, Const(0, 8)).bit_select(fb[:3], 8))
    elif kind == "match":
        with m.Switch(fb):
            with m.Case(3):
                m.d.comb += y.eq(a)
            with m.Default():
                m.d.comb += y.eq(b)
    elif kind == "and":
        # bit 1 of y from bit 0 of the feedback: a cycle only through the bits chosen
        m.d.comb += y.eq(a & fb.rotate_left(1))
    elif kind == "mux":
        m.d.comb += y.eq(Mux(sel[0], a, ~fb))
    elif kind == "rom":
        mem = memory.Memory(shape=8, depth=8, init=range(8))
        m.submodules.mem = mem
        rd = mem.read_port(domain="comb")
        m.d.comb += [rd.addr.eq(fb[:3]), y.eq(rd.data)]
    m.d.sync += b.eq(y)
    ports = {"a": (a, _ir.PortDirection.Input), "sel": (sel, _ir.PortDirection.Input),
             "y": (y, _ir.PortDirection.Output)}
    if not cyclic:
        ports["fb"] = (fb, _ir.PortDirection.Input)
    return m, ports


@pytest.mark.parametrize("kind", ["add", "mul", "lt", "part", "match", "and", "mux", "rom"])
@pytest.mark.parametrize("cyclic", [False, True])
def test_same_verdict_and_message(kind, cyclic):
    netlist = _netlist(*_design(kind, cyclic))
    amaranth, ours = _verdicts(netlist)
    assert (amaranth is not None) == cyclic
    assert ours == amaranth


def test_bits_that_do_not_close_a_loop_are_not_a_cycle():
    # y[1:] = y[:-1] & a[1:], y[0] = a[0]: each bit depends on the one below, no loop
    m = Module()
    a = Signal(8)
    y = Signal(8)
    m.d.comb += y.eq(Cat(a[0], y[:7] & a[1:]))
    netlist = _netlist(m, {"a": (a, _ir.PortDirection.Input),
                           "y": (y, _ir.PortDirection.Output)})
    assert _verdicts(netlist) == [None, None]


def test_random_bitwise_graphs_agree():
    """Random wiring of bitwise, shift and add cells among a few signals: both checks agree
    on every one (about half of them have a cycle)."""
    rng = random.Random(1)
    seen = {True: 0, False: 0}
    for _ in range(60):
        m = Module()
        a = Signal(6)
        sigs = [Signal(6, name=f"s{i}") for i in range(5)]
        for i, s in enumerate(sigs):
            pool = list(range(i)) + [-1]
            xi = rng.choice(pool + ([rng.randrange(5)] if rng.random() < 0.3 else []))
            x = a if xi < 0 else sigs[xi]
            z = rng.choice(sigs[:i] + [a])
            # a loop of wires alone (rotations, slices) makes Amaranth's net resolution run for
            # ever: a feedback goes through an operator
            op = rng.choice(["&", "^", "+"] + ([] if xi >= i else ["rot", "slice"]))
            if op == "&":
                v = x & z
            elif op == "^":
                v = x ^ z
            elif op == "+":
                v = (x + z)[:6]
            elif op == "rot":
                v = x.rotate_left(rng.randrange(6))
            else:
                v = Cat(x[:3], z[3:])
            m.d.comb += s.eq(v)
        ports = {"a": (a, _ir.PortDirection.Input)}
        ports.update({f"s{i}": (s, _ir.PortDirection.Output) for i, s in enumerate(sigs)})
        amaranth, ours = _verdicts(_netlist(m, ports))
        assert ours == amaranth
        seen[amaranth is not None] += 1
    assert seen[True] >= 5 and seen[False] >= 5


def test_a_real_block_has_no_cycle():
    from amaranth.lib import wiring
    ce = CEArray(k=3, tiles=2, engines=2)
    ports = {}
    for path, member, value in ce.signature.flatten(ce):
        ports["__".join(map(str, path))] = (
            value.as_value() if hasattr(value, "as_value") else value,
            _ir.PortDirection.Input if member.flow == wiring.In else _ir.PortDirection.Output)
    netlist = _netlist(ce, ports)
    assert _verdicts(netlist) == [None, None]


def test_context_manager_restores_amaranths_check():
    saved = _nir.Netlist.check_comb_cycles
    with fast_comb_check():
        assert _nir.Netlist.check_comb_cycles is check_comb_cycles
    assert _nir.Netlist.check_comb_cycles is saved
