# amaranth: UnusedElaboratable=no
"""Tests of :mod:`fpdeep_hw.compute.sfu` (ReLU, max-pool; forward and backward) against
:mod:`sim.golden.sfu`: random data, random stalls on every stream, latency to the cycle."""

import random
import zlib

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpdeep_hw.compute import sfu
from fpdeep_map.numerics import FixedFormat
from sim.golden import sfu as golden
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source
from sim.waves import run_simulation

ACT = FixedFormat(16, 8)
ERR = FixedFormat(16, 12)


def _rng(*key):
    return random.Random(zlib.crc32(repr(key).encode()))


def _words(array):
    """Rows of a (..., lanes) array as a list of per-word lane lists."""
    return np.asarray(array).reshape(-1, np.asarray(array).shape[-1]).tolist()


def _simulate(dut, sources, sink_port, count, *, waves, rng, p_stall, monitor_port=None,
              after=None):
    """Drive ``sources`` [(port, words)], collect ``count`` words from ``sink_port``.

    Returns (out, out_cycles, in_cycles): cycles of every output transfer and of every transfer
    on ``monitor_port`` (default: the first source port), counted from the start of the run.
    """
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for port, words in sources:
        sim.add_testbench(stream_source(port, words, rng=random.Random(rng.random()), p_stall=p_stall))
    out, out_cycles, in_cycles, extra = [], [], [], []

    async def sink(ctx):
        await stream_sink(sink_port, out, count=count, rng=random.Random(rng.random()),
                          p_stall=p_stall, max_cycles=40 * count + 400,
                          on_word=lambda c, w: out_cycles.append(c))(ctx)
        if after is not None:
            await ctx.tick()
            extra.append(ctx.get(after))

    port = monitor_port if monitor_port is not None else sources[0][0]

    async def monitor(ctx):
        cycle = 0
        while True:
            _, _, valid, ready = await ctx.tick().sample(port.valid, port.ready)
            if valid and ready:
                in_cycles.append(cycle)
            cycle += 1

    sim.add_testbench(sink)
    sim.add_testbench(monitor, background=True)
    run_simulation(sim, waves, traces=[dut])
    return out, out_cycles, in_cycles, (extra[0] if extra else None)


# --- ReLU --------------------------------------------------------------------------------------

@pytest.mark.parametrize("lanes", [1, 4])
def test_relu_random_with_stalls(lanes, waves):
    rng = _rng("relu", lanes)
    x = np.array([[rng.choice([ACT.min_int, ACT.max_int, 0, -1, 1, rng.randint(ACT.min_int, ACT.max_int)])
                   for _ in range(lanes)] for _ in range(80)])
    y, mask = golden.relu_forward(x)
    dut = sfu.ReLU(fmt=ACT, lanes=lanes)
    out, _, _, _ = _simulate(dut, [(dut.i, x.tolist())], dut.o, len(x), waves=waves, rng=rng, p_stall=0.35)
    assert out == [{"data": d, "mask": k} for d, k in zip(y.tolist(), mask.tolist())]


def test_relu_latency(waves):
    dut = sfu.ReLU(fmt=ACT, lanes=2)
    x = [[k - 5, 5 - k] for k in range(10)]
    out, out_cycles, in_cycles, _ = _simulate(dut, [(dut.i, x)], dut.o, 10, waves=waves,
                                              rng=_rng(), p_stall=0)
    assert [o["data"] for o in out] == golden.relu_forward(x)[0].tolist()
    assert [o - i for o, i in zip(out_cycles, in_cycles)] == [sfu.ReLU.LATENCY] * 10


@pytest.mark.parametrize("lanes", [1, 3])
def test_relu_backward_random_with_stalls(lanes, waves):
    rng = _rng("relub", lanes)
    err = np.array([[rng.randint(ERR.min_int, ERR.max_int) for _ in range(lanes)] for _ in range(80)])
    mask = np.array([[rng.randint(0, 1) for _ in range(lanes)] for _ in range(80)])
    dut = sfu.ReLUBackward(fmt=ERR, lanes=lanes)
    out, _, _, _ = _simulate(dut, [(dut.i, err.tolist()), (dut.mask, mask.tolist())], dut.o, 80,
                             waves=waves, rng=rng, p_stall=0.35)
    assert out == golden.relu_backward(err, mask).tolist()


