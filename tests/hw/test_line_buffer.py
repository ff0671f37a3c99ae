# amaranth: UnusedElaboratable=no
"""Tests of :class:`fpdeep_hw.memory.line_buffer.LineBuffer` against :mod:`sim.golden.line_buffer`."""

import random

import numpy as np
import pytest
from amaranth.hdl import signed
from amaranth.sim import Simulator

from fpdeep_hw.memory.line_buffer import LineBuffer
from sim.golden import line_buffer as golden
from sim.lint import verilator_lint
from sim.streams import stream_source, stream_sink
from sim.waves import run_simulation


def _maps(rng, n, h, w, s, bits=16):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1))
    return [rng.integers(lo, hi, size=(h, w, s)) for _ in range(n)]


def _expected(dut, maps):
    exp = []
    for x in maps:
        exp += [win.tolist() for win in golden.windows(x, dut.geometry, flip=dut.flip,
                                                        groups=dut.groups, repeat=dut.repeat)]
    return exp


def _run(dut, maps, name, *, p_in=0.0, p_out=0.0, seed=0, timing=None):
    words = [w for x in maps for w in golden.stream_words(x, groups=dut.groups)]
    expected = _expected(dut, maps)
    out = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    sim.add_testbench(stream_source(dut.i, words, rng=random.Random(rng.random()), p_stall=p_in))
    on_word = None if timing is None else (lambda cycle, word: timing.append(cycle))
    sim.add_testbench(stream_sink(dut.o, out, count=len(expected), rng=random.Random(rng.random()),
                                  p_stall=p_out, on_word=on_word,
                                  max_cycles=50 * (len(words) + len(expected)) + 1000))
    run_simulation(sim, name, traces=[dut])
    return out, expected


# (height, width, channels, k, stride, pad)
FP_CASES = [
    (5, 7, 2, 1, 1, 0),      # K = 1, odd width
    (6, 7, 3, 3, 1, 1),      # K = 3 "same"
    (7, 9, 1, 3, 2, 1),      # stride 2, one channel
    (6, 5, 2, 3, 1, 0),      # no padding
    (7, 9, 2, 5, 1, 2),      # K = 5
    (8, 11, 1, 5, 2, 1),     # K = 5 stride 2, rows/columns the windows never reach
    (15, 19, 1, 11, 4, 2),   # K = 11 stride 4 (AlexNet conv1 shape, small map)
    (1, 1, 2, 3, 1, 1),      # 1x1 map, padded
    (3, 1, 1, 1, 1, 0),      # width 1, K = 1
]


@pytest.mark.parametrize("h,w,s,k,st,p", FP_CASES)
def test_fp_windows_random_stalls(h, w, s, k, st, p, waves):
    rng = np.random.default_rng(h * 1000 + w * 100 + k * 10 + st)
    dut = LineBuffer(height=h, width=w, channels=s, k=k, stride=st, pad=p)
    out, expected = _run(dut, _maps(rng, 2, h, w, s), waves, p_in=0.3, p_out=0.3, seed=k)
    assert len(expected) == 2 * dut.out_height * dut.out_width
    assert out == expected


# (fp height, fp width, channels, k, stride, pad) of the forward layer whose EB this is
EB_CASES = [
    (7, 9, 2, 3, 2, 1),
    (6, 7, 1, 3, 1, 1),
    (8, 9, 2, 5, 2, 2),
    (7, 8, 1, 5, 1, 0),
    (19, 23, 1, 11, 4, 2),
]


@pytest.mark.parametrize("h,w,s,k,st,p", EB_CASES)
def test_eb_transposed_windows_random_stalls(h, w, s, k, st, p, waves):
    dut = LineBuffer.transposed(height=h, width=w, channels=s, k=k, stride=st, pad=p)
    assert (dut.out_height, dut.out_width) == (h, w)
    assert dut.flip and dut.dilation == st and dut.stride == 1
    rng = np.random.default_rng(h + w + k)
    g = golden.fp_geometry(h, w, k, st, p)
    maps = _maps(rng, 2, g.out_height, g.out_width, s)
    out, expected = _run(dut, maps, waves, p_in=0.4, p_out=0.25, seed=st)
    assert out == expected


