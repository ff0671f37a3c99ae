# amaranth: UnusedElaboratable=no
"""Tests of :mod:`fpdeep_hw.compute.partial_adder` against :mod:`sim.golden.partial_adder`."""

import random
import zlib

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpdeep_hw.compute.partial_adder import PartialAdder
from fpdeep_map.numerics import FixedFormat, NumericsConfig
from sim.golden.partial_adder import partial_add
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source
from sim.waves import run_simulation

NUM = NumericsConfig()


def _random_words(rng, n, lanes, fmt, p_big=0.2):
    """Mostly moderate values, some near the ends of the range (to provoke saturation)."""
    words = []
    for _ in range(n):
        word = []
        for _ in range(lanes):
            if rng.random() < p_big:
                word.append(rng.choice([fmt.min_int, fmt.max_int, rng.randint(fmt.min_int, fmt.max_int)]))
            else:
                span = 1 << max(fmt.width - 4, 1)
                word.append(rng.randint(-span, span))
        words.append(word)
    return words


def _run(dut, local_words, up_words, *, seed, p_stall, waves):
    rng = random.Random(seed)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    out = []
    n = len(local_words)
    sim.add_testbench(stream_source(dut.local, local_words, rng=random.Random(rng.random()), p_stall=p_stall))
    if up_words is not None:
        sim.add_testbench(stream_source(dut.upstream, up_words, rng=random.Random(rng.random()), p_stall=p_stall))
    overflows = []

    async def sink_then_read(ctx):
        await stream_sink(dut.o, out, count=n, rng=random.Random(rng.random()), p_stall=p_stall,
                          max_cycles=50 * n + 100)(ctx)
        await ctx.tick()
        overflows.append(ctx.get(dut.overflows))

    sim.add_testbench(sink_then_read)
    run_simulation(sim, waves, traces=[dut])
    return out, overflows[0]


CONFIGS = {
    # name: (kwargs, has_upstream)
    "middle": (dict(partial=NUM.partial), True),
    "first": (dict(partial=NUM.partial, first=True), False),
    "last": (dict(partial=NUM.partial, output=NUM.activation), True),
    "first_and_last": (dict(partial=NUM.partial, output=NUM.activation, first=True), False),
    # local sums straight from a 48-bit accumulator (frac 20): the exact sum is rounded once
    "acc_local_last_truncate": (dict(partial=NUM.partial, local=FixedFormat(48, 20),
                                     output=FixedFormat(16, 8, "truncate")), True),
    "narrow_middle": (dict(partial=FixedFormat(8, 2), local=FixedFormat(10, 4)), True),
}


@pytest.mark.parametrize("lanes", [1, 3])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_random_with_stalls(config, lanes, waves):
    kwargs, has_up = CONFIGS[config]
    dut = PartialAdder(lanes=lanes, **kwargs)
    rng = random.Random(zlib.crc32(f"{config}-{lanes}".encode()))
    n = 60
    local_words = _random_words(rng, n, lanes, dut.local_format)
    up_words = _random_words(rng, n, lanes, dut.partial) if has_up else None
    want, want_ovf = partial_add(local_words, up_words, local=dut.local_format, partial=dut.partial,
                                 output=dut.output)
    got, ovf = _run(dut, local_words, up_words, seed=lanes, p_stall=0.35, waves=waves)
    assert got == want.tolist()
    assert ovf == want_ovf
    if config != "first":  # same format in and out: nothing can saturate
        assert want_ovf > 0  # the data did exercise saturation


def test_rounds_once_on_the_total(waves):
    # Two halves of an LSB of the activation format: rounding each would give 1 + 1 = 2 LSBs,
    # rounding the total gives exactly 1.
    half = 1 << (NUM.partial.frac - NUM.activation.frac - 1)
    dut = PartialAdder(lanes=1, partial=NUM.partial, output=NUM.activation)
    got, ovf = _run(dut, [[half], [-half]], [[half], [-half - 1]], seed=0, p_stall=0.0, waves=waves)
    assert got == [[1], [-1]] and ovf == 0


@pytest.mark.parametrize("first", [False, True])
def test_latency(first, waves):
    dut = PartialAdder(lanes=2, partial=NUM.partial, output=NUM.activation, first=first)
    assert dut.LATENCY == 1
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    words = [[k << 8, -k << 8] for k in range(8)]
    sim.add_testbench(stream_source(dut.local, words))
    if not first:
        sim.add_testbench(stream_source(dut.upstream, words))
    out, cycles = [], []
    sim.add_testbench(stream_sink(dut.o, out, count=8, on_word=lambda c, w: cycles.append(c)))
    starts = []

    async def monitor(ctx):
        for cycle in range(20):
            _, _, valid, ready = await ctx.tick().sample(dut.local.valid, dut.local.ready)
            if valid and ready:
                starts.append(cycle)
    sim.add_testbench(monitor, background=True)
    run_simulation(sim, waves, traces=[dut])
    factor = 1 if first else 2
    assert out == [[factor * k, -factor * k] for k in range(8)]
    assert cycles[0] - starts[0] == PartialAdder.LATENCY
    assert cycles == list(range(cycles[0], cycles[0] + 8))  # one word per cycle
    assert starts == list(range(starts[0], starts[0] + 8))


def test_arguments():
    with pytest.raises(ValueError, match=r"^Partial adder lanes must be a positive integer, not 0$"):
        PartialAdder(lanes=0, partial=NUM.partial)
    with pytest.raises(TypeError, match=r"^Partial-sum format must be a FixedFormat, not 32$"):
        PartialAdder(lanes=1, partial=32)
    with pytest.raises(TypeError, match=r"^Local partial-sum format must be a FixedFormat, not 'x'$"):
        PartialAdder(lanes=1, partial=NUM.partial, local="x")
    with pytest.raises(TypeError, match=r"^Output format must be a FixedFormat or None, not 16$"):
        PartialAdder(lanes=1, partial=NUM.partial, output=16)
    with pytest.raises(TypeError, match=r"^First must be a bool, not 1$"):
        PartialAdder(lanes=1, partial=NUM.partial, first=1)
    dut = PartialAdder(lanes=2, partial=NUM.partial, first=True)
    assert "upstream" not in dut.signature.members
    assert (dut.lanes, dut.first, dut.out_format) == (2, True, NUM.partial)


def test_golden_shape_check():
    with pytest.raises(ValueError, match="local and upstream shapes differ"):
        partial_add(np.zeros((2, 2), int), np.zeros((3, 2), int), local=NUM.partial, partial=NUM.partial)


@pytest.mark.parametrize("kwargs", [
    dict(lanes=4, partial=NUM.partial),
    dict(lanes=4, partial=NUM.partial, output=NUM.activation),
    dict(lanes=2, partial=NUM.partial, local=FixedFormat(48, 20), output=NUM.activation, first=True),
], ids=["middle", "last", "first_acc_last"])
def test_verilator_lint(kwargs, tmp_path):
    verilator_lint(PartialAdder(**kwargs), "partial_adder", tmp_path)