def test_relu_backward_latency(waves):
    dut = sfu.ReLUBackward(fmt=ERR, lanes=1)
    err = [[k + 1] for k in range(6)]
    mask = [[k % 2] for k in range(6)]
    out, out_cycles, in_cycles, _ = _simulate(dut, [(dut.i, err), (dut.mask, mask)], dut.o, 6,
                                              waves=waves, rng=_rng(), p_stall=0)
    assert out == [[0], [2], [0], [4], [0], [6]]
    assert [o - i for o, i in zip(out_cycles, in_cycles)] == [sfu.ReLUBackward.LATENCY] * 6


def test_relu_roundtrip_through_golden():
    x = np.array([[-3, 0, 2]])
    y, mask = golden.relu_forward(x)
    assert y.tolist() == [[0, 0, 2]] and mask.tolist() == [[0, 0, 1]]
    assert golden.relu_backward([[7, 7, 7]], mask).tolist() == [[0, 0, 7]]


# --- max-pool geometry (golden) ----------------------------------------------------------------

def test_pooled_size_is_caffe_ceil_mode():
    assert golden.pooled_size(55, 3, 2) == 27      # AlexNet pool1
    assert golden.pooled_size(13, 3, 2) == 6       # AlexNet pool5
    assert golden.pooled_size(224, 2, 2) == 112    # VGG
    assert golden.pooled_size(5, 2, 2) == 3        # odd width: ragged last window of one column
    assert golden.pooled_size(6, 3, 2) == 3        # ceil mode: window at 4 clipped to 4..5
    assert golden.pooled_size(1, 3, 2) == 1
    assert sfu.pooled_size(7, 3, 2) == golden.pooled_size(7, 3, 2) == 3


def test_golden_maxpool_ragged_edge_and_ties():
    x = np.array([[1, 5, 5, 2, 9]]).reshape(1, 5, 1)
    pooled, arg = golden.maxpool_forward(x, 2, 2)
    assert pooled[..., 0].tolist() == [[5, 5, 9]]
    assert arg[..., 0].tolist() == [[1, 0, 0]]     # the clipped window sees only column 4
    x = np.full((3, 3, 1), 4)
    pooled, arg = golden.maxpool_forward(x, 3, 2)
    assert arg[..., 0].tolist() == [[0]]           # first maximum in raster order


def test_golden_maxpool_backward_sums_overlaps():
    # 3x3 stride 2 on a 5x5 map: the centre pixel (2, 2) is in all four windows
    err = np.array([[1, 2], [3, 4]]).reshape(2, 2, 1)
    arg = np.array([[8, 6], [2, 0]]).reshape(2, 2, 1)   # every window points at (2, 2)
    out, ovf = golden.maxpool_backward(err, arg, 3, 2, 5, 5, 16)
    assert out[2, 2, 0] == 10 and out.sum() == 10 and ovf == 0
    out, ovf = golden.maxpool_backward(err * 100, arg, 3, 2, 5, 5, 8)
    assert out[2, 2, 0] == 127 and ovf == 1


# --- max-pool forward --------------------------------------------------------------------------

POOL_SHAPES = [
    # k, stride, height, width, lanes
    (2, 2, 4, 4, 2),
    (2, 2, 5, 7, 1),    # odd sizes: ragged last row and column
    (3, 2, 7, 9, 2),    # overlapping windows, exact fit
    (3, 2, 6, 8, 1),    # overlapping, clipped last row and column
    (3, 2, 1, 1, 1),    # map smaller than the window
    (2, 2, 3, 1, 2),    # one column
    (3, 3, 5, 4, 1),    # stride = k
    (1, 1, 2, 3, 1),    # K = 1
    (5, 3, 11, 12, 1),  # wider window, three windows open at once
    (4, 2, 9, 8, 2),    # even window, overlapping by two
]


def _maps(rng, frames, h, w, lanes, lo, hi):
    return [np.array([[[rng.randint(lo, hi) for _ in range(lanes)] for _ in range(w)]
                      for _ in range(h)]) for _ in range(frames)]