# (height, width, channels, groups, repeat, k, stride, pad)
GROUP_CASES = [
    (5, 7, 2, 3, 1, 3, 1, 1),     # 6 channels as 3 words of 2
    (7, 9, 1, 2, 1, 5, 2, 2),
    (4, 5, 3, 2, 1, 1, 1, 0),     # K = 1
    (5, 7, 2, 1, 3, 3, 1, 1),     # each window 3 times
    (15, 15, 1, 1, 2, 11, 4, 0),
    (3, 1, 1, 4, 1, 3, 1, 1),     # width 1, 4 groups
]


@pytest.mark.parametrize("h,w,s,g,r,k,st,p", GROUP_CASES)
def test_groups_and_repeat_random_stalls(h, w, s, g, r, k, st, p, waves):
    rng = np.random.default_rng(h + w + g * 10 + r * 100)
    dut = LineBuffer(height=h, width=w, channels=s, k=k, stride=st, pad=p, groups=g, repeat=r)
    out, expected = _run(dut, _maps(rng, 2, h, w, s * g), waves, p_in=0.3, p_out=0.3, seed=g + r)
    assert len(expected) == 2 * dut.out_height * dut.out_width * g * r
    assert out == expected


def test_eb_transposed_groups(waves):
    """EB with OC = 6 output-channel errors as 3 groups of P = 2 (one word per group)."""
    h, w, k, st, p = 7, 6, 3, 2, 1
    dut = LineBuffer.transposed(height=h, width=w, channels=2, k=k, stride=st, pad=p, groups=3)
    g = golden.fp_geometry(h, w, k, st, p)
    rng = np.random.default_rng(4)
    out, expected = _run(dut, _maps(rng, 2, g.out_height, g.out_width, 6), waves, p_in=0.3,
                         p_out=0.3)
    assert len(expected) == 2 * h * w * 3
    assert out == expected


def test_width_one(waves):
    for kw in (dict(k=3, pad=(0, 1, 0, 1)), dict(k=3, pad=(1, 2, 0, 0)), dict(k=1)):
        dut = LineBuffer(height=6, width=1, channels=2, **kw)
        rng = np.random.default_rng(5)
        out, expected = _run(dut, _maps(rng, 2, 6, 1, 2), waves, p_in=0.3, p_out=0.3)
        assert out == expected


@pytest.mark.parametrize("kw", [
    dict(height=6, width=7, channels=2, k=3, stride=1, pad=1),
    dict(height=9, width=9, channels=1, k=3, stride=2, pad=0),
    dict(height=15, width=15, channels=1, k=11, stride=4, pad=0),
    dict(height=4, width=5, channels=1, k=3, stride=1, pad=(2, 2, 2, 2), dilation=2, flip=True),
    dict(height=5, width=6, channels=2, k=3, stride=1, pad=1, groups=3),
    dict(height=4, width=3, channels=1, k=1, groups=2),
])
def test_latency_and_throughput(kw, waves):
    """No stalls: one virtual position per cycle, each window exactly ``latency`` cycles after
    the scan step of its last position (its pixel's transfer when that position is a pixel)."""
    dut = LineBuffer(**kw)
    assert dut.latency == 2
    g = dut.geometry
    rng = np.random.default_rng(1)
    timing = []
    G = dut.groups
    out, expected = _run(dut, _maps(rng, 2, g.height, g.width, dut.channels * G), waves,
                         timing=timing)
    assert out == expected
    want = []
    for n in range(2):
        for oy, ox in golden.window_positions(g):
            pos = (oy * g.stride + g.k - 1) * g.vwidth + ox * g.stride + g.k - 1
            for grp in range(G):
                want.append((n * g.vheight * g.vwidth + pos) * G + grp + dut.latency)
    assert timing == want
    if g.stride == 1:
        # along an output row the windows leave on consecutive cycles
        row = timing[:g.out_width * G]
        assert row == list(range(row[0], row[0] + g.out_width * G))


