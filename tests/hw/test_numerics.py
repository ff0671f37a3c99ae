# amaranth: UnusedElaboratable=no
"""Tests of :mod:`fpdeep_hw.numerics` against the golden model :mod:`sim.fixed` (bit for bit)."""

import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from fpdeep_map.numerics import FixedFormat
from fpdeep_hw import numerics as hw
from sim import fixed


# --- golden model on its own -------------------------------------------------------------------

def test_golden_half_up_ties_go_up():
    fmt = FixedFormat(8, 0, "half_up")
    # x has 2 fractional bits: -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 2.5 -> 3
    q, n = fixed.requantize([-6, -2, 2, 10], 2, fmt)
    assert q.tolist() == [-1, 0, 1, 3] and n == 0


def test_golden_truncate_is_floor():
    fmt = FixedFormat(8, 0, "truncate")
    q, n = fixed.requantize([-7, -4, -1, 3, 7], 2, fmt)
    assert q.tolist() == [-2, -1, -1, 0, 1] and n == 0


def test_golden_saturates_both_ends_and_counts():
    fmt = FixedFormat(8, 4)
    q, n = fixed.requantize([1 << 20, -(1 << 20), 127 << 4, -128 << 4, (127 << 4) + 8], 8, fmt)
    assert q.tolist() == [127, -128, 127, -128, 127] and n == 3


def test_golden_left_shift_is_exact():
    q, n = fixed.requantize([3, -3], 2, FixedFormat(16, 6))
    assert q.tolist() == [48, -48] and n == 0
    q, n = fixed.requantize([1 << 10], 0, FixedFormat(16, 8))
    assert q.tolist() == [32767] and n == 1


def test_golden_wide_accumulators_do_not_wrap():
    big = (1 << 62) + 5
    q, n = fixed.saturate([big, -big], 48)
    assert q.tolist() == [(1 << 47) - 1, -(1 << 47)] and n == 2
    q, n = fixed.saturate([(1 << 80)], 96)
    assert q.tolist() == [1 << 80] and q.dtype == object and n == 0
    # products of two 64-bit-range values stay exact
    q, n = fixed.requantize([(1 << 70) + (1 << 30)], 31, FixedFormat(64, 0))
    assert q.tolist() == [(1 << 39) + 1] and n == 0  # 2**30 + 2**30 rounds up one LSB


def test_golden_quantize():
    fmt = FixedFormat(16, 8, "half_up")
    q, n = fixed.quantize([0.5 / 256, -0.5 / 256, 1.0, -1.0, 200.0, -200.0, np.inf, -1.5 / 256], fmt)
    assert q.tolist() == [1, 0, 256, -256, 32767, -32768, 32767, -1] and n == 3
    q, n = fixed.quantize([0.9 / 256, -0.1 / 256], FixedFormat(16, 8, "truncate"))
    assert q.tolist() == [0, -1] and n == 0
    with pytest.raises(ValueError, match="cannot quantize NaN"):
        fixed.quantize([np.nan], fmt)
    assert fixed.to_float(np.array([256, -128]), fmt).tolist() == [1.0, -0.5]


def test_golden_quantize_matches_requantize_of_exact_values():
    rng = np.random.default_rng(3)
    x = rng.integers(-(1 << 20), 1 << 20, size=1000)
    for rounding in ("half_up", "truncate"):
        fmt = FixedFormat(12, 3, rounding)
        a = fixed.quantize(x / 2.0 ** 10, fmt)
        b = fixed.requantize(x, 10, fmt)
        assert a[0].tolist() == b[0].tolist() and a[1] == b[1]


def test_golden_accumulate_saturates_each_step():
    acc, n = fixed.accumulate([[100, 100, -50, 10]], 8)
    # 100 -> 127 (ovf) -> 77 -> 87: saturation is sticky per step, as in the RTL
    assert acc.tolist() == [87] and n == 1
    s, n = fixed.saturating_add([100, -100], [100, -100], 8)
    assert s.tolist() == [127, -128] and n == 2


def test_golden_rejects_floats():
    with pytest.raises(TypeError, match="use quantize"):
        fixed.saturate(np.array([1.5]), 8)


# --- Amaranth against the golden model ---------------------------------------------------------

def _run_comb(in_shapes, build, vectors):
    """Simulate combinational ``build(*inputs) -> [(value, ...)]`` for many input vectors."""
    m = Module()
    ins = [Signal(shape, name=f"i{k}") for k, shape in enumerate(in_shapes)]
    outs = []
    for k, expr in enumerate(build(*ins)):
        sig = Signal(expr.shape(), name=f"o{k}")
        m.d.comb += sig.eq(expr)
        outs.append(sig)
    results = []

    async def tb(ctx):
        for vec in vectors:
            for s, v in zip(ins, vec):
                ctx.set(s, v)
            results.append(tuple(ctx.get(o) for o in outs))

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    return results


