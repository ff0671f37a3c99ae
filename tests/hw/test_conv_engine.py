# amaranth: UnusedElaboratable=no
"""Tests of :mod:`fpdeep_hw.compute.conv_engine` against :mod:`sim.golden.conv_engine`."""

import random

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from fpdeep_hw.compute.conv_engine import CEArray, ConvEngine, ConvTile
from fpdeep_hw.memory.line_buffer import LineBuffer
from fpdeep_map.numerics import FixedFormat, NumericsConfig
from sim.golden import conv_engine as golden
from sim.golden import line_buffer as lb
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source
from sim.waves import run_simulation

LO, HI = -(1 << 15), 1 << 15


def _rand(rng, *shape, lo=LO, hi=HI):
    return rng.integers(lo, hi, size=shape)


# --- ConvTile / ConvEngine: clock-enabled pipelines, random enable ---------------------------

@pytest.mark.parametrize("k", [1, 3, 5, 11])
def test_tile_random_enable(k, waves):
    dut = ConvTile(k=k)
    assert dut.latency == 2 + (k * k - 1).bit_length()
    rng = np.random.default_rng(k)
    prng = random.Random(k)
    checked = []

    async def tb(ctx):
        history = []
        for cycle in range(60):
            en = cycle < 20 or prng.random() < 0.6       # always enabled at first: latency check
            win, wt = _rand(rng, k, k), _rand(rng, k, k)
            ctx.set(dut.en, en)
            ctx.set(dut.window, win.tolist())
            ctx.set(dut.weights, wt.tolist())
            if len(history) >= dut.latency:
                assert ctx.get(dut.sum) == golden.tile_sum(*history[-dut.latency])
                checked.append(cycle)
            if en:
                history.append((win, wt))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    run_simulation(sim, waves, traces=[dut])
    assert checked[0] == dut.latency and len(checked) > 30


@pytest.mark.parametrize("k,tiles", [(3, 4), (1, 3), (5, 1)])
def test_engine_random_enable(k, tiles, waves):
    dut = ConvEngine(k=k, tiles=tiles, acc_width=40)
    rng = np.random.default_rng(10 + k)
    prng = random.Random(k)
    n = 40
    wins = [_rand(rng, tiles, k, k) for _ in range(n)]
    wts = [_rand(rng, 1, tiles, k, k) for _ in range(n)]
    lasts = [prng.random() < 0.4 for _ in range(n - 1)] + [True]
    exp, exp_ovf, _ = golden.ce_array(wins, wts, lasts, acc_width=40)
    got, ovf = [], []

    async def tb(ctx):
        i = 0
        cycle = 0
        while len(got) < len(exp):
            en = cycle < 5 or prng.random() < 0.7
            valid = i < n and prng.random() < 0.8
            ctx.set(dut.en, en)
            ctx.set(dut.valid, valid)
            if i < n:
                ctx.set(dut.window, wins[i].tolist())
                ctx.set(dut.weights, wts[i][0].tolist())
                ctx.set(dut.last, lasts[i])
            if en and ctx.get(dut.done):
                got.append([ctx.get(dut.acc)])
            ovf.append(ctx.get(dut.overflow))
            if en and valid:
                i += 1
            await ctx.tick()
            cycle += 1
            assert cycle < 1000

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    run_simulation(sim, waves, traces=[dut])
    assert got == exp
    assert sum(ovf) == exp_ovf