def test_repeat_timing(waves):
    """``repeat = 3``: the first window 2 cycles after its last pixel, then twice more at once."""
    dut = LineBuffer(height=5, width=6, channels=1, k=3, pad=1, repeat=3)
    g = dut.geometry
    timing = []
    out, expected = _run(dut, _maps(np.random.default_rng(8), 1, 5, 6, 1), waves, timing=timing)
    assert out == expected
    first = (g.k - 1) * g.vwidth + g.k - 1 + dut.latency
    assert timing[:3] == [first, first + 1, first + 2]


def test_first_window_follows_completing_pixel():
    """The pixel at (K-1-P, K-1-P) completes the first window; it leaves 2 cycles after."""
    dut = LineBuffer(height=5, width=6, channels=1, k=3, stride=1, pad=1)
    rng = np.random.default_rng(2)
    x = _maps(rng, 1, 5, 6, 1)[0]
    words = golden.stream_words(x)
    transfers = []
    first_out = []

    async def watcher(ctx):
        cycle = 0
        async for _, _, iv, ir, ov in ctx.tick().sample(dut.i.valid, dut.i.ready, dut.o.valid):
            if iv and ir:
                transfers.append(cycle)
            if ov:
                first_out.append(cycle)
                return
            cycle += 1

    async def source(ctx):
        n = 0
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, words[0])
        while n < len(words):
            _, _, ready = await ctx.tick().sample(dut.i.ready)
            if ready:
                n += 1
                if n < len(words):
                    ctx.set(dut.i.payload, words[n])
        ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source, background=True)
    sim.add_testbench(watcher)
    sim.run()
    # pixel (1, 1) is word 1 * 6 + 1 = 7 in raster order
    assert first_out == [transfers[7] + dut.latency]


def test_arrangements_compute_the_right_convolutions():
    """The EB and PG window dataflows reproduce the gradients of the forward convolution."""
    rng = np.random.default_rng(3)
    for (h, w, c, oc, k, st, p) in [(7, 9, 2, 3, 3, 2, 1), (8, 8, 1, 2, 5, 1, 2),
                                     (19, 17, 1, 2, 11, 4, 2), (6, 7, 2, 2, 1, 1, 0)]:
        act = rng.integers(-50, 50, size=(h, w, c))
        wts = rng.integers(-50, 50, size=(oc, c, k, k))
        g = golden.fp_geometry(h, w, k, st, p)
        err = rng.integers(-50, 50, size=(g.out_height, g.out_width, oc))
        # direct formulas on the padded input
        ap = np.zeros((h + 2 * p, w + 2 * p, c), dtype=object)
        ap[p:p + h, p:p + w] = act
        y = np.zeros((g.out_height, g.out_width, oc), dtype=object)
        dx_p = np.zeros_like(ap)
        dw = np.zeros((oc, c, k, k), dtype=object)
        for oy in range(g.out_height):
            for ox in range(g.out_width):
                patch = ap[oy * st:oy * st + k, ox * st:ox * st + k].transpose(2, 0, 1)
                for o in range(oc):
                    y[oy, ox, o] = (patch * wts[o]).sum()
                    dw[o] += patch * err[oy, ox, o]
                    dx_p[oy * st:oy * st + k, ox * st:ox * st + k] += \
                        (wts[o] * err[oy, ox, o]).transpose(1, 2, 0)
        assert (golden.fp_conv(act, wts, g) == y).all()
        assert (golden.eb_input_error(err, wts, h, w, k, st, p) == dx_p[p:p + h, p:p + w]).all()
        assert (golden.pg_gradient(act, err, k, st, p) == dw).all()