def _check_requantize(in_width, frac_in, fmt, values):
    res = _run_comb([signed(in_width)], lambda x: hw.requantize(x, frac_in, fmt), [(v,) for v in values])
    want, _ = fixed.requantize(values, frac_in, fmt)
    got = [r[0] for r in res]
    assert got == want.tolist()
    flags = [r[1] for r in res]
    for v, f in zip(values, flags):
        assert f == fixed.requantize([v], frac_in, fmt)[1]
    assert sum(flags) == fixed.requantize(values, frac_in, fmt)[1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    in_width=st.integers(2, 64),
    frac_in=st.integers(0, 40),
    out_width=st.integers(2, 40),
    out_frac=st.integers(0, 40),
    rounding=st.sampled_from(["half_up", "truncate"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_requantize_matches_golden(in_width, frac_in, out_width, out_frac, rounding, seed):
    fmt = FixedFormat(out_width, out_frac, rounding)
    rng = random.Random(seed)
    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    values = [lo, hi, 0, -1, 1] + [rng.randint(lo, hi) for _ in range(40)]
    # values near the representable range and ties after the shift
    s = frac_in - out_frac
    if s > 0:
        for base in (0, 1, -1, fmt.max_int, fmt.min_int, rng.randint(fmt.min_int, fmt.max_int)):
            tie = (base << s) + (1 << (s - 1))
            values += [x for x in (tie - 1, tie, tie + 1) if lo <= x <= hi]
    _check_requantize(in_width, frac_in, fmt, values)


@settings(max_examples=100, deadline=None)
@given(in_width=st.integers(1, 64), width=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_saturate_matches_golden(in_width, width, seed):
    rng = random.Random(seed)
    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    values = [lo, hi, 0, -1] + [rng.randint(lo, hi) for _ in range(40)]
    values += [x for x in (1 << (width - 1), (1 << (width - 1)) - 1, -(1 << (width - 1)),
                           -(1 << (width - 1)) - 1) if lo <= x <= hi]
    res = _run_comb([signed(in_width)], lambda x: hw.saturate(x, width), [(v,) for v in values])
    for v, (q, f) in zip(values, res):
        want, n = fixed.saturate([v], width)
        assert (q, f) == (int(want[0]), n), v
    assert all(r[0] is not None for r in res)


@settings(max_examples=100, deadline=None)
@given(wa=st.integers(2, 50), wb=st.integers(2, 50), width=st.integers(2, 52),
       seed=st.integers(0, 2**32 - 1))
def test_saturating_add_matches_golden(wa, wb, width, seed):
    rng = random.Random(seed)
    va = [rng.randint(-(1 << (wa - 1)), (1 << (wa - 1)) - 1) for _ in range(40)]
    vb = [rng.randint(-(1 << (wb - 1)), (1 << (wb - 1)) - 1) for _ in range(40)]
    va += [-(1 << (wa - 1)), (1 << (wa - 1)) - 1]
    vb += [-(1 << (wb - 1)), (1 << (wb - 1)) - 1]
    res = _run_comb([signed(wa), signed(wb)], lambda a, b: hw.saturating_add(a, b, width),
                    list(zip(va, vb)))
    want, n = fixed.saturating_add(va, vb, width)
    assert [r[0] for r in res] == want.tolist()
    assert sum(r[1] for r in res) == n


def test_unsigned_input_is_non_negative():
    res = _run_comb([8], lambda x: hw.saturate(x, 8), [(255,), (127,), (128,)])
    assert res == [(127, 1), (127, 0), (127, 1)]
    res = _run_comb([8], lambda x: hw.requantize(x, 4, FixedFormat(8, 0)), [(255,), (8,), (7,)])
    assert res == [(16, 0), (1, 0), (0, 0)]


@pytest.mark.parametrize("rounding", ["half_up", "truncate"])
def test_requantize_edges(rounding):
    fmt = FixedFormat(16, 8, rounding)
    w = 48
    lo, hi = -(1 << (w - 1)), (1 << (w - 1)) - 1
    s = 16
    values = [lo, hi, lo + 1, hi - 1, 0, -1, 1,
              (1 << (s - 1)), -(1 << (s - 1)), (3 << (s - 1)), -(3 << (s - 1)),  # ties
              (fmt.max_int << s), (fmt.max_int << s) + (1 << (s - 1)) - 1, (fmt.max_int << s) + (1 << (s - 1)),
              (fmt.min_int << s), (fmt.min_int << s) - 1, (fmt.min_int << s) - (1 << (s - 1)),
              (fmt.min_int << s) - (1 << (s - 1)) - 1]
    _check_requantize(w, 24, fmt, values)
    # same shift amount for a tiny format (width 2) and the widest (64)
    _check_requantize(w, 24, FixedFormat(2, 8, rounding), values)
    _check_requantize(64, 0, FixedFormat(64, 0, rounding), [-(1 << 63), (1 << 63) - 1, 0])


def test_requantize_checks_arguments():
    x = Signal(signed(8))
    with pytest.raises(TypeError, match=r"^Format must be a FixedFormat, not 16$"):
        hw.requantize(x, 4, 16)
    with pytest.raises(TypeError, match=r"^Input fractional bits must be a non-negative integer, not -1$"):
        hw.requantize(x, -1, FixedFormat())
    with pytest.raises(TypeError, match=r"^Width must be a positive integer, not 0$"):
        hw.saturate(x, 0)


# --- overflow counter --------------------------------------------------------------------------

def test_overflow_counter_counts_and_saturates():
    dut = hw.OverflowCounter(inputs=3, width=4)
    assert (dut.inputs, dut.width) == (3, 4)
    rng = random.Random(5)
    incs = [rng.randrange(8) for _ in range(30)]
    clears = [1 if k == 20 else 0 for k in range(30)]
    seen = []

    async def tb(ctx):
        for inc, clr in zip(incs, clears):
            ctx.set(dut.inc, inc)
            ctx.set(dut.clear, clr)
            await ctx.tick()
            seen.append(ctx.get(dut.count))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    want, c = [], 0
    for inc, clr in zip(incs, clears):
        c = 0 if clr else min(15, c + bin(inc).count("1"))
        want.append(c)
    assert seen == want
    assert 15 in seen  # it did saturate


def test_overflow_counter_checks_arguments():
    with pytest.raises(TypeError, match=r"^Number of inputs must be a positive integer, not 0$"):
        hw.OverflowCounter(inputs=0)
    with pytest.raises(TypeError, match=r"^Counter width must be a positive integer, not 'x'$"):
        hw.OverflowCounter(width="x")