@pytest.mark.parametrize("k,stride,height,width,lanes", POOL_SHAPES)
def test_maxpool_random_with_stalls(k, stride, height, width, lanes, waves):
    rng = _rng("mp", k, stride, height, width, lanes)
    # small value range: many ties, so the first-maximum rule is exercised
    maps = _maps(rng, 2, height, width, lanes, -3, 3)
    maps.append(_maps(rng, 1, height, width, lanes, ACT.min_int, ACT.max_int)[0])
    want = []
    for x in maps:
        pooled, arg = golden.maxpool_forward(x, k, stride)
        want += [{"max": p, "arg": a} for p, a in zip(_words(pooled), _words(arg))]
    dut = sfu.MaxPool(fmt=ACT, lanes=lanes, k=k, stride=stride, height=height, width=width)
    words = [w for x in maps for w in _words(x)]
    out, _, _, _ = _simulate(dut, [(dut.i, words)], dut.o, len(want), waves=waves, rng=rng, p_stall=0.35)
    assert out == want


@pytest.mark.parametrize("k,stride,height,width", [(2, 2, 5, 5), (3, 2, 7, 6), (1, 1, 2, 2), (3, 2, 2, 2)])
def test_maxpool_latency(k, stride, height, width, waves):
    rng = _rng("mplat", k, height, width)
    x = _maps(rng, 1, height, width, 2, -100, 100)[0]
    dut = sfu.MaxPool(fmt=ACT, lanes=2, k=k, stride=stride, height=height, width=width)
    pooled, arg = golden.maxpool_forward(x, k, stride)
    n = pooled.shape[0] * pooled.shape[1]
    out, out_cycles, in_cycles, _ = _simulate(dut, [(dut.i, _words(x))], dut.o, n, waves=waves,
                                              rng=rng, p_stall=0)
    assert [o["max"] for o in out] == _words(pooled)
    assert in_cycles == list(range(in_cycles[0], in_cycles[0] + height * width))  # never stalls
    # every pooled word appears LATENCY cycles after the input pixel completing its window
    for (oy, ox), cycle in zip(np.ndindex(pooled.shape[:2]), out_cycles):
        last = (min(oy * stride + k, height) - 1) * width + min(ox * stride + k, width) - 1
        assert cycle - in_cycles[last] == sfu.MaxPool.LATENCY, (oy, ox)


# --- max-pool backward -------------------------------------------------------------------------

@pytest.mark.parametrize("k,stride,height,width,lanes", POOL_SHAPES)
def test_maxpool_backward_random_with_stalls(k, stride, height, width, lanes, waves):
    rng = _rng("mpb", k, stride, height, width, lanes)
    fmt = FixedFormat(8, 4)   # narrow errors: overlapping windows overflow sometimes
    errs, args, want = [], [], []
    total_ovf = 0
    for frame in range(3):
        x = _maps(rng, 1, height, width, lanes, -2, 2)[0]   # ties -> shared argmax pixels
        pooled, arg = golden.maxpool_forward(x, k, stride)
        err = np.array([[[rng.choice([fmt.min_int, fmt.max_int, rng.randint(fmt.min_int, fmt.max_int)])
                          for _ in range(lanes)] for _ in range(pooled.shape[1])]
                        for _ in range(pooled.shape[0])])
        out, ovf = golden.maxpool_backward(err, arg, k, stride, height, width, fmt.width)
        errs += _words(err)
        args += _words(arg)
        want += _words(out)
        total_ovf += ovf
    dut = sfu.MaxPoolBackward(fmt=fmt, lanes=lanes, k=k, stride=stride, height=height, width=width)
    out, _, _, ovf = _simulate(dut, [(dut.i, errs), (dut.arg, args)], dut.o, len(want), waves=waves,
                               rng=rng, p_stall=0.35, after=dut.overflows)
    assert out == want
    assert ovf == total_ovf
    if k > stride and height >= 3 and width >= 3:
        assert total_ovf > 0   # the overlap sums did saturate at least once


@pytest.mark.parametrize("k,stride,height,width", [(2, 2, 5, 5), (3, 2, 7, 6), (3, 2, 1, 3)])
def test_maxpool_backward_latency(k, stride, height, width, waves):
    rng = _rng("mpblat", k, height, width)
    x = _maps(rng, 1, height, width, 1, -100, 100)[0]
    pooled, arg = golden.maxpool_forward(x, k, stride)
    err = pooled + 1000
    want, _ = golden.maxpool_backward(err, arg, k, stride, height, width, ERR.width)
    dut = sfu.MaxPoolBackward(fmt=ERR, lanes=1, k=k, stride=stride, height=height, width=width)
    out, out_cycles, in_cycles, _ = _simulate(dut, [(dut.i, _words(err)), (dut.arg, _words(arg))],
                                              dut.o, height * width, waves=waves, rng=rng, p_stall=0)
    assert out == _words(want)
    wo = pooled.shape[1]
    assert out_cycles[0] - in_cycles[wo - 1] == sfu.MaxPoolBackward.LATENCY
    # then one word per cycle: the output is the bottleneck, never the input
    assert out_cycles == list(range(out_cycles[0], out_cycles[0] + height * width))