def test_parameters_validated():
    with pytest.raises(TypeError, match=r"^Line buffer width must be an integer >= 1, not 0$"):
        LineBuffer(height=4, width=0, channels=1, k=3)
    with pytest.raises(TypeError, match=r"^Line buffer kernel size must be an integer >= 1, not 2\.0$"):
        LineBuffer(height=4, width=4, channels=1, k=2.0)
    with pytest.raises(TypeError, match=r"^Line buffer channel count must be an integer >= 1, not 0$"):
        LineBuffer(height=4, width=4, channels=0, k=3)
    with pytest.raises(TypeError, match=r"^Line buffer stride must be an integer >= 1, not 0$"):
        LineBuffer(height=4, width=4, channels=1, k=3, stride=0)
    with pytest.raises(TypeError, match=r"^Line buffer padding must be a non-negative integer or a "
                                        r"4-tuple of them, not \(1, 2\)$"):
        LineBuffer(height=4, width=4, channels=1, k=3, pad=(1, 2))
    with pytest.raises(ValueError, match=r"^Line buffer window 5x5 does not fit the padded map 4x6$"):
        LineBuffer(height=4, width=4, channels=1, k=5, pad=(0, 1, 0, 1))
    with pytest.raises(TypeError, match=r"^Line buffer group count must be an integer >= 1, not 0$"):
        LineBuffer(height=4, width=4, channels=1, k=3, groups=0)
    with pytest.raises(ValueError, match=r"^Line buffer cannot both group channels and repeat "
                                         r"windows \(groups=2, repeat=3\)$"):
        LineBuffer(height=4, width=4, channels=1, k=3, groups=2, repeat=3)
    with pytest.raises(ValueError, match=r"^transposed arrangement needs pad <= k - 1, not pad=3 with k=3$"):
        LineBuffer.transposed(height=8, width=8, channels=1, k=3, pad=3)


def test_shape_and_ports():
    dut = LineBuffer(height=4, width=5, channels=3, k=3, shape=signed(8))
    assert dut.o.payload.shape().length == 3
    assert len(dut.o.payload[0]) == 3 and len(dut.o.payload[0][0]) == 3
    assert (dut.out_height, dut.out_width) == (2, 3)


@pytest.mark.parametrize("kw", [
    dict(height=6, width=7, channels=2, k=3, stride=1, pad=1),
    dict(height=5, width=1, channels=1, k=3, stride=1, pad=(0, 1, 0, 1)),
    dict(height=4, width=4, channels=1, k=1),
    dict(height=15, width=15, channels=1, k=11, stride=4, pad=(2, 2, 3, 3), dilation=2, flip=True),
    dict(height=6, width=7, channels=2, k=3, pad=1, groups=3),
    dict(height=6, width=7, channels=2, k=3, pad=1, repeat=4),
])
def test_lint(kw, tmp_path):
    verilator_lint(LineBuffer(**kw), "line_buffer", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("transposed,h,w,s,k,st,p", [
    (False, 27, 31, 3, 11, 4, 2),    # AlexNet conv1 geometry on a small map, 3 channels
    (True, 27, 31, 2, 11, 4, 2),     # its EB arrangement
    (False, 21, 19, 4, 5, 2, 2),
    (True, 15, 17, 3, 5, 2, 1),
])
def test_larger_maps_random_stalls(transposed, h, w, s, k, st, p, waves):
    rng = np.random.default_rng(h * w + s)
    if transposed:
        dut = LineBuffer.transposed(height=h, width=w, channels=s, k=k, stride=st, pad=p)
    else:
        dut = LineBuffer(height=h, width=w, channels=s, k=k, stride=st, pad=p)
    g = dut.geometry
    out, expected = _run(dut, _maps(rng, 2, g.height, g.width, s), waves, p_in=0.3, p_out=0.3)
    assert out == expected