@pytest.mark.parametrize("k,tiles", [(3, 4), (1, 1), (5, 3)])
def test_engine_latency(k, tiles):
    """A single step with ``last``: ``done`` and its result appear after exactly ``latency``
    enabled cycles."""
    dut = ConvEngine(k=k, tiles=tiles)
    assert dut.latency == 3 + (k * k - 1).bit_length() + (tiles - 1).bit_length()
    rng = np.random.default_rng(3)
    win, wt = _rand(rng, tiles, k, k), _rand(rng, tiles, k, k)
    seen = []

    async def tb(ctx):
        ctx.set(dut.en, 1)
        ctx.set(dut.valid, 1)
        ctx.set(dut.last, 1)
        ctx.set(dut.window, win.tolist())
        ctx.set(dut.weights, wt.tolist())
        await ctx.tick()
        ctx.set(dut.valid, 0)
        for ticks in range(1, dut.latency + 3):
            if ctx.get(dut.done):
                seen.append((ticks, ctx.get(dut.acc)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen == [(dut.latency, golden.engine_partial(win, wt))]


# --- CEArray: streams with random stalls ------------------------------------------------------

def _run_array(dut, wins, wts, lasts, name, *, p_win=0.3, p_wt=0.3, p_out=0.3, seed=0, timing=None,
               transfers=None):
    n_out = sum(lasts)
    out, counts = [], {}
    rng = random.Random(seed)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.win, [w.tolist() for w in wins],
                                    rng=random.Random(rng.random()), p_stall=p_win))
    sim.add_testbench(stream_source(dut.wt, [{"weights": w.tolist(), "last": int(l)}
                                             for w, l in zip(wts, lasts)],
                                    rng=random.Random(rng.random()), p_stall=p_wt))
    sink = stream_sink(dut.o, out, count=n_out, rng=random.Random(rng.random()), p_stall=p_out,
                       max_cycles=20 * len(wins) + 200,
                       on_word=None if timing is None else (lambda c, w: timing.append(c)))

    async def sink_then_counters(ctx):
        await sink(ctx)
        counts["acc"] = ctx.get(dut.acc_overflows)
        counts["out"] = ctx.get(dut.out_overflows)

    sim.add_testbench(sink_then_counters)
    if transfers is not None:
        async def watch(ctx):
            cycle = 0
            async for _, _, v, r in ctx.tick().sample(dut.win.valid, dut.win.ready):
                if v and r:
                    transfers.append(cycle)
                cycle += 1
        sim.add_testbench(watch, background=True)
    run_simulation(sim, name, traces=[dut])
    return out, counts


def _random_words(rng, n, k, tiles, engines, p_last=0.5, lo=LO, hi=HI):
    prng = random.Random(int(rng.integers(1 << 30)))
    wins = [_rand(rng, tiles, k, k, lo=lo, hi=hi) for _ in range(n)]
    wts = [_rand(rng, engines, tiles, k, k, lo=lo, hi=hi) for _ in range(n)]
    lasts = [prng.random() < p_last for _ in range(n - 1)] + [True]
    return wins, wts, lasts


@pytest.mark.parametrize("k,tiles,engines,out", [
    (3, 4, 3, None),
    (3, 2, 2, "partial"),
    (1, 3, 2, "activation"),
    (5, 2, 2, None),
    (11, 1, 2, "partial"),
    (3, 1, 1, "error"),
])
def test_array_random_stalls(k, tiles, engines, out, waves):
    nc = NumericsConfig()
    out_fmt = None if out is None else getattr(nc, out)
    dut = CEArray(k=k, tiles=tiles, engines=engines, out_fmt=out_fmt)
    rng = np.random.default_rng(k * 100 + tiles * 10 + engines)
    wins, wts, lasts = _random_words(rng, 24, k, tiles, engines)
    exp, exp_acc, exp_out = golden.ce_array(wins, wts, lasts, acc_width=48, frac_in=dut.acc_frac,
                                            out_fmt=out_fmt)
    got, counts = _run_array(dut, wins, wts, lasts, waves, seed=k)
    assert got == exp
    assert counts == {"acc": exp_acc, "out": exp_out}
    if out == "activation":
        assert exp_out > 0       # random Q8.8 x Q4.12 products do not fit Q8.8: counted