# --- constructor checks ------------------------------------------------------------------------

def test_arguments():
    with pytest.raises(TypeError, match=r"^ReLU format must be a FixedFormat, not 16$"):
        sfu.ReLU(fmt=16, lanes=1)
    with pytest.raises(ValueError, match=r"^ReLU backward lanes must be a positive integer, not 0$"):
        sfu.ReLUBackward(fmt=ERR, lanes=0)
    with pytest.raises(ValueError, match=r"^Max-pool kernel size must be a positive integer, not 0$"):
        sfu.MaxPool(fmt=ACT, lanes=1, k=0, stride=1, height=4, width=4)
    with pytest.raises(ValueError, match=r"^Max-pool stride must not exceed the kernel size \(2\), not 3$"):
        sfu.MaxPool(fmt=ACT, lanes=1, k=2, stride=3, height=4, width=4)
    with pytest.raises(ValueError, match=r"^Max-pool backward width must be a positive integer, not -1$"):
        sfu.MaxPoolBackward(fmt=ERR, lanes=1, k=2, stride=2, height=4, width=-1)
    dut = sfu.MaxPool(fmt=ACT, lanes=3, k=3, stride=2, height=13, width=13)
    assert (dut.out_height, dut.out_width, dut.k, dut.stride, dut.lanes) == (6, 6, 3, 2, 3)


# --- lint --------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: sfu.ReLU(fmt=ACT, lanes=4),
    lambda: sfu.ReLUBackward(fmt=ERR, lanes=4),
    lambda: sfu.MaxPool(fmt=ACT, lanes=2, k=3, stride=2, height=7, width=9),
    lambda: sfu.MaxPool(fmt=ACT, lanes=2, k=2, stride=2, height=5, width=5),
    lambda: sfu.MaxPoolBackward(fmt=ERR, lanes=2, k=3, stride=2, height=7, width=9),
    lambda: sfu.MaxPoolBackward(fmt=ERR, lanes=2, k=2, stride=2, height=5, width=5),
], ids=["relu", "relu_backward", "maxpool_3s2", "maxpool_2s2", "maxpool_backward_3s2",
        "maxpool_backward_2s2"])
def test_verilator_lint(make, tmp_path):
    verilator_lint(make(), "sfu", tmp_path)


# --- AlexNet/VGG-sized rows ---------------------------------------------------------------------

@pytest.mark.parametrize("k,stride,size", [(3, 2, 27), (2, 2, 28)])
def test_maxpool_forward_backward_large(k, stride, size, waves):
    rng = _rng("large", k, size)
    lanes = 4
    x = _maps(rng, 1, size, size, lanes, ACT.min_int, ACT.max_int)[0]
    pooled, arg = golden.maxpool_forward(x, k, stride)
    dut = sfu.MaxPool(fmt=ACT, lanes=lanes, k=k, stride=stride, height=size, width=size)
    out, _, _, _ = _simulate(dut, [(dut.i, _words(x))], dut.o, pooled.shape[0] * pooled.shape[1],
                             waves=f"{waves}_fwd", rng=rng, p_stall=0.2)
    assert out == [{"max": p, "arg": a} for p, a in zip(_words(pooled), _words(arg))]
    err = pooled // 4
    want, ovf = golden.maxpool_backward(err, arg, k, stride, size, size, ERR.width)
    dut = sfu.MaxPoolBackward(fmt=ERR, lanes=lanes, k=k, stride=stride, height=size, width=size)
    out, _, _, got_ovf = _simulate(dut, [(dut.i, _words(err)), (dut.arg, _words(arg))], dut.o,
                                   size * size, waves=f"{waves}_bwd", rng=rng, p_stall=0.2,
                                   after=dut.overflows)
    assert out == _words(want) and got_ovf == ovf