def test_array_saturation_counted(waves):
    # a narrow accumulator and a narrow output format: both counters must move
    rng = np.random.default_rng(7)
    wins, wts, lasts = _random_words(rng, 30, 3, 2, 2, p_last=0.15)
    for i in range(0, 30, 2):     # long same-sign runs drive the accumulator to its rails
        wins[i] = np.abs(wins[i])
        wts[i] = np.abs(wts[i])
    out_fmt = FixedFormat(12, 2, "truncate")
    dut = CEArray(k=3, tiles=2, engines=2, acc_width=34, out_fmt=out_fmt)
    exp, exp_acc, exp_out = golden.ce_array(wins, wts, lasts, acc_width=34, frac_in=20,
                                            out_fmt=out_fmt)
    assert exp_acc > 0 and exp_out > 0
    got, counts = _run_array(dut, wins, wts, lasts, waves, seed=3)
    assert got == exp
    assert counts == {"acc": exp_acc, "out": exp_out}


def test_array_clear_overflows(waves):
    dut = CEArray(k=1, tiles=1, engines=1, acc_width=17)
    seen = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.win.valid, 1)
        ctx.set(dut.wt.valid, 1)
        ctx.set(dut.win.payload, [[[32767]]])
        ctx.set(dut.wt.payload, {"weights": [[[[32767]]]], "last": 1})
        for _ in range(10):
            await ctx.tick()
        ctx.set(dut.win.valid, 0)
        for _ in range(dut.latency + 1):
            await ctx.tick()
        seen.append((ctx.get(dut.acc_overflows), ctx.get(dut.out_overflows)))
        ctx.set(dut.clear_overflows, 1)
        await ctx.tick()
        ctx.set(dut.clear_overflows, 0)
        seen.append((ctx.get(dut.acc_overflows), ctx.get(dut.out_overflows)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    run_simulation(sim, waves, traces=[dut])
    assert seen == [(10, 0), (0, 0)]


@pytest.mark.parametrize("k,tiles,engines", [(3, 4, 4), (1, 2, 1), (5, 1, 2), (11, 1, 1)])
def test_array_latency_and_throughput(k, tiles, engines, waves):
    dut = CEArray(k=k, tiles=tiles, engines=engines)
    assert dut.latency == 4 + (k * k - 1).bit_length() + (tiles - 1).bit_length()
    rng = np.random.default_rng(0)
    wins, wts, _ = _random_words(rng, 12, k, tiles, engines)
    lasts = [True] * 12
    timing, transfers = [], []
    got, _ = _run_array(dut, wins, wts, lasts, waves, p_win=0, p_wt=0, p_out=0, timing=timing,
                        transfers=transfers)
    assert got == golden.ce_array(wins, wts, lasts, frac_in=dut.acc_frac)[0]
    assert transfers == list(range(12))                  # one word per cycle, never stalled
    assert timing == [t + dut.latency for t in transfers]


def test_fp_layer_channels_not_divisible(waves):
    """C = 5 input channels on 2 tiles (last group: one zero-weight lane holding random data),
    OC = 3 output channels on 2 engines (second pass: one idle engine)."""
    rng = np.random.default_rng(11)
    h, w, c, oc, k, st, p = 5, 6, 5, 3, 3, 1, 1
    act = _rand(rng, h, w, c, lo=-3000, hi=3000)
    wts = _rand(rng, oc, c, k, k, lo=-3000, hi=3000)
    g = lb.fp_geometry(h, w, k, st, p)
    seq = golden.fp_sequence(act, wts, g, tiles=2, engines=2, filler=rng)
    dut = CEArray.fp(k=k, s=2, p=2, out_fmt=None)
    got, counts = _run_array(dut, *seq, waves, seed=5)
    exp = golden.ce_array(*seq, frac_in=dut.acc_frac)[0]
    assert got == exp
    assert (golden.assemble_fp(got, g, oc, 2) == lb.fp_conv(act, wts, g)).all()
    assert counts == {"acc": 0, "out": 0}


def test_eb_layer(waves):
    """EB: flipped transposed windows of 3 error channels on P = 2 tiles, C = 3 input channels
    on S = 2 engines; equals the input error of the forward layer."""
    rng = np.random.default_rng(12)
    h, w, c, oc, k, st, p = 5, 5, 3, 3, 3, 2, 1
    g = lb.fp_geometry(h, w, k, st, p)
    err = _rand(rng, g.out_height, g.out_width, oc, lo=-3000, hi=3000)
    wts = _rand(rng, oc, c, k, k, lo=-3000, hi=3000)
    seq = golden.eb_sequence(err, wts, h, w, k, st, p, tiles=2, engines=2)
    dut = CEArray.eb(k=k, s=2, p=2, out_fmt=None)
    assert (dut.tiles, dut.engines, dut.acc_frac) == (2, 2, 24)
    got, _ = _run_array(dut, *seq, waves, seed=6, p_win=0.2, p_wt=0.4, p_out=0.2)
    assert got == golden.ce_array(*seq, frac_in=dut.acc_frac)[0]
    assert (golden.assemble_eb(got, h, w, c, 2) == lb.eb_input_error(err, wts, h, w, k, st, p)).all()


def test_parameters_validated():
    with pytest.raises(TypeError, match=r"^Kernel size must be a positive integer, not 0$"):
        ConvTile(k=0)
    with pytest.raises(TypeError, match=r"^Tile count must be a positive integer, not 2\.0$"):
        ConvEngine(k=3, tiles=2.0)
    with pytest.raises(TypeError, match=r"^Engine count must be a positive integer, not 0$"):
        CEArray(k=3, tiles=1, engines=0)
    with pytest.raises(TypeError, match=r"^Output format must be a FixedFormat, not 'q8\.8'$"):
        CEArray(k=3, tiles=1, engines=1, out_fmt="q8.8")
    with pytest.raises(TypeError, match=r"^Accumulator width must be a positive integer, not -1$"):
        CEArray(k=3, tiles=1, engines=1, acc_width=-1)


def test_fp_eb_shapes():
    nc = NumericsConfig()
    fp = CEArray.fp(k=3, s=4, p=2)
    assert (fp.tiles, fp.engines, fp.in_fmt, fp.out_fmt) == (4, 2, nc.activation, nc.partial)
    assert fp.acc_frac == nc.activation.frac + nc.weight.frac
    eb = CEArray.eb(k=3, s=4, p=2)
    assert (eb.tiles, eb.engines, eb.in_fmt, eb.out_fmt) == (2, 4, nc.error, nc.error)


@pytest.mark.parametrize("make", [
    lambda: ConvTile(k=3),
    lambda: ConvEngine(k=3, tiles=3),
    lambda: CEArray.fp(k=3, s=2, p=2),
    lambda: CEArray(k=1, tiles=1, engines=1, out_fmt=None),
], ids=["tile", "engine", "array_fp", "array_raw"])
def test_lint(make, tmp_path):
    verilator_lint(make(), "conv_engine", tmp_path)


# --- line buffer -> CE array, in hardware ----------------------------------------------------

class _Pipe(Elaboratable):
    """A line buffer feeding a CE array's window stream (the node composes them like this)."""

    def __init__(self, lbuf, array):
        self.lbuf, self.array = lbuf, array

    def elaborate(self, platform):
        m = Module()
        m.submodules.lbuf = self.lbuf
        m.submodules.array = self.array
        wiring.connect(m, self.lbuf.o, self.array.win)
        return m


def _run_pipe(lbuf, array, pixels, wt_words, n_out, name, seed):
    top = _Pipe(lbuf, array)
    out = []
    rng = random.Random(seed)
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(lbuf.i, pixels, rng=random.Random(rng.random()), p_stall=0.3))
    sim.add_testbench(stream_source(array.wt, wt_words, rng=random.Random(rng.random()),
                                    p_stall=0.3))
    sim.add_testbench(stream_sink(array.o, out, count=n_out, rng=random.Random(rng.random()),
                                  p_stall=0.3, max_cycles=50 * len(wt_words) + 500))
    run_simulation(sim, name, traces={"line_buffer": lbuf, "ce_array": array})
    return out


def test_fp_line_buffer_into_array(waves):
    """FP: activations (C = S = 3) through the line buffer into P = 2 engines; OC = 4 output
    channels, so each window is repeated twice (``repeat=2``) and meets the two weight groups."""
    rng = np.random.default_rng(21)
    h, w, c, oc, k, p = 5, 7, 3, 4, 3, 1
    act = _rand(rng, h, w, c, lo=-2000, hi=2000)
    wts = _rand(rng, oc, c, k, k, lo=-2000, hi=2000)
    lbuf = LineBuffer(height=h, width=w, channels=c, k=k, pad=p, repeat=2)
    array = CEArray.fp(k=k, s=c, p=2, out_fmt=None)
    g = lbuf.geometry
    n = g.out_height * g.out_width
    wt_words = [{"weights": wts[q * 2:(q + 1) * 2].tolist(), "last": 1} for q in (0, 1)] * n
    out = _run_pipe(lbuf, array, lb.stream_words(act), wt_words, 2 * n, waves, seed=1)
    assert (np.array(out, dtype=object).reshape(g.out_height, g.out_width, oc)
            == lb.fp_conv(act, wts, g)).all()


def test_eb_line_buffer_into_array(waves):
    """EB: the layer's output errors (OC = 4, as 2 groups of P = 2: ``groups=2``) through the
    transposed line buffer (flipped, zero-inserted, stride 2) into S = 3 engines of 2 tiles,
    accumulating over the two groups: the input errors of the forward layer."""
    rng = np.random.default_rng(22)
    h, w, c, oc, k, st, p = 7, 6, 3, 4, 3, 2, 1
    g = lb.fp_geometry(h, w, k, st, p)
    err = _rand(rng, g.out_height, g.out_width, oc, lo=-2000, hi=2000)
    wts = _rand(rng, oc, c, k, k, lo=-2000, hi=2000)
    lbuf = LineBuffer.transposed(height=h, width=w, channels=2, k=k, stride=st, pad=p, groups=2)
    array = CEArray.eb(k=k, s=c, p=2, out_fmt=None)
    per_engine = wts.transpose(1, 0, 2, 3)            # engine (input channel) s gets W[:, s]
    wt_words = [{"weights": per_engine[:, grp * 2:(grp + 1) * 2].tolist(), "last": grp}
                for grp in (0, 1)] * (h * w)
    out = _run_pipe(lbuf, array, lb.stream_words(err, groups=2), wt_words, h * w, waves, seed=2)
    assert (np.array(out, dtype=object).reshape(h, w, c)
            == lb.eb_input_error(err, wts, h, w, k, st, p)).all()


@pytest.mark.slow
def test_array_larger_random_stalls(waves):
    rng = np.random.default_rng(31)
    dut = CEArray(k=11, tiles=3, engines=4, out_fmt=NumericsConfig().partial)
    wins, wts, lasts = _random_words(rng, 60, 11, 3, 4, p_last=0.3)
    exp, exp_acc, exp_out = golden.ce_array(wins, wts, lasts, frac_in=dut.acc_frac,
                                            out_fmt=dut.out_fmt)
    got, counts = _run_array(dut, wins, wts, lasts, waves, seed=31)
    assert got == exp
    assert counts == {"acc": exp_acc, "out": exp_out}


@pytest.mark.slow
def test_fp_layer_larger(waves):
    """K = 5, stride 2: 7 input channels on 4 tiles, 5 output channels on 3 engines."""
    rng = np.random.default_rng(32)
    h, w, c, oc, k, st, p = 9, 11, 7, 5, 5, 2, 2
    act = _rand(rng, h, w, c, lo=-3000, hi=3000)
    wts = _rand(rng, oc, c, k, k, lo=-3000, hi=3000)
    g = lb.fp_geometry(h, w, k, st, p)
    seq = golden.fp_sequence(act, wts, g, tiles=4, engines=3, filler=rng)
    dut = CEArray.fp(k=k, s=4, p=3, out_fmt=None)
    got, _ = _run_array(dut, *seq, waves, seed=7)
    assert (golden.assemble_fp(got, g, oc, 3) == lb.fp_conv(act, wts, g)).all()
